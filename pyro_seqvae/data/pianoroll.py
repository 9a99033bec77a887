"""Binary piano rolls: ``[T, 88]`` float32 tensors over the piano range A0 (21) .. C8 (108).

Column ``j`` of a roll is MIDI pitch ``LOWEST_PITCH + j``; a 1 means the pitch sounds during
that time step.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch

from pyro_seqvae.errors import DataError

__all__ = [
    "NUM_PITCHES",
    "LOWEST_PITCH",
    "HIGHEST_PITCH",
    "pitches_to_roll",
    "roll_to_pitches",
    "validate_roll",
    "check_pitch",
]

#: Number of piano keys, the width of a roll.
NUM_PITCHES = 88
#: MIDI number of A0, column 0 of a roll.
LOWEST_PITCH = 21
#: MIDI number of C8, column 87 of a roll.
HIGHEST_PITCH = 108


def check_pitch(pitch, *, where: str) -> int:
    """Return ``pitch`` as an int after checking it is an integral MIDI number in 21..108.

    Integral floats and numpy integers (as found in some benchmark pickles) are accepted.

    :param pitch: a MIDI pitch number.
    :param str where: names the file and field in the error message.
    :returns: the pitch as a Python int.
    :rtype: int
    :raises DataError: if the value is not integral or lies outside 21..108.
    """
    if isinstance(pitch, bool) or not isinstance(pitch, numbers.Real):
        raise DataError(f"{where}: expected an integer MIDI pitch, got {pitch!r}")
    if isinstance(pitch, numbers.Integral):
        value = int(pitch)
    else:
        value = float(pitch)
        if not value.is_integer():
            raise DataError(f"{where}: expected an integer MIDI pitch, got {pitch!r}")
        value = int(value)
    if not LOWEST_PITCH <= value <= HIGHEST_PITCH:
        raise DataError(
            f"{where}: MIDI pitch {value} is outside the piano range "
            f"{LOWEST_PITCH}..{HIGHEST_PITCH}"
        )
    return value


def pitches_to_roll(steps: Iterable[Iterable], *, where: str) -> torch.Tensor:
    """Convert a list of steps, each an iterable of MIDI pitches, to a piano roll.

    :param steps: ``T`` steps; step ``t`` lists the pitches sounding at ``t`` (may be empty).
    :param str where: names the file and field in error messages.
    :returns: a ``[T, 88]`` float32 roll of zeros and ones.
    :rtype: torch.Tensor
    :raises DataError: for a non-iterable step, a non-integral or out-of-range pitch.
    """
    rows, cols = [], []
    num_steps = 0
    for t, step in enumerate(steps):
        num_steps += 1
        try:
            pitches = list(step)
        except TypeError:
            raise DataError(
                f"{where}, step {t}: expected an iterable of MIDI pitches, got {step!r}"
            ) from None
        for pitch in pitches:
            rows.append(t)
            cols.append(check_pitch(pitch, where=f"{where}, step {t}") - LOWEST_PITCH)
    roll = torch.zeros(num_steps, NUM_PITCHES)
    if rows:
        roll[torch.tensor(rows), torch.tensor(cols)] = 1.0
    return roll


def roll_to_pitches(roll: torch.Tensor) -> list[tuple[int, ...]]:
    """Convert a piano roll back to a list of steps of sorted MIDI pitches.

    :param torch.Tensor roll: a ``[T, 88]`` roll; entries ``> 0.5`` count as sounding.
    :returns: ``T`` tuples of MIDI pitches in increasing order.
    :rtype: list[tuple[int, ...]]
    """
    validate_roll(roll, where="roll", binary=False)
    active = (roll.detach().cpu() > 0.5).tolist()
    return [tuple(LOWEST_PITCH + j for j, on in enumerate(row) if on) for row in active]


def validate_roll(roll, *, where: str, binary: bool = True) -> torch.Tensor:
    """Check that ``roll`` is a ``[T, 88]`` finite tensor of zeros and ones.

    :param torch.Tensor roll: the roll to check.
    :param str where: names the file or field in error messages.
    :param bool binary: whether to require every entry to be 0 or 1.
    :returns: ``roll`` unchanged.
    :rtype: torch.Tensor
    :raises DataError: if any check fails.
    """
    if not isinstance(roll, torch.Tensor):
        raise DataError(f"{where}: expected a torch.Tensor piano roll, got {type(roll).__name__}")
    if roll.dim() != 2 or roll.shape[1] != NUM_PITCHES:
        raise DataError(f"{where}: expected a piano roll of shape [T, 88], got {list(roll.shape)}")
    if roll.is_floating_point() and not torch.isfinite(roll).all():
        raise DataError(f"{where}: piano roll contains NaN or infinite values")
    if binary and not ((roll == 0) | (roll == 1)).all():
        bad = roll[(roll != 0) & (roll != 1)].flatten()[0].item()
        raise DataError(f"{where}: expected a binary piano roll of 0/1 values, found {bad}")
    return roll
