import pytest
import torch

from pyro_seqvae.atomic import atomic_torch_save, atomic_write, atomic_write_text


def test_atomic_write_text_and_bytes(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(tmp_path / "b.bin", lambda f: f.write(b"\x00\x01"))
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_atomic_torch_save_roundtrip(tmp_path):
    obj = {"x": torch.arange(3), "name": "n"}
    atomic_torch_save(obj, tmp_path / "o.pt")
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)
    assert loaded["name"] == "n" and torch.equal(loaded["x"], obj["x"])


def test_failed_write_keeps_old_file_and_cleans_temp(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        atomic_write(tmp_path / "x", lambda f: None, mode="a")
