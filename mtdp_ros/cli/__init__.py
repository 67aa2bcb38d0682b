"""The ``mtdp`` command line: one sub-command per module of this package.

Each sub-command module defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returning the process exit code).

A user-facing error (bad input: ValueError, FileNotFoundError, CommandError) is one line
on stderr with exit code 2; ``mtdp --debug ...`` or ``MTDP_DEBUG=1`` prints its traceback
(with the exception it was raised from) before that line, to tell our bugs from bad input.
ONNX Runtime's errors (a graph it cannot load or run, a provider failing) are one line with
exit code 2 as well. Other exceptions propagate with Python's traceback.
"""

import argparse
import importlib
import os
import sys
import traceback

# Sub-command modules, in the order ``mtdp --help`` lists them.
SUBCOMMANDS = ('export', 'bench', 'train', 'eval', 'infer', 'bag')


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog='mtdp',
        description='Multi-task dense prediction: export, bench, train, eval, infer, bag.')
    parser.add_argument('--debug', action='store_true',
                        help='print the traceback of an error (also MTDP_DEBUG=1)')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f'{__name__}.{name}').register(subparsers)
    return parser


def debug_enabled(args=None):
    """True when ``--debug`` was given or MTDP_DEBUG is set to a true value."""
    env = os.environ.get('MTDP_DEBUG', '').strip().lower()
    return bool(getattr(args, 'debug', False)) or env not in ('', '0', 'false', 'no', 'off')


def _print_traceback(exc):
    # Show what caused a re-raised error even where ``raise ... from None`` hid it.
    cause, seen = exc, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        cause.__suppress_context__ = False
        cause = cause.__cause__ or cause.__context__
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def main(argv=None):
    """Run ``mtdp`` with ``argv``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_enabled(args)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        if debug:
            _print_traceback(exc)
        print(f'mtdp {args.command}: error: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: B902 - only ONNX Runtime's own errors are caught
        if not is_onnxruntime_error(exc):
            raise
        if debug:
            _print_traceback(exc)
        text = ' '.join(str(exc).split())
        print(f'mtdp {args.command}: error: onnxruntime {type(exc).__name__}: {text}',
              file=sys.stderr)
        return 2


def is_onnxruntime_error(exc):
    """True for ONNX Runtime's exceptions (Fail, InvalidGraph, EPFail, ...).

    They derive from Exception only, from its pybind11 module; a bad model file, a graph the
    runtime cannot run or a provider failing is a one-line error, not our traceback.
    """
    return type(exc).__module__.startswith('onnxruntime')


if __name__ == '__main__':
    sys.exit(main())
