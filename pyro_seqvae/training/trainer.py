"""The training loop: SVI with KL annealing, validation, checkpoints and early stopping."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from ..data.augment import transpose_rolls
from ..data.batching import iterate_batches
from ..data.fingerprint import data_fingerprints
from ..data.support import check_support
from ..errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    RunFolderError,
    SeqVAEError,
)
from ..guides.baselines import decaying_average_state, restore_decaying_averages
from ..infer.annealing import LinearKLSchedule
from ..infer.elbo import DIRECT_ELBOS, DIRECT_PATH_NEEDS, make_elbo, supports_direct_path
from ..infer.evaluation import elbo_per_step, smc_per_step
from .checkpoint import BEST, LAST, load_checkpoint, restore_modules, save_checkpoint
from .config import TrainConfig
from .distributed import SingleProcess
from .reporting import EpochReporter
from .run_folder import RunLock, prepare_new_run
from .runlog import MetricsLog, environment, write_json

logger = logging.getLogger(__name__)

#: Settings that may differ when a run is continued (``fit(resume=...)``); each change is
#: recorded in ``run.json`` (``sessions``) and in the metrics lines. Everything else must match.
RESUMABLE_CHANGES = ("epochs", "lr", "lr_decay", "weight_decay", "clip_norm", "patience",
                     "validate", "elbo_path")
#: Divergence rule: a batch's loss per step, or the negative validation ELBO per step, above
#: ``ref + DIVERGENCE_FACTOR * max(|ref|, 1)`` stops the run, where ``ref`` is the loss per step
#: of the run's first update (the initial or warm-start weights, before any update). A healthy
#: run only improves on its starting point; a run 10x worse than it has blown up.
DIVERGENCE_FACTOR = 10.0


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


def _differences(stored, now, keys):
    return [f"{k}: {stored.get(k)!r} there, {now.get(k)!r} now" for k in keys]


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


def _baseline_state() -> dict:
    """Pyro's decaying-average baselines (param store, outside the modules) for a checkpoint."""
    state = decaying_average_state()
    return {"baseline_averages": state} if state else {}


class Trainer:
    """Fit a model and guide with SVI.

    Per update: ``beta`` from :class:`LinearKLSchedule`, one ``svi.step(x, mask, beta)`` with
    ``ClippedAdam``, with Pyro's validation checks on the first update only
    (``config.validate``), then two guards: the weights must be finite (a non-finite gradient or
    an overflowing step makes them NaN or inf), and the loss per step must stay within the
    divergence rule (:data:`DIVERGENCE_FACTOR`). Per epoch: the training objective and the
    validation ELBO per step (also checked by the rule), a line in ``metrics.jsonl``, an atomic
    ``checkpoint_last.pt`` and, when validation improves, ``checkpoint_best.pt``. A checkpoint is
    only ever written with finite weights; a guard that fails raises :class:`DivergenceError`
    and leaves the last good checkpoint in place. While ``fit`` writes, the run folder is locked
    (:class:`~pyro_seqvae.training.run_folder.RunLock`).

    :param model: a model from :mod:`pyro_seqvae.models`.
    :param guide: its guide.
    :param TrainConfig config: the run's settings.
    :param out_dir: where checkpoints and logs go (None: nothing written).
    :param bool progress: show a progress bar (default: when stderr is a terminal).
    :param bool overwrite: let a new run replace the files of an old run in ``out_dir`` (they
        are removed first); without it a folder that holds files is refused.
    :param bool verbose: print one line per epoch to stderr when logging is not configured
        (with logging at INFO the line is logged instead; see
        :mod:`pyro_seqvae.training.reporting`).
    :param bool tensorboard: also log scalars to ``<out_dir>/tensorboard/`` (needs the
        ``tensorboard`` extra). ``<out_dir>/curves.png`` is refreshed after every epoch.
    :param parallel: the data-parallel context (:mod:`~pyro_seqvae.training.distributed`;
        default: one process). Under a group only rank 0 writes files and shows progress.

    Every figure it shows or writes is per step in nats, signed as an ELBO: higher is better.

    Example::

        splits = load_dataset("jsb")
        config = TrainConfig(model="srnn", guide="smooth", residual=True, epochs=20)
        model, guide = config.build(splits.x_dim)
        history = Trainer(model, guide, config, out_dir="runs/srnn").fit(splits)
    """

    def __init__(self, model, guide, config: TrainConfig, *, out_dir=None, progress=None,
                 overwrite=False, verbose=True, tensorboard=False, parallel=None):
        self.model, self.guide, self.config = model, guide, config
        # -- data-parallel hook (training/distributed.py): device, rank-0-only writes ---------
        self.parallel = parallel if parallel is not None else SingleProcess()
        self.device = self.parallel.local_device(resolve_device(config.device))
        if not self.parallel.is_main:
            out_dir, progress = None, False
        # -- end of hook --
        self.out_dir = Path(out_dir) if out_dir is not None else None
        #: The record key of the figure that selects the best checkpoint and drives patience.
        self.valid_key = f"valid_{config.valid_estimator}_per_step"
        self.valid_label = {"elbo": "ELBO", "smc": "SMC estimate"}[config.valid_estimator]
        self.reporter = EpochReporter(self.out_dir, verbose=verbose, tensorboard=tensorboard,
                                      valid_key=self.valid_key)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.overwrite = overwrite
        self.schedule = config.kl_schedule(1)  # replaced in fit(), once the data is known
        self.optim = ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm,
                                  "lrd": config.lr_decay, "weight_decay": config.weight_decay})
        path = config.elbo_path if config.elbo in DIRECT_ELBOS else "pyro"
        if path == "direct" and not supports_direct_path(config.elbo, model, guide):
            raise ConfigError(
                f"elbo_path 'direct' (elbo {config.elbo!r} needs "
                f"{DIRECT_PATH_NEEDS[config.elbo]}) cannot train "
                f"{type(model).__name__} with {type(guide).__name__}; use elbo_path 'auto' or "
                f"'pyro'")
        self.elbo = make_elbo(config.elbo, num_particles=config.num_particles,
                              discount=config.discount, path=path)
        self.svi = SVI(model, guide, self.optim, self.elbo)
        self.epoch = 0
        self.step = 0
        self._updates_this_fit = 0
        self.best_valid = -math.inf
        self.history = []
        #: The loss per step of the run's first update: the reference of the divergence rule.
        self.divergence_reference = None
        #: Which checkpoints this run has (name -> epoch), for messages that must be true.
        self.checkpoints = {}
        self.session = 1
        #: The command recorded in run.json (the CLI sets the ``pyro-seqvae`` command line).
        self.command = list(sys.argv)
        #: What a checkpoint must carry about the data: its source, width and normalisation.
        self.data_info = {}
        model.to(self.device)
        guide.to(self.device)
        claim_param_store(model, guide)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, name: str, extra=None):
        """Write checkpoint ``name`` in the run folder (only with finite weights).

        :raises CheckpointError: non-finite weights, or the file system refused the write (the
            previous checkpoint of that name is left as it was).
        """
        if self.out_dir is None:
            return None
        path = self.out_dir / name
        try:
            written = save_checkpoint(
                path, model=self.model, guide=self.guide, optim=self.optim, config=self.config,
                epoch=self.epoch, step=self.step, best_valid=self.best_valid,
                extra={**self.data_info, "kl_schedule": {"beta_start": self.schedule.start,
                                                         "beta_increment": self.schedule.increment},
                       "divergence_reference": self.divergence_reference,
                       "session": self.session, **_baseline_state(), **(extra or {})})
        except OSError as exc:
            kept = (f"; the previous {name} (epoch {self.checkpoints[name]}) is unchanged"
                    if name in self.checkpoints and path.is_file() else "")
            raise CheckpointError(f"{path}: could not write the checkpoint of epoch {self.epoch} "
                                  f"({exc.strerror or exc}){kept}") from exc
        self.checkpoints[name] = self.epoch
        return written

    def _check_resume(self, path):
        """Load and validate a checkpoint to continue from, writing nothing.

        :returns: ``(payload, changes)``, ``changes`` mapping a setting to ``[old, new]``.
        """
        payload = self.parallel.load_on_main(load_checkpoint, path,  # parallel hook
                                             map_location=self.device)
        now = self.config.to_dict()
        # a setting added after the checkpoint was written counts as its default there
        stored = {**type(self.config)().to_dict(), **payload["config"]}
        changed = sorted(k for k in set(stored) | set(now)
                         if stored.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise CheckpointError(
                f"{payload['path']}: checkpoint was made with other settings "
                f"({'; '.join(_differences(stored, now, changed))})"
                f"; only {', '.join(RESUMABLE_CHANGES)} may change when a run is continued")
        changes = {k: [stored.get(k), now.get(k)] for k in RESUMABLE_CHANGES
                   if stored.get(k) != now.get(k)}
        return payload, changes

    def _restore(self, payload, changes):
        restore_modules(payload, self.model, self.guide)
        claim_param_store(self.model, self.guide)
        optim_state = payload.get("optim_state")
        if optim_state is not None:
            # ClippedAdam's group keys and the config fields they come from
            fields = {"lr": "lr", "clip_norm": "clip_norm", "lrd": "lr_decay",
                      "weight_decay": "weight_decay"}
            overrides = {key: getattr(self.config, name) for key, name in fields.items()
                         if name in changes}
            for state in optim_state.values():  # a changed lr/clip_norm/... applies now
                for group in state.get("param_groups", ()):
                    group.update(overrides)
            self.optim.set_state(optim_state)
        pyro.util.set_rng_state(payload["rng_state"])
        self.epoch, self.step = payload["epoch"], payload["step"]
        self.best_valid = payload["best_valid"]
        extra = payload.get("extra", {})
        schedule = extra.get("kl_schedule")
        if schedule is not None:  # the run's own schedule, whatever `epochs` is now
            self.schedule = LinearKLSchedule(schedule["beta_start"], schedule["beta_increment"])
        self.divergence_reference = extra.get("divergence_reference")
        if self.config.baseline == "decaying":  # Pyro keeps these averages in the param store
            restore_decaying_averages(extra.get("baseline_averages"), self.device)
        self.session = int(extra.get("session", 1)) + 1
        name = Path(payload["path"]).name
        self.checkpoints = {name: self.epoch}
        if self.out_dir is not None:
            for other in (LAST, BEST):
                if other != name and (self.out_dir / other).is_file():
                    self.checkpoints[other] = "earlier"
            log = MetricsLog(self.out_dir / "metrics.jsonl")
            log.truncate_after(self.epoch)
            self.history = log.read()
        self.history = self.parallel.broadcast_object(self.history)  # parallel hook: patience

    def resume(self, path):
        """Continue from a checkpoint exactly: weights, optimizer, RNG, epoch, step and the KL
        schedule. ``epochs``, ``lr``, ``lr_decay``, ``weight_decay``, ``clip_norm``, ``patience``,
        ``validate`` and ``elbo_path`` may differ from the checkpoint's; any other difference is
        a :class:`CheckpointError`."""
        payload, changes = self._check_resume(path)
        self._restore(payload, changes)
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
        """One device sync for all parameters of model and guide."""
        params = [p for module in (self.model, self.guide) for p in module.parameters()]
        return not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def _divergence_limit(self):
        ref = self.divergence_reference
        return None if ref is None else ref + DIVERGENCE_FACTOR * max(abs(ref), 1.0)

    def _diverged(self, what: str, update=None):
        """A DivergenceError whose every word about checkpoints is true.

        :param int update: the update to name (default: the one in progress).
        """
        kept = []
        for name in (LAST, BEST):
            if name in self.checkpoints and self.out_dir is not None \
                    and (self.out_dir / name).is_file():
                epoch = self.checkpoints[name]
                kept.append(f"{self.out_dir / name}"
                            + (f" (epoch {epoch})" if isinstance(epoch, int) else ""))
        suggested = min(self.config.lr / 10, TrainConfig.lr)
        if kept:
            where = ("the last good checkpoint is kept at " + kept[0]
                     + (f", the best at {kept[1]}" if len(kept) > 1 else ""))
            advice = (f"continue from it with a smaller learning rate: Trainer(..., "
                      f"config.replace(lr={suggested:g})).fit(splits, resume="
                      f"'{self.out_dir / LAST}')")
        else:
            where, advice = "no checkpoint was written", f"try a smaller lr ({suggested:g})"
        update = self.step + 1 if update is None else update
        summary = f"training diverged: {what} at epoch {self.epoch + 1}, update {update}; {where}"
        error = DivergenceError(f"{summary}; {advice}")
        error.summary = summary
        error.checkpoint = self.out_dir / LAST if kept else None
        error.suggested_lr = suggested
        return error

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
            what = "the loss"
            try:
                with warnings.catch_warnings(), pyro.validation_enabled(self._validate_now()):
                    # a NaN loss is reported below as a DivergenceError, not as a warning too
                    warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                    # parallel hook: this rank's rows, gradients summed over the ranks
                    loss = self.parallel.step(self.svi, *self.parallel.shard(x, batch.mask), beta)
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
                raise self._diverged(f"{what} became {loss}")
            # the loss is computed before the update: the update itself (a non-finite gradient,
            # an overflowing step) can still leave NaN or inf weights
            if not self._weights_finite():
                raise self._diverged("the weights became NaN or inf in this update (a "
                                     "non-finite gradient or a step too large)")
            batch_steps = int(batch.mask.sum())
            per_step = loss / max(batch_steps, 1)
            limit = self._divergence_limit()
            if limit is None:
                self.divergence_reference = per_step
            elif per_step > limit:
                raise self._diverged(
                    f"the loss per step reached {per_step:.4g}, beyond the limit {limit:.4g} "
                    f"(the first update's {self.divergence_reference:.4g} + "
                    f"{DIVERGENCE_FACTOR:g} x its size)")
            total += loss
            steps += batch_steps
            self.step += 1
            self._updates_this_fit += 1
            bar.set_postfix(objective=f"{-total / steps:.3f}", beta=f"{float(beta):.3f}")
        return {"train_objective_per_step": -total / steps, "beta": float(beta)}

    def fit(self, splits, *, resume=None, init_from=None) -> list:
        """Train for ``config.epochs`` epochs (or until early stopping).

        Everything is validated before anything is written: a refused resume leaves the run
        folder as it was.

        :param splits: a :class:`~pyro_seqvae.data.sequences.Splits`.
        :param resume: a checkpoint or run folder to continue from (the same run; see
            :meth:`resume` for the settings that may change).
        :param init_from: a checkpoint or run folder whose weights start a new run (a warm
            start: fresh optimizer, schedule and epoch count).
        :returns: the per-epoch metric records.
        :raises DivergenceError: NaN/inf weights or loss, or a blow-up (see the class docs).
        :raises RunFolderError: the folder holds another run, or another process writes to it.
        """
        config = self.config
        if resume is not None and init_from is not None:
            raise ConfigError("resume and init_from exclude each other: a resumed run keeps its "
                              "own weights")
        self._updates_this_fit = 0
        updates_per_epoch = -(-len(splits.train) // config.batch_size)
        check_support(splits, self.model.emission, option="emission")
        self.data_info = {"data": {"source": splits.source, "x_dim": splits.x_dim,
                                   "normalisation": splits.info.get("normalisation"),
                                   "fingerprints": data_fingerprints(splits)}}
        payload = changes = init = run = None
        if resume is not None:
            payload, changes = self._check_resume(resume)
            run = self._read_run_record() if self.out_dir is not None else None
        elif init_from is not None:
            init = load_checkpoint(init_from, map_location=self.device)
            restore_modules(init, self.model, self.guide)  # in memory: a mismatch writes nothing
            claim_param_store(self.model, self.guide)
        lock = RunLock(self.out_dir) if self.out_dir is not None else nullcontext()
        with lock:
            if payload is not None:
                self._restore(payload, changes)
                self.reporter.say(f"resuming from epoch {self.epoch} (update {self.step})")
            else:
                if self.out_dir is not None:
                    prepare_new_run(self.out_dir, overwrite=self.overwrite)
                if init is None and config.init_output_bias:  # a warm start keeps its weights
                    from ..models.output_init import init_output_bias

                    init_output_bias(self.model, splits.train.sequences,
                                     transpose=config.transpose)
                pyro.set_rng_seed(config.seed)
                self.schedule = config.kl_schedule(updates_per_epoch)
            if self.out_dir is not None:
                self._record_session(splits, payload, changes, init, run)
            if payload is None:
                self.save(LAST)  # a good checkpoint exists before the first update
            return self._loop(splits)

    def _read_run_record(self):
        """The run.json of a run to continue (read before anything is written)."""
        path = self.out_dir / "run.json"
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(run, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {"config": self.config.to_dict(), "note": "run.json was missing on resume"}
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path}: unreadable run record ({exc}); the run cannot be "
                                 "continued safely") from exc
        return run

    def _record_session(self, splits, payload, changes, init, run=None):
        """Write run.json (a new run) or append this session to it (a resumed run)."""
        path = self.out_dir / "run.json"
        session = {"started": datetime.now(timezone.utc).isoformat(), "command": self.command,
                   "start_epoch": self.epoch, "start_step": self.step,
                   "environment": environment(self.device)}
        if payload is not None:
            session.update(kind="resume", resumed_from=payload["path"], changes=changes)
            run = self._read_run_record() if run is None else run
            sessions = run.setdefault("sessions", [])
            # numbered by run.json, which also counts sessions that ended without a checkpoint
            self.session = max(self.session, len(sessions) + 1)
            sessions.append({"session": self.session, **session})
        else:
            if init is not None:
                session.update(kind="init_from", init_from=init["path"],
                               init_from_epoch=init["epoch"])
            else:
                session.update(kind="new")
            run = {"config": self.config.to_dict(), "environment": environment(self.device),
                   "command": self.command,
                   "data": {"source": splits.source, "x_dim": splits.x_dim,
                            "sizes": {s.name: len(s) for s in splits},
                            "steps": {s.name: s.num_steps for s in splits}},
                   "data_info": {k: v for k, v in splits.info.items() if k != "names"},
                   "data_fingerprints": self.data_info["data"]["fingerprints"],
                   "model_config": self.model.config(), "guide_config": self.guide.config(),
                   "kl_schedule": {"beta_start": self.schedule.start,
                                   "beta_increment": self.schedule.increment},
                   "sessions": [{"session": self.session, **session}]}
        try:
            write_json(path, run)
        except OSError as exc:
            raise RunFolderError(f"{path}: could not write the run record "
                                 f"({exc.strerror or exc})") from exc

    def _loop(self, splits) -> list:
        config = self.config
        self.parallel.begin_fit(self.model, self.guide, seed=config.seed, step=self.step)  # hook
        log = MetricsLog(self.out_dir / "metrics.jsonl") if self.out_dir is not None else None
        key = self.valid_key
        # the validation batches do not change between epochs (no shuffle, no augmentation)
        valid_batches = list(self._batches(splits.valid, shuffle=False))
        epochs_without_gain, best = 0, -math.inf  # carried over from the history on resume
        for past in self.history:
            gained = past[key] > best
            best = max(best, past[key])
            epochs_without_gain = 0 if gained else epochs_without_gain + 1
        while self.epoch < config.epochs:
            start = time.perf_counter()
            self.model.train()
            self.guide.train()
            record = self.train_epoch(splits.train)
            self.model.eval()
            self.guide.eval()
            with pyro.validation_enabled(config.validate == "always"):
                valid = self.parallel.evaluate(  # parallel hook: sharded and reduced
                    elbo_per_step, self.model, self.guide, valid_batches)
            limit = self._divergence_limit()
            if not math.isfinite(valid) or (limit is not None and -valid > limit):
                raise self._diverged(
                    f"the validation ELBO per step is {valid:.4g}"
                    + (f", beyond the limit {-limit:.4g}" if math.isfinite(valid) else ""),
                    update=self.step)  # the epoch's last update
            figures = {"valid_elbo_per_step": valid}
            if config.valid_estimator == "smc":
                smc = self.parallel.evaluate(  # parallel hook; its own seeded random numbers
                    partial(smc_per_step, num_particles=config.num_particles, seed=config.seed),
                    self.model, self.guide, valid_batches)
                if not math.isfinite(smc):
                    raise self._diverged(f"the validation SMC estimate per step is {smc:.4g}",
                                         update=self.step)
                figures["valid_smc_per_step"] = smc
            self.epoch += 1
            record = {"epoch": self.epoch, "step": self.step, **record, **figures,
                      "seconds": time.perf_counter() - start,
                      "session": self.session, "lr": config.lr, "clip_norm": config.clip_norm}
            improved = figures[key] > self.best_valid
            if improved:
                self.best_valid = figures[key]
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
            self.history.append(record)
            if log is not None:
                log.append(record)
            self.save(LAST)
            if improved:
                self.save(BEST)
            self.reporter.epoch_end(record, self.history, config.epochs)
            if config.patience is not None and epochs_without_gain >= config.patience:
                self.reporter.say(f"early stopping: no better validation {self.valid_label} for "
                                  f"{config.patience} epochs")
                break
        self.reporter.close()
        return self.history
