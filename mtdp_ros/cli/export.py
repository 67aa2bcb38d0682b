"""``mtdp export``: write a model as an ONNX graph for ONNX Runtime / TensorRT."""

import json

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.options import add_model_argument, add_reparameterize_argument, \
    reparameterize_option, require_model


def register(subparsers):
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        'export', help='export a model to ONNX',
        description='Export a model to ONNX (batch 1, or any batch with --dynamic-batch; '
                    'the model\'s input size). Inputs: "images" (Bx3xHxW float32, '
                    'normalised) and, for TaskDiffusion, "noise"; one output per task, named '
                    'after it, with the raw outputs. MLoRE is exported re-parameterised; '
                    'TaskDiffusion with --steps denoising steps.')
    add_model_argument(parser, default=None,
                       help='preset or default-model name, config file (.yaml/.json) or '
                            'project checkpoint (.safetensors)')
    parser.add_argument('--checkpoint', metavar='PATH',
                        help='weights (authors\' .pth or project .safetensors)')
    parser.add_argument('--steps', type=int, metavar='N',
                        help='TaskDiffusion denoising steps baked into the graph '
                             '(default: the trained count)')
    parser.add_argument('--output', required=True, metavar='FILE.onnx', help='output file')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (>= 17)')
    add_reparameterize_argument(
        parser, help='MLoRE blocks fused (true), unfused (false) or auto: fused when the '
                     'fused weights fit in half of the available RAM')
    parser.add_argument('--external-data', action='store_true',
                        help='store the weights in FILE.onnx.data (automatic above 2 GiB)')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='a graph for any batch size (several cameras in one run; '
                             'slightly slower at batch 1) instead of batch 1')
    parser.add_argument('--verify', action='store_true',
                        help='run the graph with ONNX Runtime (CPU) and require agreement '
                             'with PyTorch within 1e-3')
    parser.add_argument('--json', action='store_true',
                        help='print a JSON summary as the last line')
    parser.set_defaults(func=run)


def run(args):
    """Export; print where the graph went and what it holds."""
    from mtdp_ros.runtime import export_onnx
    if not args.output.endswith('.onnx'):
        raise CommandError(f'--output must end in .onnx, got {args.output}')
    model = require_model(args)
    reparameterize = reparameterize_option(args)
    info = export_onnx(model, args.output, checkpoint=args.checkpoint, steps=args.steps,
                       opset=args.opset, reparameterize_mlore=reparameterize,
                       external_data=True if args.external_data else None, verify=args.verify,
                       dynamic_batch=args.dynamic_batch)
    print(f"exported {info['model']} ({info['family']}) to {info['output']}: inputs "
          f"{info['inputs']}, outputs {info['outputs']}"
          + (f", {info['steps']} steps" if info['steps'] else '')
          + (', re-parameterised MLoRE' if info['reparameterized'] else '')
          + (', any batch size' if info['dynamic_batch'] else ', batch 1')
          + f", {info['weights_mb']} MiB of weights; ONNX checker passed")
    if info.get('external_data'):
        print(f"weights stored in {info['external_data']} (keep it beside the .onnx file)")
    if 'max_abs_diff' in info:
        print('ONNX Runtime vs PyTorch max |diff|: '
              + ', '.join(f'{t} {d:.2e}' for t, d in info['max_abs_diff'].items()))
    if args.json:
        print(json.dumps(info))
    return 0
