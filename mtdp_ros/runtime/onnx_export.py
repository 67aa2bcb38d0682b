"""ONNX export of the multi-task models (fixed input size; batch 1 or any batch).

Graph inputs: ``images`` (float32 B x 3 x H x W, normalised with the model's mean/std) and,
for TaskDiffusion families, ``noise`` (float32, the sampler's initial map,
B x C_map x H/16 x W/16). Outputs: one per task, named after it, holding the same raw outputs
as the PyTorch model (B x C x H x W). B is 1, or with ``dynamic_batch`` a named axis
``batch`` (several cameras through one graph). MLoRE blocks are exported re-parameterised:
the per-sample kernels are computed in the graph (a gate-weighted matmul over the fused
expert kernels) and applied by one grouped convolution, or, in a dynamic-batch graph, by
one batched MatMul over shifted views (an ONNX ``Conv`` fixes its group count, hence the
batch: ``mlore_block.per_sample_conv3x3``). TaskDiffusion is unrolled for a chosen step
count. The file carries the model config, step count and batch kind in its metadata, so
the ONNX Runtime engine needs nothing else.

The TorchScript exporter (``dynamo=False``) is used: it handles the computed-weight grouped
convolution and needs no extra packages.
"""

import json
import os
import shutil
import tempfile
import threading
import warnings

import numpy as np
import torch
from torch import nn

from mtdp_ros.models import build_model, check_checkpoint_fits, load_checkpoint, reparameterize

from .engine import resolve_engine_model, warn
from .options import check_steps, is_diffusion

DEFAULT_OPSET = 17
FORMAT_TAG = 'mtdp_ros.onnx/1'
# Protobuf cannot hold more than 2 GiB: larger models keep their weights in one side file.
PROTOBUF_LIMIT = 2 ** 31 - 1
META_CONFIG = 'mtdp_config'
META_STEPS = 'mtdp_steps'
META_TASKS = 'mtdp_tasks'
META_REPARAM = 'mtdp_reparameterized'
META_NAME = 'mtdp_model_name'
META_RANDOM = 'mtdp_random_weights'
# torch.onnx.export keeps process-wide state (GLOBALS.in_onnx_export): two exports at once
# fail ("GLOBALS.in_onnx_export must be False"), so every export in this process takes turns.
EXPORT_LOCK = threading.Lock()
META_FORMAT = 'mtdp_format'
# '1' (a batch-1 graph) or 'dynamic' (any batch; absent in files of older exports: '1').
META_BATCH = 'mtdp_batch'


class ExportWrapper(nn.Module):
    """``(images[, noise]) -> tuple of raw outputs in task order`` for the exporter."""

    def __init__(self, model, steps=None):
        super().__init__()
        self.model = model
        self.tasks = tuple(model.config.tasks)
        self.steps = steps
        self.diffusion = is_diffusion(model.config)

    def forward(self, images, noise=None):
        if self.diffusion:
            outputs = self.model(images, steps=self.steps, noise=noise)
        else:
            outputs = self.model(images)
        return tuple(outputs[t] for t in self.tasks)


def prepare_model(config, checkpoint=None, reparameterize_mlore=True):
    """Build an eval-mode CPU model of ``config``, load the checkpoint, fuse MLoRE.

    ``reparameterize_mlore``: True/False or 'auto'/'true'/'false' (see
    :mod:`mtdp_ros.runtime.memory`; exporting runs on the CPU). The blocks are fused in
    place, one at a time, so the two forms never coexist whole.
    """
    from . import memory
    fuse, reason = memory.decide(config, reparameterize_mlore, 'cpu', 'fp32')
    memory.log_decision(fuse, reason)
    check_checkpoint_fits(config, checkpoint)              # before allocating the model
    model = build_model(config)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    if fuse:
        model = reparameterize(model, inplace=True)
    return model.eval()


def example_inputs(config, seed=0, batch=1):
    """Draw seeded (images[, noise]) inputs of the shapes the graph takes (``batch`` rows)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((batch, 3, *config.image_size), generator=generator)
    if not is_diffusion(config):
        return (images,)
    grid = config.grid_size
    noise = torch.randn((batch, config.noise_channels, *grid), generator=generator)
    return (images, noise)


def export_onnx(model, output, checkpoint=None, steps=None, opset=DEFAULT_OPSET,
                reparameterize_mlore='auto', external_data=None, verify=False,
                dynamic_batch=False):
    """Export a model to ``output`` (.onnx) and validate it with the ONNX checker.

    ``model``: preset/default name, config file, project ``.safetensors`` file, ModelConfig
    or config dict (as ``create_engine``). ``steps``: DDIM steps baked into a TaskDiffusion
    graph (default: the trained count). ``external_data``: keep the weights in
    ``<output>.data`` (None: only when the model exceeds protobuf's 2 GiB). ``verify``: run
    the graph with ONNX Runtime (CPU) and require agreement with PyTorch within 1e-3 (a
    dynamic-batch graph on a batch of 3). ``dynamic_batch``: a graph for any batch size
    (the first axis of every input and output is ``batch``) instead of batch 1.
    Returns a dict describing the export.
    """
    import onnx

    config, checkpoint, name = resolve_engine_model(model, checkpoint)
    steps = check_steps(steps, config)
    if is_diffusion(config):
        steps = steps or config.trained_steps
    if opset < DEFAULT_OPSET:
        raise ValueError(f'opset must be >= {DEFAULT_OPSET}, got {opset}')
    output = os.fspath(output)
    if not output.endswith('.onnx'):
        raise ValueError(f'output must be a .onnx file, got {output}')
    if checkpoint is None:
        warn(f'{name}: exporting random weights (no checkpoint given or shipped)')
    network = prepare_model(config, checkpoint, reparameterize_mlore)
    reparameterized = bool(getattr(network, 'is_reparameterized', False))
    for module in network.modules():
        if hasattr(module, 'conv_for_any_batch'):
            # A fused block's per-sample convolution in a form without a batch-sized group.
            module.conv_for_any_batch = bool(dynamic_batch)
    wrapper = ExportWrapper(network, steps).eval()
    inputs = example_inputs(config)
    input_names = ['images', 'noise'][:len(inputs)]
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: 'batch'} for name in input_names + list(config.tasks)}
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.mtdp-export-') as scratch:
        raw_path = os.path.join(scratch, 'model.onnx')
        with warnings.catch_warnings():
            # The tracer notes every Python-level shape check; the shapes are fixed here.
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            warnings.simplefilter('ignore', DeprecationWarning)
            with torch.no_grad(), EXPORT_LOCK:
                torch.onnx.export(wrapper, inputs, raw_path, input_names=input_names,
                                  output_names=list(config.tasks), opset_version=opset,
                                  do_constant_folding=True, dynamo=False,
                                  dynamic_axes=dynamic_axes)
        proto = onnx.load(raw_path)           # pulls in any external tensors as well
        _float_sampling_grids(proto)
        metadata = {META_FORMAT: FORMAT_TAG, META_CONFIG: json.dumps(config.to_dict()),
                    META_STEPS: '' if steps is None else str(steps),
                    META_TASKS: ','.join(config.tasks),
                    META_REPARAM: str(reparameterized),
                    META_NAME: name, META_RANDOM: str(checkpoint is None),
                    META_BATCH: 'dynamic' if dynamic_batch else '1'}
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        weights_bytes = sum(_initializer_bytes(t) for t in proto.graph.initializer)
        if external_data is None:
            external_data = weights_bytes > PROTOBUF_LIMIT - (64 << 20)
        data_name = os.path.basename(output) + '.data'
        if os.path.exists(output + '.data'):
            os.remove(output + '.data')
        if external_data:
            onnx.save_model(proto, os.path.join(scratch, 'final.onnx'),
                            save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            shutil.move(os.path.join(scratch, data_name), output + '.data')
        else:
            onnx.save_model(proto, os.path.join(scratch, 'final.onnx'))
        shutil.move(os.path.join(scratch, 'final.onnx'), output)
    del proto
    onnx.checker.check_model(output, full_check=True)
    info = {'output': output, 'model': name, 'family': config.family,
            'inputs': input_names, 'outputs': list(config.tasks), 'steps': steps,
            'opset': opset, 'reparameterized': metadata[META_REPARAM] == 'True',
            'external_data': output + '.data' if external_data else None,
            'weights_mb': round(weights_bytes / 2 ** 20, 1), 'random_weights': checkpoint is None,
            'dynamic_batch': bool(dynamic_batch)}
    if verify:
        if dynamic_batch:
            # Rows that differ, so that a graph mixing up the batch's rows cannot pass.
            inputs = example_inputs(config, batch=3)
        info['max_abs_diff'] = verify_onnx(output, wrapper, inputs)
    return info


def _float_sampling_grids(proto):
    """Cast float64 GridSample grids to float32 (in place).

    transformers' deformable attention (MT-CP's Mask2Former) traces its reference points
    through ``linspace``, which the exporter emits in float64; ONNX allows a float64 grid but
    ONNX Runtime implements GridSample for float32 only. PyTorch samples with a float32 grid.
    """
    import onnx
    from onnx import helper, TensorProto
    if not any(node.op_type == 'GridSample' for node in proto.graph.node):
        return
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    nodes = []
    for node in proto.graph.node:
        if node.op_type == 'GridSample' and types.get(node.input[1]) == TensorProto.DOUBLE:
            cast = node.input[1] + '_float'
            nodes.append(helper.make_node('Cast', [node.input[1]], [cast],
                                          to=TensorProto.FLOAT, name=node.name + '_grid_cast'))
            node.input[1] = cast
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _initializer_bytes(tensor):
    from onnx import helper
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return count * np.dtype(dtype).itemsize


def verify_onnx(path, wrapper, inputs, tolerance=1e-3):
    """Largest |ONNX Runtime (CPU) - PyTorch| per task; ValueError beyond ``tolerance``."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    actual = session.run(None, feeds)
    with torch.no_grad():
        expected = wrapper(*inputs)
    diffs = {}
    for task, got, want in zip(wrapper.tasks, actual, expected):
        diffs[task] = float(np.abs(got - want.numpy()).max())
    bad = {t: d for t, d in diffs.items() if not d <= tolerance}
    if bad:
        raise ValueError(f'{path}: ONNX Runtime disagrees with PyTorch beyond {tolerance}: {bad}')
    return diffs


def read_onnx_metadata(path):
    """Read the mtdp metadata of an exported file: config (ModelConfig), steps, name, flags."""
    import onnx
    from mtdp_ros.models import ModelConfig
    if not os.path.isfile(path):
        raise FileNotFoundError(f'ONNX file not found: {path}')
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: B902 - protobuf raises several types for a bad file
        raise ValueError(f'{path} is not a valid ONNX file: {exc}') from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_CONFIG not in props:
        raise ValueError(f'{path} was not exported by mtdp (no {META_CONFIG} metadata); '
                         f'export it with `mtdp export`')
    config = ModelConfig.from_dict(json.loads(props[META_CONFIG]))
    steps = int(props[META_STEPS]) if props.get(META_STEPS) else None
    return {'config': config, 'steps': steps, 'name': props.get(META_NAME, config.name),
            'reparameterized': props.get(META_REPARAM) == 'True',
            'random_weights': props.get(META_RANDOM) == 'True',
            'dynamic_batch': props.get(META_BATCH) == 'dynamic',
            'inputs': [i.name for i in proto.graph.input],
            'outputs': [o.name for o in proto.graph.output]}
