import pytest
import torch

from pyro_seqvae.errors import DataError
from pyro_seqvae.plotting import plot_piano_roll, plot_piano_rolls

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _roll(steps=16):
    roll = torch.zeros(steps, 88)
    roll[:, 39] = 1
    roll[::2, 43] = 1
    return roll


def test_plot_piano_roll_saves_png(tmp_path):
    fig = plot_piano_roll(_roll(), title="C major", path=tmp_path / "fig" / "roll.png")
    assert (tmp_path / "fig" / "roll.png").read_bytes().startswith(PNG_MAGIC)
    ax = fig.axes[0]
    assert ax.get_title() == "C major" and ax.get_xlabel() == "step"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "C4 (60)" in labels and "C8 (108)" in labels


def test_plot_into_existing_axis(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    assert plot_piano_roll(torch.rand(8, 88), ax=ax, step_label="beat") is fig
    assert ax.get_xlabel() == "beat"


def test_plot_piano_rolls_grid(tmp_path):
    fig = plot_piano_rolls(
        [_roll(8), _roll(12), _roll(4)], titles=["a", "b", "c"], path=tmp_path / "grid.png"
    )
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["a", "b", "c"]
    assert (tmp_path / "grid.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_rejects_bad_roll():
    with pytest.raises(DataError, match=r"shape \[T, 88\]"):
        plot_piano_roll(torch.zeros(4, 12), path="unused.png")
    with pytest.raises(ValueError, match="titles"):
        plot_piano_rolls([_roll()], titles=["a", "b"])
