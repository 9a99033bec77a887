"""Data augmentation for piano rolls: random transposition."""

from __future__ import annotations

import torch


def transpose_rolls(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each roll by a random number of semitones in ``[-max_shift, max_shift]``.

    The shift of each sequence is drawn uniformly among those that keep all its notes inside the
    88 keys, so no note is ever dropped. Padding (all-zero steps) stays zero.

    :param torch.Tensor x: ``[B, T, 88]`` binary rolls.
    :param int max_shift: the largest shift in semitones.
    :param torch.Generator generator: a CPU generator (seeded by the caller).
    :returns: ``[B, T, 88]``.
    :rtype: torch.Tensor
    """
    if max_shift <= 0:
        return x
    active = x.amax(dim=1) > 0  # [B, 88]
    P = x.shape[-1]
    keys = torch.arange(P, device=x.device)
    low = torch.where(active, keys, P).amin(-1)  # lowest active key (P if none)
    high = torch.where(active, keys, -1).amax(-1)
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        lo = -min(max_shift, int(low[b])) if high[b] >= 0 else 0
        hi = min(max_shift, P - 1 - int(high[b])) if high[b] >= 0 else 0
        shift = int(torch.randint(lo, hi + 1, (), generator=generator))
        out[b] = torch.roll(x[b], shifts=shift, dims=-1)
    return out
