"""What a training run tells its user once per epoch: a line, ``curves.png`` and TensorBoard.

One convention everywhere (progress bar, epoch line, ``metrics.jsonl``, ``curves.png``,
TensorBoard): figures are **per step in nats, signed as ELBOs: higher is better**. The training
objective is the annealed ELBO (the KL term weighted by ``beta``) averaged over the epoch's
updates; the validation figure is the ELBO at ``beta = 1``.

Where the epoch line goes: when the ``pyro_seqvae`` logger is configured to show INFO messages
(``logging.basicConfig(level=logging.INFO)``, or the command line), it is logged there; otherwise,
so that a plain script is not silent, it is printed to stderr, unless the trainer was built with
``verbose=False``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger("pyro_seqvae.training")

#: The figure refreshed in a run folder after every epoch (and after ``evaluate``).
CURVES = "curves.png"
#: The TensorBoard log folder inside a run folder.
TENSORBOARD_DIR = "tensorboard"
#: How to install TensorBoard support.
TENSORBOARD_HINT = "pip install 'pyro-seqvae[tensorboard]' (or: pip install tensorboard)"


def logging_configured(log: logging.Logger = logger) -> bool:
    """Whether ``log.info`` reaches a handler (a level at INFO or below and a handler)."""
    return log.isEnabledFor(logging.INFO) and log.hasHandlers()


def say(message: str, *, verbose: bool = True) -> None:
    """Log ``message`` at INFO, or print it to stderr when logging is not configured."""
    if logging_configured():
        logger.info(message)
    elif verbose:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)  # above any open progress bar, never glued to it


def format_epoch(record: dict, total_epochs: int, *, best: bool = False) -> str:
    """The epoch line, e.g. ``epoch 3/20: train objective -9.1234, valid ELBO -8.9876 ...``."""
    return (f"epoch {record['epoch']}/{total_epochs}: "
            f"train objective {record['train_objective_per_step']:.4f}, "
            f"valid ELBO {record['valid_elbo_per_step']:.4f}"
            + (f", valid SMC {record['valid_smc_per_step']:.4f}"
               if "valid_smc_per_step" in record else "")
            + " nats/step, higher is better "
            f"(beta {record['beta']:.3f}, {record.get('seconds', float('nan')):.1f} s)"
            + (", best so far" if best else ""))


def read_evaluations(run_dir) -> list:
    """The ``eval_*.json`` results in a run folder, sorted by name (unreadable ones skipped)."""
    results = []
    for path in sorted(Path(run_dir).glob("eval_*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("elbo_per_step"), int | float):
            results.append(result)
    return results


def refresh_curves(run_dir, history=None):
    """(Re)write ``<run_dir>/curves.png`` from the run's metrics and evaluations, atomically.

    :param run_dir: the run folder.
    :param history: the per-epoch records (default: read from ``metrics.jsonl``).
    :returns: the path written, or None when there is no epoch to draw.
    """
    from ..plotting import plot_training_curves
    from .runlog import MetricsLog

    run_dir = Path(run_dir)
    if history is None:
        history = MetricsLog(run_dir / "metrics.jsonl").read()
    if not history:
        return None
    path = run_dir / CURVES
    plot_training_curves(history, evaluations=read_evaluations(run_dir), path=path)
    return path


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line :class:`ConfigError`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"tensorboard logging needs the tensorboard package: "
                          f"{TENSORBOARD_HINT}") from exc
    return SummaryWriter


class EpochReporter:
    """Per-epoch reporting of a :class:`~pyro_seqvae.training.Trainer`.

    :param out_dir: the run folder (None: no ``curves.png`` and no TensorBoard).
    :param bool verbose: print the epoch line to stderr when logging is not configured.
    :param bool tensorboard: also write scalars to ``<out_dir>/tensorboard/``.
    :param bool curves: refresh ``<out_dir>/curves.png`` after every epoch.
    """

    def __init__(self, out_dir=None, *, verbose: bool = True, tensorboard: bool = False,
                 curves: bool = True, valid_key: str = "valid_elbo_per_step"):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.valid_key = valid_key  # the figure that decides "best so far"
        self.verbose = verbose
        self.curves = curves and self.out_dir is not None
        self._writer_class = None
        self._writer = None
        self._plot_failed = False
        if tensorboard:
            if self.out_dir is None:
                raise ConfigError("tensorboard logging needs a run folder (out_dir)")
            self._writer_class = tensorboard_writer_class()  # fails now, not after an epoch

    def say(self, message: str) -> None:
        say(message, verbose=self.verbose)

    def epoch_end(self, record: dict, history: list, total_epochs: int) -> None:
        """Report a finished epoch: the line, ``curves.png`` and TensorBoard scalars."""
        key = self.valid_key
        best = record[key] >= max(r[key] for r in history)
        self.say(format_epoch(record, total_epochs, best=best))
        if self.curves and not self._plot_failed:
            try:
                refresh_curves(self.out_dir, history)
            except Exception as exc:  # a figure must never end a training run
                self._plot_failed = True
                logger.warning("could not draw %s (%s); training continues without it",
                               self.out_dir / CURVES, exc)
        if self._writer_class is not None:
            if self._writer is None:
                self._writer = self._writer_class(log_dir=str(self.out_dir / TENSORBOARD_DIR))
            epoch = record["epoch"]
            self._writer.add_scalar("train/objective_per_step",
                                    record["train_objective_per_step"], epoch)
            self._writer.add_scalar("valid/elbo_per_step", record["valid_elbo_per_step"], epoch)
            if "valid_smc_per_step" in record:
                self._writer.add_scalar("valid/smc_per_step", record["valid_smc_per_step"], epoch)
            self._writer.add_scalar("train/beta", record["beta"], epoch)
            self._writer.add_scalar("train/seconds", record["seconds"], epoch)
            self._writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer, if one is open."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
