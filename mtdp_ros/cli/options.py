"""Command-line options shared by the sub-commands: the model and the engine's options.

Every sub-command names the model ``--model``; ``--config`` (what ``bench`` and ``export``
called it before) still works as a deprecated alias and says so once. The choices of
``--backend``, ``--device``, ``--precision`` and ``--reparameterize`` are those of
``mtdp_ros.runtime.options``; a step count is checked where it is used (the engine, the
exporter, the evaluation), which names the option in its error.
"""

import argparse
import sys

from mtdp_ros.cli import CommandError
from mtdp_ros.runtime.options import BACKENDS, DEVICES, PRECISIONS, REPARAMETERIZE

MODEL_HELP = 'preset or default-model name, .safetensors or config file'


class DeprecatedAlias(argparse.Action):
    """Store like the option it stands for, with one warning on stderr per parse."""

    def __init__(self, option_strings, dest, preferred, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.preferred = preferred
        self.warned = False

    def __call__(self, parser, namespace, values, option_string=None):
        if not self.warned:
            print(f'{parser.prog}: warning: {option_string} is deprecated; use '
                  f'{self.preferred}', file=sys.stderr)
            self.warned = True
        setattr(namespace, self.dest, values)


def add_model_argument(parser, default='default', help=MODEL_HELP, metavar='NAME|PATH'):
    """``--model`` (and its deprecated alias ``--config``); ``default`` None: required.

    A required model is checked by :func:`require_model` (argparse's own ``required``
    would refuse the alias).
    """
    parser.add_argument('--model', default=default, metavar=metavar,
                        help=help + ('' if default is not None else ' (required)'))
    parser.add_argument('--config', dest='model', action=DeprecatedAlias, preferred='--model',
                        metavar=metavar, help=argparse.SUPPRESS)


def require_model(args):
    """``args.model``; CommandError naming the option when it was not given."""
    if not args.model:
        raise CommandError('--model is required (a preset or default-model name, a config '
                           'or checkpoint file)')
    return args.model


def add_engine_arguments(parser, tasks=True):
    """The engine's options, shared by the sub-commands that run a model on images."""
    add_model_argument(parser)
    parser.add_argument('--checkpoint', metavar='PATH', help='weights for the model')
    parser.add_argument('--backend', choices=BACKENDS, default='torch')
    parser.add_argument('--device', choices=DEVICES, default='auto')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32')
    parser.add_argument('--steps', type=int, metavar='N', help='TaskDiffusion denoising steps')
    parser.add_argument('--seed', type=int, default=0, help='TaskDiffusion noise seed')
    if tasks:
        parser.add_argument('--tasks', help='comma-separated tasks (default: all)')


def add_reparameterize_argument(parser, help):
    """``--reparameterize auto|true|false`` and its shorthand ``--train-form``."""
    parser.add_argument('--reparameterize', choices=REPARAMETERIZE, default='auto', help=help)
    parser.add_argument('--train-form', action='store_true',
                        help='same as --reparameterize false')


def reparameterize_option(args):
    """The ``reparameterize`` value of :func:`add_reparameterize_argument`'s options."""
    if args.train_form and args.reparameterize == 'true':
        raise CommandError('--train-form contradicts --reparameterize true')
    return 'false' if args.train_form else args.reparameterize
