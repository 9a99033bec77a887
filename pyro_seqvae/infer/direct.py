"""Importance log weights computed directly on the step protocol, without Pyro traces.

:func:`~pyro_seqvae.infer.importance.log_importance_weights` traces the guide under a particle
plate, replays the model on that trace and sums every site's ``log_prob``. It works for any Pyro
model and guide, but it keeps every per-step tensor of every particle until the end of a draw,
and every network reads its whole input for every particle. Here the same weights

    ``log w^k = sum_t mask_t [log p(x_t | .) + log p(z_t^k | .) - log q(z_t^k | .)]``

come from the protocol of :class:`~pyro_seqvae.models.base.LatentSequenceModel` and
:class:`~pyro_seqvae.guides.base.SequenceGuide`, as in :func:`~pyro_seqvae.infer.smc.run_smc`:

- the weight is summed step by step and the emission is scored in windows of steps, so memory
  grows with the particles of one step, not of a whole sequence: all K particles of a batch fit
  in one pass;
- what does not depend on the particles is computed once per sequence, not once per particle:
  the model's ``precompute`` (SRNN's ``d_t``), the guide's summary (the smoothing guide's
  backward GRU), and the share of each first layer that reads them. A layer whose input is
  ``[s_t, c]``, with ``s_t`` free of ``z``, computes ``W [s_t, c] + b = (W_s s_t + b) + W_c c``.
  The bracket is one batched call over all steps (:class:`SplitFirstLayer`). This covers the
  guide head's ``a_t`` block (every pair), SRNN's ``d_t`` blocks of the prior and the decoder,
  and the ``phi_x(x_t)`` block of the VRNN's GRU input.

With the same random numbers the weights equal the traced sampler's, to float rounding. This is
tested in float64 for every model/guide pair of the registries. The path applies to the
library's latent models and guides whose ``forward`` is the protocol's (:func:`supports_direct`).
Anything else, such as a model written as a free Pyro program, keeps the traced path. Model
classes whose networks are factored here are matched by exact type; their subclasses run on the
protocol methods alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..guides.base import SequenceGuide
from ..latents import LogitHead
from ..layers import GaussianHead, broadcast_cat, logvar_to_scale
from ..models.base import LatentSequenceModel, gaussian
from ..models.pairing import check_guide_model
from ..models.srnn import SRNN
from ..models.storn import STORN
from ..models.vrnn import VRNN

#: Particle-steps held at once: K' * B particle rows per step (K' <= K particles per pass) times
#: the steps of one emission window. 50,000 keeps K = 500 on the JSB test split (B = 16) under
#: 1 GB of resident memory on CPU (``benchmarks/is_speed.py``).
DIRECT_MAX_ROWS = 50_000


def supports_direct(model, guide) -> bool:
    """Whether :func:`direct_log_weights` computes this pair's weights: a latent model and a
    guide of this library built for it, neither of which overrides ``forward``."""
    return (isinstance(model, LatentSequenceModel) and isinstance(guide, SequenceGuide)
            and guide.model is model
            and type(model).forward is LatentSequenceModel.forward
            and type(guide).forward is SequenceGuide.forward)


class SplitFirstLayer:
    """An MLP (``layers.MLP``) read as ``rest(W_0 v_0 + W_1 v_1 + ... + b)`` for an input
    ``cat([v_0, v_1, ...])``: its first linear layer applied block by block.

    :param mlp: an ``MLP`` whose first layer is an :class:`~torch.nn.Linear`.
    :param widths: the widths of the input blocks, in order.
    """

    def __init__(self, mlp, widths):
        first = mlp.layers[0]
        if not isinstance(first, nn.Linear) or first.in_features != sum(widths):
            raise TypeError(f"cannot split {first} into input blocks {list(widths)}")
        self.weights = first.weight.split(list(widths), dim=1)
        self.bias = first.bias
        self.rest = mlp.layers[1:]

    def block(self, index: int, value: torch.Tensor, *, bias: bool = False) -> torch.Tensor:
        """``W_index value`` (``+ b`` with ``bias=True``): ``[..., w_index] -> [..., H]``."""
        return F.linear(value, self.weights[index], self.bias if bias else None)

    def finish(self, first: torch.Tensor) -> torch.Tensor:
        """The rest of the MLP on the first layer's output ``[..., H]``."""
        return self.rest(first)


def _head_networks(head):
    if type(head) is GaussianHead:
        return [head.loc_net, head.logvar_net]
    if type(head) is LogitHead:
        return [head.logit_net]
    return None


class ProtocolSteps:
    """The per-step pieces of the guide's proposal and of the model, from the protocol.

    The guide head's first layers are split into the summary block, computed for all steps at
    :meth:`start`, and the context block (``z_{t-1}``, or VRNN's ``h_{t-1}``), computed per
    step. Subclasses factor a model's own networks in the same way.
    """

    def __init__(self, model, guide):
        self.model, self.guide = model, guide
        nets = _head_networks(guide.head)
        self.factor_head = nets is not None and type(guide).proposal is SequenceGuide.proposal
        self.head_nets = nets

    def start(self, x, mask):
        """Compute the z-independent parts for ``x`` ``[B, T, D]``; returns the initial carry."""
        model = self.model
        self.pre = model.precompute(x, mask)
        self.summary = self.guide.summarise(x, mask, self.pre)
        if self.factor_head:
            widths = (self.summary.shape[-1], model.context_dim)
            self.head_split = [SplitFirstLayer(net, widths) for net in self.head_nets]
            self.head_static = [s.block(0, self.summary, bias=True) for s in self.head_split]
        return model.initial_carry(x)

    def proposal(self, carry, t):
        """``(q(z_t | .), prior mean or None)``: :meth:`SequenceGuide.proposal`'s formula."""
        guide = self.guide
        pre_t = self.pre[:, t]
        if not self.factor_head:
            return tuple(guide.proposal(carry, self.summary[:, t], pre_t)[:2])
        context = self.model.context(carry, pre_t)
        outs = [split.finish(static[:, t] + split.block(1, context))
                for split, static in zip(self.head_split, self.head_static)]
        if len(outs) == 2:  # GaussianHead: (loc, scale)
            outs[1] = logvar_to_scale(outs[1])
        prior_loc = None
        if guide.residual:
            prior_loc = self.prior_loc(carry, t)
            outs[0] = outs[0] + prior_loc
        return guide.latent_dist(*outs), prior_loc

    def prior_loc(self, carry, t):
        return self.model.prior_loc(carry, self.pre[:, t])

    def prior(self, carry, t, loc):
        return self.model.prior(carry, self.pre[:, t], loc=loc)

    def record(self, carry, z_t):
        """``(what step t leaves for the emission, what advance may reuse)``: the model's
        ``emission_input`` and None."""
        return self.model.emission_input(carry, z_t), None

    def advance(self, carry, t, z_t, reuse):
        return self.model.advance(carry, self.pre[:, t], z_t)

    def emission_log_prob(self, x, t0, t1, records):
        """``log p(x_t | .)`` for steps ``t0 <= t < t1``: ``[..., B, t1 - t0]`` from
        ``records`` ``[..., B, t1 - t0, R]``."""
        return self.model.emission_dist(self.pre[:, t0:t1], records).log_prob(x[:, t0:t1])


class VRNNSteps(ProtocolSteps):
    """VRNN and STORN: the GRU (or LSTM) input ``[phi_x(x_t), phi_z(z_t)]`` split, its
    ``phi_x`` block for all steps at once; ``phi_z(z_t)`` computed once per step and handed
    to the decoder (VRNN eq. 6-7)."""

    def start(self, x, mask):
        carry = super().start(x, mask)
        model = self.model
        self.cell = model.cell.cell
        widths = (model.pre_dim, model.hidden_dim)
        self.input_weights = self.cell.weight_ih.split(list(widths), dim=1)
        self.static_gates = F.linear(self.pre, self.input_weights[0], self.cell.bias_ih)
        return carry

    def record(self, carry, z_t):
        features = self.model.phi_z(z_t)
        return broadcast_cat([features, self.model.cell.output(carry.h)]), features

    def advance(self, carry, t, z_t, features):
        cell = self.cell
        gi = self.static_gates[:, t] + F.linear(features, self.input_weights[1])
        gh = F.linear(carry.h if self.model.cell.kind == "gru"
                      else carry.h[..., : cell.hidden_size], cell.weight_hh, cell.bias_hh)
        if self.model.cell.kind == "gru":  # torch.nn.GRUCell's equations
            i_r, i_z, i_n = gi.chunk(3, -1)
            h_r, h_z, h_n = gh.chunk(3, -1)
            reset = torch.sigmoid(i_r + h_r)
            update = torch.sigmoid(i_z + h_z)
            new = torch.tanh(i_n + reset * h_n)
            h = new + update * (carry.h - new)
        else:  # torch.nn.LSTMCell's
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = (torch.sigmoid(f) * carry.h[..., cell.hidden_size:]
                 + torch.sigmoid(i) * torch.tanh(g))
            h = torch.cat([torch.sigmoid(o) * torch.tanh(c), c], dim=-1)
        return carry._replace(z=z_t, h=h)

    def emission_log_prob(self, x, t0, t1, records):
        # records hold [phi_z(z_t), h_{t-1}]: the decoder's input (VRNN.emission_dist)
        model = self.model
        return model.emission(model.decoder(records)).log_prob(x[:, t0:t1])


class SRNNSteps(ProtocolSteps):
    """SRNN: the prior's inputs ``[z_{t-1}, d_t]`` and the decoder's ``[z_t, d_t]`` split, their
    ``d_t`` blocks for all steps at once (SRNN eq. 3-4)."""

    def start(self, x, mask):
        carry = super().start(x, mask)
        model = self.model
        widths = (model.z_dim, model.rnn_dim)
        self.splits = {"loc": SplitFirstLayer(model.prior_net.loc_net, widths),
                       "logvar": SplitFirstLayer(model.prior_net.logvar_net, widths),
                       "decoder": SplitFirstLayer(model.decoder, widths)}
        self.static = {k: s.block(1, self.pre, bias=True) for k, s in self.splits.items()}
        return carry

    def _net(self, name, t, z):
        split = self.splits[name]
        return split.finish(self.static[name][:, t] + split.block(0, z))

    def prior_loc(self, carry, t):
        return self._net("loc", t, carry.z)

    def prior(self, carry, t, loc):
        if loc is None:
            loc = self.prior_loc(carry, t)
        return gaussian(loc, logvar_to_scale(self._net("logvar", t, carry.z)))

    def emission_log_prob(self, x, t0, t1, records):
        params = self._net("decoder", slice(t0, t1), records)
        return self.model.emission(params).log_prob(x[:, t0:t1])


#: Model classes whose own networks are factored (exact types; subclasses use the protocol).
STEPS = {VRNN: VRNNSteps, STORN: VRNNSteps, SRNN: SRNNSteps}


def make_steps(model, guide) -> ProtocolSteps:
    """The per-step computation of ``model`` and ``guide`` (factored where known)."""
    return STEPS.get(type(model), ProtocolSteps)(model, guide)


def _draw(q, shape):
    # Pyro's sample statement: rsample where the family has it, from the plate-expanded q
    if q.batch_shape != shape:
        q = q.expand(shape)
    return q, (q.rsample() if q.has_rsample else q.sample())


@torch.no_grad()
def direct_log_weights(model, guide, x, mask, num_particles: int, *,
                       max_rows: int = DIRECT_MAX_ROWS) -> torch.Tensor:
    """Log weights ``log p(x, z^k) - log q(z^k | x)`` per particle and sequence, on the
    protocol (see the module's description).

    With the same random numbers this equals
    :func:`~pyro_seqvae.infer.importance.log_importance_weights` drawn in the same passes
    (one pass of ``K`` particles when ``K * B <= max_rows``).

    :param model: a :class:`~pyro_seqvae.models.base.LatentSequenceModel`.
    :param guide: its :class:`~pyro_seqvae.guides.base.SequenceGuide`.
    :param torch.Tensor x: ``[B, T, D]``.
    :param torch.Tensor mask: ``[B, T]`` bool.
    :param int num_particles: ``K``.
    :param int max_rows: memory bound: particle-steps held at once, i.e. ``K' * B`` rows per
        step (``K'`` particles per pass) times the steps of one emission window.
    :returns: ``[K, B]``.
    :rtype: torch.Tensor
    """
    if not supports_direct(model, guide):
        check_guide_model(guide, model)
        raise TypeError(f"direct_log_weights needs a LatentSequenceModel and a SequenceGuide "
                        f"on the step protocol, got {type(model).__name__} and "
                        f"{type(guide).__name__}")
    x, mask = model.check_batch(x, mask)
    B, T, _ = x.shape
    per_pass = max(1, min(num_particles, max_rows // B))
    steps = make_steps(model, guide)
    parts = []
    for first in range(0, num_particles, per_pass):
        K = min(per_pass, num_particles - first)
        window = max(1, max_rows // (K * B))
        log_w = x.new_zeros(K, B)
        carry = steps.start(x, mask)
        records, t0 = [], 0
        for t in range(T):
            q, prior_loc = steps.proposal(carry, t)
            q, z_t = _draw(q, (K, B))
            log_p = steps.prior(carry, t, prior_loc).log_prob(z_t)
            log_w += torch.where(mask[:, t], log_p - q.log_prob(z_t), log_w.new_zeros(()))
            record, reuse = steps.record(carry, z_t)
            carry = steps.advance(carry, t, z_t, reuse)
            records.append(record)
            if len(records) == window or t + 1 == T:
                stacked = torch.stack(torch.broadcast_tensors(*records), dim=-2)
                log_x = steps.emission_log_prob(x, t0, t + 1, stacked)
                log_w += torch.where(mask[:, t0:t + 1], log_x, log_x.new_zeros(())).sum(-1)
                records, t0 = [], t + 1
        parts.append(log_w)
    return torch.cat(parts, dim=0)


__all__ = ["DIRECT_MAX_ROWS", "ProtocolSteps", "SRNNSteps", "SplitFirstLayer", "VRNNSteps",
           "direct_log_weights", "make_steps", "supports_direct"]
