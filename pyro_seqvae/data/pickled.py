"""Loader for the pickled polyphonic-music benchmarks of Boulanger-Lewandowski et al. (2012).

Two layouts are accepted:

* **Benchmark** (``JSB Chorales.pickle``, ``Nottingham.pickle``, ``MuseData.pickle``,
  ``Piano-midi.de.pickle`` and Pyro's copies of them): a dict with keys ``"train"``,
  ``"valid"`` and ``"test"``; each value is a list of sequences, each a list of steps, each a
  tuple or list of MIDI pitches (possibly empty). Integral floats and numpy integers are
  accepted as pitches.
* **Pyro processed** (as written by ``pyro.contrib.examples.polyphonic_data_loader``): the same
  keys, each mapping to ``{"sequences": ..., "sequence_lengths": LongTensor [N]}`` where
  ``sequences`` is a list of ``[T_i, 88]`` rolls or a padded ``[N, T, 88]`` tensor.

.. warning:: Unpickling runs code stored in the file: load only files you trust.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from pyro_seqvae.data.pianoroll import pitches_to_roll, validate_roll
from pyro_seqvae.data.sequences import SPLIT_NAMES, Splits
from pyro_seqvae.errors import DataError

__all__ = ["load_pickle"]


def _read(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            # latin1 decodes the Python 2 strings of the original benchmark files
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling can raise almost anything on corrupt input
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _is_sequence(obj) -> bool:
    return isinstance(obj, (list, tuple))


def _benchmark_split(split, where: str) -> list[torch.Tensor]:
    if not _is_sequence(split):
        raise DataError(f"{where}: expected a list of sequences, got {type(split).__name__}")
    rolls = []
    for i, seq in enumerate(split):
        if not _is_sequence(seq):
            raise DataError(
                f"{where}[{i}]: expected a sequence (list of steps), got {type(seq).__name__}"
            )
        if not seq:
            raise DataError(f"{where}[{i}]: expected at least one step, got an empty sequence")
        for t, step in enumerate(seq):
            if not isinstance(step, (list, tuple, set, frozenset)) and not (
                hasattr(step, "__array__") and getattr(step, "ndim", None) == 1
            ):
                raise DataError(
                    f"{where}[{i}], step {t}: expected a tuple or list of MIDI pitches, "
                    f"got {type(step).__name__}"
                )
        rolls.append(pitches_to_roll(seq, where=f"{where}[{i}]"))
    return rolls


def _processed_split(split: Mapping, where: str) -> list[torch.Tensor]:
    for field in ("sequences", "sequence_lengths"):
        if field not in split:
            raise DataError(f"{where}: missing field {field!r}")
    lengths = split["sequence_lengths"]
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise DataError(f"{where}['sequence_lengths']: expected a 1-D tensor of lengths")
    sequences = split["sequences"]
    if isinstance(sequences, torch.Tensor):
        if sequences.dim() != 3:
            raise DataError(
                f"{where}['sequences']: expected shape [N, T, 88], got {list(sequences.shape)}"
            )
        sequences = list(sequences)
    elif not _is_sequence(sequences):
        raise DataError(f"{where}['sequences']: expected a list of [T, 88] tensors or a tensor")
    if len(sequences) != len(lengths):
        raise DataError(f"{where}: {len(sequences)} sequences but {len(lengths)} sequence_lengths")
    rolls = []
    for i, (seq, length) in enumerate(zip(sequences, lengths.tolist())):
        field = f"{where}['sequences'][{i}]"
        validate_roll(seq, where=field)
        if not 1 <= length <= seq.shape[0]:
            raise DataError(
                f"{where}['sequence_lengths'][{i}]: expected a length in 1..{seq.shape[0]}, "
                f"got {length}"
            )
        rolls.append(seq[:length].to(torch.float32).clone())
    return rolls


def load_pickle(path: str | os.PathLike) -> Splits:
    """Load a pickled polyphonic benchmark (either layout above) as piano rolls.

    :param path-like path: the pickle file.
    :returns: the splits as ``[T, 88]`` rolls; ``info["format"]`` names the layout and
        ``info["names"]`` lists ``"<split>/<index>"`` per sequence.
    :rtype: Splits
    :raises DataError: naming the file and the key or index, for a missing or corrupt file,
        a wrong structure, a pitch outside 21..108 or an empty split.
    """
    path = Path(path)
    data = _read(path)
    if not isinstance(data, Mapping):
        raise DataError(
            f"{path}: expected a dict with keys 'train', 'valid', 'test', got {type(data).__name__}"
        )
    missing = [name for name in SPLIT_NAMES if name not in data]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing}; expected 'train', 'valid', 'test', "
            f"found {sorted(map(str, data))}"
        )
    processed = all(isinstance(data[name], Mapping) for name in SPLIT_NAMES)
    sequences = {}
    for name in SPLIT_NAMES:
        where = f"{path}['{name}']"
        if processed:
            sequences[name] = _processed_split(data[name], where)
        else:
            sequences[name] = _benchmark_split(data[name], where)
        if not sequences[name]:
            raise DataError(f"{where}: expected at least one sequence, got an empty split")
    info = {
        "format": "pyro-processed" if processed else "benchmark",
        "steps_per_beat": None,
        "skipped": {},
        "names": {
            name: [f"{name}/{i}" for i in range(len(seqs))] for name, seqs in sequences.items()
        },
    }
    return Splits.from_lists(sequences, source=str(path), info=info)
