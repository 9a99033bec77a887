"""Run metadata (``run.json``) and per-epoch metrics (``metrics.jsonl``)."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from ..atomic import atomic_write_text

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
    """Append-only JSON-lines file of per-epoch metrics (one object per line)."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, record: dict):
        record = dict(record, time=time.time())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()

    def read(self) -> list:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, epoch: int):
        """Drop records of epochs after ``epoch`` (used when resuming from a checkpoint)."""
        kept = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r, default=str) + "\n" for r in kept))
