"""``mtdp bag IN1 IN2 ... --out DIR``: many bags, one output bag each, resumable.

Inputs are bags (a rosbag2 folder, a ``.mcap`` or ``.db3`` file) or folders holding bags
(their bags one level down). Each bag ``NAME`` (the folder's name, the file's name without
its suffix) gets the output bag ``DIR/NAME/``, made by :func:`mtdp_ros.cli.bag.process_bag`
(written under a temporary name, renamed when complete) with a manifest
``DIR/NAME/mtdp_manifest.json``: the input's digest, the model, the settings, the package
version (together: the *key*) and the frame count. A re-run skips a bag whose output has
the same key and redoes one whose key differs (replacing it once the new one is complete).

Without ``--ray`` the bags run one after another in this process; with ``--ray`` on a Ray
cluster (:mod:`mtdp_ros.cli.bag_ray`). Both go through :func:`run_one` (one bag, wherever
it runs) and report to :class:`FleetProgress` (on the driver). A bag that fails for a
reason in its data (damaged, wrong topic, a frame the node would reject) is reported with
that reason and not retried; a bag whose run failed otherwise (a worker killed, an
unexpected error) is retried up to ``--retries`` times. The exit code is 0 when no bag
failed, 1 otherwise.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import time

from mtdp_ros.cli import CommandError

# Options that say how to run, not what to compute: not part of a manifest's key.
RUN_OPTIONS = frozenset({'input', 'out', 'ray', 'workers', 'retries', 'no_progress', 'debug',
                         'command', 'func', 'max_message_mb', 'max_chunk_mb'})
# Options naming the model: the key's 'model' part (with the digests of its files).
MODEL_OPTIONS = ('model', 'checkpoint')
BAG_SUFFIXES = ('.mcap', '.db3')
MANIFEST_FORMAT = 'mtdp_ros bag manifest 1'
EXIT_SOME_FAILED = 1


def add_arguments(parser):
    """The options of several bags: ``--ray [ADDRESS]``, ``--workers``, ``--retries``."""
    parser.add_argument('--ray', nargs='?', const='local', metavar='ADDRESS',
                        help='run the bags on a Ray cluster: ADDRESS of a running one '
                             '("auto": the one on this machine), none: start a local one; '
                             'needs pip install mtdp_ros[ray]')
    parser.add_argument('--workers', type=int, metavar='N',
                        help='with --ray: N engine actors (default: one per GPU of the '
                             'cluster, N > GPUs share them; else one per CPU, at most '
                             'the CPUs); a local cluster gets N CPUs')
    parser.add_argument('--retries', type=int, default=2, metavar='N',
                        help='retry a bag whose run failed other than by its data (a worker '
                             'lost) N times (default 2)')


def is_bag(path):
    """True for a rosbag2 folder (with metadata.yaml) or a .mcap/.db3 file."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, 'metadata.yaml'))
    return os.path.isfile(path) and path.endswith(BAG_SUFFIXES)


def is_fleet(args):
    """True when the command has several bags (or --ray): --out is then a folder."""
    inputs = args.input
    return (len(inputs) > 1 or args.ray is not None
            or (os.path.isdir(inputs[0]) and not is_bag(inputs[0])))


def bag_name(path):
    """The output name of the bag at ``path``: its folder name, or file name sans suffix."""
    name = os.path.basename(os.path.normpath(path))
    for suffix in BAG_SUFFIXES:
        if not os.path.isdir(path) and name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def find_bags(inputs, out_dir):
    """[{'name', 'input', 'output'}] of the inputs, in order; CommandError naming a problem."""
    jobs, seen = [], {}
    for given in inputs:
        if not os.path.exists(given):
            raise CommandError(f'input not found: {given}')
        if is_bag(given):
            paths = [given]
        elif os.path.isdir(given):
            paths = [os.path.join(given, entry) for entry in sorted(os.listdir(given))
                     if is_bag(os.path.join(given, entry))]
            if not paths:
                raise CommandError(f'{given} is neither a bag nor a folder holding bags '
                                   f'(rosbag2 folders with metadata.yaml, .mcap, .db3)')
        else:
            raise CommandError(f'{given} is not a bag (a rosbag2 folder, .mcap or .db3)')
        for path in paths:
            name = bag_name(path)
            if name in seen:
                raise CommandError(f'two bags would write {os.path.join(out_dir, name)}: '
                                   f'{seen[name]} and {path}; give them different names')
            seen[name] = path
            jobs.append({'name': name, 'input': os.path.abspath(path),
                         'output': os.path.abspath(os.path.join(out_dir, name))})
    return jobs


def command_options(args):
    """The parsed options as a plain dict (what a worker rebuilds its Namespace from).

    Model files are made absolute: a worker may run in another folder.
    """
    options = {key: value for key, value in vars(args).items() if key != 'func'}
    for name in MODEL_OPTIONS:
        value = options.get(name)
        if isinstance(value, str) and os.path.exists(value):
            options[name] = os.path.abspath(value)
    return options


def file_digest(paths):
    """'sha256:<hex>' of the files' names and contents, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        if len(paths) > 1:      # a folder: its files' names count, a single file's not
            digest.update(os.path.basename(path).encode() + b'\0')
        with open(path, 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 20), b''):
                digest.update(block)
    return f'sha256:{digest.hexdigest()}'


def input_digest(path):
    """The digest of a bag: its file, or every file of its folder (sorted by name)."""
    if os.path.isdir(path):
        files = [os.path.join(path, entry) for entry in sorted(os.listdir(path))
                 if os.path.isfile(os.path.join(path, entry))]
    else:
        files = [path]
    return file_digest(files)


def package_version():
    """The version of mtdp_ros that made an output."""
    from mtdp_ros import __version__
    return __version__


class EngineHolder:
    """One engine for all the bags a process runs (weights load once), made on first use."""

    def __init__(self, options):
        self.args = argparse.Namespace(**options)
        self._engine = None
        self._model = None

    def engine(self):
        """The engine of the options (created on the first call)."""
        if self._engine is None:
            from mtdp_ros.cli.infer import engine_from_args
            self._engine = engine_from_args(self.args)
        return self._engine

    def model(self):
        """The model part of a manifest key: the digest of each file given, else its name.

        (A model file moved or named by another path is the same model.)
        """
        if self._model is None:
            self._model = {}
            for name in MODEL_OPTIONS:
                value = getattr(self.args, name, None)
                is_file = isinstance(value, str) and os.path.isfile(value)
                self._model[name] = file_digest([value]) if is_file else value
        return self._model


def manifest_key(job, options, holder):
    """What an output depends on: input digest, model, settings, package version."""
    settings = {key: value for key, value in sorted(options.items())
                if key not in RUN_OPTIONS and key not in MODEL_OPTIONS}
    return {'input_digest': input_digest(job['input']), 'model': holder.model(),
            'settings': settings, 'package_version': package_version()}


def read_manifest(output):
    """The manifest of the output bag folder ``output`` (None: none there or unreadable)."""
    from mtdp_ros.cli.bag import MANIFEST
    try:
        with open(os.path.join(output, MANIFEST), encoding='utf-8') as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def remove_stale_partials(output):
    """Remove temporary folders of ``output`` left by a run that was killed while writing."""
    parent, name = os.path.split(output)
    # bag_io.BagWriter's staging names: '.NAME.' + 8 characters of mkdtemp + '.partial'.
    pattern = re.compile(r'\.' + re.escape(name) + r'\.[a-z0-9_]{8}\.partial\Z')
    for entry in os.listdir(parent):
        if pattern.match(entry):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _result(job, status, started, frames=0, reason=''):
    return {'name': job['name'], 'input': job['input'], 'output': job['output'],
            'status': status, 'frames': frames, 'reason': reason,
            'seconds': time.perf_counter() - started}


def run_one(job, options, holder, on_frames=None):
    """Process (or skip) one bag where this runs; returns its result dict.

    ``on_frames(name, done, total)`` is called as frames are done. A failure in the data
    (BagError, CommandError, ValueError, FileNotFoundError) is a 'failed' result with its
    reason; anything else raises (the caller retries).
    """
    from mtdp_ros.cli.bag import process_bag
    from mtdp_ros.ros.bag_io import one_line
    started = time.perf_counter()
    try:
        key = manifest_key(job, options, holder)
        existing = read_manifest(job['output']) if os.path.lexists(job['output']) else None
        if existing is not None and existing.get('key') == key:
            return _result(job, 'skipped', started, frames=existing.get('frames', 0))
        if os.path.lexists(job['output']) and existing is None:
            raise CommandError(f'{job["output"]} exists and is not an output of mtdp bag (no '
                               f'readable manifest); remove it to process this bag')
        remove_stale_partials(job['output'])

        def manifest(frames):
            return json.dumps({'format': MANIFEST_FORMAT, 'key': key, 'frames': frames,
                               'input': job['input'],
                               'created': datetime.datetime.now(datetime.timezone.utc)
                               .isoformat(timespec='seconds')}, indent=1, sort_keys=True)

        frames, loop_seconds, engine_seconds, _, _ = process_bag(
            job['input'], job['output'], holder.args, holder.engine,
            progress=lambda total: _FrameCounter(job['name'], total, on_frames),
            manifest=manifest, replace=existing is not None)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        return _result(job, 'failed', started, reason=one_line(exc))
    result = _result(job, 'processed', started, frames=frames)
    result.update(loop_seconds=loop_seconds, engine_seconds=engine_seconds)
    return result


class _FrameCounter:
    """process_bag's progress object: forwards the frames done of one bag."""

    def __init__(self, name, total, on_frames):
        self.name, self.total, self.on_frames = name, total, on_frames

    def update(self, done):
        if self.on_frames is not None:
            self.on_frames(self.name, done, self.total)


def _duration(seconds):
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class FleetProgress:
    """Bags and frames done, frames/s and ETA on stderr (the driver's view of all workers).

    On a terminal one line redrawn at most twice a second; otherwise a line per bag done.
    """

    def __init__(self, bags, enabled=True, stream=None):
        self.bags = bags
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.running = {}           # name -> (frames done, frames in the bag)
        self.counts = {'processed': 0, 'skipped': 0, 'failed': 0}
        self.frames = 0             # frames of the bags processed
        self._tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self._drawn = 0.0

    def on_frames(self, name, done, total):
        """A bag's frames done so far."""
        self.running[name] = (done, max(int(total), 1))
        if self._tty and time.perf_counter() - self._drawn > 0.5:
            self._draw()

    def finished(self, result):
        """A bag's final result."""
        self.running.pop(result['name'], None)
        self.counts[result['status']] += 1
        if result['status'] == 'processed':
            self.frames += result['frames']
        self._draw()

    def line(self):
        """The progress line."""
        elapsed = time.perf_counter() - self.started
        frames = self.frames + sum(done for done, _ in self.running.values())
        rate = frames / elapsed if elapsed > 0 else 0.0
        done = sum(self.counts.values())
        # Skipped bags cost nothing: the estimate is over the bags that run.
        to_run = self.bags - self.counts['skipped']
        ran = (self.counts['processed'] + self.counts['failed']
               + sum(d / t for d, t in self.running.values()))
        eta = (_duration(elapsed * max(to_run - ran, 0) / ran) if ran > 0
               else '0:00:00' if to_run <= 0 else '?')
        return (f'bags {done}/{self.bags} ({self.counts["processed"]} processed, '
                f'{self.counts["skipped"]} skipped, {self.counts["failed"]} failed), '
                f'frames {frames}, {rate:.2f} frames/s, ETA {eta}')

    def _draw(self):
        if not self.enabled:
            return
        self._drawn = time.perf_counter()
        if self._tty:
            self.stream.write('\r' + self.line())
        else:
            self.stream.write(self.line() + '\n')
        self.stream.flush()

    def close(self):
        """End the redrawn line on a terminal."""
        if self.enabled and self._tty:
            self.stream.write('\n')
            self.stream.flush()


def run_sequential(jobs, options, progress, retries):
    """Run the bags one after another in this process; returns their results."""
    holder = EngineHolder(options)
    results = []
    for job in jobs:
        attempts = 0
        while True:
            attempts += 1
            try:
                result = run_one(job, options, holder, progress.on_frames)
            except Exception as exc:  # noqa: B902 - unexpected: retried, then reported
                from mtdp_ros.ros.bag_io import one_line
                if attempts <= retries:
                    continue
                result = _result(job, 'failed', time.perf_counter(),
                                 reason=f'{type(exc).__name__}: {one_line(exc)} (after '
                                        f'{attempts} attempts)')
            break
        result['attempts'] = attempts
        progress.finished(result)
        results.append(result)
    return results


def check_run(args):
    """Refuse what can be refused before any bag is read; returns the bag jobs."""
    from mtdp_ros.cli.bag import output_options, read_limits
    from mtdp_ros.ros import bag_io
    bag_io.check_namespace(args.namespace)
    output_options(args)
    read_limits(args)
    if args.retries < 0:
        raise CommandError(f'--retries must be >= 0, got {args.retries}')
    if args.workers is not None and args.workers < 1:
        raise CommandError(f'--workers must be >= 1, got {args.workers}')
    if args.ray is not None and args.ray != 'local' and os.path.exists(args.ray):
        raise CommandError(f'--ray {args.ray}: that is a path, not a cluster address; put '
                           f'--ray after the inputs or give it an address')
    out = args.out
    if os.path.lexists(out) and not os.path.isdir(out):
        raise CommandError(f'--out {out} is not a folder (several bags write '
                           f'{out}/<name>/ each)')
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CommandError(f'folder of the output {out} does not exist: {parent}')
    jobs = find_bags(args.input, out)
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise CommandError(f'output folder {out} is not writable')
    return jobs


def summarize(results, out, seconds, stream=None):
    """The summary on stderr: processed, skipped and failed bags, retries."""
    stream = stream or sys.stderr
    by_status = {status: [r for r in results if r['status'] == status]
                 for status in ('processed', 'skipped', 'failed')}
    frames = sum(r['frames'] for r in by_status['processed'])
    rate = frames / seconds if seconds > 0 else 0.0
    # The engine's share of the frame loops (the rest: decoding, building, writing).
    loops = sum(r.get('loop_seconds', 0.0) for r in by_status['processed'])
    share = 100.0 * sum(r.get('engine_seconds', 0.0) for r in by_status['processed']) / loops \
        if loops > 0 else 0.0
    print(f'mtdp bag: {len(results)} bag(s) -> {out}: {len(by_status["processed"])} processed '
          f'({frames} frames in {seconds:.1f} s, {rate:.2f} frames/s, engine {share:.0f} % '
          f'of the frame loops), '
          f'{len(by_status["skipped"])} skipped (done before: same input, model and '
          f'settings), {len(by_status["failed"])} failed', file=stream)
    for result in results:
        if result.get('attempts', 1) > 1:
            print(f'mtdp bag: retried {result["name"]}: {result["attempts"]} attempts '
                  f'({result["status"]})', file=stream)
    for result in by_status['failed']:
        print(f'mtdp bag: failed {result["name"]} ({result["input"]}): {result["reason"]}',
              file=stream)


def run(args):
    """Process every bag of the inputs into ``--out``; exit code 1 when any failed."""
    from mtdp_ros.cli.interrupts import Interrupted, raised_as_interrupted
    jobs = check_run(args)
    options = command_options(args)
    progress = FleetProgress(len(jobs), enabled=not args.no_progress)
    started = time.perf_counter()
    try:
        with raised_as_interrupted():
            if args.ray is not None:
                from mtdp_ros.cli import bag_ray
                results = bag_ray.run_on_ray(jobs, options, progress, args)
            else:
                results = run_sequential(jobs, options, progress, args.retries)
    except Interrupted as exc:
        progress.close()
        counts = progress.counts
        print(f'mtdp bag: interrupted by {exc.name}: stopped after {counts["processed"]} '
              f'processed, {counts["skipped"]} skipped, {counts["failed"]} failed of '
              f'{len(jobs)} bag(s); no partial output left, a re-run resumes', file=sys.stderr)
        return exc.exit_code
    progress.close()
    summarize(results, args.out, time.perf_counter() - started)
    for result in results:
        if result['status'] != 'failed':
            print(result['output'])
    return EXIT_SOME_FAILED if any(r['status'] == 'failed' for r in results) else 0
