"""Evaluation of a trained model on a data split: ELBO, importance-sampled and SMC ``log p(x)``."""

from __future__ import annotations

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO

from ..data.batching import iterate_batches
from ..errors import ConfigError, DataError
from .importance import DEFAULT_MAX_ROWS, estimate_log_likelihood


@torch.no_grad()
def elbo_per_step(model, guide, batches, *, num_particles: int = 1) -> float:
    """The ELBO (at ``beta = 1``) summed over sequences, divided by the number of real steps."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=1)
    total, steps = 0.0, 0
    for batch in batches:
        total -= elbo.loss(model, guide, batch.x, batch.mask)
        steps += int(batch.mask.sum())
    if steps == 0:
        raise DataError("elbo_per_step: no real steps (no batches, or every mask is False)")
    return total / steps


def smc_per_step(model, guide, batches, *, num_particles: int, seed: int = 0) -> float:
    """SMC's estimate ``sum_b log Z-hat_b``
    (:func:`~pyro_seqvae.infer.smc.estimate_smc_log_likelihood`, the guide as the proposal,
    systematic resampling) divided by the number of real steps.

    It draws from its own random numbers, seeded with ``seed`` at every call, and restores the
    caller's generators afterwards: as a validation figure it is comparable from epoch to epoch
    and leaves a training run's random stream untouched.

    :param int num_particles: ``K >= 1``.
    """
    from .smc import estimate_smc_log_likelihood

    batches = list(batches)
    if sum(int(batch.mask.sum()) for batch in batches) == 0:
        raise DataError("smc_per_step: no real steps (no batches, or every mask is False)")
    state = pyro.util.get_rng_state()
    try:
        pyro.set_rng_seed(seed)
        estimate = estimate_smc_log_likelihood(model, guide, batches,
                                               num_particles=num_particles)
    finally:
        pyro.util.set_rng_state(state)
    return estimate.per_step()["smc_log_likelihood_per_step"]


def evaluate_split(model, guide, split, *, particles: int = 500, batch_size: int = 16,
                   seed: int = 0, device=None, max_rows: int = DEFAULT_MAX_ROWS,
                   progress=None, estimator: str = "is", smc_repeats: int = 1,
                   resampling: str = "systematic") -> dict:
    """Every figure of a split, under stable key names.

    Keys: ``elbo_per_step`` (mean log weight over the K guide samples, an estimate of the ELBO),
    ``elbo_stderr_per_step``, ``is_log_likelihood_per_step``, ``is_stderr_per_step`` (Monte-Carlo
    standard errors), ``khat_max`` (``inf`` when the tail cannot be fitted, None without
    latents; see :meth:`~pyro_seqvae.infer.importance.ImportanceEstimate.per_step`),
    ``khat_over_0_7`` (PSIS, ArviZ), ``num_sequences``, ``num_steps``, ``particles``, ``seed``,
    ``split``. Per-step figures are frame-weighted: the sum over sequences divided by the total
    number of steps, in nats (higher is better).

    With ``estimator="smc"`` the same JSON also holds SMC's figures with the same K:
    ``smc_log_likelihood_per_step`` (the mean over ``smc_repeats`` independent runs, seeds
    ``seed + 1 ..``), ``smc_stderr_per_step`` (their standard error; None for one run),
    ``smc_runs_per_step``, ``smc_resamplings_per_step``, ``smc_min_ess_mean``,
    ``smc_resampling``.

    :param split: a :class:`~pyro_seqvae.data.sequences.Split`.
    :param int particles: ``K``.
    :param int seed: seeds the guide's samples.
    :param str estimator: ``is``, or ``smc`` for IS and SMC side by side.
    :param int smc_repeats: independent SMC runs (their spread gives the standard error).
    :param str resampling: SMC's scheme, ``systematic`` or ``multinomial``.
    :rtype: dict
    """
    if estimator not in ("is", "smc"):
        raise ConfigError(f"estimator must be 'is' or 'smc', got {estimator!r}")
    if isinstance(smc_repeats, bool) or not isinstance(smc_repeats, int) or smc_repeats < 1:
        raise ConfigError(f"smc_repeats must be a positive integer, got {smc_repeats!r}")
    pyro.set_rng_seed(seed)
    was_training = model.training, guide.training
    model.eval()
    guide.eval()
    smc = {}
    try:
        batches = iterate_batches(split, batch_size, bucket_by_length=True, device=device)
        estimate = estimate_log_likelihood(model, guide, batches, num_particles=particles,
                                           max_rows=max_rows, progress=progress)
        if estimator == "smc":
            runs = []
            for repeat in range(smc_repeats):
                pyro.set_rng_seed(seed + 1 + repeat)
                batches = iterate_batches(split, batch_size, bucket_by_length=True,
                                          device=device)
                runs.append(estimate_log_likelihood(
                    model, guide, batches, num_particles=particles, max_rows=max_rows,
                    progress=progress, method="smc", resampling=resampling).per_step())
            values = np.array([r["smc_log_likelihood_per_step"] for r in runs])
            smc = {**runs[-1],
                   "smc_log_likelihood_per_step": float(values.mean()),
                   "smc_stderr_per_step": (float(values.std(ddof=1) / np.sqrt(len(values)))
                                           if len(values) > 1 else None),
                   "smc_runs_per_step": values.tolist(),
                   "smc_resamplings_per_step": float(np.mean(
                       [r["smc_resamplings_per_step"] for r in runs])),
                   "smc_min_ess_mean": float(np.mean([r["smc_min_ess_mean"] for r in runs]))}
    finally:
        model.train(was_training[0])
        guide.train(was_training[1])
    return {**estimate.per_step(), **smc, "seed": seed, "split": split.name}
