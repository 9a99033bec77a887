"""Every tutorial notebook runs top to bottom (in smoke mode: tiny data, networks and epochs).

The notebooks read ``PYRO_SEQVAE_SMOKE=1`` from the environment, which the kernel inherits.
They run in a temporary folder, so the files they write (``output/*.mid`` ...) stay out of the
repository. A notebook that raises fails the test with the failing cell's traceback.
"""

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 300  # per cell; each notebook takes well under a minute in smoke mode


def test_all_tutorials_found():
    assert NOTEBOOKS == ["01_polyphonic_vrnn.ipynb", "02_filtering_vs_smoothing.ipynb",
                         "03_your_own_svi_script.ipynb", "04_your_own_midi.ipynb"]


def _install_test_kernel(tmp_path, monkeypatch) -> str:
    """A kernelspec that runs this interpreter (the test venv's), found through JUPYTER_PATH,
    so the notebooks run in the environment under test whatever kernelspecs are installed."""
    from ipykernel.kernelspec import write_kernel_spec

    name = "pyro-seqvae-test"
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / name, overrides={
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_SEQVAE_SMOKE", "1")
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(
        nb, kernel_name=_install_test_kernel(tmp_path, monkeypatch), timeout=TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(work)}})
    client.execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "smoke mode" in printed, "the notebook did not pick up PYRO_SEQVAE_SMOKE=1"
