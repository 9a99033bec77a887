"""Batched sequential Monte Carlo over padded sequences, with the guide as proposal.

DESIGN.md, "Objective and evaluation": K particles per sequence, vectorised as leading dims
``[K, B]``. At step ``t`` each particle draws ``z_t^k ~ q(z_t | .)`` (the guide's
:meth:`~pyro_seqvae.guides.base.SequenceGuide.proposal`, the very formula of the guide's Pyro
sites, computed as in :mod:`~pyro_seqvae.infer.direct`: z-independent parts once per sequence)
and adds the incremental weight

    ``log w_t^k = log p(x_t | .) + log p(z_t^k | .) - log q(z_t^k | .)``.

When the effective sample size ``(sum_k w^k)^2 / sum_k (w^k)^2`` of a sequence falls below
``threshold * K`` (K/2 by default), that sequence alone takes
``log Z += logsumexp_k w^k - log K``, resamples its ancestors (systematic or multinomial, drawn
without gradient, selected per sequence with ``torch.where``) and resets its weights; at the
sequence's end the same term is added once more. ``Z-hat`` is unbiased for ``p(x)``. Padded
steps add nothing and never resample, and nothing resamples at a sequence's last step (the end
term follows). The design follows FIVO's reference (``research/fivo/fivo/smc.py``).

Only the distributions' own ``sample``/``rsample`` and ``log_prob`` are used, so any latent family
works (Gaussian or not). Pyro's ``SMCFilter`` does not fit: it runs under ``no_grad``, filters one
sequence at a time and keeps no evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..layers import register_params
from ..models.base import _as_beta
from .direct import make_steps

#: Resampling schemes of :func:`run_smc`.
RESAMPLING = ("systematic", "multinomial", "never")


@dataclass
class SMCResult:
    """What one SMC run returns, per sequence.

    :ivar log_z: ``[B]`` the log of the unbiased estimate ``Z-hat`` of ``p(x)`` (differentiable
        when run with gradients: the FIVO bound).
    :ivar num_resamplings: ``[B]`` how many times each sequence resampled.
    :ivar ess: ``[T, B]`` effective sample size at each step before any resampling (NaN on
        padded steps).
    :ivar proposal_objective: ``[B]`` NASMC's inclusive-KL surrogate
        ``sum_t sum_k w~_t^k log q(z_t^k | .)`` (only with ``nasmc=True``, else None).
    """

    log_z: torch.Tensor
    num_resamplings: torch.Tensor
    ess: torch.Tensor
    proposal_objective: torch.Tensor | None = None


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """``(sum_k w^k)^2 / sum_k (w^k)^2`` from log weights ``[K, B]``; returns ``[B]``."""
    return (2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)).exp()


@torch.no_grad()
def resample_indices(log_w: torch.Tensor, scheme: str = "systematic") -> torch.Tensor:
    """Draw ancestor indices ``[K, B]`` for each sequence from its normalised weights.

    - ``systematic``: one uniform ``u ~ U[0, 1)`` per sequence, points ``(k + u) / K`` on the
      weights' CDF (Kitagawa 1996): lower variance than multinomial;
    - ``multinomial``: K independent draws per sequence.

    :param torch.Tensor log_w: ``[K, B]`` unnormalised log weights.
    :returns: ``[K, B]`` long indices into dim 0.
    """
    K, B = log_w.shape
    probs = torch.softmax(log_w.detach().double(), 0)
    if scheme == "multinomial":
        return torch.multinomial(probs.T, K, replacement=True).T
    if scheme == "systematic":
        u = torch.rand(B, dtype=probs.dtype, device=probs.device)
        points = (torch.arange(K, dtype=probs.dtype, device=probs.device).unsqueeze(0)
                  + u.unsqueeze(1)) / K                                        # [B, K]
        cdf = probs.T.cumsum(-1)
        return torch.searchsorted(cdf, points).clamp_(max=K - 1).T
    raise ConfigError(f"resampling must be one of {list(RESAMPLING[:2])}, got {scheme!r}")


def _select(value: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
    index = ancestors.reshape(ancestors.shape + (1,) * (value.dim() - 2)).expand_as(value)
    return value.gather(0, index)


def _map_carry(carry, fn):
    return carry._replace(**{k: fn(v) for k, v in carry._asdict().items()
                             if isinstance(v, torch.Tensor)})


def check_smc_options(num_particles, resampling, threshold):
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"particles must be a positive integer, got {num_particles!r}")
    if resampling not in RESAMPLING:
        raise ConfigError(f"resampling must be one of {list(RESAMPLING)}, got {resampling!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"resampling threshold must be in [0, 1] (a fraction of K), "
                          f"got {threshold!r}")


def run_smc(model, guide, x, mask, *, num_particles: int, resampling: str = "systematic",
            threshold: float = 0.5, beta=1.0, reparameterized: bool = True,
            nasmc: bool = False) -> SMCResult:
    """Run SMC with ``guide`` as the proposal on a padded batch.

    :param model: a :class:`~pyro_seqvae.models.base.LatentSequenceModel`.
    :param guide: its :class:`~pyro_seqvae.guides.base.SequenceGuide` (filtering or smoothing).
    :param torch.Tensor x: ``[B, T, D]``.
    :param torch.Tensor mask: ``[B, T]`` bool (True on real steps; padding at the end).
    :param int num_particles: ``K``.
    :param str resampling: ``systematic``, ``multinomial`` or ``never`` (importance sampling:
        ``log Z`` is then the IWAE bound).
    :param float threshold: resample a sequence when its ESS ``< threshold * K`` (FIVO: 0.5;
        1 resamples at every step).
    :param beta: KL weight: the incremental weight is ``log p(x_t|.) + beta * (log p(z_t|.) -
        log q(z_t|.))``, so that with ``K = 1`` this is exactly the annealed ELBO of
        ``Trace_ELBO``; ``beta = 1`` (evaluation) gives the unbiased ``Z-hat``.
    :param bool reparameterized: draw ``z_t`` with ``rsample`` (FIVO's gradient) where the
        latent family has one; else ``sample`` (no gradient through the draws).
    :param bool nasmc: draw without gradient, detach ``log q`` in the weights (the model's
        gradient of ``log Z-hat`` with the proposal held fixed) and also return NASMC's
        proposal surrogate ``sum_t sum_k w~_t^k log q(z_t^k | .)`` with detached normalised
        filtering weights ``w~_t`` (Gu et al. 2015, eq. 9: the inclusive-KL gradient).
    :rtype: SMCResult
    """
    check_smc_options(num_particles, resampling, threshold)
    if not getattr(model, "has_latents", False):
        raise ConfigError(f"SMC needs a model with latent sites; {type(model).__name__} has "
                          "none (its likelihood is exact: use the trace objective)")
    x, mask = model.check_batch(x, mask)
    register_params(model)
    register_params(guide)
    beta = _as_beta(beta, x)
    K = num_particles
    B, T, _ = x.shape
    log_k = math.log(K)
    steps = make_steps(model, guide)
    carry = _map_carry(steps.start(x, mask), lambda v: v.expand((K,) + v.shape))
    log_w = x.new_zeros(K, B)
    log_z = x.new_zeros(B)
    proposal_objective = x.new_zeros(B) if nasmc else None
    num_resamplings = torch.zeros(B, dtype=torch.long, device=x.device)
    ess_trace = x.new_full((T, B), math.nan)
    identity = torch.arange(K, device=x.device).unsqueeze(1).expand(K, B)
    lengths = mask.sum(-1)
    draw_rsample = reparameterized and not nasmc
    for t in range(T):
        real = mask[:, t]
        q_t, p_t, state = steps.dists(carry, t)
        # binary latents (TSBN) have no rsample: their draws carry no gradient (FIVO refuses
        # to train them; see FIVO.loss_and_grads)
        z_t = q_t.rsample() if draw_rsample and q_t.has_rsample else q_t.sample()
        log_q = q_t.log_prob(z_t)                                               # [K, B]
        log_p = p_t.log_prob(z_t)
        record, next_carry = steps.after(carry, t, z_t, state)
        log_x = steps.emission_log_prob(x, t, t + 1, record.unsqueeze(-2))[..., 0]
        increment = log_x + beta * (log_p - (log_q.detach() if nasmc else log_q))
        log_w = log_w + torch.where(real, increment, increment.new_zeros(()))
        if nasmc:
            weights = torch.softmax(log_w.detach(), 0)
            proposal_objective = proposal_objective + torch.where(
                real, (weights * log_q).sum(0), log_q.new_zeros(()))
        ess = effective_sample_size(log_w.detach())
        ess_trace[t] = torch.where(real, ess, ess.new_full((), math.nan))
        carry = next_carry
        if resampling == "never" or t + 1 == T:
            continue
        resample = (ess < threshold * K) & (t + 1 < lengths)
        if not bool(resample.any()):
            continue
        log_z = log_z + torch.where(resample, torch.logsumexp(log_w, 0) - log_k,
                                    log_z.new_zeros(()))
        ancestors = torch.where(resample, resample_indices(log_w, resampling), identity)
        carry = _map_carry(carry, lambda v, a=ancestors: _select(v, a))
        log_w = torch.where(resample, log_w.new_zeros(()), log_w)
        num_resamplings += resample.long()
    log_z = log_z + torch.logsumexp(log_w, 0) - log_k
    return SMCResult(log_z, num_resamplings, ess_trace, proposal_objective)


@dataclass(frozen=True)
class SMCEstimate:
    """Per-sequence results of SMC evaluation (arrays of shape ``[N]``).

    :ivar log_likelihood: ``log Z-hat`` per sequence (nats), at ``beta = 1``.
    :ivar num_resamplings: resampling events per sequence.
    :ivar min_ess: the smallest ESS over each sequence's steps.
    :ivar ess: per sequence, the ESS trace over its own steps (list of ``[L_n]`` arrays).
    :ivar lengths: steps per sequence.
    :ivar particles: ``K``.
    :ivar resampling: the scheme.
    """

    log_likelihood: np.ndarray
    num_resamplings: np.ndarray
    min_ess: np.ndarray
    ess: list
    lengths: np.ndarray
    particles: int
    resampling: str

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def per_step(self) -> dict:
        """Frame-weighted figures under stable keys (``smc_`` prefix)."""
        steps = self.num_steps
        return {
            "smc_log_likelihood_per_step": float(self.log_likelihood.sum() / steps),
            "smc_resamplings_per_step": float(self.num_resamplings.sum() / steps),
            "smc_min_ess_mean": float(self.min_ess.mean()),
            "smc_particles": self.particles,
            "smc_resampling": self.resampling,
        }


@torch.no_grad()
def estimate_smc_log_likelihood(model, guide, batches, *, num_particles: int = 500,
                                resampling: str = "systematic", threshold: float = 0.5,
                                max_rows: int = 50_000, progress=None) -> SMCEstimate:
    """SMC estimate of ``log p(x)`` for every sequence of ``batches`` (at ``beta = 1``).

    :param batches: an iterable of :class:`~pyro_seqvae.data.batching.Batch` (or ``(x, mask)``).
    :param int num_particles: ``K``.
    :param int max_rows: memory bound: particle rows ``K * B`` per run (a batch is split into
        runs of fewer sequences when ``K * B`` exceeds it).
    :param progress: an optional callable ``progress(num_sequences_done)``.
    :rtype: SMCEstimate
    """
    check_smc_options(num_particles, resampling, threshold)
    cols = {k: [] for k in ("log_z", "resamplings", "min_ess", "lengths")}
    traces = []
    for batch in batches:
        x, mask = (batch.x, batch.mask) if hasattr(batch, "mask") else batch
        step = max(1, max_rows // num_particles)
        for start in range(0, x.shape[0], step):
            xs, ms = x[start:start + step], mask[start:start + step]
            lengths = ms.sum(-1)
            if not model.has_latents:  # exact likelihood
                from .importance import log_importance_weights

                log_z = log_importance_weights(model, guide, xs, ms, 1)[0]
                resamplings = torch.zeros_like(lengths)
                ess = torch.full(ms.T.shape, float(num_particles))
            else:
                result = run_smc(model, guide, xs, ms, num_particles=num_particles,
                                 resampling=resampling, threshold=threshold)
                log_z, resamplings, ess = result.log_z, result.num_resamplings, result.ess
            ess = ess.T.double().cpu().numpy()
            cols["log_z"].append(log_z.double().cpu().numpy())
            cols["resamplings"].append(resamplings.cpu().numpy())
            cols["lengths"].append(lengths.cpu().numpy())
            for row, n in zip(ess, lengths.tolist()):
                traces.append(row[:n])
                cols["min_ess"].append(np.array([row[:n].min()]))
        if progress is not None:
            progress(x.shape[0])
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    return SMCEstimate(arrays["log_z"], arrays["resamplings"].astype(int), arrays["min_ess"],
                       traces, arrays["lengths"].astype(int), num_particles, resampling)


__all__ = ["RESAMPLING", "SMCEstimate", "SMCResult", "effective_sample_size",
           "estimate_smc_log_likelihood", "resample_indices", "run_smc"]
