"""Reweighted wake-sleep (Bornschein & Bengio 2015) with one importance weight per sequence.

With ``K`` guide samples ``z^k ~ q(z | x)`` of each sequence and ``log w_k = log p(x, z^k) -
log q(z^k | x)`` (DESIGN.md, "Objective and evaluation"):

- **wake-theta** (the model): the gradient of the importance-weighted bound
  ``L_K = log (1/K) sum_k w_k`` (IWAE, Burda et al. 2016) with the samples held fixed,
  ``sum_k w~_k grad_theta log p(x, z^k)``, ``w~_k = w_k / sum_j w_j``;
- **wake-phi** (the guide): the self-normalised estimate of the inclusive-KL gradient
  ``-grad_phi KL(p(z | x) || q(z | x)) = E_p(z|x) grad_phi log q(z | x)``, that is
  ``sum_k w~_k grad_phi log q(z^k | x)``: no score-function term, so no baseline, and
  no gradient through the samples (binary latents, TSBN, train as well as Gaussian ones).

Pyro's :class:`pyro.infer.ReweightedWakeSleep` sums the log weights over the whole mini-batch
(one weight per particle for all sequences together: "Mini-batch training is not supported
yet"), which for a batch of 20 chorales is a far looser bound than 20 per-sequence ones; this
class keeps ``[K, B]`` weights, as :mod:`~pyro_seqvae.infer.importance` does. The model's and the
guide's gradients go to disjoint parameter sets: a network the guide borrows from the model
(the VRNN's recurrence, Res_q's ``NN1_p``) is trained by the model's gradient only.

``beta`` scales the latent sites (KL annealing), so the weights are tempered as the annealed
ELBO is; at ``beta = 1`` the loss is ``-sum_b L_K(x_b)``.

**The direct path** (``path="auto"``, the default, or ``"direct"``). Where the model's carry
from step to step is ``z_{t-1}`` alone (TSBN, SRNN, DMM: no z-dependent recurrence such as the
VRNN's ``h_t``) and the pair is on the step protocol
(:func:`~pyro_seqvae.infer.direct.supports_direct`), the densities are computed without Pyro
traces. The samples carry no gradient in RWS, so:

- only the guide's sampling recursion ``z_t ~ q(z_t | z_{t-1}, a_t)`` runs step by step, under
  ``torch.no_grad``: ``[K, B, Z]`` per step, nothing recorded for autograd;
- ``log q(z^k | x)``, ``log p(z^k)`` and ``log p(x | z^k)`` are then one batched call each over
  all ``T`` steps, given ``z_{0:T-1}`` and ``z_{1:T}`` ``[K, B, T, Z]``.

With the same random numbers the densities, the loss and both gradients equal the traced
path's (tested in float64). One difference: the model's ``precompute`` runs once, so a TSBN's
training-time feedback corruption (``input_flip``) is drawn once and read by the guide and the
model alike; the traced path draws it separately for each.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger

from ..errors import ConfigError
from ..models.base import Carry, LatentSequenceModel, _as_beta
from ..models.pairing import check_guide_model
from .direct import _draw, make_steps, register_pair, supports_direct
from .importance import _in_particle_plate, _sum_log_probs

#: How :class:`ReweightedWakeSleep` computes its densities: ``auto`` (direct where
#: :func:`supports_direct_rws`, else traced), ``direct`` (refuse other pairs) or ``pyro``.
RWS_PATHS = ("auto", "direct", "pyro")


class _DrawnWithoutGradient(Messenger):
    """Draw each latent site as Pyro would (``rsample`` where the family has it), but under
    ``torch.no_grad``: the guide's later steps then read samples that carry no gradient, so
    wake-phi's ``grad_phi log q(z^k | x)`` holds ``z^k`` fixed. (Detaching the trace afterwards
    is not enough with Gaussian latents: each ``q(z_t | z_{t-1}, .)`` would still be
    differentiated through the reparameterised ``z_{t-1}``.)"""

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        with torch.no_grad():
            msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])
        msg["done"] = True


def supports_direct_rws(model, guide) -> bool:
    """Whether the direct path computes this pair's RWS densities: the pair is on the step
    protocol and the model's carry is ``z_{t-1}`` alone (its ``advance`` is the protocol's)."""
    return (supports_direct(model, guide)
            and type(model).advance is LatentSequenceModel.advance)


def direct_log_densities(model, guide, x, mask, num_particles: int, beta=1.0):
    """``log p(x, z^k)`` and ``log q(z^k | x)`` ``[K, B]``, with ``z^k ~ q`` drawn without
    gradient, on the step protocol (see the module's description).

    :param torch.Tensor x: ``[B, T, D]``.
    :param torch.Tensor mask: ``[B, T]`` bool.
    :returns: ``(log_p, log_q)``; the latent terms of both are scaled by ``beta``.
    """
    if not supports_direct_rws(model, guide):
        check_guide_model(guide, model)
        raise ConfigError(f"the direct RWS path needs a LatentSequenceModel whose carry is "
                          f"z_(t-1) alone and its SequenceGuide on the step protocol, got "
                          f"{type(model).__name__} and {type(guide).__name__}; use path 'pyro'")
    x, mask = model.check_batch(x, mask)
    beta = _as_beta(beta, x)
    register_pair(model, guide)
    B, T, _ = x.shape
    K = num_particles
    pre = model.precompute(x, mask)
    steps = make_steps(model, guide)  # the guide head's z-free blocks, once for all steps
    carry = steps.start(x, mask, pre, guide.summarise(x, mask, pre))
    z_0 = carry.z  # [B, Z]; the DMM's is a parameter
    draws = []
    with torch.no_grad():  # the sampling recursion: no gradient flows through RWS's samples
        for t in range(T):
            _, z_t = _draw(steps.proposal(carry, t)[0], (K, B))
            draws.append(z_t)
            carry = model.advance(carry, pre[:, t], z_t)
    z = torch.stack(draws, dim=-2)  # [K, B, T, Z]
    previous = Carry(z=torch.cat([z_0.unsqueeze(-2).expand(K, B, 1, z_0.shape[-1]),
                                  z[..., :-1, :]], dim=-2))
    real = mask.to(x.dtype)
    q, prior_loc = steps.proposal(previous, slice(None))  # every step at once: [K, B, T]
    log_q = (q.log_prob(z) * real).sum(-1) * beta
    log_z = (model.prior(previous, pre, loc=prior_loc).log_prob(z) * real).sum(-1) * beta
    emission = model.emission_dist(pre, model.emission_input(previous, z))
    log_x = (emission.log_prob(x) * real).sum(-1)
    return log_z + log_x, log_q


class ReweightedWakeSleep(ELBO):
    """RWS with per-sequence weights: wake-theta for the model, wake-phi for the guide.

    The loss it returns (and that the Trainer reports as the training objective) is the negative
    importance-weighted bound ``-sum_b L_K(x_b)`` of the batch, not the ELBO; validation and
    early stopping still use the ELBO.

    :param int num_particles: ``K >= 2`` (with one particle every normalised weight is 1 and
        wake-phi is maximum likelihood on the guide's own sample; Bornschein & Bengio use 5).
    :param str path: ``auto`` (direct where :func:`supports_direct_rws`, else Pyro's traces),
        ``direct`` (a one-line :class:`ConfigError` for other pairs) or ``pyro``.

    Example::

        svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), ReweightedWakeSleep(5))
        svi.step(batch.x, batch.mask)
    """

    def __init__(self, num_particles: int = 5, *, path: str = "auto"):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) \
                or num_particles < 2:
            raise ConfigError(f"reweighted wake-sleep needs num_particles >= 2 (its weights are "
                              f"self-normalised over the particles), got {num_particles!r}")
        if path not in RWS_PATHS:
            raise ConfigError(f"the RWS path must be one of {list(RWS_PATHS)}, got {path!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.path = path

    def log_densities(self, model, guide, x, mask, beta=1.0):
        """``log p(x, z^k)`` and ``log q(z^k | x)``, ``[K, B]`` each, ``z^k`` drawn from the
        guide and detached (the model sees them as data)."""
        if self.path == "direct" or (self.path == "auto" and supports_direct_rws(model, guide)):
            return direct_log_densities(model, guide, x, mask, self.num_particles, beta)
        args = (x, mask, beta)
        sampled = _DrawnWithoutGradient()(_in_particle_plate(guide, self.num_particles))
        guide_trace = poutine.trace(sampled).get_trace(*args)  # values drawn without gradient
        replayed = poutine.replay(_in_particle_plate(model, self.num_particles), trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        shape = (self.num_particles, x.shape[0])
        log_p = torch.as_tensor(_sum_log_probs(model_trace)).expand(shape)
        log_q = torch.as_tensor(_sum_log_probs(guide_trace)).expand(shape)
        return log_p, log_q

    def _losses(self, model, guide, x, mask, beta):
        log_p, log_q = self.log_densities(model, guide, x, mask, beta)
        log_w = log_p - log_q.detach()
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)  # [B]
        weights = torch.softmax(log_w.detach(), 0)  # w~, [K, B]
        return -bound.sum(), -(weights * log_q).sum()

    def loss(self, model, guide, x, mask, beta=1.0):
        """``-sum_b L_K(x_b)`` without gradients (a float)."""
        with torch.no_grad():
            return float(self._losses(model, guide, x, mask, beta)[0])

    def loss_and_grads(self, model, guide, x, mask, beta=1.0):
        """Wake-theta gradients into the model's parameters, wake-phi gradients into the
        guide's own; returns ``-sum_b L_K(x_b)``."""
        theta_loss, phi_loss = self._losses(model, guide, x, mask, beta)
        model_params = [p for p in model.parameters() if p.requires_grad]
        shared = {id(p) for p in model_params}
        guide_params = [p for p in guide.parameters() if p.requires_grad and id(p) not in shared]
        if model_params and theta_loss.requires_grad:
            theta_loss.backward(inputs=model_params, retain_graph=True)
        if guide_params and phi_loss.requires_grad:
            phi_loss.backward(inputs=guide_params)
        return float(theta_loss.detach())

    def differentiable_loss(self, model, guide, *args, **kwargs):
        raise NotImplementedError("ReweightedWakeSleep has two losses; use loss_and_grads")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("ReweightedWakeSleep traces its particles itself")


__all__ = ["RWS_PATHS", "ReweightedWakeSleep", "direct_log_densities", "supports_direct_rws"]
