import logging
import os
import tempfile
from pathlib import Path

import pytest
import torch

from pyro_seqvae.data.cache import cache_dir, cached


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PYRO_SEQVAE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "pyro-seqvae"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pyro-seqvae"
    monkeypatch.setenv("PYRO_SEQVAE_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_cached_builds_once(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": [torch.ones(2, 3)], "n": 1}

    first = cached("thing-v1", build, cache_dir=tmp_path)
    second = cached("thing-v1", build, cache_dir=tmp_path)
    assert len(calls) == 1
    assert torch.equal(first["x"][0], second["x"][0]) and second["n"] == 1
    assert (tmp_path / "thing-v1.pt").is_file()
    cached("thing-v2", build, cache_dir=tmp_path)
    assert len(calls) == 2


def test_corrupt_cache_is_rebuilt_with_warning(tmp_path, caplog):
    (tmp_path / "thing-v1.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="pyro_seqvae.data.cache"):
        payload = cached("thing-v1", lambda: {"ok": True}, cache_dir=tmp_path)
    assert payload == {"ok": True}
    assert "unreadable" in caplog.text and "thing-v1.pt" in caplog.text
    assert cached("thing-v1", lambda: pytest.fail("rebuilt"), cache_dir=tmp_path) == {"ok": True}


def test_bad_key(tmp_path):
    with pytest.raises(ValueError, match="cache key"):
        cached("../escape", dict, cache_dir=tmp_path)


def test_the_suite_never_touches_the_users_cache():
    # tests/conftest.py points both variables at a temporary folder of this test session, so
    # data sets built by tests (and by the tutorial notebooks' kernels) never land in ~/.cache
    session = Path(os.environ["XDG_CACHE_HOME"]).resolve()
    assert Path(tempfile.gettempdir()).resolve() in session.parents
    assert session.name.startswith("pyro-seqvae-test-cache-")
    assert cache_dir().resolve() == session / "pyro-seqvae"
    assert Path.home().resolve() / ".cache" not in cache_dir().resolve().parents
