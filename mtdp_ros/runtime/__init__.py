"""Inference runtime (no ROS): engines, pre/post-processing, ONNX export, benchmarking.

Usage::

    from mtdp_ros.runtime import create_engine
    engine = create_engine('default', device='auto', precision='fp16')
    outputs = engine.infer(rgb_uint8_image)      # {task: numpy array at the image size}
    # depth rescaled from the model's training camera to this one (camera-aware depth):
    outputs = engine.infer(rgb_uint8_image, intrinsics=(fx, fy, cx, cy))
"""

import sys
import types

from .options import BACKENDS, check_choice, DEVICES, PRECISIONS, resolve_device

__all__ = [
    'BACKENDS', 'DEVICES', 'Engine', 'Letterbox', 'OrtEngine', 'PRECISIONS',
    'TorchEngine', 'create_engine', 'export_onnx', 'letterbox',
    'normalisation', 'plan_letterbox', 'postprocess', 'postprocess_task', 'read_onnx_metadata',
    'select_providers', 'to_numpy', 'unletterbox',
]

# Where each public name lives. They are imported on first use, so that importing
# ``mtdp_ros.runtime.options`` (the launch files do) does not load PyTorch and ONNX.
_LAZY = {
    'Engine': 'engine', 'export_onnx': 'onnx_export', 'read_onnx_metadata': 'onnx_export',
    'OrtEngine': 'ort_engine', 'select_providers': 'ort_providers',
    'postprocess': 'postprocess', 'postprocess_task': 'postprocess', 'to_numpy': 'postprocess',
    'Letterbox': 'preprocess', 'letterbox': 'preprocess', 'normalisation': 'preprocess',
    'plan_letterbox': 'preprocess', 'unletterbox': 'preprocess', 'TorchEngine': 'torch_engine',
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """This package: its public ``postprocess`` is the function, not the module of that name.

    Importing a submodule binds it as an attribute of its package. Eagerly imported, the
    function's binding came afterwards and won; imported lazily, the module would hide the
    function, so that one binding is not kept (``__getattr__`` then gives the function).
    """

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def create_engine(model='default', checkpoint=None, backend='torch', device='auto',
                  precision='fp32', steps=None, seed=0, **options):
    """Create an inference engine for ``model`` (see the module docstring and the README).

    ``model``: a preset or default-model name, a config/``.safetensors`` file, a ModelConfig
    or config dict; for ``backend='onnxruntime'`` also an exported ``.onnx`` file.
    ``checkpoint``: weights (a path or a state-dict mapping) overriding the model's own.
    ``device``: 'auto' (CUDA when present, else the CPU with a warning), 'cuda' (RuntimeError
    when absent) or 'cpu'. ``precision``: 'fp32' or 'fp16' (GPU only). ``steps``: default
    DDIM steps of a TaskDiffusion model (per call: ``infer(steps=...)``). ``seed``: default
    seed of the sampler's initial noise.

    Options of both backends: ``reparameterize`` ('auto' (default): fused MLoRE blocks when
    the fused weights fit in half of the device's free memory, else the train form with a
    logged reason; 'true'/True; 'false'/False; see :mod:`.memory`). Torch backend:
    ``cuda_graphs`` (default True). Onnxruntime backend: ``providers`` (preference list,
    e.g. ``['tensorrt', 'cuda', 'cpu']``), ``cache_dir`` (exported graphs),
    ``trt_cache_dir`` (TensorRT engines), ``trt_workspace_mb`` (TensorRT's workspace
    limit; default ORT's), ``dynamic_batch`` (default False: a batch-1 graph, and
    ``infer_batch`` runs its images one at a time; True: a graph for any batch, one run
    per ``infer_batch`` call, about 5 % slower at batch 1 on a CPU; see the README).
    """
    from .ort_engine import OrtEngine
    from .torch_engine import TorchEngine
    check_choice('backend', backend, BACKENDS)
    check_choice('device', device, DEVICES)
    check_choice('precision', precision, PRECISIONS)
    from .memory import normalize_option
    reparameterize = normalize_option(options.pop('reparameterize', 'auto'))
    if backend == 'torch':
        unknown = set(options) - {'cuda_graphs'}
        if unknown:
            raise ValueError(f'unknown options for the torch backend: {sorted(unknown)}')
        if isinstance(model, str) and model.endswith('.onnx'):
            raise ValueError(f'{model} is an ONNX file: use backend onnxruntime')
        from .engine import resolve_engine_model
        config, checkpoint, name = resolve_engine_model(model, checkpoint)
        torch_device = resolve_device(device)
        return TorchEngine(config, checkpoint, name, torch_device, precision, steps, seed,
                           reparameterize_mlore=reparameterize,
                           cuda_graphs=options.get('cuda_graphs', True))
    unknown = set(options) - {'providers', 'cache_dir', 'trt_cache_dir', 'trt_workspace_mb',
                              'dynamic_batch'}
    if unknown:
        raise ValueError(f'unknown options for the onnxruntime backend: {sorted(unknown)}')
    return OrtEngine(model, checkpoint, device, precision, steps, seed,
                     reparameterize=reparameterize, **options)
