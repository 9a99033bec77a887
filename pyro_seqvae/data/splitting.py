"""Deterministic train/valid/test splits of named items (files, sequences).

One rule for every reader that has no split of its own (MIDI and WAV folders, stroke files):
rank the items by ``zlib.crc32`` of their name and cut the ranking, so every machine gets the
same split and adding an item moves at most the items ranked after it.
"""

from __future__ import annotations

import zlib

from pyro_seqvae.errors import ConfigError, DataError


def check_fractions(valid_fraction, test_fraction) -> None:
    """Raise :class:`ConfigError` unless both fractions lie in (0, 1) and sum below 1."""
    for label, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{label} must lie in (0, 1), got {value!r}")
    if valid_fraction + test_fraction >= 1:
        raise ConfigError("valid_fraction + test_fraction must be below 1")


def assign_splits(names: list[str], valid_fraction: float, test_fraction: float, *,
                  where: str, what: str) -> dict[str, str]:
    """Split items deterministically: rank by ``zlib.crc32`` of the name, cut into test/valid/train.

    The first ``max(1, round(test_fraction * n))`` ranked names go to test, the next
    ``max(1, round(valid_fraction * n))`` to valid and the rest to train (with fewer than
    ``n_test + n_valid + 1`` items, one each to test and valid). Adding an item moves at most the
    items ranked after it.

    :param list names: distinct item names.
    :param str where: the source, for error messages.
    :param str what: what the items are (``"WAV files"``), for error messages.
    :returns: ``{name: split}``.
    :rtype: dict
    :raises DataError: with fewer than 3 items.
    """
    check_fractions(valid_fraction, test_fraction)
    n = len(names)
    if n < 3:
        raise DataError(f"{where}: need at least 3 usable {what} for train/valid/test, got {n}")
    n_test = max(1, round(test_fraction * n))
    n_valid = max(1, round(valid_fraction * n))
    if n_test + n_valid >= n:
        n_test, n_valid = 1, 1
    ranked = sorted(names, key=lambda name: (zlib.crc32(name.encode("utf-8")), name))
    return {name: "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            for i, name in enumerate(ranked)}
