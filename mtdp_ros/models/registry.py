"""Model-family registry: each family registers how it is built, sampled and configured.

A family is one module plus one :func:`register_family` call. ``build_model``,
``load_checkpoint``, ``reparameterize``, the engines and the CLI ask the registry instead of
testing family names, so a new family touches no shared code.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional


@dataclass(frozen=True)
class ModelFamily:
    """What the rest of the package needs to know about one model family.

    ``build(config) -> nn.Module``: a randomly initialised model of that family.
    ``diffusion``: the model is sampled in a number of denoising steps (``steps`` and
    ``noise`` arguments, a step-count parameter in the node and the CLI).
    ``config_class``: the configuration dataclass of the family (``None``: ``ModelConfig``);
    ``ModelConfig.from_dict`` dispatches on the dictionary's ``family`` key to it.
    ``extra``: the optional dependency set (``pip install mtdp_ros[extra]``) the family
    needs, named in the error raised when it is missing; ``None`` for the core families.
    Fusing needs no entry: ``reparameterize`` calls ``fuse()`` on every block that has one.
    """

    name: str
    build: Callable
    diffusion: bool = False
    config_class: Optional[type] = None
    extra: Optional[str] = None
    description: str = ''


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` (a second registration of the same name replaces the first)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f'register_family takes a ModelFamily, got {type(family).__name__}')
    _FAMILIES[family.name] = family
    return family


def family_names():
    """Names of the registered families, in registration order."""
    _ensure_builtin()
    return tuple(_FAMILIES)


def get_family(name) -> ModelFamily:
    """The registered family ``name``; ValueError naming the known ones otherwise."""
    _ensure_builtin()
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f'family {name!r} is not one of {tuple(_FAMILIES)}') from None


def _ensure_builtin():
    # The built-in families register themselves when their package is imported; importing
    # it here makes the registry complete for callers that import this module first.
    from . import families  # noqa: F401
