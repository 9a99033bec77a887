"""Atomic checkpoints of a run: model, guide, optimizer, RNG states, epoch and config."""

from __future__ import annotations

import copy
import pickle
import zipfile
from pathlib import Path

import pyro
import torch

from ..atomic import atomic_torch_save
from ..errors import CheckpointError

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
FORMAT_VERSION = 1


def save_checkpoint(path, *, model, guide, optim, config, epoch: int, step: int,
                    best_valid, extra=None) -> Path:
    """Write a checkpoint atomically (temporary file, then ``os.replace``).

    State dicts are deep-copied to CPU first, so a checkpoint never aliases live weights.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "model_state": _cpu_copy(model.state_dict()),
        "guide_state": _cpu_copy(guide.state_dict()),
        "optim_state": copy.deepcopy(optim.get_state()) if optim is not None else None,
        "rng_state": pyro.util.get_rng_state(),
        "config": config.to_dict(),
        "model_config": model.config(),
        "guide_config": guide.config(),
        "epoch": int(epoch),
        "step": int(step),
        "best_valid": best_valid,
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def _cpu_copy(state):
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def find_checkpoint(path) -> Path:
    """Resolve a run folder (best, else last checkpoint) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no checkpoint in this folder (expected {BEST} or {LAST})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a checkpoint, with a clear error for a missing, corrupt or foreign file."""
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, OSError,
            AttributeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({exc})") from exc
    missing = {"model_state", "guide_state", "config", "epoch"} - set(
        payload if isinstance(payload, dict) else ())
    if not isinstance(payload, dict) or missing:
        raise CheckpointError(f"{path}: not a pyro-seqvae checkpoint (missing {sorted(missing)})")
    payload["path"] = str(path)
    return payload


def restore_modules(payload, model, guide):
    """Load the model and guide weights of ``payload``; a mismatch is a CheckpointError."""
    try:
        model.load_state_dict(payload["model_state"])
        guide.load_state_dict(payload["guide_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{payload.get('path')}: weights do not fit the model: "
                              f"{str(exc).splitlines()[0]}") from exc
