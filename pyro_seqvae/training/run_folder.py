"""A run folder belongs to one run: claiming it, locking it while a run writes, default names.

* A new run refuses a folder that already holds files unless told to ``overwrite``; overwriting
  removes the old run's files first (and refuses a folder with files that are not a run's).
* While a run writes, it holds an exclusive ``fcntl.flock`` on ``<folder>/.lock`` (non-blocking:
  a second run into the same folder fails at once, naming the PID that holds it). The lock file
  is removed when the run ends; a crashed run's lock is released by the operating system.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path

from ..errors import RunFolderError
from .checkpoint import BEST, LAST

LOCK = ".lock"
#: Files a run writes (removed by ``overwrite``), beside the checkpoints.
RUN_FILE_PATTERNS = (LAST, BEST, "run.json", "metrics.jsonl", "eval_*.json", ".*.tmp",
                     "curves.png", "tensorboard", "samples-*")

_held: dict = {}  # resolved folder -> [fd, count]: the lock is re-entrant within a process


def run_files(folder) -> list:
    """The files in ``folder`` other than its lock file (sorted names)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK)


def prepare_new_run(folder, *, overwrite=False) -> Path:
    """Check that ``folder`` may receive a new run (create it, or empty it with ``overwrite``).

    :raises RunFolderError: the folder holds files and ``overwrite`` is off; or it holds files
        that are not a run's (never deleted); or it is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder}: exists and is not a folder")
    names = run_files(folder)
    if names and not overwrite:
        raise RunFolderError(
            f"{folder}: the folder already holds a run ({_listing(names)}); continue it with "
            "--resume, start over with --overwrite, or choose another --out")
    if names:
        foreign = [n for n in names
                   if not any(Path(n).match(pattern) for pattern in RUN_FILE_PATTERNS)]
        if foreign:
            raise RunFolderError(f"{folder}: --overwrite refused: the folder holds files that a "
                                 f"run does not write ({_listing(foreign)}); choose another --out")
        for name in names:
            path = folder / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return folder


def _listing(names, most=4):
    return ", ".join(names[:most]) + (f", ... ({len(names)} files)" if len(names) > most else "")


def default_run_folder(config, root="runs") -> Path:
    """``runs/<model>-<guide>[-res]-<data>[-limit<N>][-<sizes>]-seed<seed>``, made unique.

    The name says what was trained on what; if that folder already holds files, ``-2``, ``-3``
    ... is appended, so a new run never lands in an old run's folder.
    """
    data = Path(str(config.data).rstrip("/\\")).stem if config.data != "jsb" else "jsb"
    parts = [config.model, config.guide or "default"]
    if config.residual:
        parts.append("res")
    parts.append(re.sub(r"[^A-Za-z0-9._+]+", "_", data) or "data")
    if config.limit is not None:
        parts.append(f"limit{config.limit}")
    sizes = config.model_kwargs
    short = {"z_dim": "z", "rnn_dim": "r", "hidden_dim": "h", "transition_dim": "t"}
    parts += [f"{tag}{sizes[key]}" for key, tag in short.items() if key in sizes]
    if config.emission != "bernoulli":
        parts.append(config.emission)
    parts.append(f"seed{config.seed}")
    base = Path(root) / "-".join(str(p) for p in parts)
    candidate, n = base, 1
    while run_files(candidate) or (candidate.exists() and not candidate.is_dir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


class RunLock:
    """Exclusive, non-blocking lock of a run folder (a context manager; re-entrant in-process).

    :raises RunFolderError: another process holds the folder (its PID is named), or the lock
        file cannot be created.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.key = None
        self.created = False

    def __enter__(self):
        if not self.folder.is_dir():
            try:
                self.folder.mkdir(parents=True)
            except OSError as exc:
                raise RunFolderError(f"{self.folder}: run folder is not writable (cannot "
                                     f"create it: {exc.strerror or exc})") from exc
            self.created = True
        key = str(self.folder.resolve())
        if key in _held:
            _held[key][1] += 1
            self.key = key
            return self
        path = self.folder / LOCK
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunFolderError(f"{self.folder}: cannot create the lock file "
                                     f"({exc.strerror})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderError(f"{self.folder}: another training (PID {pid}) is writing "
                                     "to this run folder; wait for it or choose another "
                                     "--out") from None
            # the holder may have removed the file between our open and flock: retry on the
            # file that is there now
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = [fd, 1]
        self.key = key
        return self

    def __exit__(self, *exc_info):
        entry = _held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.key]
            try:
                os.unlink(self.folder / LOCK)  # while still holding it (see __enter__)
            except OSError:
                pass
            os.close(entry[0])
            if self.created and not any(self.folder.iterdir()):
                self.folder.rmdir()  # a run that failed before writing anything leaves nothing
