"""Interchangeable guides: filtering or smoothing, each with or without the residual mean."""

from ..errors import ConfigError
from ..kwargs_check import check_keywords
from .base import EmptyGuide, SequenceGuide
from .filtering import FilteringGuide
from .smoothing import SmoothingGuide

#: Name -> class, used by the CLI, the checkpoints and the tests.
GUIDES = {"filter": FilteringGuide, "smooth": SmoothingGuide, "none": EmptyGuide}
_ALIASES = {"filtering": "filter", "smoothing": "smooth", "empty": "none"}


def make_guide(name: str, model, /, **kwargs):
    """Build a guide of ``model`` by registry name (``filter``, ``smooth``, ``none``).

    :raises ConfigError: for an unknown name.
    :raises IncompatibleGuideError: for an impossible pairing.
    """
    key = name.lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in GUIDES:
        raise ConfigError(f"unknown guide {name!r}; expected one of {sorted(GUIDES)}")
    check_keywords(GUIDES[key], kwargs, what=f"guide {key!r} ({GUIDES[key].__name__})",
                   skip=("model",))
    return GUIDES[key](model, **kwargs)


def default_guide_name(model) -> str:
    """The guide a model trains with when none is named: ``none`` for the RNN, else ``filter``."""
    return "filter" if model.has_latents else "none"


__all__ = ["EmptyGuide", "FilteringGuide", "GUIDES", "SequenceGuide", "SmoothingGuide",
           "default_guide_name", "make_guide"]
