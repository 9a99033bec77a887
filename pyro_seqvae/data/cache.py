"""An on-disk cache for built data sets.

Payloads are stored with :func:`torch.save` under ``<cache_dir>/<key>.pt`` and read back with
``weights_only=True``, so they must consist of tensors, numbers, strings, lists and dicts.
The key must identify the recipe that built the payload (include a recipe version in it), so
that a change of recipe never serves stale data. Writes are atomic; a cache file that cannot
be read is rebuilt with a logged warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_seqvae.atomic import atomic_torch_save

__all__ = ["cache_dir", "cached", "CACHE_ENV_VAR"]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the default cache directory.
CACHE_ENV_VAR = "PYRO_SEQVAE_CACHE"

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Return the cache directory (it is not created).

    :param override: used if given; otherwise ``$PYRO_SEQVAE_CACHE``, else
        ``$XDG_CACHE_HOME/pyro-seqvae``, else ``~/.cache/pyro-seqvae``.
    :returns: the directory.
    :rtype: pathlib.Path
    """
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "pyro-seqvae"
    return Path.home() / ".cache" / "pyro-seqvae"


_resolve_cache_dir = cache_dir  # ``cached`` shadows the name with its keyword argument


def cached(
    key: str, build_fn: Callable[[], Any], *, cache_dir: str | os.PathLike | None = None
) -> Any:
    """Return the payload cached under ``key``, building and storing it if needed.

    :param str key: file-name-safe key (letters, digits, ``._-``) that includes the version of
        the recipe behind ``build_fn``.
    :param callable build_fn: builds the payload; called only on a cache miss.
    :param cache_dir: the cache directory, see :func:`cache_dir`.
    :returns: the payload.
    """
    if not _KEY_PATTERN.match(key):
        raise ValueError(f"cache key must match {_KEY_PATTERN.pattern}, got {key!r}")
    path = _resolve_cache_dir(cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(stored, dict) or stored.get("key") != key or "payload" not in stored:
                raise ValueError("unexpected layout")
        except Exception as e:  # any unreadable file is rebuilt
            logger.warning(
                "cache file %s is unreadable (%s: %s); rebuilding", path, type(e).__name__, e
            )
        else:
            logger.info("loaded %s from cache %s", key, path)
            return stored["payload"]
    payload = build_fn()
    try:
        atomic_torch_save({"key": key, "payload": payload}, path)
    except OSError as e:
        logger.warning("could not write cache file %s (%s); continuing without cache", path, e)
    else:
        logger.info("cached %s at %s", key, path)
    return payload
