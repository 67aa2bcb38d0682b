"""``mtdp bag ... --ray [ADDRESS]``: the bags on a Ray cluster, one task per bag.

Engines are held by actors (:class:`BagWorker`): one per GPU of the cluster (``--device``
not ``cpu``; ``--workers N`` share them), else ``--workers`` (default: one per CPU) CPU
actors of one CPU each; an
actor loads the weights once and runs bag after bag. Each bag is one call of an actor,
which reads the input and writes the output itself (:func:`bag_fleet.run_one`): on a real
cluster both paths must be on storage every node sees, and mtdp_ros (the same version)
installed on every node. The driver hands a bag to each idle actor, polls the actors'
progress for :class:`bag_fleet.FleetProgress`, and when an actor dies (its process killed,
its node lost) replaces it and queues its bag again, up to ``--retries`` times: the bag's
temporary output is removed by the next attempt, so it ends in the output exactly once.

``ray`` is imported only here, when ``--ray`` is given (``pip install mtdp_ros[ray]``).
Connecting: ``--ray`` alone starts a local cluster with ``--workers`` CPUs (all of the
machine's by default) and stops it at the end; ``--ray auto`` or ``--ray HOST:PORT``
connects to a running cluster; in a program already connected (``ray.init`` done) that
connection is used.
"""

import logging
import os
import threading
import time

from mtdp_ros.cli import CommandError

NAMESPACE = 'mtdp_bag'
WORKER_NAME = 'mtdp_bag_worker_{}'
POLL_SECONDS = 0.5
# How long the driver waits for an actor's progress answer before trying again later.
PROGRESS_TIMEOUT_S = 5.0


def import_ray():
    """The ray module; CommandError naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise CommandError('--ray needs Ray, which is not installed: pip install '
                           'mtdp_ros[ray]') from None
    return ray


class BagWorker:
    """An engine and the bags given to it; a Ray actor (threaded: progress answers while busy)."""

    def __init__(self, options):
        from mtdp_ros.cli.bag_fleet import EngineHolder
        self.options = options
        self.holder = EngineHolder(options)
        self._lock = threading.Lock()
        self._frames = {}

    def pid(self):
        """The actor's process id."""
        return os.getpid()

    def progress(self):
        """{bag name: (frames done, frames)} of the bag running now."""
        with self._lock:
            return dict(self._frames)

    def _on_frames(self, name, done, total):
        with self._lock:
            self._frames = {name: (done, total)}

    def run(self, job):
        """Process one bag (bag_fleet.run_one); its result dict."""
        from mtdp_ros.cli.bag_fleet import run_one
        try:
            return run_one(job, self.options, self.holder, self._on_frames)
        finally:
            with self._lock:
                self._frames = {}


def connect(ray, address, workers):
    """Connect to (or start) the cluster; True when this call started it (stop it after).

    ``ray.init`` installs its own SIGINT/SIGTERM handlers: ours are put back, so that a
    signal still stops the actors and removes their temporary output.
    """
    from mtdp_ros.cli.interrupts import reinstall
    if ray.is_initialized():
        return False
    try:
        return _init(ray, address, workers)
    finally:
        reinstall()


def _init(ray, address, workers):
    try:
        if address == 'local':
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False,
                     namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
            return True
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.ERROR)
    except Exception as exc:  # noqa: B902 - Ray raises ConnectionError, RuntimeError, ...
        raise CommandError(f'cannot connect to the Ray cluster at {address}: '
                           f'{" ".join(str(exc).split())[:300]}') from None
    return False


def worker_plan(ray, options):
    """(number of actors, resources of one) for the cluster and the options.

    On GPUs: one actor per GPU, or ``--workers N`` sharing the GPUs (a fraction each: the
    frame's decoding and output building run on the actor's CPU, so that several actors
    per GPU keep it busier).
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get('GPU', 0))
    workers = options.get('workers')
    if gpus and options.get('device') != 'cpu':
        count = workers or gpus
        return count, {'num_cpus': 1, 'num_gpus': min(1.0, gpus / count)}
    # No more actors than CPUs: one that cannot be placed would hold its bag for ever.
    cpus = max(int(resources.get('CPU', 1)), 1)
    return min(workers or cpus, cpus), {'num_cpus': 1}


class _Pool:
    """The actors: made on demand, replaced when one dies."""

    def __init__(self, ray, options, count, resources):
        self.ray = ray
        self.options = options
        self.remote_class = ray.remote(max_concurrency=2, max_restarts=0,
                                       **resources)(BagWorker)
        self.made = 0
        self.idle = [self._new() for _ in range(count)]
        self.all = list(self.idle)

    def _new(self):
        name = WORKER_NAME.format(self.made)
        self.made += 1
        return self.remote_class.options(name=name).remote(self.options)

    def replace(self, dead):
        """A new actor in place of ``dead`` (which is killed, should it still live)."""
        self.kill(dead)
        self.all.remove(dead)
        fresh = self._new()
        self.all.append(fresh)
        return fresh

    def kill(self, actor):
        """Stop ``actor`` at once."""
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: B902 - already gone
            pass

    def shutdown(self):
        """Stop every actor and wait (a few seconds at most) until they are gone."""
        for actor in self.all:
            self.kill(actor)
        for actor in self.all:
            try:    # answers only while it lives; raises once it is dead
                self.ray.get(actor.pid.remote(), timeout=PROGRESS_TIMEOUT_S)
            except Exception:  # noqa: B902 - dead, as wanted
                pass


def _poll_progress(ray, running, progress):
    """Ask the busy actors for their frames done (non-blocking for dead or slow ones)."""
    asks = {actor.progress.remote(): actor for actor, _ in running.values()}
    ready, _ = ray.wait(list(asks), num_returns=len(asks), timeout=PROGRESS_TIMEOUT_S)
    for ref in ready:
        try:
            frames = ray.get(ref)
        except Exception:  # noqa: B902 - a dying actor: its task's result says so
            continue
        for name, (done, total) in frames.items():
            progress.on_frames(name, done, total)


def _lost(ray, ref):
    """The failure text of a finished call whose actor died, or None when it returned."""
    try:
        return None, ray.get(ref)
    except ray.exceptions.RayTaskError as exc:     # an unexpected error in run_one
        cause = getattr(exc, 'cause', None) or exc
        text = ' '.join(str(cause).split())[:300]
        return f'{type(cause).__name__}: {text}', None
    except ray.exceptions.RayError as exc:         # the actor died (killed, OOM, node lost)
        return f'worker lost ({type(exc).__name__})', None


def run_on_ray(jobs, options, progress, args):
    """Run the bags on the cluster of ``--ray``; returns their results (input order).

    SIGINT/SIGTERM (recorded while Ray's calls run, raised between them) stop the actors
    and remove their temporary outputs.
    """
    from mtdp_ros.cli import interrupts
    with interrupts.deferred():
        return _run_on_ray(jobs, options, progress, args, interrupts.check)


def _run_on_ray(jobs, options, progress, args, check_signals):
    from mtdp_ros.cli.bag_fleet import _result, remove_stale_partials
    ray = import_ray()
    started_here = connect(ray, args.ray, args.workers)
    pool = None
    running = {}        # call ref -> (actor, job)
    try:
        check_signals()
        count, resources = worker_plan(ray, options)
        pool = _Pool(ray, options, min(count, len(jobs)) or 1, resources)
        queue = list(jobs)
        attempts = {job['name']: 0 for job in jobs}
        results = {}
        last_poll = time.perf_counter()
        while queue or running:
            while queue and pool.idle:
                actor, job = pool.idle.pop(), queue.pop(0)
                attempts[job['name']] += 1
                running[actor.run.remote(job)] = (actor, job)
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            check_signals()
            for ref in done:
                actor, job = running.pop(ref)
                problem, result = _lost(ray, ref)
                if problem is None:
                    pool.idle.append(actor)
                else:
                    pool.idle.append(pool.replace(actor))
                    if attempts[job['name']] <= args.retries:
                        queue.insert(0, job)    # next: its temporary output is removed
                        continue
                    result = _result(job, 'failed', time.perf_counter(),
                                     reason=f'{problem} (after {attempts[job["name"]]} '
                                            f'attempts)')
                result['attempts'] = attempts[job['name']]
                results[job['name']] = result
                progress.finished(result)
            if running and time.perf_counter() - last_poll >= POLL_SECONDS:
                _poll_progress(ray, running, progress)
                last_poll = time.perf_counter()
        return [results[job['name']] for job in jobs]
    except BaseException:
        # Interrupted (or a bug here): stop the workers, then remove what they left.
        if pool is not None:
            pool.shutdown()
            pool = None
        for _, job in running.values():
            try:
                remove_stale_partials(job['output'])
            except OSError:     # an output folder this machine does not see
                pass
        raise
    finally:
        if pool is not None:
            pool.shutdown()
        if started_here:
            ray.shutdown()
