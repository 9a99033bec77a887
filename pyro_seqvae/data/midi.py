"""MIDI files to piano rolls and back, with :mod:`pretty_midi`; piano rolls to music21 streams.

Reading samples the notes on a grid, with the same rule as the JSB recipe
(:mod:`pyro_seqvae.data.jsb`): a pitch sounds at step ``k`` iff some note of that pitch has
``onset <= t_k < offset``, where ``t_k`` is the start of step ``k`` and the grid starts at time
0. To absorb the rounding of times to MIDI ticks, ``t_k`` is taken 1% of a step late. The grid
is either ``steps_per_beat`` equal subdivisions of each beat of the file (beats as
:meth:`pretty_midi.PrettyMIDI.get_beats` defines them: the time-signature denominator, dotted
for compound meters, following tempo changes) or ``fs`` steps per second. The roll ends with
the last step that some note covers, so trailing silence is not kept. Drum tracks are ignored.

Writing turns each run of consecutive active steps of a pitch into one held note, at a tempo
of one beat per step, so :func:`midi_to_roll` with the default ``steps_per_beat=1`` reads the
roll back exactly (up to trailing empty steps).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from pyro_seqvae.atomic import atomic_write
from pyro_seqvae.data.pianoroll import LOWEST_PITCH, NUM_PITCHES, check_pitch, validate_roll
from pyro_seqvae.data.sequences import SPLIT_NAMES, Splits
from pyro_seqvae.data.splitting import assign_splits, check_fractions
from pyro_seqvae.errors import ConfigError, DataError

__all__ = [
    "midi_to_roll",
    "load_midi_folder",
    "roll_to_pretty_midi",
    "roll_to_midi",
    "roll_to_stream",
    "MIDI_SUFFIXES",
]

logger = logging.getLogger(__name__)

#: File suffixes (compared case-insensitively) that :func:`load_midi_folder` reads.
MIDI_SUFFIXES = (".mid", ".midi")
_SAMPLE_DELAY = 0.01  # in steps, see the module docstring


def _check_grid(steps_per_beat, fs) -> tuple[int | None, float | None]:
    if steps_per_beat is not None and fs is not None:
        raise ConfigError("give at most one of steps_per_beat and fs")
    if fs is not None:
        if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not fs > 0:
            raise ConfigError(f"fs must be a positive number of steps per second, got {fs!r}")
        return None, float(fs)
    steps_per_beat = 1 if steps_per_beat is None else steps_per_beat
    if (
        isinstance(steps_per_beat, bool)
        or not isinstance(steps_per_beat, int)
        or steps_per_beat < 1
    ):
        raise ConfigError(f"steps_per_beat must be a positive int, got {steps_per_beat!r}")
    return steps_per_beat, None


def _read_midi(path: Path):
    import pretty_midi

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # harmless for reading: meta events on non-zero tracks are still applied
            warnings.filterwarnings(
                "ignore", message="Tempo, Key or Time signature change", category=RuntimeWarning
            )
            return pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # mido/pretty_midi raise many types on corrupt input
        raise DataError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from None


def _time_to_step(pm, times: np.ndarray, steps_per_beat, fs) -> np.ndarray:
    """Map times in seconds to fractional step positions."""
    if fs is not None:
        return times * fs
    beats = np.asarray(pm.get_beats(), dtype=np.float64)
    if beats.size < 2:
        _, tempi = pm.get_tempo_changes()
        period = 60.0 / (float(tempi[-1]) if len(tempi) else 120.0)
        beats = np.append(beats, beats[-1] + period)
    positions = np.arange(beats.size, dtype=np.float64) * steps_per_beat
    # beyond the last beat, extend the last beat period linearly
    slope = steps_per_beat / (beats[-1] - beats[-2])
    return np.where(
        times <= beats[-1],
        np.interp(times, beats, positions),
        positions[-1] + (times - beats[-1]) * slope,
    )


def midi_to_roll(
    path: str | os.PathLike, *, steps_per_beat: int | None = None, fs: float | None = None
) -> torch.Tensor:
    """Read a MIDI file as a piano roll (see the module docstring for the grid).

    :param path-like path: the MIDI file.
    :param int steps_per_beat: steps per beat of the file; the default when ``fs`` is not given
        is 1, i.e. one step per beat as in JSB.
    :param float fs: steps per second instead of a beat grid.
    :returns: a ``[T, 88]`` float32 roll of zeros and ones.
    :rtype: torch.Tensor
    :raises DataError: naming the file, if it is missing, unreadable, has no non-drum notes on
        the grid, or has a pitch outside 21..108.
    :raises ConfigError: for invalid ``steps_per_beat``/``fs``.
    """
    steps_per_beat, fs = _check_grid(steps_per_beat, fs)
    path = Path(path)
    pm = _read_midi(path)
    notes = [
        (note.start, note.end, check_pitch(note.pitch, where=f"{path}, {_describe(inst, note)}"))
        for inst in pm.instruments
        if not inst.is_drum
        for note in inst.notes
    ]
    if not notes:
        raise DataError(f"{path}: expected at least one non-drum note, found none")
    times = np.array([[start, end] for start, end, _ in notes], dtype=np.float64)
    positions = _time_to_step(pm, times, steps_per_beat, fs) - _SAMPLE_DELAY
    first = np.maximum(np.ceil(positions[:, 0]), 0).astype(np.int64)
    stop = np.ceil(positions[:, 1]).astype(np.int64)
    num_steps = int(stop.max())
    if num_steps < 1 or not (stop > first).any():
        raise DataError(f"{path}: no note covers a grid point; try a finer steps_per_beat or fs")
    roll = torch.zeros(num_steps, NUM_PITCHES)
    for (_, _, pitch), a, b in zip(notes, first.tolist(), stop.tolist()):
        roll[a:b, pitch - LOWEST_PITCH] = 1.0
    return roll


def _describe(inst, note) -> str:
    name = inst.name or f"program {inst.program}"
    return f"instrument {name!r}, note at {note.start:.3f} s"


def load_midi_folder(
    path: str | os.PathLike,
    *,
    steps_per_beat: int | None = None,
    fs: float | None = None,
    valid_fraction: float = 0.2,
    test_fraction: float = 0.2,
    skip_errors: bool = False,
) -> Splits:
    """Read every ``*.mid``/``*.midi`` file under a folder (recursively) as piano rolls.

    The split is deterministic: files are ranked by ``zlib.crc32`` of their path relative to
    the folder (POSIX form); the first ``round(test_fraction * n)`` go to test, the next
    ``round(valid_fraction * n)`` to valid (each at least 1), the rest to train.

    :param path-like path: the folder.
    :param int steps_per_beat: see :func:`midi_to_roll`.
    :param float fs: see :func:`midi_to_roll`.
    :param float valid_fraction: fraction of files for the valid split.
    :param float test_fraction: fraction of files for the test split.
    :param bool skip_errors: skip unreadable files, recording ``{relative path: reason}`` in
        ``info["skipped"]``, instead of raising.
    :returns: the splits; ``info["names"]`` lists the relative path of every sequence.
    :rtype: Splits
    :raises DataError: if the folder is missing or has no MIDI files, or (unless
        ``skip_errors``) a file cannot be read.
    """
    _check_grid(steps_per_beat, fs)
    check_fractions(valid_fraction, test_fraction)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root}: no MIDI files (*.mid, *.midi) found")
    rolls, skipped = {}, {}
    for file in files:
        name = file.relative_to(root).as_posix()
        try:
            rolls[name] = midi_to_roll(file, steps_per_beat=steps_per_beat, fs=fs)
        except DataError as e:
            if not skip_errors:
                raise
            skipped[name] = str(e)
    if skipped:
        logger.warning(
            "%s: skipped %d of %d MIDI files: %s",
            root,
            len(skipped),
            len(files),
            "; ".join(f"{k} ({v})" for k, v in skipped.items()),
        )
    split_of = assign_splits(list(rolls), valid_fraction, test_fraction, where=str(root),
                             what="MIDI files")
    sequences = {name: [] for name in SPLIT_NAMES}
    names = {name: [] for name in SPLIT_NAMES}
    for name, roll in rolls.items():
        sequences[split_of[name]].append(roll)
        names[split_of[name]].append(name)
    info = {
        "steps_per_beat": None if fs is not None else (steps_per_beat or 1),
        "fs": fs,
        "skipped": skipped,
        "names": names,
    }
    return Splits.from_lists(sequences, source=str(root), info=info)


def _runs(column: list[bool]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True values."""
    runs, start = [], None
    for t, on in enumerate([*column, False]):
        if on and start is None:
            start = t
        elif not on and start is not None:
            runs.append((start, t))
            start = None
    return runs


def roll_to_pretty_midi(
    roll: torch.Tensor, *, step_seconds: float = 0.5, program: int = 0, velocity: int = 90
):
    """Convert a binary piano roll to a :class:`pretty_midi.PrettyMIDI` object.

    :param torch.Tensor roll: a ``[T, 88]`` roll of zeros and ones.
    :param float step_seconds: duration of one step; the tempo is set to one beat per step.
    :param int program: General MIDI program (0 is acoustic grand piano).
    :param int velocity: note velocity, 1..127.
    :returns: the MIDI object with one instrument.
    :rtype: pretty_midi.PrettyMIDI
    :raises DataError: if ``roll`` is not a binary ``[T, 88]`` tensor.
    """
    import pretty_midi

    validate_roll(roll, where="roll")
    if not step_seconds > 0:
        raise ConfigError(f"step_seconds must be positive, got {step_seconds!r}")
    if not 0 <= program <= 127 or not 1 <= velocity <= 127:
        raise ConfigError(
            f"program must be in 0..127 and velocity in 1..127, got {program}, {velocity}"
        )
    pm = pretty_midi.PrettyMIDI(initial_tempo=60.0 / step_seconds)
    instrument = pretty_midi.Instrument(program=program)
    active = (roll.detach().cpu() > 0.5).T.tolist()
    for j, column in enumerate(active):
        for start, stop in _runs(column):
            instrument.notes.append(
                pretty_midi.Note(
                    velocity=velocity,
                    pitch=LOWEST_PITCH + j,
                    start=start * step_seconds,
                    end=stop * step_seconds,
                )
            )
    instrument.notes.sort(key=lambda note: (note.start, note.pitch))
    pm.instruments.append(instrument)
    return pm


def roll_to_midi(
    roll: torch.Tensor,
    path: str | os.PathLike,
    *,
    step_seconds: float = 0.5,
    program: int = 0,
    velocity: int = 90,
) -> Path:
    """Write a binary piano roll to a MIDI file, atomically.

    :param torch.Tensor roll: a ``[T, 88]`` roll of zeros and ones.
    :param path-like path: the destination ``.mid`` file.
    :param float step_seconds: see :func:`roll_to_pretty_midi`.
    :param int program: see :func:`roll_to_pretty_midi`.
    :param int velocity: see :func:`roll_to_pretty_midi`.
    :returns: the destination path.
    :rtype: pathlib.Path
    """
    pm = roll_to_pretty_midi(roll, step_seconds=step_seconds, program=program, velocity=velocity)
    return atomic_write(path, pm.write)


def roll_to_stream(roll: torch.Tensor, *, quarter_length: float = 1.0):
    """Convert a binary piano roll to a music21 part.

    Each maximal run of steps with the same set of pitches becomes one note, chord or rest;
    a pitch held across a change of the other pitches is tied, so held notes stay held.

    :param torch.Tensor roll: a ``[T, 88]`` roll of zeros and ones.
    :param float quarter_length: duration of one step in quarter notes.
    :returns: a :class:`music21.stream.Part` (a Stream) of notes, chords and rests.
    :rtype: music21.stream.Stream
    """
    from music21 import chord, note, pitch, stream, tie

    validate_roll(roll, where="roll")
    steps = [frozenset(p) for p in _pitch_sets(roll)]
    segments = []  # (start step, number of steps, pitch set)
    for t, pitches in enumerate(steps):
        if segments and segments[-1][2] == pitches:
            start, count, _ = segments[-1]
            segments[-1] = (start, count + 1, pitches)
        else:
            segments.append((t, 1, pitches))
    part = stream.Part()
    for i, (start, count, pitches) in enumerate(segments):
        duration = count * quarter_length
        if not pitches:
            element = note.Rest(quarterLength=duration)
        else:
            # Pitch objects, not MIDI ints: from ints music21 spells the chord and simplifies its
            # enharmonics, which took minutes for the dense chords of an untrained model
            element = chord.Chord([pitch.Pitch(midi=m) for m in sorted(pitches)],
                                  quarterLength=duration)
            previous = segments[i - 1][2] if i > 0 else frozenset()
            following = segments[i + 1][2] if i + 1 < len(segments) else frozenset()
            for n in element.notes:
                midi = n.pitch.midi
                kind = {(True, True): "continue", (True, False): "stop", (False, True): "start"}
                key = (midi in previous, midi in following)
                if key in kind:
                    n.tie = tie.Tie(kind[key])
            if len(pitches) == 1:
                single = note.Note(element.notes[0].pitch, quarterLength=duration)
                single.tie = element.notes[0].tie
                element = single
        part.insert(start * quarter_length, element)
    return part


def _pitch_sets(roll: torch.Tensor) -> list[list[int]]:
    active = (roll.detach().cpu() > 0.5).tolist()
    return [[LOWEST_PITCH + j for j, on in enumerate(row) if on] for row in active]
