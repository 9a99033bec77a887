"""Data checked against an emission's support when it is loaded.

A Bernoulli model trained on continuous strokes, or a Gaussian one on a roll holding a NaN, would
otherwise train (with Pyro's checks off) or stop on the first update with a distribution's
argument error and a dump of the whole batch. :func:`check_support` makes one vectorised pass
over every split (a few milliseconds for the chorales) and names the source, the split, the
sequence, the step and the emission in one line.
"""

from __future__ import annotations

import torch

from pyro_seqvae.errors import DataError

__all__ = ["check_support", "check_emission_support"]


def _value_text(value: float) -> str:
    return f"{value:.6g}"


def check_support(splits, emission, *, option: str = "--emission") -> None:
    """Raise a :class:`DataError` if a value of ``splits`` lies outside ``emission``'s support.

    :param splits: a :class:`~pyro_seqvae.data.sequences.Splits`.
    :param emission: an :class:`~pyro_seqvae.emissions.Emission` (``bernoulli``: every value
        0 or 1; ``gauss`` and ``gmm``: finite; ``stroke``: finite ``(dx, dy)``, pen bit 0 or 1).
    :param str option: how the message names the emission's setting.
    :raises DataError: naming the source, split, sequence, step, feature and value.
    """
    if splits.x_dim != emission.x_dim:
        raise DataError(f"{splits.source}: the data has width {splits.x_dim} but {option} "
                        f"{emission.name} expects width {emission.x_dim}")
    for split in splits:
        flat = torch.cat(split.sequences, dim=0)  # [sum T_i, D]
        bad = emission.outside_support(flat)
        if not bool(bad.any()):
            continue
        row, feature = (int(i) for i in bad.nonzero()[0])
        ends = torch.cumsum(split.lengths, 0)
        sequence = int(torch.searchsorted(ends, torch.tensor(row), right=True))
        step = row - (int(ends[sequence - 1]) if sequence else 0)
        count = int(bad.sum())
        raise DataError(
            f"{splits.source}: split {split.name!r}, sequence {sequence}, step {step}, feature "
            f"{feature} holds {_value_text(float(flat[row, feature]))} ({count} value"
            f"{'s' if count > 1 else ''} in this split); {option} {emission.name} needs "
            f"{emission.support_text}")


def check_emission_support(splits, emission: str, emission_kwargs=None) -> None:
    """:func:`check_support` for an emission given by its registry name (``--emission``)."""
    from pyro_seqvae.emissions import make_emission
    from pyro_seqvae.errors import ConfigError

    try:
        instance = make_emission(emission, splits.x_dim, **(emission_kwargs or {}))
    except ConfigError as exc:
        raise DataError(f"{splits.source}: {exc}") from None
    check_support(splits, instance)
