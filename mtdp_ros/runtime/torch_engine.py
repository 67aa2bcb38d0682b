"""PyTorch engine: eager fp32/fp16, re-parameterised MLoRE, CUDA graphs on the GPU.

On CUDA one call is: the image is copied into a pinned host buffer and sent to the GPU
without blocking; letterboxing, the network and post-processing run on the GPU; the outputs
come back through pinned memory with one synchronisation. With CUDA graphs, the three
stages are captured once per (image size, step count, tasks) and replayed, which removes
the per-kernel launch cost that dominates a batch-1 ViT on a fast GPU. A warm-started
TaskDiffusion call (``infer(..., init=, strength=, return_state=True)``) has graphs of its
own, keyed by the strength as well: the previous map is copied into the graph's static
input and the new state out of its static output. Batches of several cameras
(``infer_batch``) run eagerly, warm-started ones in one pass per strength.
"""

import threading
import time
from collections import OrderedDict

import numpy as np
import torch

from mtdp_ros.models import build_model, check_checkpoint_fits, load_checkpoint, reparameterize

from .engine import CACHE_LIMIT, Engine, LOGGER, StageTimer, warn
from . import memory
from .graph_safety import capture_blockers
from .postprocess import host_to_numpy, postprocess, to_host_async
from .preprocess import letterbox, letterbox_batch, normalisation

# Eager runs before a capture: cuDNN picks its algorithms and allocations settle.
CAPTURE_WARMUP = 3
# Initial maps kept per seed: one per camera of a batch (seeded per camera).
NOISE_CACHE_LIMIT = 16


class _Graphs:
    """Static buffers and captured graphs of one (image size, steps, tasks) key."""

    def __init__(self):
        self.image = None       # uint8 H x W x 3 on the device
        self.input = None       # 1 x 3 x h x w model input
        self.noise = None       # sampler's initial map (diffusion models)
        self.init = None        # previous clean map of a warm start (strength < 1)
        self.state = None       # final clean map (calls that return a state)
        self.raw = None         # raw outputs of the network
        self.outputs = None     # metric outputs at the image size
        self.stages = []        # CUDAGraph per stage, replayed in capture order
        self.seed = None        # seed whose noise is in ``noise``


class TorchEngine(Engine):
    """Runs a ``mtdp_ros.models`` network with PyTorch (see ``create_engine``)."""

    backend = 'torch'
    supports_warm_start = True
    batches_in_one_pass = True

    def __init__(self, config, checkpoint, model_name, device, precision='fp32', steps=None,
                 seed=0, reparameterize_mlore='auto', cuda_graphs=True):
        if precision == 'fp16' and device == 'cpu':
            warn('precision fp16 is not supported on the CPU; running fp32')
            precision = 'fp32'
        super().__init__(config, model_name, checkpoint is None, device, precision, steps,
                         seed)
        if self.random_weights:
            warn(f'{model_name}: no checkpoint was given or shipped; the weights are random '
                 f'and the outputs meaningless')
        self.torch_device = torch.device(device)
        self.dtype = torch.float16 if precision == 'fp16' else torch.float32
        # Built, loaded and fused on the CPU in fp32, block by block in place (each train
        # block is freed as its fused form is made), then moved and cast once: the device
        # only ever holds the final form, in the final dtype.
        check_checkpoint_fits(config, checkpoint)          # before allocating the model
        model = build_model(config)
        fuse, self.reparameterize_reason = memory.decide(config, reparameterize_mlore, device,
                                                         self.precision, model=model)
        memory.log_decision(fuse, self.reparameterize_reason)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        model.eval()
        self.reparameterized = fuse
        if self.reparameterized:
            model = reparameterize(model, inplace=True)
        self.model = model.to(device=self.torch_device, dtype=self.dtype).eval()
        del model
        memory.release_freed_host_memory()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.gain, self.offset = normalisation(config.mean, config.std, self.torch_device)
        self.cuda = self.torch_device.type == 'cuda'
        self.cuda_graphs = bool(cuda_graphs and self.cuda)
        if self.cuda:
            # Fixed input sizes: let cuDNN benchmark its convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        self._lock = threading.Lock()
        self._graphs = OrderedDict()
        self._failed_keys = set()
        self._staging = {}
        self._noise = OrderedDict()
        # Whether the last benchmark_network call replayed a CUDA graph.
        self.network_graph_used = False

    # ------------------------------------------------------------------ helpers
    def describe(self):
        info = super().describe()
        info.update(reparameterized=self.reparameterized,
                    reparameterize_reason=self.reparameterize_reason,
                    cuda_graphs=self.cuda_graphs)
        return info

    def device_noise(self, seed):
        """Return the initial map for ``seed`` on the device, in the model's dtype (cached)."""
        if not self.diffusion:
            return None
        noise = self._noise.get(seed)
        if noise is None:
            noise = self.initial_noise(seed).to(self.torch_device, self.dtype)
            self._noise[seed] = noise
            while len(self._noise) > NOISE_CACHE_LIMIT:
                self._noise.popitem(last=False)
        return noise

    def run_network(self, x, tasks, steps, noise, start=None):
        """Raw outputs of the network for a normalised 1 x 3 x h x w input (no grad).

        With a :data:`SamplerStart` ``start``: ``(raw outputs, state)``.
        """
        with torch.no_grad():
            if start is not None:
                init = None if start.init is None else start.init.to(self.torch_device,
                                                                     self.dtype)
                return self.model(x, tasks=tasks, steps=steps, noise=noise, init=init,
                                  strength=start.strength, return_state=True)
            if self.diffusion:
                return self.model(x, tasks=tasks, steps=steps, noise=noise)
            return self.model(x, tasks=tasks)

    def forward(self, x, tasks=None, steps=None, seed=None):
        """Raw outputs (numpy float32, 1 x C x h x w) for a normalised model-size input."""
        x, tasks, steps, seed = self.forward_arguments(x, tasks, steps, seed)
        with self._lock:
            raw = self.run_network(x.to(self.torch_device, self.dtype), tasks, steps,
                                   self.device_noise(seed))
            return {t: v.float().cpu().numpy() for t, v in raw.items()}

    def _staging_buffer(self, image_size):
        """Pinned host buffer for uploads of one image size (reused: calls are serialised)."""
        buffer = self._staging.get(image_size)
        if buffer is None:
            if len(self._staging) >= CACHE_LIMIT:
                self._staging.clear()
            buffer = torch.empty((*image_size, 3), dtype=torch.uint8, pin_memory=True)
            self._staging[image_size] = buffer
        return buffer

    def _upload(self, image, out=None):
        """uint8 image -> device tensor through pinned memory with a non-blocking copy."""
        staging = self._staging_buffer(tuple(image.shape[:2]))
        np.copyto(staging.numpy(), image)
        if out is None:
            return staging.to(self.torch_device, non_blocking=True)
        return out.copy_(staging, non_blocking=True)

    # ------------------------------------------------------------------ inference
    def _infer(self, image, plan, tasks, steps, seed, start=None):
        with self._lock:
            if not self.cuda:
                return self._infer_cpu(image, plan, tasks, steps, seed, start)
            # The letterbox, not only the image size: the canonical camera shrinks a
            # zoomed camera's image further (engine.infer).
            key = self.graph_key((plan.image_size, plan.resized_size), steps, tasks, start)
            if self.cuda_graphs and key not in self._failed_keys:
                graphs = self._graphs.get(key)
                if graphs is None:
                    graphs = self._capture(key, image, plan, key[2], steps, seed, start)
                if graphs is not None:
                    self._graphs.move_to_end(key)
                    return self._replay(graphs, image, seed, tasks, start)
            return self._infer_cuda_eager(image, plan, tasks, steps, seed, start)

    def _infer_batch(self, images, plans, tasks, steps, seeds, starts=None):
        """One network pass over several letterboxed images (eager, also on CUDA).

        Each image is letterboxed by its own plan into one row of a B x 3 x h x w batch;
        TaskDiffusion gets each image's own noise draw stacked the same way; each row of
        the raw outputs is post-processed with its image's plan. With ``starts`` (one
        :data:`SamplerStart` per image, see ``Engine.infer_batch``): one pass per
        distinct strength, since the sampler's schedule is the strength's, each with its
        rows' noise and previous maps stacked; returns ``(outputs, states)``.
        """
        with self._lock:
            if self.cuda:
                events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                mark = [event.record for event in events]
            else:
                timer = StageTimer()
                mark = [lambda: None] + [timer.mark] * 3
            with torch.no_grad():
                mark[0]()
                x = letterbox_batch(images, plans, self.gain, self.offset, self.torch_device,
                                    self.dtype)
                noises = [self.device_noise(seed) for seed in seeds]
                mark[1]()
                if starts is None:
                    raw = self.run_network(x, tasks, steps,
                                           torch.cat(noises) if self.diffusion else None)
                    raws = [{t: raw[t][i:i + 1] for t in tasks} for i in range(len(images))]
                    states = None
                else:
                    raws, states = self._run_groups(x, noises, tasks, steps, starts)
                mark[2]()
                hosts = [to_host_async(postprocess(raw, plan, tasks))
                         for raw, plan in zip(raws, plans)]
                mark[3]()
            if self.cuda:
                events[3].synchronize()
                self._record_events(events)
            else:
                self.last_timing = timer.timing()
            outputs = [host_to_numpy(host) for host in hosts]
            return outputs if starts is None else (outputs, states)

    def _run_groups(self, x, noises, tasks, steps, starts):
        """Per image (raw outputs, state): one network pass per strength of ``starts``.

        ``x``: the batch's input, one row per image.
        """
        groups = {}
        for index, start in enumerate(starts):
            groups.setdefault(start.strength, []).append(index)
        raws, states = [None] * len(starts), [None] * len(starts)
        for strength, members in groups.items():
            init = None
            if strength < 1.0:
                # Below 1 every member has its previous map (Engine.sampler_start).
                init = torch.cat([starts[i].init.to(self.torch_device, self.dtype)
                                  for i in members])
            raw, state = self.run_network(
                x[members], tasks, steps,
                torch.cat([noises[i] for i in members]), starts[members[0]]._replace(
                    init=init))
            for row, index in enumerate(members):
                raws[index] = {t: raw[t][row:row + 1] for t in tasks}
                # A copy: a caller keeping one camera's state keeps no other camera's.
                states[index] = state[row:row + 1].clone()
        return raws, states

    def graph_key(self, image_size, steps, tasks, start=None):
        """Key of the CUDA graphs of a call: (letterbox sizes, steps, tasks, sampler start).

        TaskDiffusion denoises every task jointly whatever is asked, so its graphs compute
        all tasks and the requested ones are picked after the replay: one capture serves
        every task selection. MLoRE computes only the requested branches: keyed by them.
        The sampler start is None for a plain cold call and ``('state', strength)`` for a
        call that returns its state (strength 1: cold; below 1: warm from the graph's
        static ``init``): the strength fixes the schedule baked into the graph.
        """
        graph_tasks = self.tasks if self.diffusion else tuple(tasks)
        mode = None if start is None else ('state', float(start.strength))
        return (tuple(image_size), steps, graph_tasks, mode)

    @staticmethod
    def _split(raw, start):
        """(raw outputs, state or None) of ``run_network``'s result."""
        return raw if start is not None else (raw, None)

    def _infer_cpu(self, image, plan, tasks, steps, seed, start=None):
        timer = StageTimer()
        with torch.no_grad():
            x = letterbox(torch.from_numpy(image), plan, self.gain, self.offset,
                          dtype=self.dtype)
            timer.mark()
            raw, state = self._split(
                self.run_network(x, tasks, steps, self.device_noise(seed), start), start)
            timer.mark()
            result = host_to_numpy(to_host_async(postprocess(raw, plan, tasks)))
            timer.mark()
        self.last_timing = timer.timing()
        return result if start is None else (result, state)

    def _infer_cuda_eager(self, image, plan, tasks, steps, seed, start=None):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.no_grad():
            events[0].record()
            x = letterbox(self._upload(image), plan, self.gain, self.offset, dtype=self.dtype)
            events[1].record()
            raw, state = self._split(
                self.run_network(x, tasks, steps, self.device_noise(seed), start), start)
            events[2].record()
            host = to_host_async(postprocess(raw, plan, tasks))
            events[3].record()
        events[3].synchronize()
        self._record_events(events)
        result = host_to_numpy(host)
        return result if start is None else (result, state)

    def _record_events(self, events):
        ms = [a.elapsed_time(b) for a, b in zip(events, events[1:])]
        self.last_timing = dict(zip(('preprocess_ms', 'model_ms', 'postprocess_ms'), ms))

    # ------------------------------------------------------------------ CUDA graphs
    def _stage_functions(self, graphs, plan, tasks, steps, start=None):
        def preprocess_stage():
            letterbox(graphs.image, plan, self.gain, self.offset, out=graphs.input)

        def network_stage():
            # The graph reads the previous map from its static buffer ``graphs.init``.
            graph_start = None if start is None else start._replace(init=graphs.init)
            graphs.raw, graphs.state = self._split(
                self.run_network(graphs.input, tasks, steps, graphs.noise, graph_start),
                graph_start)

        def postprocess_stage():
            graphs.outputs = postprocess(graphs.raw, plan, tasks)

        return [preprocess_stage, network_stage, postprocess_stage]

    @staticmethod
    def _check_capturable(network_stage):
        """Run the network once; RuntimeError naming any host synchronisation in it."""
        blockers, _ = capture_blockers(network_stage)
        if blockers:
            raise RuntimeError('the network synchronises with the host, which a CUDA graph '
                               'cannot hold: ' + '; '.join(blockers))

    def _capture(self, key, image, plan, tasks, steps, seed, start=None):
        """Capture the three stages for ``key``; None (and eager from then on) on failure."""
        started = time.perf_counter()
        graphs = _Graphs()
        try:
            graphs.image = torch.empty((*plan.image_size, 3), dtype=torch.uint8,
                                       device=self.torch_device)
            graphs.input = torch.zeros((1, 3, *plan.model_size), dtype=self.dtype,
                                       device=self.torch_device)
            noise = self.device_noise(seed)
            graphs.noise = None if noise is None else noise.clone()
            graphs.seed = seed
            if start is not None and start.init is not None:
                graphs.init = start.init.to(self.torch_device, self.dtype).clone()
            self._upload(image, out=graphs.image)
            stages = self._stage_functions(graphs, plan, tasks, steps, start)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.no_grad(), torch.cuda.stream(side):
                stages[0]()
                self._check_capturable(stages[1])
                for _ in range(CAPTURE_WARMUP):
                    for stage in stages:
                        stage()
            torch.cuda.current_stream().wait_stream(side)
            pool = torch.cuda.graph_pool_handle()
            with torch.no_grad():
                for stage in stages:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        stage()
                    graphs.stages.append(graph)
            torch.cuda.current_stream().synchronize()
        except Exception as exc:  # noqa: B902 - any capture failure means: run eagerly
            self._failed_keys.add(key)
            warn(f'CUDA graph capture failed for image {plan.image_size}, steps {steps}, '
                 f'tasks {list(tasks)} ({type(exc).__name__}: {exc}); running eagerly')
            torch.cuda.synchronize()
            return None
        self._graphs[key] = graphs
        while len(self._graphs) > CACHE_LIMIT:
            self._graphs.popitem(last=False)
        LOGGER.info('captured CUDA graphs for image %s, steps %s, tasks %s in %.1f s',
                    plan.image_size, steps, list(tasks), time.perf_counter() - started)
        return graphs

    def _replay(self, graphs, image, seed, tasks, start=None):
        if graphs.noise is not None and graphs.seed != seed:
            graphs.noise.copy_(self.device_noise(seed))
            graphs.seed = seed
        if graphs.init is not None:
            graphs.init.copy_(start.init)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        events[0].record()
        self._upload(image, out=graphs.image)
        graphs.stages[0].replay()
        events[1].record()
        graphs.stages[1].replay()
        events[2].record()
        graphs.stages[2].replay()
        host = to_host_async({t: graphs.outputs[t] for t in tasks})
        events[3].record()
        # The graph overwrites its state buffer on the next replay: the caller gets a copy.
        state = None if start is None else graphs.state.clone()
        events[3].synchronize()
        self._record_events(events)
        result = host_to_numpy(host)
        return result if start is None else (result, state)

    @property
    def captured_keys(self):
        """Keys (image size, steps, tasks, sampler start) with captured CUDA graphs."""
        return tuple(self._graphs)

    # ------------------------------------------------------------------ benchmarking
    def benchmark_network(self, iters, warmup=0, tasks=None, steps=None):
        """Per-iteration latency (ms) of the network alone on a model-size input.

        On CUDA with graphs enabled, the network is captured (as for ``infer``) and
        replayed; otherwise it runs eagerly. Each iteration is synchronised (batch-1
        latency, not throughput).
        """
        tasks = self.select_tasks(tasks)
        steps = self.resolve_steps(steps)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, 3, *self.config.image_size), generator=generator)
        x = x.to(self.torch_device, self.dtype)
        noise = self.device_noise(self.seed)
        run = lambda: self.run_network(x, tasks, steps, noise)  # noqa: E731
        self.network_graph_used = False
        with self._lock:
            if self.cuda_graphs:
                try:
                    run = self._capture_network(run)
                    self.network_graph_used = True
                except Exception as exc:  # noqa: B902 - fall back to eager timing
                    warn(f'CUDA graph capture of the network failed ({type(exc).__name__}: '
                         f'{exc}); timing it eagerly')
                    torch.cuda.synchronize()
            sync = torch.cuda.synchronize if self.cuda else (lambda: None)
            for _ in range(warmup):
                run()
            sync()
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                run()
                sync()
                times.append((time.perf_counter() - start) * 1000.0)
        return times

    def _capture_network(self, run):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._check_capturable(run)
            for _ in range(CAPTURE_WARMUP):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        return graph.replay

    def close(self):
        with self._lock:
            self._graphs.clear()
            self._staging.clear()
            self._noise.clear()
            self.model = None
            if self.cuda:
                torch.cuda.empty_cache()
