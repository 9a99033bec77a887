"""Importance-sampled marginal likelihood per sequence, with PSIS diagnostics.

``log p(x) ~= logsumexp_k [log p(x, z^k) - log q(z^k | x)] - log K`` with ``z^k ~ q`` (DESIGN.md,
"Objective and evaluation"). Pyro's ``vectorized_importance_weights`` and ``psis_diagnostic``
reduce over the whole batch; here the weights are kept per sequence: the guide is traced under
``pyro.plate("particles", K, dim=-2)``, the model replayed on it, and each site's masked
``log_prob`` (shape ``[K, B]``) summed. Particles are drawn in chunks so that memory stays
bounded for K = 500 on long sequences.

The library's own models and guides take a faster path by default, with the same weights
(:mod:`~pyro_seqvae.infer.direct`: no traces, the z-independent parts once per sequence);
the traced path stays for any other Pyro model and guide (``path="traced"``).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Particle-steps per vectorised draw of the traced path: K=500 on the JSB test split then peaks
#: near 1 GB of RSS on CPU (100,000 peaked at 2-3.5 GB); the direct path holds this many
#: particle-steps at once (particle rows of one step times an emission window).
DEFAULT_MAX_ROWS = 50_000

#: Pareto k-hat above which an importance-sampled estimate is not to be trusted (Vehtari et al.).
KHAT_THRESHOLD = 0.7


def check_real_steps(mask, where: str) -> None:
    """Refuse a batch with a sequence of no real step: its ``log p(x)`` would be the empty sum 0
    and it would count as a sequence of zero steps in every per-step figure.

    :param torch.Tensor mask: ``[B, T]`` bool.
    :raises DataError: naming the batch and the first empty row.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return  # the model's own check names a malformed mask
    empty = ~mask.any(-1)
    if bool(empty.any()):
        rows = empty.nonzero()[:, 0].tolist()
        raise DataError(f"{where}: mask is all False for sequence{'s' if len(rows) > 1 else ''} "
                        f"{rows[:5]}{' ...' if len(rows) > 5 else ''} of {mask.shape[0]}; "
                        "every sequence needs at least one real step")


def _in_particle_plate(fn, num_particles: int):
    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def _sum_log_probs(trace) -> torch.Tensor:
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site["log_prob"]
    return total


@torch.no_grad()
def log_importance_weights(model, guide, x, mask, num_particles: int) -> torch.Tensor:
    """Log weights ``log p(x, z^k) - log q(z^k | x)`` per particle and sequence.

    :param model: a model ``model(x, mask, beta)``; evaluated at ``beta = 1``.
    :param guide: its guide.
    :param torch.Tensor x: ``[B, T, D]``.
    :param torch.Tensor mask: ``[B, T]`` bool.
    :param int num_particles: ``K`` (one vectorised draw).
    :returns: ``[K, B]``.
    :rtype: torch.Tensor
    """
    guide_trace = poutine.trace(_in_particle_plate(guide, num_particles)).get_trace(x, mask)
    replayed = poutine.replay(_in_particle_plate(model, num_particles), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(x, mask)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_w = _sum_log_probs(model_trace) - _sum_log_probs(guide_trace)
    return torch.as_tensor(log_w).expand(num_particles, x.shape[0])


#: How :func:`chunked_log_weights` computes the weights: ``auto`` (direct where
#: :func:`~pyro_seqvae.infer.direct.supports_direct`, else traced), ``direct`` or ``traced``.
PATHS = ("auto", "direct", "traced")


def chunked_log_weights(model, guide, x, mask, num_particles: int, *,
                        max_rows: int = DEFAULT_MAX_ROWS, path: str = "auto") -> torch.Tensor:
    """``[K, B]`` log weights, drawn in chunks of at most ``max_rows`` particle-steps.

    The library's latent models and guides take the direct path
    (:func:`~pyro_seqvae.infer.direct.direct_log_weights`: no trace, the z-independent parts
    once per sequence; the same weights); other pairs, or ``path="traced"``, take
    :func:`log_importance_weights`, which traces the guide and replays the model.

    :param str path: ``auto``, ``direct`` or ``traced``.
    :returns: ``[K, B]``.
    """
    from .direct import direct_log_weights, supports_direct

    if path not in PATHS:
        raise ConfigError(f"path must be one of {list(PATHS)}, got {path!r}")
    if not model.has_latents:  # exact likelihood: every weight is log p(x)
        return log_importance_weights(model, guide, x, mask, 1).expand(num_particles, -1)
    if path == "direct" or (path == "auto" and supports_direct(model, guide)):
        return direct_log_weights(model, guide, x, mask, num_particles, max_rows=max_rows)
    chunk = max(1, max_rows // (x.shape[0] * x.shape[1]))
    parts = []
    for start in range(0, num_particles, chunk):
        parts.append(log_importance_weights(model, guide, x, mask,
                                            min(chunk, num_particles - start)))
    return torch.cat(parts, dim=0)


def pareto_khat(log_weights: torch.Tensor) -> np.ndarray:
    """PSIS Pareto k-hat per sequence, by ArviZ's ``psislw``.

    :param torch.Tensor log_weights: ``[K, B]``.
    :returns: ``[B]`` k-hat values (NaN where the weights are all equal, e.g. the RNN).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its 1.0 refactor
        import arviz as az

    lw = log_weights.detach().double().cpu().numpy().T  # ArviZ wants samples on the last axis
    khat = np.full(lw.shape[0], np.nan)
    varying = lw.max(axis=1) - lw.min(axis=1) > 1e-9
    if varying.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-K warnings; the caller reports k-hat itself
            _, k = az.psislw(lw[varying], reff=1.0)
        khat[varying] = np.asarray(k, dtype=float)
    return khat


@dataclass(frozen=True)
class ImportanceEstimate:
    """Per-sequence results of importance sampling (all arrays of shape ``[N]``).

    :ivar log_likelihood: ``log p(x)`` estimates (nats per sequence).
    :ivar stderr: Monte-Carlo standard errors of ``log_likelihood`` (delta method).
    :ivar elbo: mean log weight, an estimate of each sequence's ELBO.
    :ivar elbo_stderr: its Monte-Carlo standard error.
    :ivar khat: PSIS Pareto k-hat of the weights.
    :ivar lengths: steps per sequence.
    :ivar particles: ``K``.
    """

    log_likelihood: np.ndarray
    stderr: np.ndarray
    elbo: np.ndarray
    elbo_stderr: np.ndarray
    khat: np.ndarray
    lengths: np.ndarray
    particles: int

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def per_step(self) -> dict:
        """Frame-weighted figures: sums over sequences divided by the total number of steps.

        ``khat_max`` is a float, ``inf`` when some sequence's weights have too few particles to
        fit their tail (the results JSON writes it as ``Infinity``, which :func:`json.load`
        reads back as ``float('inf')``), or None when there are no importance weights to
        diagnose (a model without latents, whose estimate is exact).
        """
        steps = self.num_steps
        khat = self.khat[~np.isnan(self.khat)]
        khat_max = float(khat.max()) if khat.size else None
        return {
            "elbo_per_step": float(self.elbo.sum() / steps),
            "elbo_stderr_per_step": float(math.sqrt((self.elbo_stderr ** 2).sum()) / steps),
            "is_log_likelihood_per_step": float(self.log_likelihood.sum() / steps),
            "is_stderr_per_step": float(math.sqrt((self.stderr ** 2).sum()) / steps),
            # float('inf'): too few particles to fit the tail (counted as over 0.7); None: no
            # importance weights to diagnose (the RNN's estimate is exact)
            "khat_max": khat_max,
            "khat_over_0_7": int((khat > KHAT_THRESHOLD).sum()),
            "num_sequences": int(len(self.lengths)),
            "num_steps": steps,
            "particles": self.particles,
        }


def summarise_log_weights(log_w: torch.Tensor):
    """Per-sequence ``(log p_hat, stderr, elbo, elbo_stderr)`` from ``[K, B]`` log weights."""
    K = log_w.shape[0]
    log_w = log_w.double()
    log_p = torch.logsumexp(log_w, 0) - math.log(K)
    w = (log_w - log_w.max(0).values).exp()
    if K > 1:
        stderr = w.std(0) / (w.mean(0) * math.sqrt(K))
        elbo_stderr = log_w.std(0) / math.sqrt(K)
    else:
        stderr = elbo_stderr = torch.full_like(log_p, float("nan"))
    return log_p, stderr, log_w.mean(0), elbo_stderr


def estimate_log_likelihood(model, guide, batches, *, num_particles: int = 500,
                            max_rows: int = DEFAULT_MAX_ROWS, progress=None, method: str = "is",
                            resampling: str = "systematic", path: str = "auto"):
    """Estimate ``log p(x)`` for every sequence of ``batches``: importance sampling or SMC.

    :param model: the model (evaluated at ``beta = 1``).
    :param guide: the proposal.
    :param batches: an iterable of :class:`~pyro_seqvae.data.batching.Batch` (or ``(x, mask)``).
    :param int num_particles: ``K`` particles per sequence.
    :param int max_rows: memory bound: particle-steps per vectorised draw (IS) or particle
        rows per run (SMC).
    :param progress: an optional callable ``progress(num_sequences_done)``.
    :param str method: ``is`` (importance sampling, with PSIS k-hat) or ``smc`` (sequential
        Monte Carlo, :func:`~pyro_seqvae.infer.smc.estimate_smc_log_likelihood`).
    :param str resampling: SMC's scheme (``systematic`` or ``multinomial``).
    :param str path: how IS computes its weights (:func:`chunked_log_weights`): ``auto`` (the
        direct path where it applies), ``direct`` or ``traced``.
    :rtype: ImportanceEstimate or ~pyro_seqvae.infer.smc.SMCEstimate
    """
    if method == "smc":
        from .smc import estimate_smc_log_likelihood

        return estimate_smc_log_likelihood(model, guide, batches, num_particles=num_particles,
                                           resampling=resampling, max_rows=max_rows,
                                           progress=progress)
    if method != "is":
        raise ConfigError(f"method must be 'is' or 'smc', got {method!r}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"particles must be a positive integer, got {num_particles!r}")
    cols = {k: [] for k in ("log_p", "stderr", "elbo", "elbo_stderr", "khat", "lengths")}
    for number, batch in enumerate(batches):
        x, mask = (batch.x, batch.mask) if hasattr(batch, "mask") else batch
        check_real_steps(mask, f"estimate_log_likelihood: batch {number}")
        log_w = chunked_log_weights(model, guide, x, mask, num_particles, max_rows=max_rows,
                                    path=path)
        for key, value in zip(("log_p", "stderr", "elbo", "elbo_stderr"),
                              summarise_log_weights(log_w)):
            cols[key].append(value.cpu().numpy())
        cols["khat"].append(pareto_khat(log_w) if model.has_latents
                            else np.full(x.shape[0], np.nan))
        cols["lengths"].append(mask.sum(-1).cpu().numpy())
        if progress is not None:
            progress(x.shape[0])
    if not cols["lengths"]:
        raise DataError("estimate_log_likelihood: batches is empty; expected at least one "
                        "batch of sequences")
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    estimate = ImportanceEstimate(arrays["log_p"], arrays["stderr"], arrays["elbo"],
                                  arrays["elbo_stderr"], arrays["khat"],
                                  arrays["lengths"].astype(int), num_particles)
    bad = int((estimate.khat > KHAT_THRESHOLD).sum())
    if bad:
        logger.warning("Pareto k-hat > %.1f for %d of %d sequences: their importance-sampled "
                       "estimates are not to be trusted", KHAT_THRESHOLD, bad, len(estimate.khat))
    return estimate
