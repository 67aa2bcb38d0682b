"""The ``mtdp`` command line: one sub-command per module of this package.

Each sub-command module defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returning the process exit code).
"""

import argparse
import importlib
import sys

# Sub-command modules, in the order ``mtdp --help`` lists them.
SUBCOMMANDS = ('export', 'bench', 'train', 'eval', 'infer', 'bag')


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog='mtdp',
        description='Multi-task dense prediction: export, bench, train, eval, infer, bag.')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f'{__name__}.{name}').register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f'mtdp {args.command}: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
