"""Piano-roll figures and training curves. The only module that imports matplotlib, and only
when called.

When a ``path`` is given and no figure is drawn into an existing axis, the figure is built
with the non-interactive Agg canvas, so saving works headless and leaves pyplot's state alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from pyro_seqvae.atomic import atomic_write
from pyro_seqvae.data.pianoroll import LOWEST_PITCH, NUM_PITCHES, validate_roll

__all__ = ["plot_piano_roll", "plot_piano_rolls", "plot_training_curves"]

_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _note_name(midi: int) -> str:
    return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _new_figure(nrows: int, ncols: int, figsize, headless: bool):
    if headless:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    else:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return fig, axes


def _draw(ax, roll: torch.Tensor, title: str | None, step_label: str) -> None:
    validate_roll(roll, where="roll", binary=False)
    image = roll.detach().cpu().float().T.numpy()  # [88, T], row j is MIDI pitch 21 + j
    ax.imshow(
        image,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="Greys",
        vmin=0.0,
        vmax=1.0,
        extent=(-0.5, roll.shape[0] - 0.5, LOWEST_PITCH - 0.5, LOWEST_PITCH + NUM_PITCHES - 0.5),
    )
    ticks = [m for m in range(LOWEST_PITCH, LOWEST_PITCH + NUM_PITCHES) if m % 12 == 0]  # C1..C8
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{_note_name(m)} ({m})" for m in ticks])
    ax.set_xlabel(step_label)
    ax.set_ylabel("pitch (MIDI)")
    if title is not None:
        ax.set_title(title)


def _save(fig, path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_piano_roll(
    roll: torch.Tensor,
    *,
    ax=None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    step_label: str = "step",
):
    """Plot a ``[T, 88]`` piano roll (values in [0, 1], e.g. rolls or probabilities).

    :param torch.Tensor roll: the roll, shape ``[T, 88]``.
    :param matplotlib.axes.Axes ax: draw into this axis; a new figure is made otherwise.
    :param str title: the axis title.
    :param path-like path: save the figure as a PNG here (atomically).
    :param str step_label: the label of the time axis.
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    """
    if ax is None:
        width = min(4.0 + roll.shape[0] / 16.0, 16.0)
        fig, axes = _new_figure(1, 1, (width, 4.0), headless=path is not None)
        ax = axes[0, 0]
    else:
        fig = ax.figure
    _draw(ax, roll, title, step_label)
    if path is not None:
        _save(fig, path)
    return fig


def plot_piano_rolls(
    rolls: Sequence[torch.Tensor],
    *,
    path: str | os.PathLike | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 1,
):
    """Plot several piano rolls in a grid, one axis each.

    :param rolls: ``[T_i, 88]`` rolls.
    :param path-like path: save the figure as a PNG here (atomically).
    :param titles: one title per roll.
    :param int ncols: number of grid columns.
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    """
    rolls = list(rolls)
    if not rolls:
        raise ValueError("plot_piano_rolls: expected at least one roll")
    if titles is not None and len(titles) != len(rolls):
        raise ValueError(f"plot_piano_rolls: got {len(titles)} titles for {len(rolls)} rolls")
    nrows = -(-len(rolls) // ncols)
    fig, axes = _new_figure(nrows, ncols, (8.0 * ncols, 3.0 * nrows), headless=path is not None)
    for i, ax in enumerate(axes.flat):
        if i < len(rolls):
            _draw(ax, rolls[i], None if titles is None else titles[i], "step")
        else:
            ax.set_visible(False)
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def plot_training_curves(history: Sequence[dict], *, evaluations: Sequence[dict] = (),
                         path: str | os.PathLike | None = None):
    """Training objective, validation ELBO and beta against epoch (a run's ``curves.png``).

    Every figure is per step in nats, signed as an ELBO: higher is better.

    :param history: the records of ``metrics.jsonl`` (``epoch``,
        ``train_objective_per_step``, ``valid_elbo_per_step``, ``beta``).
    :param evaluations: results of ``evaluate`` (``split``, ``particles``, ``elbo_per_step``,
        ``is_log_likelihood_per_step``), drawn as horizontal lines at the last epoch.
    :param path-like path: save the figure as a PNG here (atomically).
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    """
    history = list(history)
    fig, axes = _new_figure(1, 2, (11.0, 4.0), headless=path is not None)
    ax, ax_beta = axes[0, 0], axes[0, 1]
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_objective_per_step"] for r in history], "o-", markersize=3,
            label="training objective")  # the annealed ELBO, or L_K, log Z-hat
    ax.plot(epochs, [r["valid_elbo_per_step"] for r in history], "s-", markersize=3,
            label="validation ELBO")
    if any("valid_smc_per_step" in r for r in history):
        smc = [(e, r["valid_smc_per_step"]) for e, r in zip(epochs, history)
               if "valid_smc_per_step" in r]
        ax.plot(*zip(*smc), "^-", markersize=3, label="validation SMC estimate")
    for i, result in enumerate(evaluations):
        label = f"{result.get('split', '?')}, K={result.get('particles', '?')}"
        ax.axhline(result["elbo_per_step"], color=f"C{2 + i % 7}", linestyle=":",
                   label=f"{label}: ELBO")
        if result.get("is_log_likelihood_per_step") is not None:
            ax.axhline(result["is_log_likelihood_per_step"], color=f"C{2 + i % 7}",
                       linestyle="--", label=f"{label}: IS log-likelihood")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per step (higher is better)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    ax_beta.plot(epochs, [r["beta"] for r in history], "o-", markersize=3, color="C1")
    ax_beta.set_xlabel("epoch")
    ax_beta.set_ylabel("KL weight beta (at the epoch's last update)")
    ax_beta.set_ylim(0.0, 1.05)
    ax_beta.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for axis in (ax, ax_beta):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig
