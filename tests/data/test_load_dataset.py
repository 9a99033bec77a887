import pickle

import pytest

import pyro_seqvae.data as data
from pyro_seqvae.errors import ConfigError, DataError


def test_jsb_dispatch_is_case_insensitive(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(data, "build_jsb", lambda **kw: calls.append(kw) or "splits")
    assert data.load_dataset("JSB", cache_dir=tmp_path, limit=5, progress=False) == "splits"
    assert calls == [{"cache_dir": tmp_path, "limit": 5, "progress": False}]
    with pytest.raises(ConfigError, match="quarter note"):
        data.load_dataset("jsb", fs=10)


def test_pickle_dispatch(tmp_path):
    obj = {"train": [[(60,)]], "valid": [[(61,)]], "test": [[(62,)]]}
    for name in ("a.pickle", "b.PKL", "no_suffix"):
        (tmp_path / name).write_bytes(pickle.dumps(obj))
        assert data.load_dataset(tmp_path / name).info["format"] == "benchmark"


def test_folder_dispatch(tmp_path, write_midi):
    for i in range(3):
        write_midi(f"s{i}.mid", [(60, 0.0, 1.0)], folder=tmp_path / "midi")
    splits = data.load_dataset(str(tmp_path / "midi"), steps_per_beat=2)
    assert sum(len(s) for s in splits) == 3 and splits.info["steps_per_beat"] == 2


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder; expected 'jsb'"):
        data.load_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"gone\.pickle: file not found"):
        data.load_dataset(tmp_path / "gone.pickle")
    with pytest.raises(ConfigError, match="limit applies to 'jsb' only"):
        data.load_dataset(tmp_path / "gone.pickle", limit=3)


def test_single_midi_file(write_midi):
    path = write_midi("one.mid", [(60, 0.0, 1.0)])
    with pytest.raises(DataError, match=r"one\.mid: a single MIDI file is not a data set"):
        data.load_dataset(path)


def test_public_names():
    for name in data.__all__:
        assert hasattr(data, name), name
