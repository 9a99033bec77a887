"""Run metadata (``run.json``) and per-epoch metrics (``metrics.jsonl``)."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..errors import RunFolderError

logger = logging.getLogger(__name__)

_PACKAGES = ("pyro-seqvae", "pyro-ppl", "torch", "numpy", "music21", "pretty_midi", "arviz")


def environment(device=None) -> dict:
    """Library versions, Python, platform and the device, for results files."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.device(device or "cpu")
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "versions": versions, "device": str(device),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def write_json(path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    return atomic_write_text(path, text + "\n")


class MetricsLog:
    """Append-only JSON-lines file of per-epoch metrics (one object per line).

    A last line without its newline is what a crash in the middle of :meth:`append` leaves: it
    is dropped with a warning (and removed from the file by :meth:`truncate_after`). Any other
    line that is not a JSON object is an error naming the file and the line.
    """

    def __init__(self, path):
        self.path = Path(path)

    def append(self, record: dict):
        record = dict(record, time=time.time())
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
                f.flush()
        except OSError as exc:
            raise RunFolderError(f"{self.path}: could not append the metrics of epoch "
                                 f"{record.get('epoch')} ({exc.strerror or exc})") from exc

    def read(self) -> list:
        """The records, without a partial last line (see the class docstring).

        :raises RunFolderError: a corrupt line that is not the partial last one.
        """
        return self._read()[0]

    def _read(self):
        if not self.path.exists():
            return [], False
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{self.path}: unreadable metrics file ({exc})") from exc
        lines = text.split("\n")  # the last item is "" when the file ends with a newline
        records, partial = [], False
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except ValueError as exc:
                if number == len(lines):  # no newline after it: an interrupted append
                    logger.warning("%s: dropping the partial last line %d (an interrupted "
                                   "write)", self.path, number)
                    partial = True
                    continue
                raise RunFolderError(f"{self.path}, line {number}: not a JSON object of "
                                     f"metrics ({str(exc).splitlines()[0]})") from exc
            records.append(record)
        return records, partial

    def truncate_after(self, epoch: int):
        """Drop records of epochs after ``epoch`` and a partial last line (used on resume)."""
        records, partial = self._read()
        kept = [r for r in records if r.get("epoch", 0) <= epoch]
        if len(kept) != len(records) or partial:
            atomic_write_text(self.path,
                              "".join(json.dumps(r, default=str) + "\n" for r in kept))
