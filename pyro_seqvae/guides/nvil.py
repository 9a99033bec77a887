"""NVIL's learning-signal normalisation (Mnih & Gregor 2014, sec. 3.3 and Algorithm 1).

A score-function gradient weights ``grad log q(z_t | .)`` by a learning signal, here the
downstream cost ``l_t = sum_{s >= t} [log p - log q]`` (:mod:`pyro_seqvae.infer.downstream`).
NVIL reduces its variance in three ways, all of which leave the direction of the expected
gradient unchanged:

1. **centring** by a running mean ``c`` of the signal: here one mean per number of steps left
   ``k = L - t + 1`` of a sequence of length ``L`` (a downstream cost sums ``k`` steps, so its
   level grows with ``k``; NVIL's models have one latent layer and one ``c``);
2. an **input-dependent baseline** ``C(a_t, z_{t-1}, k)``
   (:class:`~pyro_seqvae.guides.baselines.NeuralBaseline`), fitted to ``l_t - c_k``;
3. **variance normalisation**: the centred signal ``l_t - c_k - C`` is divided by
   ``max(1, sqrt(v))``, ``v`` a running estimate of its variance (one number).

``c`` and ``v`` are exponential moving averages (weight ``decay`` on the old value) updated
after each training batch; the batch is normalised with the values from before it, so they do
not depend on its own samples and the estimator stays unbiased: the guide's expected gradient is
the ELBO gradient divided by the positive number ``max(1, sqrt(v))`` (a guide learning rate that
adapts to the signal's scale), the model's is the ELBO gradient. Exception: a bin ``k`` (or
``v``) never seen before starts from the current batch's own mean (variance), the only biased
step, taken once per bin, instead of from 0 (which would feed Adam's moment estimates one huge
first gradient). The statistics live in buffers of :class:`SignalNormaliser`, a submodule of
the guide, so checkpoints hold them and a resumed run continues exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import broadcast_cat, check_positive_int

#: Number of steps-left bins of the running means; longer remainders share the last bin.
MAX_STEPS = 1024
#: Weight of the old value in the running mean and variance (NVIL: 0.8 to 0.9).
DECAY = 0.9


class SignalNormaliser(nn.Module):
    """Running mean by steps left and running variance of a score-function learning signal.

    :param int max_steps: number of steps-left bins (``k`` above it shares the last bin).
    :param float decay: weight of the old value in each running average, in ``[0, 1)``.
    """

    def __init__(self, max_steps: int = MAX_STEPS, decay: float = DECAY):
        super().__init__()
        self.max_steps = check_positive_int("max_steps", max_steps)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("mean", torch.zeros(max_steps))           # c_k
        self.register_buffer("seen", torch.zeros(max_steps, dtype=torch.bool))
        self.register_buffer("var", torch.zeros(()))                   # v
        self.register_buffer("var_seen", torch.zeros((), dtype=torch.bool))

    def scale(self) -> torch.Tensor:
        """``max(1, sqrt(v))``: the divisor of the centred signal (1 before any batch)."""
        return self.var.sqrt().clamp(min=1.0)

    def learning_signals(self, costs, steps_left, baselines=None):
        """Centre and scale the learning signals of one estimate, and update the statistics.

        :param list costs: per site, the detached downstream cost ``[..., B]``.
        :param list steps_left: per site, ``k`` as integers ``[B]`` (0: a padded step, which is
            left out of the statistics and gets signal 0).
        :param list baselines: per site, ``C`` ``[..., B]`` with its graph, or None.
        :returns: ``(signals, baseline_loss)``: the normalised signals (detached, one per site)
            and ``sum (l - c - C)^2 / max(1, sqrt(v))`` over the real steps, whose gradient fits
            ``C`` with NVIL's normalised signal.
        """
        if baselines is None:
            baselines = [None] * len(costs)
        flat_bins, flat_centred, centred_all, active_all = [], [], [], []
        bins_all, fits = [], []
        for cost, k, base in zip(costs, steps_left, baselines):
            k = k.to(cost.device)
            active = (k > 0).expand(cost.shape)
            bins = (k.clamp(1, self.max_steps) - 1).expand(cost.shape)
            residual = cost.detach() - (0.0 if base is None else base.detach())
            bins_all.append(bins)
            active_all.append(active)
            centred_all.append(residual)
            fits.append((cost.detach(), base))
            flat_bins.append(bins[active])
            flat_centred.append(residual[active])
        flat_bins = torch.cat(flat_bins) if flat_bins else torch.zeros(0, dtype=torch.long)
        flat_res = torch.cat(flat_centred) if flat_centred else torch.zeros(0)
        with torch.no_grad():
            # this batch's mean of l - C per bin, used for bins never seen before
            sums = torch.zeros_like(self.mean).index_add_(0, flat_bins, flat_res.to(self.mean))
            counts = torch.zeros_like(self.mean).index_add_(
                0, flat_bins, torch.ones_like(flat_res, dtype=self.mean.dtype))
            batch_mean = sums / counts.clamp(min=1.0)
            centre = torch.where(self.seen, self.mean, batch_mean)
            centred_flat = flat_res - centre.to(flat_res)[flat_bins]
            batch_var = centred_flat.pow(2).mean() if centred_flat.numel() else self.var
            var = self.var if bool(self.var_seen) else batch_var.to(self.var)
            scale = var.sqrt().clamp(min=1.0)
        signals, baseline_loss = [], 0.0
        for residual, bins, active, (cost, base) in zip(centred_all, bins_all, active_all, fits):
            c = centre.to(residual)[bins]
            signals.append(torch.where(active, (residual - c) / scale, torch.zeros_like(c)))
            if base is not None:
                fit = (cost - c - base).pow(2) / scale
                fit = torch.where(active, fit, torch.zeros_like(fit))
                baseline_loss = baseline_loss + fit.sum()
        if self.training and flat_res.numel():
            self._update(flat_bins, counts, batch_mean, batch_var)
        return signals, baseline_loss

    @torch.no_grad()
    def _update(self, flat_bins, counts, batch_mean, batch_var):
        present = counts > 0
        blended = self.decay * self.mean + (1 - self.decay) * batch_mean
        new = torch.where(self.seen, blended, batch_mean)
        self.mean.copy_(torch.where(present, new, self.mean))
        self.seen |= present
        batch_var = batch_var.to(self.var)
        self.var.copy_(self.decay * self.var + (1 - self.decay) * batch_var
                       if bool(self.var_seen) else batch_var)
        self.var_seen.fill_(True)


def nvil_infer(normaliser: SignalNormaliser, net, inputs, steps_left, steps_left_scaled,
               shape: torch.Size) -> dict:
    """The ``infer`` entry of a guide site that asks for NVIL's learning signal.

    :param normaliser: the guide's :class:`SignalNormaliser`.
    :param net: the input-dependent baseline ``C`` (a
        :class:`~pyro_seqvae.guides.baselines.NeuralBaseline`) or None.
    :param inputs: the guide head's input ``[B, I]`` (read by ``net``, detached).
    :param steps_left: ``k`` as integers ``[B]``.
    :param steps_left_scaled: ``k`` scaled for the network, ``[B, 1]``.
    :param shape: the site's batch shape (``[B]``, ``[K, B]`` ...).
    """
    features = None
    if net is not None:
        features = broadcast_cat([inputs, steps_left_scaled]).detach()
        features = features.expand(shape + features.shape[-1:])
    return {"nvil": {"normaliser": normaliser, "net": net, "input": features,
                     "steps_left": steps_left}}


def nvil_learning_signals(entries):
    """Normalise the learning signals of the NVIL sites of one trace.

    :param list entries: ``(infer["nvil"], downstream cost)`` per site, any order.
    :returns: ``(signals, baseline_loss)``, signals in the order of ``entries``.
    """
    groups = {}
    for index, (options, _) in enumerate(entries):
        groups.setdefault(id(options["normaliser"]), []).append(index)
    signals, loss = [None] * len(entries), 0.0
    for indices in groups.values():
        normaliser = entries[indices[0]][0]["normaliser"]
        costs = [entries[i][1] for i in indices]
        steps = [entries[i][0]["steps_left"] for i in indices]
        bases = [None if entries[i][0]["net"] is None
                 else entries[i][0]["net"](entries[i][0]["input"]) for i in indices]
        out, part = normaliser.learning_signals(costs, steps, bases)
        loss = loss + part
        for i, signal in zip(indices, out):
            signals[i] = signal
    return signals, loss


__all__ = ["DECAY", "MAX_STEPS", "SignalNormaliser", "nvil_infer", "nvil_learning_signals"]
