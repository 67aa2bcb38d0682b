"""ONNX Runtime engine: TensorRT (fp16, cached engines) > CUDA > CPU execution providers.

The engine runs a graph written by :func:`.onnx_export.export_onnx`: either a ``.onnx`` file
the user gives, or one exported on first use into a cache directory (keyed by the config,
the checkpoint and the step count). Pre- and post-processing run in PyTorch: on the GPU
(the ORT graph reads and writes GPU tensors through I/O binding) when ORT runs on CUDA and
PyTorch has CUDA, on the CPU otherwise.

Providers are chosen from a preference list (default TensorRT, CUDA, CPU), filtered by what
``onnxruntime.get_available_providers()`` offers and by ``device``; every provider that is
skipped, and any fallback ORT makes when a session starts, is logged.
"""

import os
import threading
import time
from collections import OrderedDict

import numpy as np
import torch

from . import memory
from .engine import CACHE_LIMIT, Engine, LOGGER, resolve_engine_model, StageTimer, warn
from .onnx_export import export_onnx, FORMAT_TAG, read_onnx_metadata
from .options import check_choice, check_steps, DEVICES, is_diffusion, MAX_STEPS
from .ort_cache import cached_graph_path, checkpoint_identity, default_cache_dir
from .ort_providers import GPU_PROVIDERS, select_providers, TENSORRT
from .postprocess import host_to_numpy, postprocess, to_host_async
from .preprocess import letterbox_batch, normalisation


class OrtEngine(Engine):
    """Runs an exported graph with ONNX Runtime (see ``create_engine``)."""

    backend = 'onnxruntime'

    def __init__(self, model, checkpoint=None, device='auto', precision='fp32', steps=None,
                 seed=0, providers=None, cache_dir=None, trt_cache_dir=None,
                 reparameterize='auto', trt_workspace_mb=None, dynamic_batch=False):
        import onnxruntime as ort
        self._ort = ort
        check_choice('device', device, DEVICES)
        self.onnx_file = None
        if isinstance(model, (str, os.PathLike)) and str(model).endswith('.onnx'):
            if checkpoint is not None:
                raise ValueError('an exported .onnx file carries its weights; do not pass a '
                                 'checkpoint with it')
            meta = read_onnx_metadata(os.fspath(model))
            config, name, random_weights = meta['config'], meta['name'], meta['random_weights']
            self.onnx_file = os.fspath(model)
            self._file_steps = meta['steps']
            if is_diffusion(config):
                if check_steps(steps, config) not in (None, meta['steps']):
                    raise ValueError(f'{model} was exported for {meta["steps"]} steps, not '
                                     f'{steps}; export it again with --steps {steps}')
                steps = meta['steps']
            else:
                steps = None    # the graph has no step count: a requested one means nothing
            self.reparameterized = meta['reparameterized']
            self.reparameterize_reason = 'as exported in the file'
            if dynamic_batch and not meta['dynamic_batch']:
                warn(f'{model} is a batch-1 graph: the frames of a batch run one at a time '
                     f'(export it with `mtdp export --dynamic-batch` to run them together)')
            dynamic_batch = meta['dynamic_batch']
        else:
            config, checkpoint, name = resolve_engine_model(model, checkpoint)
            random_weights = checkpoint is None
            # The graph is exported on the CPU in fp32: that is where fusing must fit.
            fuse, self.reparameterize_reason = memory.decide(config, reparameterize, 'cpu',
                                                             'fp32')
            memory.log_decision(fuse, self.reparameterize_reason)
            self.reparameterized = fuse
        # A graph for any batch size (infer_batch in one run) instead of batch 1.
        self.dynamic_batch = bool(dynamic_batch)
        self.cache_dir = cache_dir or default_cache_dir()
        self.checkpoint = checkpoint
        self.requested_device = device
        self.requested_precision = precision
        self.provider_preference = providers
        self.trt_cache_dir = trt_cache_dir or os.path.join(self.cache_dir, 'tensorrt')
        super().__init__(config, name, random_weights, 'cpu', precision, steps, seed)
        if random_weights:
            warn(f'{name}: no checkpoint was given or shipped; the weights are random '
                 f'and the outputs meaningless')
        self.providers, notes = select_providers(
            device, precision, ort.get_available_providers(), providers, self.trt_cache_dir,
            trt_workspace_mb=trt_workspace_mb)
        for level, note in notes:
            (warn if level == 'warning' else LOGGER.info)(f'onnxruntime: {note}')
        if any(name == TENSORRT for name, _ in self.providers):
            os.makedirs(self.trt_cache_dir, exist_ok=True)
        self._lock = threading.Lock()
        self._sessions = OrderedDict()
        self._noise = {}
        # Background preparation of step counts: steps -> Event set when done (ready or
        # failed), the reason of a failure, and the count that serves meanwhile. The
        # preparations run one at a time (_one_export): torch.onnx.export keeps global
        # state, and seven at once held seven models in memory.
        self._prepare_lock = threading.Lock()
        self._one_export = threading.Lock()
        self._preparing = {}
        self._prepare_failed = {}
        self._closed = False
        self.serving_steps = self.default_steps
        self.last_steps = None
        first = self._session(self.default_steps)
        active = first.get_providers()
        self.active_providers = tuple(active)
        gpu = active[0] in GPU_PROVIDERS
        if device == 'cuda' and not gpu:
            raise RuntimeError(f'device cuda was requested but onnxruntime started '
                               f'{active[0]} (requested {[p for p, _ in self.providers]})')
        self.device = 'cuda' if gpu else 'cpu'
        self.precision = 'fp16' if precision == 'fp16' and active[0] == TENSORRT else 'fp32'
        # Pre/post-processing on the GPU needs PyTorch with CUDA; otherwise on the CPU.
        self.torch_device = torch.device('cuda' if gpu and torch.cuda.is_available() else 'cpu')
        self.io_binding = self.torch_device.type == 'cuda'
        if gpu and not self.io_binding:
            LOGGER.info('onnxruntime runs on the GPU but PyTorch has no CUDA: pre- and '
                        'post-processing run on the CPU')
        self.gain, self.offset = normalisation(config.mean, config.std, self.torch_device)

    @property
    def batches_in_one_pass(self):
        """A dynamic-batch graph runs a batch in one run; a batch-1 graph frame by frame."""
        return self.dynamic_batch

    # ------------------------------------------------------------------ sessions
    def describe(self):
        info = super().describe()
        info.update(providers=list(self.active_providers), onnx_file=self.onnx_file,
                    dynamic_batch=self.dynamic_batch,
                    reparameterized=self.reparameterized,
                    reparameterize_reason=self.reparameterize_reason)
        return info

    def _cache_path(self, steps):
        """Where the cached export for ``steps`` lives (whether or not it exists yet)."""
        if not hasattr(self, '_checkpoint_key'):
            self._checkpoint_key = checkpoint_identity(self.checkpoint)
        return cached_graph_path(self.cache_dir, self.model_name, self.config, steps,
                                 self._checkpoint_key, self.reparameterized, FORMAT_TAG,
                                 self.dynamic_batch)

    def _file_reason(self, steps):
        """Why the given .onnx file cannot run ``steps`` (None when it can)."""
        if self.onnx_file is None or not self.diffusion or steps == self._file_steps:
            return None
        return (f'{self.onnx_file} was exported for {self._file_steps} steps; it cannot run '
                f'{steps} (export another file with `mtdp export --steps {steps}`)')

    def onnx_path(self, steps):
        """Return the graph for ``steps``: the given file or a cached export (made if missing)."""
        if self.onnx_file is not None:
            reason = self._file_reason(steps)
            if reason:
                raise ValueError(reason)
            return self.onnx_file
        path = self._cache_path(steps)
        if not os.path.isfile(path):
            LOGGER.info('exporting %s%s to %s (once; later runs reuse it)', self.model_name,
                        f' for {steps} steps' if steps else '', path)
            started = time.perf_counter()
            export_onnx(self.config, path, checkpoint=self.checkpoint, steps=steps,
                        reparameterize_mlore=self.reparameterized,
                        dynamic_batch=self.dynamic_batch)
            LOGGER.info('export took %.1f s', time.perf_counter() - started)
        return path

    # ------------------------------------------------------------------ step counts
    def runnable_steps(self, steps):
        """As Engine's, and no count a given file lacks.

        A failed preparation is not a reason: it is reported by ``steps_status`` and tried
        again when ``prepare_steps`` asks for the count again.
        """
        steps, reason = super().runnable_steps(steps)
        if reason is None:
            reason = self._file_reason(steps)
        return (None, reason) if reason else (steps, None)

    def steps_status(self, steps):
        """'ready', 'preparing', 'failed: <reason>' or 'not prepared' for ``steps``.

        A failed preparation is reported here (and by ``running_steps``: the count that
        served keeps serving) until ``prepare_steps`` asks for the count again.
        """
        steps, reason = self.runnable_steps(steps)
        if reason:
            return f'unavailable: {reason}'
        with self._prepare_lock:
            if steps in self._preparing:
                return 'preparing'
            if steps in self._prepare_failed:
                return f'failed: {self._prepare_failed[steps]}'
        return 'ready' if steps in self._sessions else 'not prepared'

    def running_steps(self, steps):
        """The step count an ``infer`` call asking for ``steps`` runs now."""
        if not self.diffusion:
            return None
        return self._steps_to_run(self.resolve_steps(steps))

    def available_steps(self):
        """Step counts that run without an export: loaded sessions and cached graphs."""
        if not self.diffusion:
            return ()
        if self.onnx_file is not None:
            return (self._file_steps,)
        with self._prepare_lock:
            preparing = set(self._preparing)
        ready = set(self._sessions) - preparing
        ready |= {s for s in range(1, MAX_STEPS + 1)
                  if s not in preparing and os.path.isfile(self._cache_path(s))}
        return tuple(sorted(ready))

    def prepare_steps(self, steps):
        """Start exporting and loading ``steps`` in the background; True if ready already.

        Until the graph is ready, ``infer`` calls asking for ``steps`` run
        ``serving_steps`` (the count that served before; ``running_steps`` says so before,
        ``last_steps`` after); a failed preparation is logged and reported by
        ``steps_status``, and asking for the count again tries again. Preparations run one
        at a time, in the order asked.
        """
        steps, reason = self.runnable_steps(steps)
        if reason:
            raise ValueError(reason)
        with self._prepare_lock:
            if steps in self._preparing:
                return False
            if steps in self._sessions:
                return True
            self._prepare_failed.pop(steps, None)
            done = threading.Event()
            self._preparing[steps] = done
        LOGGER.info('preparing %s steps in the background; %s steps keep serving', steps,
                    self.serving_steps)
        threading.Thread(target=self._prepare, args=(steps, done), daemon=True,
                         name=f'mtdp_ort_prepare_{steps}').start()
        return False

    def _prepare(self, steps, done):
        try:
            with self._one_export:
                started = time.perf_counter()
                session = None if self._closed else self._new_session(steps)
        except Exception as exc:  # noqa: B902 - reported, the old count keeps serving
            reason = f'preparing {steps} steps failed: {type(exc).__name__}: {exc}'
            warn(reason + f'; {self.serving_steps} steps keep serving')
            with self._prepare_lock:
                self._prepare_failed[steps] = reason
                del self._preparing[steps]
            done.set()
            return
        with self._lock:
            if not self._closed and session is not None:
                self._store_session(steps, session)
        with self._prepare_lock:
            del self._preparing[steps]
        LOGGER.info('%s steps ready after %.1f s', steps, time.perf_counter() - started)
        done.set()

    def wait_for_steps(self, steps, timeout=None):
        """Block until a background preparation of ``steps`` ends; True when it is ready."""
        steps, reason = self.runnable_steps(steps)
        if reason:
            return False
        with self._prepare_lock:
            done = self._preparing.get(steps)
        if done is not None and not done.wait(timeout):
            return False
        return self.check_steps(steps) is None and steps in self._sessions

    def _session(self, steps):
        session = self._sessions.get(steps)
        if session is not None:
            self._sessions.move_to_end(steps)
            return session
        return self._store_session(steps, self._new_session(steps))

    def _store_session(self, steps, session):
        self._sessions[steps] = session
        self._sessions.move_to_end(steps)
        while len(self._sessions) > CACHE_LIMIT:
            oldest = next(iter(self._sessions))
            if oldest == self.serving_steps:
                self._sessions.move_to_end(oldest)
                oldest = next(iter(self._sessions))
            del self._sessions[oldest]
        return session

    def _new_session(self, steps):
        """An ORT session for ``steps`` (exporting its graph first if needed)."""
        path = self.onnx_path(steps)
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        started = time.perf_counter()
        session = self._ort.InferenceSession(path, sess_options=options,
                                             providers=[p for p, _ in self.providers],
                                             provider_options=[o for _, o in self.providers])
        active = session.get_providers()
        requested = [p for p, _ in self.providers]
        if active[0] != requested[0]:
            warn(f'onnxruntime: {requested[0]} could not start (see the onnxruntime log); '
                 f'running on {active[0]}')
        LOGGER.info('onnxruntime session for %s ready in %.1f s on %s', os.path.basename(path),
                    time.perf_counter() - started, ', '.join(active))
        return session

    def _steps_to_run(self, steps):
        """The count a call asking for ``steps`` runs: the serving one while it is prepared."""
        if steps in self._sessions:
            return steps
        with self._prepare_lock:
            pending = steps in self._preparing or steps in self._prepare_failed
        return self.serving_steps if pending else steps

    def _noise_array(self, seed):
        noise = self._noise.get(seed)
        if noise is None:
            if len(self._noise) >= CACHE_LIMIT:
                self._noise.clear()
            noise = self.initial_noise(seed)
            noise = noise.to(self.torch_device) if self.io_binding else noise.numpy()
            self._noise[seed] = noise
        return noise

    # ------------------------------------------------------------------ running
    def _run(self, session, x, tasks, seeds):
        """Raw outputs ``{task: tensor}`` on ``self.torch_device`` for a model input tensor.

        ``seeds``: one noise seed per row of ``x`` (TaskDiffusion).
        """
        noise = None
        if self.diffusion:
            rows = [self._noise_array(seed) for seed in seeds]
            concat = torch.cat if self.io_binding else np.concatenate
            noise = rows[0] if len(rows) == 1 else concat(rows)
        if not self.io_binding:
            feeds = {'images': x.numpy()}
            if noise is not None:
                feeds['noise'] = noise
            values = session.run(list(tasks), feeds)
            return {t: torch.from_numpy(v) for t, v in zip(tasks, values)}
        device_id = self.torch_device.index or 0
        binding = session.io_binding()
        inputs = [('images', x.contiguous())]
        if noise is not None:
            inputs.append(('noise', noise))
        for name, tensor in inputs:
            binding.bind_input(name=name, device_type='cuda', device_id=device_id,
                               element_type=np.float32, shape=tuple(tensor.shape),
                               buffer_ptr=tensor.data_ptr())
        shapes = {o.name: o.shape for o in session.get_outputs()}
        outputs = {}
        for task in tasks:
            # A dynamic batch axis is named, not sized: the batch is the input's.
            shape = [x.shape[0] if index == 0 else size
                     for index, size in enumerate(shapes[task])]
            tensor = torch.empty(tuple(shape), dtype=torch.float32, device=self.torch_device)
            binding.bind_output(name=task, device_type='cuda', device_id=device_id,
                                element_type=np.float32, shape=tuple(tensor.shape),
                                buffer_ptr=tensor.data_ptr())
            outputs[task] = tensor
        # ORT runs on its own stream: the input must be complete before it starts.
        torch.cuda.current_stream().synchronize()
        session.run_with_iobinding(binding)
        return outputs

    def forward(self, x, tasks=None, steps=None, seed=None):
        """Raw outputs (numpy float32, 1 x C x h x w) for a normalised model-size input."""
        x, tasks, steps, seed = self.forward_arguments(x, tasks, steps, seed)
        with self._lock:
            raw = self._run(self._session(steps), x.to(self.torch_device), tasks, [seed])
            return {t: v.cpu().numpy() for t, v in raw.items()}

    def _infer(self, image, plan, tasks, steps, seed):
        return self._run_images([image], [plan], tasks, steps, [seed])[0]

    def _infer_batch(self, images, plans, tasks, steps, seeds, starts=None):
        """One run of a dynamic-batch graph over several images (else one run per image).

        ``starts`` is always None: ``infer_batch`` refuses warm starts for this engine.
        """
        if not self.dynamic_batch:
            return super()._infer_batch(images, plans, tasks, steps, seeds, starts)
        return self._run_images(images, plans, tasks, steps, seeds)

    def _run_images(self, images, plans, tasks, steps, seeds):
        """Outputs of ``images`` from one run of the graph (a batch of one row per image).

        Each image is letterboxed by its own plan into its row, TaskDiffusion gets each
        image's own noise draw in the same row, and each row of the raw outputs is
        post-processed with its image's plan.
        """
        with self._lock:
            steps = self._steps_to_run(steps)
            session = self._session(steps)
            self.serving_steps = steps
            self.last_steps = steps
            timer = StageTimer()
            with torch.no_grad():
                x = letterbox_batch(images, plans, self.gain, self.offset, self.torch_device)
                if self.io_binding:
                    torch.cuda.current_stream().synchronize()
                timer.mark()
                raw = self._run(session, x, tasks, seeds)
                timer.mark()
                if len(plans) == 1:
                    hosts = [to_host_async(postprocess(raw, plans[0], tasks))]
                else:
                    hosts = [to_host_async(postprocess({t: raw[t][i:i + 1] for t in tasks},
                                                       plan, tasks))
                             for i, plan in enumerate(plans)]
                if self.io_binding:
                    torch.cuda.current_stream().synchronize()
                results = [host_to_numpy(host) for host in hosts]
                timer.mark()
        self.last_timing = timer.timing()
        return results

    def benchmark_network(self, iters, warmup=0, tasks=None, steps=None):
        """Per-iteration latency (ms) of the ORT graph alone on a model-size input."""
        tasks = self.select_tasks(tasks)
        steps = self.resolve_steps(steps)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, 3, *self.config.image_size), generator=generator)
        x = x.to(self.torch_device)
        with self._lock:
            session = self._session(steps)
            for _ in range(warmup):
                self._run(session, x, tasks, [self.seed])
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                self._run(session, x, tasks, [self.seed])
                times.append((time.perf_counter() - start) * 1000.0)
        return times

    def close(self):
        with self._lock:
            self._closed = True
            self._sessions.clear()
            self._noise.clear()
