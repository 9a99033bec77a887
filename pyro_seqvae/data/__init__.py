"""Data sets of polyphonic music as piano rolls, and their mini-batches.

:func:`load_dataset` is the single entry point; it returns :class:`Splits` of ``[T, 88]``
binary rolls from the music21 Bach chorales (``"jsb"``), a benchmark pickle, or a folder of
MIDI files, and of continuous ``[T, D]`` sequences from a folder of WAV files or pen strokes.
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
    "KINDS",
    "detect_kind",
    "resolve_kind",
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
_STROKE_SUFFIXES = (".jsonl", ".ndjson", ".npz", ".npy", ".json")
_MIDI_SUFFIXES = (".mid", ".midi")
_WAV_SUFFIXES = (".wav", ".wave")
#: The kinds of source :func:`load_dataset` reads.
KINDS = ("auto", "jsb", "pickle", "midi", "wav", "strokes")


def _folder_kind(path: Path) -> str:
    suffixes = {f.suffix.lower() for f in path.rglob("*") if f.is_file()}
    for kind, known in (("wav", _WAV_SUFFIXES), ("midi", _MIDI_SUFFIXES),
                        ("strokes", _STROKE_SUFFIXES)):
        if suffixes & set(known):
            return kind
    raise DataError(f"{path}: the folder holds no MIDI (.mid), WAV (.wav) or stroke "
                    f"(.jsonl/.npz/.npy) files")


def detect_kind(source) -> str:
    """Which reader ``source`` needs: ``jsb``, ``pickle``, ``midi``, ``wav`` or ``strokes``."""
    if isinstance(source, str) and source.strip().lower() == "jsb":
        return "jsb"
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_kind(path)
    suffix = path.suffix.lower()
    if suffix in _MIDI_SUFFIXES:
        raise DataError(f"{source}: a single MIDI file is not a data set; give a folder of them")
    if suffix in _STROKE_SUFFIXES:
        return "strokes"
    if suffix in _PICKLE_SUFFIXES or path.is_file():
        return "pickle"
    raise DataError(
        f"{source}: no such file or folder; expected 'jsb', a benchmark pickle "
        f"(.pickle/.pkl), a folder of MIDI or WAV files, or a stroke file (.jsonl/.npz)"
    )


def _is_jsb(source) -> bool:
    return isinstance(source, str) and source.strip().lower() == "jsb"


def resolve_kind(source, kind: str = "auto") -> str:
    """The reader ``source`` needs, refusing a ``kind`` that contradicts it.

    ``kind="jsb"`` with a path, ``source="jsb"`` with another reader, a folder reader
    (``midi``, ``wav``) given a file, or a folder without a file of that kind are errors, not
    silently ignored paths or kinds.

    :param source: see :func:`load_dataset`.
    :param str kind: one of :data:`KINDS`.
    :returns: ``jsb``, ``pickle``, ``midi``, ``wav`` or ``strokes``.
    :raises ConfigError: for a contradiction or an unknown kind.
    :raises DataError: for a path that does not exist.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    is_jsb = _is_jsb(source)
    if kind == "jsb" and not is_jsb:
        raise ConfigError(f"kind 'jsb' reads the embedded chorales, but the data source is "
                          f"{str(source)!r}; drop the kind (auto-detect) or give the source 'jsb'")
    if is_jsb:
        if kind not in ("auto", "jsb"):
            raise ConfigError(f"the data source 'jsb' is the embedded chorale set, not {kind} "
                              f"data; drop kind {kind!r} or give a path")
        return "jsb"
    path = Path(source).expanduser()
    if not path.exists():
        if path.suffix.lower() in _PICKLE_SUFFIXES + _STROKE_SUFFIXES:
            raise DataError(f"{source}: file not found")
        raise DataError(
            f"{source}: no such file or folder; expected 'jsb', a benchmark pickle "
            f"(.pickle/.pkl), a folder of MIDI or WAV files, or a stroke file (.jsonl/.npz)")
    if kind == "auto":
        return detect_kind(source)
    if kind in ("midi", "wav"):
        if not path.is_dir():
            raise ConfigError(f"kind {kind!r} reads a folder of files, but {source} is a file")
        known = _MIDI_SUFFIXES if kind == "midi" else _WAV_SUFFIXES
        if not any(f.suffix.lower() in known for f in path.rglob("*") if f.is_file()):
            raise ConfigError(f"kind {kind!r}: {source} holds no {'/'.join(known)} files")
    elif kind == "pickle" and path.is_dir():
        raise ConfigError(f"kind 'pickle' reads one file, but {source} is a folder")
    return kind


def load_dataset(
    source: str | os.PathLike,
    *,
    kind: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    steps_per_beat: int | None = None,
    fs: float | None = None,
    progress: bool = True,
    limit: int | None = None,
    **options,
) -> Splits:
    """Load a data set as train/valid/test :class:`Splits` of ``[T, D]`` sequences.

    :param source: ``"jsb"`` (any case) for the music21 Bach chorales (:func:`build_jsb`); a
        ``.pickle``/``.pkl`` path or any other existing file for a benchmark pickle
        (:func:`load_pickle`); a folder of MIDI files (:func:`load_midi_folder`); a folder of WAV
        files (:func:`~pyro_seqvae.data.waveform.load_wav_folder`); a stroke file or folder
        (:func:`~pyro_seqvae.data.strokes.load_strokes`).
    :param str kind: one of :data:`KINDS`; ``auto`` detects it from ``source``.
    :param cache_dir: cache directory for ``"jsb"``.
    :param int steps_per_beat: grid of a MIDI folder.
    :param float fs: grid of a MIDI folder, in steps per second.
    :param bool progress: show a progress bar while building ``"jsb"``.
    :param int limit: build only this many chorales (``"jsb"`` only).
    :param options: passed to the WAV or stroke reader (``frame_size``, ``seq_len``,
        ``normalisation`` ...).
    :returns: the train, valid and test splits.
    :rtype: Splits
    :raises DataError: if ``source`` is none of the above.
    :raises ConfigError: if ``kind`` contradicts ``source`` (see :func:`resolve_kind`).
    """
    if limit is not None and kind in ("auto", "jsb") and not _is_jsb(source):
        raise ConfigError(f"limit applies to 'jsb' only, not to {source!r}")
    kind = resolve_kind(source, kind)
    if kind != "jsb" and limit is not None:
        raise ConfigError(f"limit applies to 'jsb' only, not to {source!r}")
    if kind != "midi" and (steps_per_beat is not None or fs is not None):
        if kind == "jsb":
            raise ConfigError(
                "'jsb' is quantised to one step per quarter note; drop steps_per_beat/fs")
        raise ConfigError(f"steps_per_beat and fs apply to MIDI folders only, not to {source!r}")
    if options and kind not in ("wav", "strokes"):
        raise ConfigError(f"options {sorted(options)} apply to WAV and stroke data only")
    if kind == "jsb":
        return build_jsb(cache_dir=cache_dir, limit=limit, progress=progress)
    path = Path(source).expanduser()
    if kind == "midi":
        return load_midi_folder(path, steps_per_beat=steps_per_beat, fs=fs)
    if kind == "wav":
        from pyro_seqvae.data.waveform import load_wav_folder

        return load_wav_folder(path, **options)
    if kind == "strokes":
        from pyro_seqvae.data.strokes import load_strokes

        return load_strokes(path, **options)
    return load_pickle(path)
