"""Pen-stroke data: file parsing, validation errors, normalisation, splits and rendering."""

import json

import numpy as np
import pytest
import torch

from pyro_seqvae.data.sequences import Splits
from pyro_seqvae.data.strokes import (
    load_strokes,
    read_stroke_file,
    render_strokes,
    strokes_to_polylines,
    validate_strokes,
    write_strokes_jsonl,
)
from pyro_seqvae.errors import ConfigError, DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_strokes(seed, num_strokes=3, points=8, scale=5.0):
    """Loops and zigzags: ``[num_strokes * points, 3]`` offsets with a pen-up ending each."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(num_strokes):
        angle = np.linspace(0, 2 * np.pi, points) + rng.uniform(0, np.pi)
        xy = scale * np.stack([np.cos(angle) + 0.3 * s, np.sin(angle)], 1)
        xy += 0.1 * rng.standard_normal(xy.shape)
        pen = np.zeros((points, 1))
        pen[-1] = 1
        parts.append(np.concatenate([np.diff(xy, axis=0, prepend=0.0), pen], 1))
    return np.concatenate(parts)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_round_trip(tmp_path):
    seqs = [make_strokes(i, num_strokes=1 + i % 3) for i in range(10)]
    path = write_strokes_jsonl(seqs, tmp_path / "strokes.jsonl")
    read = read_stroke_file(path)
    assert list(read) == [f"strokes.jsonl:{i + 1}" for i in range(10)]
    for seq, got in zip(seqs, read.values()):
        assert got.shape == seq.shape and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), seq, atol=1e-5)


def test_load_jsonl_splits_and_normalisation(tmp_path):
    seqs = [make_strokes(i) for i in range(20)]
    path = write_strokes_jsonl(seqs, tmp_path / "strokes.jsonl")
    data = load_strokes(path)
    assert isinstance(data, Splits) and data.x_dim == 3
    assert (len(data.train), len(data.valid), len(data.test)) == (16, 2, 2)
    stats = data.info["normalisation"]
    assert stats["mean"] == 0.0
    by_name = {f"strokes.jsonl:{i + 1}": s for i, s in enumerate(seqs)}
    train = np.concatenate([by_name[n][:, :2].reshape(-1) for n in data.info["names"]["train"]])
    assert stats["std"] == pytest.approx(train.std(), rel=1e-5)
    everything = np.concatenate([s[:, :2].reshape(-1) for s in seqs])
    assert stats["std"] != pytest.approx(everything.std(), rel=1e-7)
    for split in data:
        for seq, name in zip(split.sequences, data.info["names"][split.name]):
            original = by_name[name]
            np.testing.assert_allclose(seq[:, :2].numpy() * stats["std"], original[:, :2],
                                       atol=1e-4)
            np.testing.assert_array_equal(seq[:, 2].numpy(), original[:, 2])  # pen untouched
    again = load_strokes(path)
    assert again.info["names"] == data.info["names"]
    given = load_strokes(path, normalisation={"mean": 0.0, "std": 2.0})
    assert given.info["normalisation"]["std"] == 2.0


def test_ids_name_sequences(tmp_path):
    lines = [json.dumps({"id": f"writer-{i}", "strokes": make_strokes(i).tolist()})
             for i in range(6)]
    data = load_strokes(write_lines(tmp_path / "a.jsonl", lines))
    names = sorted(n for v in data.info["names"].values() for n in v)
    assert names == sorted(f"writer-{i}" for i in range(6))
    # the split of a sequence depends on its id, not on the line it is on
    shuffled = load_strokes(write_lines(tmp_path / "b.jsonl", [*lines[3:], "", *lines[:3]]))
    assert {k: sorted(v) for k, v in shuffled.info["names"].items()} == \
        {k: sorted(v) for k, v in data.info["names"].items()}


def test_numpy_folder(tmp_path):
    root = tmp_path / "drawings"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        np.save(root / f"d{i}.npy", make_strokes(i))
    np.savez(root / "sub" / "more.npz", first=make_strokes(10), second=make_strokes(11))
    write_strokes_jsonl([make_strokes(20)], root / "extra.jsonl")
    data = load_strokes(root, valid_fraction=0.2, test_fraction=0.2)
    names = sorted(n for v in data.info["names"].values() for n in v)
    assert names == ["d0.npy", "d1.npy", "d2.npy", "extra.jsonl:1", "sub/more.npz:first",
                     "sub/more.npz:second"]
    assert data.info["files"] == ["d0.npy", "d1.npy", "d2.npy", "extra.jsonl", "sub/more.npz"]


@pytest.mark.parametrize("line,message", [
    ('{"strokes": [[0, 0, 0], ["a", 1, 0]]}', r"bad\.jsonl:2: field 'strokes', point 1: "
                                               "expected numbers"),
    ('{"strokes": [[0, 0, 0], [1, 1]]}', r"bad\.jsonl:2: field 'strokes', point 1: expected "
                                         r"\[dx, dy, pen\]"),
    ('{"strokes": [[0, 0, 0], [1, 1, 2]]}', r"bad\.jsonl:2: field 'strokes': point 1: pen must "
                                            "be 0 or 1"),
    ('{"strokes": []}', r"bad\.jsonl:2: field 'strokes': expected a non-empty list"),
    ('{"points": [[0, 0, 0]]}', r"bad\.jsonl:2: expected an object with a field 'strokes'"),
    ('{"strokes": [[0, 0, 0]', r"bad\.jsonl:2: .*invalid JSON"),
    ('[[0, 0, 0]]', r"bad\.jsonl:2: expected an object"),
    ('{"strokes": [[0, 0, 0], [1, true, 0]]}', "point 1: expected numbers"),
    ('{"strokes": [[0, 0, 0], [1e400, 0, 0]]}', "point 1: expected finite numbers"),
    ('{"id": [1], "strokes": [[0, 0, 0]]}', "field 'id'"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"strokes": [[0.0, 1.0, 0], [1.0, 0.0, 1]]})
    path = write_lines(tmp_path / "bad.jsonl", [good, line, good])
    with pytest.raises(DataError, match=message):
        load_strokes(path)


def test_other_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_strokes(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no stroke files"):
        load_strokes(empty)
    few = write_strokes_jsonl([make_strokes(0), make_strokes(1)], tmp_path / "few.jsonl")
    with pytest.raises(DataError, match="at least 3 usable stroke sequences"):
        load_strokes(few)
    dup = write_lines(tmp_path / "dup.jsonl",
                      [json.dumps({"id": "x", "strokes": [[0, 0, 0]]})] * 2)
    with pytest.raises(DataError, match=r"dup\.jsonl:2: field 'id'"):
        load_strokes(dup)
    np.save(tmp_path / "wide.npy", np.zeros((4, 5)))
    with pytest.raises(DataError, match=r"wide\.npy.*shape \[T, 3\]"):
        read_stroke_file(tmp_path / "wide.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"obj\.npy"):
        read_stroke_file(tmp_path / "obj.npy")
    np.savez(tmp_path / "pen.npz", ok=make_strokes(0), bad=np.array([[0.0, 0.0, 0.5]]))
    with pytest.raises(DataError, match=r"pen\.npz: array 'bad': point 0: pen must be 0 or 1"):
        read_stroke_file(tmp_path / "pen.npz")
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"corrupt\.npy"):
        read_stroke_file(tmp_path / "corrupt.npy")
    with pytest.raises(DataError, match="at least one point"):
        validate_strokes(np.zeros((0, 3)), where="x")
    with pytest.raises(ConfigError, match="normalisation"):
        load_strokes(few, normalisation={"mean": 1.0, "std": 1.0})
    flat = write_strokes_jsonl([np.array([[0.0, 0.0, 1.0]])] * 5, tmp_path / "flat.jsonl")
    with pytest.raises(DataError, match="standard deviation"):
        load_strokes(flat)


def test_polylines_break_at_pen_ups():
    strokes = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 1, 0], [1, 1, 1], [5, 5, 1]],
                       dtype=float)
    lines = strokes_to_polylines(strokes, std=2.0)
    assert [len(line) for line in lines] == [2, 3, 1]
    np.testing.assert_allclose(lines[0], [[2, 0], [4, 0]])
    np.testing.assert_allclose(lines[1], [[4, 2], [4, 4], [6, 6]])
    np.testing.assert_allclose(lines[2], [[16, 16]])


def test_render_produces_a_png(tmp_path):
    seqs = [make_strokes(i) for i in range(5)]
    data = load_strokes(write_strokes_jsonl(seqs, tmp_path / "s.jsonl"))
    out = render_strokes(data.train[0], tmp_path / "png" / "a.png", **data.info["normalisation"],
                         invert_y=True)
    assert out.read_bytes()[:8] == PNG_MAGIC
    # a model sample: a tensor whose pen bits came from a Bernoulli
    sample = torch.cat([torch.randn(30, 2), torch.bernoulli(torch.full((30, 1), 0.2))], 1)
    assert render_strokes(sample, tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(DataError, match=r"\[T, 3\]"):
        render_strokes(torch.zeros(4, 2), tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
