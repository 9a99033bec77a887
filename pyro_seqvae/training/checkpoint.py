"""Atomic checkpoints of a run: model, guide, optimizer, RNG states, epoch and config.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts), so it is read with
``torch.load(weights_only=True)``: loading a checkpoint never runs code. It is written only when
every weight and optimizer moment is finite, and read only when every weight is finite.
"""

from __future__ import annotations

import copy
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pyro
import torch

from ..atomic import atomic_torch_save
from ..errors import CheckpointError

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
#: 2: plain data only (RNG states as lists/tensors), loadable with ``weights_only=True``.
FORMAT_VERSION = 2


def save_checkpoint(path, *, model, guide, optim, config, epoch: int, step: int,
                    best_valid, extra=None) -> Path:
    """Write a checkpoint atomically (temporary file, then ``os.replace``).

    State dicts are deep-copied to CPU first, so a checkpoint never aliases live weights.

    :raises CheckpointError: a weight or optimizer moment is NaN or infinite (nothing is
        written, so an existing checkpoint at ``path`` stays as it was).
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "model_state": _cpu_copy(model.state_dict()),
        "guide_state": _cpu_copy(guide.state_dict()),
        "optim_state": copy.deepcopy(optim.get_state()) if optim is not None else None,
        "rng_state": rng_state_to_plain(pyro.util.get_rng_state()),
        "config": config.to_dict(),
        "model_config": model.config(),
        "guide_config": guide.config(),
        "epoch": int(epoch),
        "step": int(step),
        "best_valid": None if best_valid is None else float(best_valid),
        "extra": extra or {},
    }
    bad = non_finite_entries(payload)
    if bad:
        raise CheckpointError(f"{path}: refusing to write a checkpoint with non-finite values "
                              f"(NaN or inf) in {_names(bad)}")
    return atomic_torch_save(payload, path)


def _cpu_copy(state):
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _names(names, most=3):
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def non_finite_entries(payload, keys=("model_state", "guide_state", "optim_state")) -> list:
    """Dotted names of the floating-point tensors under ``keys`` that hold a NaN or an inf."""
    bad = []

    def walk(obj, name):
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                bad.append(name)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{name}.{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f"{name}[{i}]")

    for key in keys:
        walk(payload.get(key), key)
    return bad


# ---- RNG states as plain data ---------------------------------------------------------------
def rng_state_to_plain(state: dict) -> dict:
    """Pyro's RNG state with NumPy arrays and tuples replaced by tensors, lists and dicts."""
    version, internal, gauss = state["random"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {"torch": state["torch"],
            "random": {"version": int(version), "state": [int(v) for v in internal],
                       "gauss_next": gauss},
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)}}


def rng_state_from_plain(plain: dict) -> dict:
    """The inverse of :func:`rng_state_to_plain`: a state for ``pyro.util.set_rng_state``."""
    rand, npy = plain["random"], plain["numpy"]
    return {"torch": plain["torch"],
            "random": (rand["version"], tuple(rand["state"]), rand["gauss_next"]),
            "numpy": (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                      npy["has_gauss"], npy["cached_gaussian"])}


# ---- reading --------------------------------------------------------------------------------
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
    """Read a checkpoint with ``torch.load(weights_only=True)``: loading never runs code.

    :raises CheckpointError: a missing, corrupt or foreign file; a file that only an unsafe
        (code-running) unpickler could read, such as a checkpoint of pyro-seqvae before format
        2; non-finite weights.
    """
    path = find_checkpoint(path)
    _check_torch_file(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: refused: this file holds Python objects that only an unsafe loader "
                "(torch.load weights_only=False, which can run code) would read; it is not a "
                "checkpoint of this pyro-seqvae version (format 2) and is not loaded") from exc
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint "
                              f"({_first_line(exc)})") from exc
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, AttributeError,
            ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint "
                              f"({_first_line(exc)})") from exc
    missing = {"model_state", "guide_state", "config", "epoch"} - set(
        payload if isinstance(payload, dict) else ())
    if not isinstance(payload, dict) or missing:
        raise CheckpointError(f"{path}: not a pyro-seqvae checkpoint (missing {sorted(missing)})")
    bad = non_finite_entries(payload, keys=("model_state", "guide_state"))
    if bad:
        raise CheckpointError(f"{path}: the checkpoint holds non-finite weights (NaN or inf) in "
                              f"{_names(bad)}; it cannot be used")
    if isinstance(payload.get("rng_state"), dict) and isinstance(
            payload["rng_state"].get("numpy"), dict):
        payload["rng_state"] = rng_state_from_plain(payload["rng_state"])
    payload["path"] = str(path)
    return payload


#: The first bytes of what ``torch.save`` writes: a zip archive, or a pickle (protocol >= 2) in
#: the legacy format.
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")


def _check_torch_file(path: Path) -> None:
    """Refuse a file that ``torch.save`` did not write (a metrics or JSON file given by mistake)
    before the unpickler reads it, which would report its text as unsupported pickle opcodes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc.strerror or exc})") from exc
    if not head.startswith(TORCH_FILE_MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint (not a file written by torch.save); "
                              f"give a run folder or its {BEST} / {LAST}")


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def restore_modules(payload, model, guide):
    """Load the model and guide weights of ``payload``; a mismatch is a CheckpointError."""
    try:
        model.load_state_dict(payload["model_state"])
        guide.load_state_dict(payload["guide_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{payload.get('path')}: weights do not fit the model: "
                              f"{str(exc).splitlines()[0]}") from exc
