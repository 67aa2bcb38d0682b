"""The node's engine: created from the parameters at configure, checked against them.

One engine serves every camera stream of the node. Creation failures become a
:class:`StartupError` whose message names the parameters to change.
"""

import threading
import time

import numpy as np

from mtdp_ros.ros import parameters


class StartupError(Exception):
    """A configuration the node cannot start with (the message says what to change)."""


def in_passing_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` run in a thread that ends with it; raises what it raised.

    For the engine's start-up work (loading, fusing, warm-up), which the lifecycle runs on
    the executor's thread. PyTorch's CPU operators run on a GNU OpenMP thread team of the
    calling thread that lives as long as that thread: left on the executor's thread, it is
    a second team beside the inference thread's, and GNU OpenMP, seeing more threads than
    cores, makes both sleep between operators instead of spinning (see
    :mod:`~mtdp_ros.ros.openmp_spin`). Measured on the 2-core VM (default MLoRE, a batch of
    two 640 x 480 frames in a second thread, median of 10): 93.5 ms with the start-up in a
    passing thread against 115.5 ms on the thread that goes on.
    """
    outcome = {}

    def run():
        try:
            outcome['value'] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: B902 - raised again in the calling thread
            outcome['error'] = exc

    worker = threading.Thread(target=run, name='mtdp_engine_setup', daemon=True)
    worker.start()
    worker.join()
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


def create_engine(values, runtime_log, log):
    """The engine of the parameter ``values`` (name -> value); StartupError if impossible.

    The runtime reports fallbacks (CPU instead of CUDA, random weights...) through its
    Python logger and as Python warnings: ``runtime_log`` (a RuntimeLogBridge) forwards
    both to the ROS logger ``log``, once.
    """
    from mtdp_ros.runtime import create_engine as create
    options = {}
    if values['engine.backend'] == 'onnxruntime' and batches_cameras(values):
        # One graph run per batch of cameras (a batch-1 graph would run them one by one).
        options['dynamic_batch'] = True
    runtime_log.attach()
    try:
        with runtime_log.forwarding_warnings() as said:
            engine = create(model=values['model.preset'],
                            checkpoint=values['model.checkpoint'] or None,
                            backend=values['engine.backend'],
                            device=values['engine.device'],
                            precision=values['engine.precision'],
                            seed=values['diffusion.seed'],
                            reparameterize=values['engine.reparameterize'], **options)
    except Exception as exc:  # noqa: B902 - every failure here is a start-up error
        raise StartupError(f'cannot create the engine for model.preset '
                           f'{values["model.preset"]!r} (checkpoint '
                           f'{values["model.checkpoint"] or "none"}, backend '
                           f'{values["engine.backend"]}, device '
                           f'{values["engine.device"]}): {type(exc).__name__}: {exc}') \
            from exc
    if engine.random_weights and not any('random' in text for text in said):
        log.warning(f'model {engine.model_name}: no trained weights were found or '
                    f'given; the weights are RANDOM and the outputs meaningless '
                    f'(set model.checkpoint or model.preset to trained weights)')
    log.info(f'engine: model {engine.model_name} ({engine.config.family}, input '
             f'{engine.config.image_size[0]}x{engine.config.image_size[1]}, tasks '
             f'{list(engine.tasks)}), backend {engine.backend}, device '
             f'{engine.device}, precision {engine.precision}')
    return engine


def batches_cameras(values):
    """Whether the node of parameter ``values`` runs frames of several cameras as a batch."""
    names = [name for name in parameters.camera_names(values) if name]
    return len(names) > 1 and int(values['cameras.max_batch']) > 1


def check_model_values(values, engine):
    """Check tasks, diffusion.steps and diffusion.warm_start against the model and engine.

    Prepares the step count.

    diffusion.steps is not handed to the engine: 0 must keep meaning the trained steps
    after any change, so every call passes its own step count. StartupError if invalid.
    """
    model_tasks = tuple(engine.tasks)
    problems = []
    if values['tasks'] is not None:
        reason = parameters.check_tasks(values['tasks'], model_tasks)
        if reason:
            problems.append(reason)
    reason = parameters.check_steps(values['diffusion.steps'], engine)
    if not reason and engine.diffusion:
        engine.prepare_steps(values['diffusion.steps'] or None)
    if reason:
        problems.append(reason)
    reason = parameters.check_warm_start(values['diffusion.warm_start'], engine)
    if reason:
        problems.append(reason)
    if problems:
        raise StartupError('invalid parameters: ' + '; '.join(problems))


def warm_up(engine, settings, height, width, log, focal=None, camera_info=None):
    """One inference at the camera's size (letterbox plan, allocations, CUDA graphs).

    ``focal`` (FocalCorrection) and ``camera_info``: the camera's intrinsics, whose
    canonical focal length shapes the letterbox plan too. True when it ran (a failure
    is logged: a real frame will report the problem).
    """
    started = time.perf_counter()
    correction = {}
    if focal is not None:
        correction = {'focal_correction': focal.mode,
                      'intrinsics': focal.intrinsics(camera_info, width, height)}
    try:
        engine.infer(np.zeros((height, width, 3), np.uint8), tasks=settings.tasks,
                     steps=settings.steps or None, seed=settings.seed, **correction)
    except Exception as exc:  # noqa: B902 - a real frame will report the problem
        log.warning(f'warm-up inference failed: {type(exc).__name__}: {exc}')
        return False
    log.info(f'warmed up at the camera size {width}x{height} (from camera_info) '
             f'in {time.perf_counter() - started:.2f} s')
    return True


def warm_up_cameras(engine, settings, streams, log):
    """Warm up once per camera geometry whose camera_info is known; 'WxH, ...' or None.

    A size beyond ``input.max_pixels`` (lowered after its camera_info came) is skipped with
    a warning: the limit bounds every allocation made from what the node receives.
    """
    warmed, sizes = [], []
    for stream in streams:
        info = stream.camera_info
        if info is None or info.width <= 0 or info.height <= 0:
            continue
        # One warm-up per camera geometry (size and focal plan: the canonical letterbox
        # differs by focal length).
        geometry = (info.height, info.width, tuple(info.k))
        if geometry in warmed:
            continue
        warmed.append(geometry)
        if info.width * info.height > settings.max_pixels:
            log.warning(f'no warm-up at the camera size {info.width}x{info.height}: '
                        f'more than input.max_pixels ({settings.max_pixels})')
            continue
        if warm_up(engine, settings, info.height, info.width, log, stream.focal, info):
            sizes.append(f'{info.width}x{info.height}')
    return ', '.join(sizes) or None
