"""Keyword arguments checked against a constructor's signature before the call.

A misspelt option (``make_model("srnn", zdim=3)``) would otherwise end in Python's
``TypeError: __init__() got an unexpected keyword argument``, which names neither the class's
registry name nor the arguments it does take.
"""

from __future__ import annotations

import inspect

from .errors import ConfigError


def accepted_keywords(cls) -> set | None:
    """The keyword names ``cls(...)`` accepts, or None when it takes ``**kwargs`` of its own.

    Subclasses that forward ``**network`` to their base (the guides) accept the base's
    keywords too, so the whole ``__init__`` chain of the MRO is read.
    """
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                           p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # this __init__ does not forward unknown keywords further up
    else:
        return None
    names.discard("self")
    return names


def check_keywords(cls, kwargs: dict, *, what: str, skip=()) -> None:
    """Raise a :class:`ConfigError` naming ``what`` if ``kwargs`` holds a keyword ``cls`` lacks.

    :param type cls: the class to be built.
    :param dict kwargs: the keyword arguments about to be passed.
    :param str what: how the user calls it, e.g. ``"model 'srnn'"``.
    :param skip: accepted names not to list in the message (positional plumbing).
    """
    accepted = accepted_keywords(cls)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        listed = sorted(accepted - set(skip))
        raise ConfigError(f"{what} has no argument{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))}; it takes {listed}")
