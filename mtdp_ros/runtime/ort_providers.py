"""ONNX Runtime execution providers: which to request, in what order, with which options.

A preference list (default TensorRT, CUDA, CPU) is filtered by what the onnxruntime build
offers and by the requested device; every provider that is skipped is reported as a note
(level, text) for the engine to log. Nothing here starts a session.
"""

import os

from .ort_cache import default_cache_dir
from .options import check_choice, DEVICES

TENSORRT = 'TensorrtExecutionProvider'
CUDA = 'CUDAExecutionProvider'
CPU = 'CPUExecutionProvider'
GPU_PROVIDERS = (TENSORRT, CUDA)
DEFAULT_PREFERENCE = (TENSORRT, CUDA, CPU)
PROVIDER_ALIASES = {'tensorrt': TENSORRT, 'trt': TENSORRT, 'cuda': CUDA, 'cpu': CPU}


def provider_name(name):
    """Full ORT provider name for a name or alias (tensorrt/trt, cuda, cpu)."""
    if name in DEFAULT_PREFERENCE:
        return name
    full = PROVIDER_ALIASES.get(str(name).lower())
    if full is None:
        raise ValueError(f'unknown execution provider {name!r}; use tensorrt, cuda or cpu '
                         f'(or {", ".join(DEFAULT_PREFERENCE)})')
    return full


def select_providers(device, precision, available, preference=None, trt_cache_dir=None,
                     device_id=0, trt_workspace_mb=None):
    """Choose the providers (with options) to request from ORT; note every fallback.

    ``available``: ``onnxruntime.get_available_providers()``. ``device`` 'cpu' keeps only the
    CPU; 'cuda' requires a GPU provider (RuntimeError otherwise); 'auto' uses a GPU provider
    when one is available and falls back to the CPU with a note. The CPU provider always
    ends the list as ORT's own last resort.

    Provider options (ORT's names): TensorRT gets ``device_id``, ``trt_fp16_enable``
    (precision fp16), ``trt_engine_cache_enable``/``trt_engine_cache_path`` and
    ``trt_timing_cache_enable``/``trt_timing_cache_path`` (``trt_cache_dir``: built engines
    are reused across runs), and ``trt_max_workspace_size`` (bytes, from
    ``trt_workspace_mb``; unset: ORT's default). CUDA gets ``device_id``; the CPU none.
    """
    check_choice('device', device, DEVICES)
    explicit = preference is not None
    preference = DEFAULT_PREFERENCE if preference is None else preference
    if isinstance(preference, str):
        preference = [p for p in preference.split(',') if p.strip()]
    wanted = []
    for name in preference:
        full = provider_name(name.strip() if isinstance(name, str) else name)
        if full not in wanted:
            wanted.append(full)
    if not wanted:
        raise ValueError('the provider list is empty')
    notes = []
    chosen = []
    for name in wanted:
        if name in GPU_PROVIDERS and device == 'cpu':
            continue
        if name not in available:
            # Only a provider the user asked for by name is a fallback worth a warning.
            level = 'warning' if explicit else 'info'
            notes.append((level, f'{name} is not available in this onnxruntime build '
                         f'(available: {", ".join(available)})'))
            continue
        chosen.append(name)
    if device == 'cuda' and not any(p in GPU_PROVIDERS for p in chosen):
        raise RuntimeError('device cuda was requested but onnxruntime offers no GPU provider '
                           f'among {wanted} (available: {", ".join(available)}); install '
                           'onnxruntime-gpu or use device auto or cpu')
    if device == 'auto' and not any(p in GPU_PROVIDERS for p in chosen):
        notes.append(('warning', 'no GPU execution provider: running on the CPU'))
    if CPU not in chosen:
        chosen.append(CPU)
    if trt_workspace_mb is not None and (isinstance(trt_workspace_mb, bool)
                                         or not trt_workspace_mb > 0):
        raise ValueError(f'trt_workspace_mb must be a positive number, got {trt_workspace_mb!r}')
    fp16 = precision == 'fp16'
    if fp16 and TENSORRT not in chosen:
        notes.append(('warning', 'precision fp16 applies to the TensorRT provider only; '
                                 'running fp32'))
    providers = []
    for name in chosen:
        if name == TENSORRT:
            cache = trt_cache_dir or os.path.join(default_cache_dir(), 'tensorrt')
            options = {'device_id': device_id, 'trt_fp16_enable': fp16,
                       'trt_engine_cache_enable': True, 'trt_engine_cache_path': cache,
                       'trt_timing_cache_enable': True, 'trt_timing_cache_path': cache}
            if trt_workspace_mb is not None:
                options['trt_max_workspace_size'] = int(trt_workspace_mb * 2 ** 20)
            providers.append((name, options))
        elif name == CUDA:
            providers.append((name, {'device_id': device_id}))
        else:
            providers.append((name, {}))
    return providers, notes
