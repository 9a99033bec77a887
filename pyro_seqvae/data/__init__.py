"""Data sets of polyphonic music as piano rolls, and their mini-batches.

:func:`load_dataset` is the single entry point; it returns :class:`Splits` of ``[T, 88]``
binary rolls from the music21 Bach chorales (``"jsb"``), a benchmark pickle, or a folder of
MIDI files.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyro_seqvae.data.batching import Batch, BatchLoader, iterate_batches, pad_sequences
from pyro_seqvae.data.cache import cache_dir, cached
from pyro_seqvae.data.jsb import build_jsb, score_to_roll
from pyro_seqvae.data.midi import (
    load_midi_folder,
    midi_to_roll,
    roll_to_midi,
    roll_to_pretty_midi,
    roll_to_stream,
)
from pyro_seqvae.data.pianoroll import (
    HIGHEST_PITCH,
    LOWEST_PITCH,
    NUM_PITCHES,
    pitches_to_roll,
    roll_to_pitches,
    validate_roll,
)
from pyro_seqvae.data.pickled import load_pickle
from pyro_seqvae.data.sequences import Split, Splits
from pyro_seqvae.errors import ConfigError, DataError

__all__ = [
    "load_dataset",
    "Split",
    "Splits",
    "Batch",
    "BatchLoader",
    "pad_sequences",
    "iterate_batches",
    "build_jsb",
    "score_to_roll",
    "load_pickle",
    "load_midi_folder",
    "midi_to_roll",
    "roll_to_midi",
    "roll_to_pretty_midi",
    "roll_to_stream",
    "NUM_PITCHES",
    "LOWEST_PITCH",
    "HIGHEST_PITCH",
    "pitches_to_roll",
    "roll_to_pitches",
    "validate_roll",
    "cache_dir",
    "cached",
]

_PICKLE_SUFFIXES = (".pickle", ".pkl")


def load_dataset(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    steps_per_beat: int | None = None,
    fs: float | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> Splits:
    """Load a data set of piano rolls.

    :param source: ``"jsb"`` (any case) for the music21 Bach chorales (:func:`build_jsb`); a
        ``.pickle``/``.pkl`` path or any other existing file for a benchmark pickle
        (:func:`load_pickle`); a folder of MIDI files (:func:`load_midi_folder`).
    :param cache_dir: cache directory for ``"jsb"``.
    :param int steps_per_beat: grid of a MIDI folder.
    :param float fs: grid of a MIDI folder, in steps per second.
    :param bool progress: show a progress bar while building ``"jsb"``.
    :param int limit: build only this many chorales (``"jsb"`` only).
    :returns: the train, valid and test splits.
    :rtype: Splits
    :raises DataError: if ``source`` is none of the above.
    """
    is_jsb = isinstance(source, str) and source.strip().lower() == "jsb"
    if not is_jsb and limit is not None:
        raise ConfigError(f"limit applies to 'jsb' only, not to {source!r}")
    if not is_jsb and (steps_per_beat is not None or fs is not None):
        if not Path(source).is_dir():
            raise ConfigError(
                f"steps_per_beat and fs apply to MIDI folders only, not to {source!r}"
            )
    if is_jsb:
        if steps_per_beat not in (None, 1) or fs is not None:
            raise ConfigError(
                "'jsb' is quantised to one step per quarter note; drop steps_per_beat/fs"
            )
        return build_jsb(cache_dir=cache_dir, limit=limit, progress=progress)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_midi_folder(path, steps_per_beat=steps_per_beat, fs=fs)
    if path.suffix.lower() in (".mid", ".midi"):
        raise DataError(f"{source}: a single MIDI file is not a data set; give a folder of them")
    if path.suffix.lower() in _PICKLE_SUFFIXES or path.is_file():
        return load_pickle(path)
    raise DataError(
        f"{source}: no such file or folder; expected 'jsb', a benchmark pickle "
        f"(.pickle/.pkl) or a folder of MIDI files"
    )
