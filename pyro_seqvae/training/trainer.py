"""The training loop: SVI with KL annealing, validation, checkpoints and early stopping."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from ..data.augment import transpose_rolls
from ..data.batching import iterate_batches
from ..errors import CheckpointError, ConfigError, DataError, DivergenceError, SeqVAEError
from ..infer.elbo import make_elbo
from ..infer.evaluation import elbo_per_step
from .checkpoint import BEST, LAST, load_checkpoint, restore_modules, save_checkpoint
from .config import TrainConfig
from .runlog import MetricsLog, environment, write_json

logger = logging.getLogger(__name__)


def resolve_device(name) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def _without_trace(exc) -> str:
    """Pyro's error message on one line, without the trace-shape table it appends."""
    return " ".join(str(exc).split("Trace Shapes:")[0].split())


def claim_param_store(*modules):
    """Drop param-store entries under these modules' root names that are not their own tensors.

    Pyro's param store takes precedence over a PyroModule's weights, so a stale entry left by an
    earlier model of the same name would silently replace freshly loaded or initialised weights.
    """
    store = pyro.get_param_store()
    for module in modules:
        own = {id(p) for p in module.parameters()}
        prefix = module._pyro_name
        for name in list(store.keys()):
            if (name == prefix or name.startswith(prefix + ".") or name.startswith(prefix + "$")) \
                    and id(store._params[name]) not in own:
                del store[name]


class Trainer:
    """Fit a model and guide with SVI.

    Per update: ``beta`` from :class:`LinearKLSchedule`, one ``svi.step(x, mask, beta)`` with
    ``ClippedAdam``, with Pyro's validation checks on the first update only
    (``config.validate``). Per epoch: the training objective and the validation ELBO per step,
    a line in ``metrics.jsonl``, an atomic ``checkpoint_last.pt`` and, when validation improves,
    ``checkpoint_best.pt``. A NaN or infinite loss raises :class:`DivergenceError` and leaves
    the last good checkpoint in place.

    :param model: a model from :mod:`pyro_seqvae.models`.
    :param guide: its guide.
    :param TrainConfig config: the run's settings.
    :param out_dir: where checkpoints and logs go (None: nothing written).
    :param bool progress: show a progress bar (default: when stderr is a terminal).

    Example::

        splits = load_dataset("jsb")
        config = TrainConfig(model="srnn", guide="smooth", residual=True, epochs=20)
        model, guide = config.build(splits.x_dim)
        history = Trainer(model, guide, config, out_dir="runs/srnn").fit(splits)
    """

    def __init__(self, model, guide, config: TrainConfig, *, out_dir=None, progress=None):
        self.model, self.guide, self.config = model, guide, config
        self.device = resolve_device(config.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.schedule = config.kl_schedule(1)  # replaced in fit(), once the data is known
        self.optim = ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm,
                                  "lrd": config.lr_decay})
        self.elbo = make_elbo(config.elbo, num_particles=config.num_particles)
        self.svi = SVI(model, guide, self.optim, self.elbo)
        self.epoch = 0
        self.step = 0
        self._updates_this_fit = 0
        self.best_valid = -math.inf
        self.history = []
        #: What a checkpoint must carry about the data: its source, width and normalisation.
        self.data_info = {}
        model.to(self.device)
        guide.to(self.device)
        claim_param_store(model, guide)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, name: str, extra=None):
        if self.out_dir is None:
            return None
        return save_checkpoint(self.out_dir / name, model=self.model, guide=self.guide,
                               optim=self.optim, config=self.config, epoch=self.epoch,
                               step=self.step, best_valid=self.best_valid,
                               extra={**self.data_info, **(extra or {})})

    def resume(self, path):
        """Continue from a checkpoint exactly: weights, optimizer, RNG, epoch and step."""
        payload = load_checkpoint(path, map_location=self.device)
        if payload["config"] != self.config.to_dict():
            changed = sorted(k for k, v in payload["config"].items()
                             if self.config.to_dict().get(k) != v and k != "epochs")
            if changed:
                raise CheckpointError(f"{payload['path']}: checkpoint was made with other "
                                      f"settings ({', '.join(changed)})")
        restore_modules(payload, self.model, self.guide)
        claim_param_store(self.model, self.guide)
        if payload.get("optim_state") is not None:
            self.optim.set_state(payload["optim_state"])
        pyro.util.set_rng_state(payload["rng_state"])
        self.epoch, self.step = payload["epoch"], payload["step"]
        self.best_valid = payload["best_valid"]
        if self.out_dir is not None:
            MetricsLog(self.out_dir / "metrics.jsonl").truncate_after(self.epoch)
            self.history = MetricsLog(self.out_dir / "metrics.jsonl").read()
        return payload

    # ---- the loop ----------------------------------------------------------------------------
    def _beta(self):
        beta = self.schedule(self.step)
        return torch.tensor(beta, device=self.device) if self.config.elbo == "jit" else beta

    def _validate_now(self) -> bool:
        """Whether Pyro's checks run on this update (``TrainConfig.validate``)."""
        setting = self.config.validate
        return setting == "always" or (setting == "first" and self._updates_this_fit == 0)

    def _batches(self, split, *, shuffle, epoch=0):
        return iterate_batches(split, self.config.batch_size, shuffle=shuffle,
                               seed=self.config.seed, epoch=epoch,
                               bucket_by_length=self.config.bucket_by_length,
                               pad_to_multiple=self.config.pad_to_multiple, device=self.device)

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all())
                   for module in (self.model, self.guide) for p in module.parameters())

    def train_epoch(self, split) -> dict:
        """One pass over ``split``; returns the annealed objective per step and the last beta."""
        from tqdm import tqdm

        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
        total, steps = 0.0, 0
        batches = self._batches(split, shuffle=True, epoch=self.epoch)
        num_batches = -(-len(split) // self.config.batch_size)
        bar = tqdm(batches, total=num_batches, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="batch")
        beta = self.schedule(self.step)
        for batch in bar:
            x = batch.x
            if self.config.transpose:
                x = transpose_rolls(x, self.config.transpose, generator)
            beta = self._beta()
            what = "loss"
            try:
                with warnings.catch_warnings(), pyro.validation_enabled(self._validate_now()):
                    # a NaN loss is reported below as a DivergenceError, not as a warning too
                    warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                    loss = self.svi.step(x, batch.mask, beta)
            except SeqVAEError:
                raise  # the library's own errors already say what is wrong
            except ValueError as exc:
                # with validation on, NaN weights make a distribution's argument check fail
                # before any loss is computed
                if self._weights_finite():
                    raise DataError(
                        f"epoch {self.epoch + 1}, update {self.step + 1}: Pyro's checks failed "
                        f"(data that the model's distributions do not support, or a model and "
                        f"guide that do not fit the data's shape): {_without_trace(exc)}"
                    ) from exc
                loss, what = math.nan, "a weight"
            if not math.isfinite(loss):
                last = self.out_dir / LAST if self.out_dir is not None else None
                raise DivergenceError(
                    f"{what} became {loss} at epoch {self.epoch + 1}, update {self.step + 1}; "
                    + (f"the last good checkpoint is kept at {last}" if last else
                       "no checkpoint was being written")
                    + "; try a smaller lr or clip_norm")
            total += loss
            steps += int(batch.mask.sum())
            self.step += 1
            self._updates_this_fit += 1
            bar.set_postfix(loss_per_step=f"{total / steps:.3f}", beta=f"{float(beta):.3f}")
        return {"train_objective_per_step": -total / steps, "beta": float(beta)}

    def fit(self, splits, *, resume=None) -> list:
        """Train for ``config.epochs`` epochs (or until early stopping).

        :param splits: a :class:`~pyro_seqvae.data.sequences.Splits`.
        :param resume: a checkpoint or run folder to continue from.
        :returns: the per-epoch metric records.
        """
        config = self.config
        self._updates_this_fit = 0
        self.schedule = config.kl_schedule(-(-len(splits.train) // config.batch_size))
        self.data_info = {"data": {"source": splits.source, "x_dim": splits.x_dim,
                                   "normalisation": splits.info.get("normalisation")}}
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "run.json", {
                "config": config.to_dict(), "environment": environment(self.device),
                "command": sys.argv, "data": {"source": splits.source,
                                              "x_dim": splits.x_dim,
                                              "sizes": {s.name: len(s) for s in splits},
                                              "steps": {s.name: s.num_steps for s in splits}},
                "data_info": {k: v for k, v in splits.info.items() if k != "names"},
                "model_config": self.model.config(), "guide_config": self.guide.config()})
        if resume is not None:
            self.resume(resume)
        else:
            if config.init_output_bias:
                from ..models.output_init import init_output_bias

                init_output_bias(self.model, splits.train.sequences, transpose=config.transpose)
            pyro.set_rng_seed(config.seed)
            self.save(LAST)  # a good checkpoint exists before the first update
        log = MetricsLog(self.out_dir / "metrics.jsonl") if self.out_dir is not None else None
        epochs_without_gain, best = 0, -math.inf  # carried over from the history on resume
        for past in self.history:
            gained = past["valid_elbo_per_step"] > best
            best = max(best, past["valid_elbo_per_step"])
            epochs_without_gain = 0 if gained else epochs_without_gain + 1
        while self.epoch < config.epochs:
            start = time.perf_counter()
            self.model.train()
            self.guide.train()
            record = self.train_epoch(splits.train)
            self.model.eval()
            self.guide.eval()
            with pyro.validation_enabled(config.validate == "always"):
                valid = elbo_per_step(self.model, self.guide,
                                      self._batches(splits.valid, shuffle=False))
            self.epoch += 1
            record = {"epoch": self.epoch, "step": self.step, **record,
                      "valid_elbo_per_step": valid, "seconds": time.perf_counter() - start}
            improved = valid > self.best_valid
            if improved:
                self.best_valid = valid
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
            self.history.append(record)
            if log is not None:
                log.append(record)
            self.save(LAST)
            if improved:
                self.save(BEST)
            logger.info("epoch %d: train objective %.4f (beta %.3f), valid ELBO %.4f nats/step",
                        self.epoch, record["train_objective_per_step"], record["beta"], valid)
            if config.patience is not None and epochs_without_gain >= config.patience:
                logger.info("early stopping: no better validation ELBO for %d epochs",
                            config.patience)
                break
        return self.history
