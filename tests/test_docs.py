"""The API reference (``docs/``) builds with Sphinx with warnings as errors, so a broken
docstring fails the suite, and it covers every module of the package."""

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_seqvae

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented_modules() -> set:
    text = "".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.rst"))
    return set(re.findall(r"^\.\. automodule:: (\S+)", text, flags=re.MULTILINE))


def test_reference_covers_every_module():
    modules = {m.name for m in pkgutil.walk_packages(pyro_seqvae.__path__, "pyro_seqvae.")}
    missing = sorted(modules - documented_modules())
    assert not missing, (f"modules without a page in the API reference: {missing}; add "
                         "'.. automodule:: <name>' to the matching docs/api/*.rst")
    assert not documented_modules() - modules  # no page for a module that is gone


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    html = (tmp_path / "html" / "api" / "models.html").read_text(encoding="utf-8")
    assert "pyro_seqvae.models.srnn.SRNN" in html  # autodoc really ran
    assert "Set-up: two commands" in (tmp_path / "html" / "guide.html").read_text(
        encoding="utf-8")
