"""JSB-style chorale data set built from the Bach chorales shipped with music21.

Recipe (``RECIPE_VERSION = 1``), after the JSB benchmark of Boulanger-Lewandowski et al. (2012):

1. Files: ``music21.corpus.chorales.Iterator(returnType="filename")`` yields 371 names such
   as ``"bach/bwv269"``; the Riemenschneider numbering lists some chorales more than once, so
   repeated names are dropped (350 distinct files, the repeats are counted in
   ``info["duplicates"]``). Each file is parsed with :func:`music21.corpus.parse`.
2. All parts are merged into one ``[T, 88]`` binary roll (column ``j`` is MIDI pitch
   ``21 + j``); chords contribute all their pitches. Repeats are *not* expanded: the roll
   follows the score as written.
3. Quantisation to quarter notes by sampling: step ``k`` sits at quarter-note offset
   ``t_k = origin + k``, and a pitch sounds at step ``k`` iff some note of that pitch has
   ``onset <= t_k < onset + duration``. Held notes therefore sound at every step they cover,
   tied notes behave as one held note, rests (and gaps) give empty steps, and notes shorter
   than a quarter that do not cover a beat (e.g. off-beat passing eighths) are dropped.
4. Grid: ``origin`` is the downbeat of the first full measure (the offset of the measure that
   follows a pickup measure, else of the first measure; the first onset if the score has no
   measures). The first step is the first grid point at or after the first onset, so a
   one-beat pickup becomes the first step and a sub-beat pickup is dropped. The last step
   is the last grid point before the end of the last note or rest.
5. Skipped and reported in ``info["skipped"]`` (``{name: reason}``, plus a logged warning):
   files that fail to parse, contain pitches outside 21..108, or give fewer than 2 steps.
6. Split by the stable rule ``zlib.crc32(name.encode()) % 10``: 0-5 train, 6-7 valid,
   8-9 test (about 60/20/20). With ``limit=n`` (for quick tests) the first
   ``max(1, round(0.2 n))`` test names, as many valid names and the remaining train names,
   each in corpus order, are used, so every chorale keeps its split.

``info`` also records the per-sequence source names (``info["names"][split][i]``), the recipe
version, ``steps_per_beat`` (1), the split rule and the build time. The result is cached (see
:mod:`pyro_seqvae.data.cache`) under a key that includes the recipe version and ``limit``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import zlib
from collections import Counter
from fractions import Fraction

import torch
from tqdm import tqdm

from pyro_seqvae.data.cache import cached
from pyro_seqvae.data.pianoroll import LOWEST_PITCH, NUM_PITCHES, check_pitch
from pyro_seqvae.data.sequences import SPLIT_NAMES, Splits
from pyro_seqvae.errors import ConfigError, DataError

__all__ = ["RECIPE_VERSION", "MIN_STEPS", "build_jsb", "chorale_names", "score_to_roll", "split_of"]

logger = logging.getLogger(__name__)

#: Version of the recipe above; bump it whenever the output can change.
RECIPE_VERSION = 1
#: Chorales shorter than this many steps are skipped.
MIN_STEPS = 2
_SPLIT_RULE = "zlib.crc32(name) % 10: 0-5 train, 6-7 valid, 8-9 test"


def split_of(name: str) -> str:
    """Return the split of a chorale: ``"train"``, ``"valid"`` or ``"test"``.

    :param str name: the corpus name, e.g. ``"bach/bwv269"``.
    :returns: the split name, by ``zlib.crc32(name.encode()) % 10``.
    :rtype: str
    """
    bucket = zlib.crc32(name.encode("utf-8")) % 10
    return "train" if bucket < 6 else "valid" if bucket < 8 else "test"


def chorale_names() -> list[str]:
    """Return the distinct names of the Bach chorales in the music21 corpus, in corpus order.

    :returns: names such as ``"bach/bwv269"``, each once.
    :rtype: list[str]
    """
    from music21 import corpus

    names = [str(name) for name in corpus.chorales.Iterator(returnType="filename")]
    return list(dict.fromkeys(names))


def _duplicates() -> dict[str, int]:
    from music21 import corpus

    counts = Counter(str(name) for name in corpus.chorales.Iterator(returnType="filename"))
    return {name: count for name, count in counts.items() if count > 1}


def _limited(names: list[str], limit: int) -> list[str]:
    """The first names of each split, in corpus order and proportion 60/20/20."""
    quota = {"valid": max(1, round(0.2 * limit)), "test": max(1, round(0.2 * limit))}
    quota["train"] = limit - quota["valid"] - quota["test"]
    chosen = []
    for name in names:
        split = split_of(name)
        if quota[split] > 0:
            quota[split] -= 1
            chosen.append(name)
    return chosen


def _grid_origin(score, first_onset: Fraction) -> Fraction:
    """Offset of the downbeat of the first full measure (see the module docstring)."""
    from music21 import stream

    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    for part in parts:
        measures = list(part.getElementsByClass(stream.Measure))
        if not measures:
            continue
        first = measures[0]
        pickup = first.paddingLeft > 0 or (
            first.number == 0 and first.duration.quarterLength < first.barDuration.quarterLength
        )
        measure = measures[1] if pickup and len(measures) > 1 else first
        return Fraction(measure.getOffsetInHierarchy(score))
    return first_onset


def score_to_roll(score, *, where: str = "score") -> torch.Tensor:
    """Quantise a music21 score to a quarter-note piano roll (steps 2-4 of the recipe).

    :param music21.stream.Stream score: a score, part or flat stream.
    :param str where: names the score in error messages.
    :returns: a ``[T, 88]`` float32 roll of zeros and ones.
    :rtype: torch.Tensor
    :raises DataError: if the score has no notes or rests, or a pitch is outside 21..108.
    """
    from music21 import chord, harmony, note

    events = []  # (onset, end, midi pitches)
    for element in score.flatten().notesAndRests:
        if isinstance(element, harmony.ChordSymbol):
            continue  # chord symbols annotate, they do not sound
        onset = Fraction(element.offset)
        end = onset + Fraction(element.duration.quarterLength)
        if isinstance(element, (note.Note, chord.Chord)):
            pitches = [
                check_pitch(p.midi, where=f"{where}, offset {float(onset)}")
                for p in element.pitches
            ]
        else:
            pitches = []
        events.append((onset, end, pitches))
    if not events:
        raise DataError(f"{where}: expected notes or rests, found none")

    first_onset = min(onset for onset, _, _ in events)
    origin = _grid_origin(score, first_onset)
    k0 = math.ceil(first_onset - origin)
    k_end = math.ceil(max(end for _, end, _ in events) - origin)  # first grid point >= end
    roll = torch.zeros(max(k_end - k0, 0), NUM_PITCHES)
    for onset, end, pitches in events:
        first = math.ceil(onset - origin) - k0  # first step with t_k >= onset
        stop = math.ceil(end - origin) - k0  # first step with t_k >= end
        for pitch in pitches:
            roll[first:stop, pitch - LOWEST_PITCH] = 1.0
    return roll


def _build(names: list[str], progress: bool) -> dict:
    from music21 import corpus

    start = time.perf_counter()
    sequences = {name: [] for name in SPLIT_NAMES}
    sources = {name: [] for name in SPLIT_NAMES}
    skipped = {}
    disable = not progress or not sys.stderr.isatty()
    for name in tqdm(names, desc="JSB chorales", unit="file", disable=disable):
        try:
            score = corpus.parse(name)
        except Exception as e:  # music21 raises many types for unreadable files
            skipped[name] = f"parse failed: {type(e).__name__}: {e}"
            continue
        try:
            roll = score_to_roll(score, where=name)
        except DataError as e:
            skipped[name] = str(e)
            continue
        if roll.shape[0] < MIN_STEPS:
            skipped[name] = f"{name}: {roll.shape[0]} steps, fewer than {MIN_STEPS}"
            continue
        split = split_of(name)
        sequences[split].append(roll)
        sources[split].append(name)
    seconds = time.perf_counter() - start
    if skipped:
        logger.warning(
            "JSB: skipped %d of %d chorales: %s",
            len(skipped),
            len(names),
            "; ".join(f"{k} ({v})" for k, v in skipped.items()),
        )
    logger.info("JSB: built %d chorales in %.1f s", len(names) - len(skipped), seconds)
    info = {
        "recipe_version": RECIPE_VERSION,
        "steps_per_beat": 1,
        "split_rule": _SPLIT_RULE,
        "num_files": len(names),
        "duplicates": _duplicates(),
        "skipped": skipped,
        "names": sources,
        "build_seconds": seconds,
    }
    return {"sequences": sequences, "info": info}


def build_jsb(*, cache_dir=None, limit: int | None = None, progress: bool = True) -> Splits:
    """Build (or load from the cache) the JSB-style chorale data set described above.

    :param cache_dir: the cache directory, see :func:`pyro_seqvae.data.cache.cache_dir`.
    :param int limit: use only ``limit >= 3`` chorales, spread over the splits (for tests).
    :param bool progress: show a progress bar (only on a terminal).
    :returns: the splits, with ``D = 88``.
    :rtype: Splits
    :raises DataError: if a split ends up empty (every chorale of it skipped).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 3):
        raise ConfigError(f"limit must be an integer >= 3 (at least one chorale for each of "
                          f"train, valid and test) or None, got {limit!r}")
    key = f"jsb-v{RECIPE_VERSION}-" + ("all" if limit is None else f"limit{limit}")

    def build():
        names = chorale_names()
        return _build(names if limit is None else _limited(names, limit), progress)

    payload = cached(key, build, cache_dir=cache_dir)
    info = dict(payload["info"], limit=limit)
    return Splits.from_lists(payload["sequences"], source="jsb", info=info)
