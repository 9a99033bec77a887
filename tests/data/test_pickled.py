import pickle

import numpy as np
import pytest
import torch

from pyro_seqvae.data import load_pickle, roll_to_pitches
from pyro_seqvae.errors import DataError


def _dump(tmp_path, obj, name="JSB Chorales.pickle"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


def _benchmark():
    return {
        "train": [[(60, 64), (), (62,)], [[60.0, np.int64(67)]]],
        "valid": [[(21,), (108,)]],
        "test": [[(55, 59, 62, 67)] * 3],
    }


def test_load_benchmark_pickle(tmp_path):
    splits = load_pickle(_dump(tmp_path, _benchmark()))
    assert [len(s) for s in splits] == [2, 1, 1]
    assert splits.x_dim == 88 and splits.info["format"] == "benchmark"
    assert roll_to_pitches(splits.train[0]) == [(60, 64), (), (62,)]
    assert roll_to_pitches(splits.train[1]) == [(60, 67)]
    assert roll_to_pitches(splits.valid[0]) == [(21,), (108,)]
    assert splits.test.lengths.tolist() == [3]
    assert splits.info["names"]["train"] == ["train/0", "train/1"]
    assert splits.source.endswith("JSB Chorales.pickle")


def test_load_pyro_processed_pickle(tmp_path):
    bench = load_pickle(_dump(tmp_path, _benchmark()))
    processed = {
        s.name: {"sequences": list(s.sequences), "sequence_lengths": s.lengths} for s in bench
    }
    loaded = load_pickle(_dump(tmp_path, processed, "jsb_chorales.pkl"))
    assert loaded.info["format"] == "pyro-processed"
    for a, b in zip(bench, loaded):
        assert all(torch.equal(x, y) for x, y in zip(a.sequences, b.sequences))
    padded = {
        s.name: {
            "sequences": torch.nn.utils.rnn.pad_sequence(s.sequences, batch_first=True),
            "sequence_lengths": s.lengths,
        }
        for s in bench
    }
    loaded = load_pickle(_dump(tmp_path, padded, "padded.pkl"))
    assert loaded.train.lengths.tolist() == [3, 1]
    assert torch.equal(loaded.train[1], bench.train[1])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"absent\.pickle: file not found"):
        load_pickle(tmp_path / "absent.pickle")


@pytest.mark.parametrize(
    "payload", [b"\x80\x04garbage", pickle.dumps(_benchmark())[:30], b"", b"plain text"]
)
def test_corrupt_pickle(tmp_path, payload):
    path = tmp_path / "bad.pickle"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"bad\.pickle: not a readable pickle"):
        load_pickle(path)


def _with(**changes):
    data = _benchmark()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1, 2, 3], r"expected a dict with keys 'train', 'valid', 'test', got list"),
        ({"train": [], "valid": []}, r"missing key\(s\) \['test'\]"),
        (_with(train=5), r"\['train'\]: expected a list of sequences, got int"),
        (_with(valid=["abc"]), r"\['valid'\]\[0\]: expected a sequence \(list of steps\), got str"),
        (_with(valid=[[(60,), 61]]), r"\['valid'\]\[0\], step 1: expected a tuple or list"),
        (_with(test=[[(60,), (120,)]]), r"\['test'\]\[0\], step 1: MIDI pitch 120 is outside"),
        (_with(test=[[(60.5,)]]), r"\['test'\]\[0\], step 0: expected an integer MIDI pitch"),
        (_with(test=[[]]), r"\['test'\]\[0\]: expected at least one step"),
        (_with(test=[]), r"\['test'\]: expected at least one sequence, got an empty split"),
    ],
)
def test_wrong_structure(tmp_path, obj, match):
    path = _dump(tmp_path, obj, "wrong.pickle")
    with pytest.raises(DataError, match=r"wrong\.pickle.*" + match):
        load_pickle(path)


@pytest.mark.parametrize(
    "split, match",
    [
        ({"sequences": [torch.zeros(2, 88)]}, r": missing field 'sequence_lengths'"),
        (
            {"sequences": [torch.zeros(2, 88)], "sequence_lengths": torch.tensor([2, 2])},
            ": 1 sequences but 2 sequence_lengths",
        ),
        (
            {"sequences": [torch.full((2, 88), 0.5)], "sequence_lengths": torch.tensor([2])},
            r"\['sequences'\]\[0\]: expected a binary piano roll",
        ),
        (
            {"sequences": [torch.zeros(2, 80)], "sequence_lengths": torch.tensor([2])},
            r"\['sequences'\]\[0\]: expected a piano roll of shape \[T, 88\]",
        ),
        (
            {"sequences": [torch.zeros(2, 88)], "sequence_lengths": torch.tensor([3])},
            r"\['sequence_lengths'\]\[0\]: expected a length in 1..2, got 3",
        ),
    ],
)
def test_wrong_processed_structure(tmp_path, split, match):
    good = {"sequences": [torch.zeros(2, 88)], "sequence_lengths": torch.tensor([2])}
    path = _dump(tmp_path, {"train": good, "valid": good, "test": split}, "proc.pkl")
    with pytest.raises(DataError, match=r"proc\.pkl\['test'\]" + match):
        load_pickle(path)
