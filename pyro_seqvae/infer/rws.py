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
"""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.infer import ELBO

from ..errors import ConfigError
from .importance import _in_particle_plate, _sum_log_probs


class ReweightedWakeSleep(ELBO):
    """RWS with per-sequence weights: wake-theta for the model, wake-phi for the guide.

    The loss it returns (and that the Trainer reports as the training objective) is the negative
    importance-weighted bound ``-sum_b L_K(x_b)`` of the batch, not the ELBO; validation and
    early stopping still use the ELBO.

    :param int num_particles: ``K >= 2`` (with one particle every normalised weight is 1 and
        wake-phi is maximum likelihood on the guide's own sample; Bornschein & Bengio use 5).

    Example::

        svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), ReweightedWakeSleep(5))
        svi.step(batch.x, batch.mask)
    """

    def __init__(self, num_particles: int = 5):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) \
                or num_particles < 2:
            raise ConfigError(f"reweighted wake-sleep needs num_particles >= 2 (its weights are "
                              f"self-normalised over the particles), got {num_particles!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=1)

    def log_densities(self, model, guide, x, mask, beta=1.0):
        """``log p(x, z^k)`` and ``log q(z^k | x)``, ``[K, B]`` each, ``z^k`` drawn from the
        guide and detached (the model sees them as data)."""
        args = (x, mask, beta)
        guide_trace = poutine.trace(_in_particle_plate(guide, self.num_particles)).get_trace(*args)
        guide_trace.detach_()
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


__all__ = ["ReweightedWakeSleep"]
