"""Atomic file writes: a reader never sees a half-written file.

Every writer goes through :func:`atomic_write`, which writes to a temporary file in the
destination directory (so the final rename stays on one file system) and then replaces the
destination with :func:`os.replace`. If writing fails, the temporary file is removed and the
destination is left untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write", "atomic_torch_save", "atomic_write_text"]

# mkstemp creates files with mode 0o600; give the result the mode a plain open() would.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write(
    path: str | os.PathLike, write_fn: Callable[[IO], Any], *, mode: str = "wb"
) -> Path:
    """Write a file atomically.

    :param path-like path: destination; its parent directory is created if missing.
    :param callable write_fn: called once with the open temporary file object.
    :param str mode: ``"wb"`` for bytes or ``"w"`` for text (UTF-8).
    :returns: the destination path.
    :rtype: pathlib.Path
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = "utf-8" if mode == "w" else None
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically.

    :param obj: any object :func:`torch.save` accepts.
    :param path-like path: destination file.
    :returns: the destination path.
    :rtype: pathlib.Path
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically.

    :param path-like path: destination file.
    :param str text: the full file contents.
    :returns: the destination path.
    :rtype: pathlib.Path
    """
    return atomic_write(path, lambda f: f.write(text), mode="w")
