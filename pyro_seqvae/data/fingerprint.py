"""Fingerprints of data splits: did ``evaluate`` get the data the run was trained on?

A run records the SHA-256 of each split's tensors (shapes and float32 bytes, in order) in
``run.json`` and its checkpoints; ``evaluate`` recomputes it and warns when a split changed, e.g.
after files were added to a MIDI folder (the split by file moves sequences between splits).
Hashing the chorales takes about 10 ms.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["split_fingerprint", "data_fingerprints", "changed_splits"]


def split_fingerprint(split) -> str:
    """SHA-256 (hex, first 16 digits) over every sequence's shape and float32 bytes."""
    digest = hashlib.sha256()
    for seq in split.sequences:
        seq = seq.detach().to("cpu", torch.float32).contiguous()
        digest.update(repr(tuple(seq.shape)).encode())
        digest.update(seq.numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprints(splits) -> dict:
    """``{split name: {"sha256": ..., "sequences": N, "steps": S}}`` for every split."""
    return {split.name: {"sha256": split_fingerprint(split), "sequences": len(split),
                         "steps": split.num_steps}
            for split in splits}


def changed_splits(recorded: dict | None, splits, names=None) -> list:
    """Lines that describe how the splits in ``names`` differ from ``recorded``.

    :param dict recorded: a run's :func:`data_fingerprints` (None: nothing to compare; empty list).
    :param splits: the data now loaded.
    :param names: the splits to compare (default: all).
    """
    if not recorded:
        return []
    now = data_fingerprints(splits)
    out = []
    for name in names or now:
        before, after = recorded.get(name), now[name]
        if before is None or before.get("sha256") == after["sha256"]:
            continue
        out.append(f"split {name!r} differs from the one the run was trained with "
                   f"({after['sequences']} sequences and {after['steps']} steps now, "
                   f"{before.get('sequences')} and {before.get('steps')} then; sha256 "
                   f"{after['sha256']} vs {before.get('sha256')})")
    return out
