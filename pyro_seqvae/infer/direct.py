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
  ``[s_t, c]``, with ``s_t`` free of ``z``, computes ``W [s_t, c] + b = (W_s s_t + b) + W_c c``;
  the bracket is one batched call over all steps. This covers the guide head's ``a_t`` block
  (every pair), SRNN's ``d_t`` blocks of the prior and the decoder, and the ``phi_x(x_t)``
  block of the VRNN's GRU input;
- the ``W_c c`` of all the first layers that read the same per-particle input ``c`` are one
  matrix product (:class:`MergedFirstLayers`; VRNN: every layer on ``h_{t-1}``, and every one
  on ``phi_z(z_t)``; SRNN: the guide head's and the prior's on ``z_{t-1}``), and the hidden
  units act in place;
- with Gaussian latents a batch is sorted by length and a sequence leaves the computation after
  its last step (its normals are still drawn, so that the others get the same ones).

With the same random numbers the weights equal the traced sampler's, to float rounding. This is
tested in float64 for every model/guide pair of the registries. The path applies to the
library's latent models and guides whose ``forward`` is the protocol's (:func:`supports_direct`).
Anything else, such as a model written as a free Pyro program, keeps the traced path. Model
classes whose networks are factored here are matched by exact type; their subclasses run on the
protocol methods alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..guides.base import SequenceGuide
from ..latents import LogitHead
from ..layers import GaussianHead, _Clamp, logvar_to_scale, register_params
from ..models.base import LatentSequenceModel, gaussian
from ..models.pairing import check_guide_model
from ..models.srnn import SRNN
from ..models.storn import STORN
from ..models.vrnn import VRNN

#: The default memory bound, in the traced sampler's unit (particle-steps of a draw).
DIRECT_MAX_ROWS = 50_000

#: The direct path holds one step of ``K' * B <= max_rows / ROWS_SHARE`` particle rows at a time
#: (a step holds several tensors as wide as the networks, where the traced sampler keeps a few
#: per particle-step): with the default bound, 6,250 rows, i.e. K = 500 of a 16-sequence batch in
#: two passes of 250, peaking under 1 GB of resident memory on the JSB test split
#: (``benchmarks/is_speed.py``).
ROWS_SHARE = 8


def supports_direct(model, guide) -> bool:
    """Whether :func:`direct_log_weights` computes this pair's weights: a latent model and a
    guide of this library built for it, neither of which overrides ``forward``."""
    return (isinstance(model, LatentSequenceModel) and isinstance(guide, SequenceGuide)
            and guide.model is model
            and type(model).forward is LatentSequenceModel.forward
            and type(guide).forward is SequenceGuide.forward)


def register_pair(model, guide):
    """Announce every parameter of ``model`` and ``guide`` to Pyro's param store, as their
    ``forward`` would: an objective that computes without calling them (the direct paths) must
    do this, or ``SVI`` finds no parameters to step."""
    register_params(model)
    register_params(guide)
    for root in (model, guide):  # the roots' own parameters (e.g. the DMM's z_0)
        for name, _ in root.named_parameters(recurse=False):
            getattr(root, name)


def _add(owned: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``owned + other``, in place into ``owned`` (a new tensor the caller owns) unless autograd
    records (SMC objectives): the in-place units below would then overwrite saved results."""
    return owned.add_(other) if not torch.is_grad_enabled() else owned + other


def _run_layers(layers, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layers`` (the tail of an ``MLP``) to ``h``, a tensor the caller owns. Without
    autograd the activations and clamps act in place (no new tensor per unit: the memory
    traffic of an elementwise op at particle scale); anything else is called as usual."""
    if torch.is_grad_enabled():
        return layers(h)
    for layer in layers:
        if isinstance(layer, nn.LeakyReLU):
            h = F.leaky_relu_(h, layer.negative_slope)
        elif isinstance(layer, nn.ReLU):
            h = h.relu_()
        elif isinstance(layer, nn.Tanh):
            h = h.tanh_()
        elif isinstance(layer, _Clamp):
            h = h.clamp_(-layer.bound, layer.bound)
        else:
            h = layer(h)
    return h


class MergedFirstLayers:
    """The first linear layers of several networks that read the same per-particle input ``c``,
    as one matrix product.

    Network ``i`` reads ``cat([..., c, ...])``; its first layer is split by input block into
    ``W_i^c c`` (here, for every network at once: one ``[.., C] x [C, sum_i H_i]`` product)
    and the rest, which the caller adds from per-sequence parts computed once for all steps.

    :param list blocks: ``(weight [H_i, C], bias [H_i] or None)`` per network.
    """

    def __init__(self, blocks):
        self.widths = [w.shape[0] for w, _ in blocks]
        self.weight = torch.cat([w for w, _ in blocks], dim=0)
        biases = [b if b is not None else w.new_zeros(w.shape[0]) for w, b in blocks]
        self.bias = (torch.cat(biases) if any(b is not None for _, b in blocks) else None)

    def __call__(self, c: torch.Tensor):
        """``[W_i^c c + b_i for each network]``: views of one new tensor ``[..., sum_i H_i]``."""
        return F.linear(c, self.weight, self.bias).split(self.widths, dim=-1)


def _blocks(mlp, widths):
    """``mlp``'s first linear layer split by input block: ``(weights per block, bias, tail)``."""
    first = mlp.layers[0]
    if not isinstance(first, nn.Linear) or first.in_features != sum(widths):
        raise TypeError(f"cannot split {first} into input blocks {list(widths)}")
    return first.weight.split(list(widths), dim=1), first.bias, mlp.layers[1:]


def _head_networks(head):
    if type(head) is GaussianHead:
        return [head.loc_net, head.logvar_net]
    if type(head) is LogitHead:
        return [head.logit_net]
    return None


class ProtocolSteps:
    """One step of the guide's proposal and of the model, on the protocol.

    The guide head's networks read ``[a_t, context]``: their ``a_t`` blocks are computed for all
    steps at :meth:`start`, their context blocks (``z_{t-1}``, or VRNN's ``h_{t-1}``) in one
    product per step. Subclasses factor a model's own networks in the same way.
    """

    #: Work on the first ``n`` sequences of the batch only (None: all): the importance
    #: sampler sorts a batch by length and drops the sequences that have ended.
    n = None

    def __init__(self, model, guide):
        self.model, self.guide = model, guide
        nets = _head_networks(getattr(guide, "head", None))
        self.factor_head = nets is not None and type(guide).proposal is SequenceGuide.proposal
        self.head_nets = nets

    def start(self, x, mask, pre=None, summary=None):
        """Compute the z-independent parts for ``x`` ``[B, T, D]``; returns the initial carry.
        ``pre`` and ``summary``, when given, are the model's ``precompute`` and the guide's
        ``summarise`` of this ``x`` already computed by the caller."""
        model = self.model
        self.pre = model.precompute(x, mask) if pre is None else pre
        self.summary = self.guide.summarise(x, mask, self.pre) if summary is None else summary
        if self.factor_head:
            widths = (self.summary.shape[-1], model.context_dim)
            split = [_blocks(net, widths) for net in self.head_nets]
            self.head_tails = [tail for _, _, tail in split]
            # [B, T, sum H]: the a_t blocks and the biases, for all steps
            self.head_static = torch.cat([F.linear(self.summary, w[0], b) for w, b, _ in split],
                                         dim=-1)
            self.head_context = [(w[1], None) for w, _, _ in split]
            self.head_merged = MergedFirstLayers(self.head_context)
        return model.initial_carry(x)

    def head(self, firsts, t):
        """``q``'s head outputs from its first layers' context blocks ``firsts`` (owned)."""
        static = self.head_static[: self.n, t].split([f.shape[-1] for f in firsts], dim=-1)
        outs = [_run_layers(tail, _add(f, s))
                for f, s, tail in zip(firsts, static, self.head_tails)]
        if len(outs) == 2:  # GaussianHead: (loc, scale)
            outs[1] = logvar_to_scale(outs[1])
        return outs

    def proposal(self, carry, t):
        """``(q(z_t | .), prior_loc)``: the formula of :meth:`SequenceGuide.proposal` alone;
        ``prior_loc`` is the model's prior mean when Res_q computed it, else None. ``t`` may
        be ``slice(None)``: every step at once, given a carry ``[..., B, T, .]`` of
        ``z_{0:T-1}`` (a model whose carry is ``z_{t-1}`` alone)."""
        guide, model = self.guide, self.model
        pre_t = self.pre[: self.n, t]
        if not self.factor_head:
            return tuple(guide.proposal(carry, self.summary[: self.n, t], pre_t)[:2])
        outs = self.head(list(self.head_merged(model.context(carry, pre_t))), t)
        prior_loc = None
        if guide.residual:
            prior_loc = model.prior_loc(carry, pre_t)
            outs[0] = outs[0] + prior_loc
        return guide.latent_dist(*outs), prior_loc

    def dists(self, carry, t):
        """``(q(z_t | .), p(z_t | .), state)``: the formulas of
        :meth:`SequenceGuide.proposal` and the model's ``prior``; ``state`` goes to
        :meth:`after`."""
        q, prior_loc = self.proposal(carry, t)
        return q, self.model.prior(carry, self.pre[: self.n, t], loc=prior_loc), None

    def after(self, carry, t, z_t, state):
        """``(what step t leaves for the emission, the next carry)``."""
        model = self.model
        return model.emission_input(carry, z_t), model.advance(carry, self.pre[: self.n, t], z_t)

    def emission_log_prob(self, x, t0, t1, records):
        """``log p(x_t | .)`` for steps ``t0 <= t < t1``: ``[..., B, t1 - t0]`` from the
        stacked records ``[..., B, t1 - t0, R]``."""
        emission = self.model.emission_dist(self.pre[: self.n, t0:t1], records)
        return emission.log_prob(x[: self.n, t0:t1])


class VRNNSteps(ProtocolSteps):
    """VRNN and STORN (VRNN eq. 5-7, 9).

    Every first layer that reads ``h_{t-1}`` (the guide head's ``h`` blocks, the prior's
    networks, the decoder's ``h`` block and the GRU's ``W_hh``) is one product per step, and
    every one that reads ``phi_z(z_t)`` (the GRU's input block and the decoder's) another; the
    GRU input's ``phi_x(x_t)`` block is computed for all steps at once. The emission's record
    of a step is the decoder's first-layer output.
    """

    def start(self, x, mask, pre=None, summary=None):
        carry = super().start(x, mask, pre, summary)
        model = self.model
        cell = self.cell = model.cell.cell
        self.gru = model.cell.kind == "gru"
        self.H = cell.hidden_size
        w_x, w_z = cell.weight_ih.split([model.pre_dim, model.hidden_dim], dim=1)
        self.static_gates = F.linear(self.pre, w_x, cell.bias_ih)              # [B, T, 3H|4H]
        dec_z, dec_h = _blocks(model.decoder, (model.hidden_dim, model.rnn_dim))[0]
        self.dec_bias, self.dec_tail = model.decoder.layers[0].bias, model.decoder.layers[1:]
        blocks = list(self.head_context) if self.factor_head else []
        self.prior_tails = None
        if type(model) is VRNN:  # STORN's prior N(0, I) has no network
            nets = [model.prior_net.loc_net, model.prior_net.logvar_net]
            self.prior_tails = [net.layers[1:] for net in nets]
            blocks += [(net.layers[0].weight, net.layers[0].bias) for net in nets]
        blocks += [(dec_h, self.dec_bias), (cell.weight_hh, cell.bias_hh)]
        self.h_merged = MergedFirstLayers(blocks)
        self.z_merged = MergedFirstLayers([(w_z, None), (dec_z, None)])
        return carry

    def dists(self, carry, t):
        model, guide = self.model, self.guide
        h = model.cell.output(carry.h)
        firsts = list(self.h_merged(h))
        n = len(self.head_tails)
        outs = self.head(firsts[:n], t)
        if self.prior_tails is not None:
            p_loc, p_lv = (_run_layers(tail, f) for tail, f in zip(self.prior_tails,
                                                                    firsts[n:n + 2]))
            p = gaussian(p_loc, logvar_to_scale(p_lv))
            if guide.residual:
                outs[0] = outs[0] + p_loc
        else:
            p = model.prior(carry, self.pre[: self.n, t])
        return guide.latent_dist(*outs), p, (firsts[-2], firsts[-1])

    def after(self, carry, t, z_t, state):
        dec_h, gh = state
        features = _run_layers(self.model.phi_z.layers[1:],
                               F.linear(z_t, self.model.phi_z.layers[0].weight,
                                        self.model.phi_z.layers[0].bias))
        gi, dec_z = self.z_merged(features)
        H = self.H
        gi = gi + self.static_gates[: self.n, t]
        record = dec_z + dec_h          # the decoder's first layer on [phi_z(z_t), h_{t-1}]
        return record, carry._replace(z=z_t, h=cell_update(gi, gh, carry.h, H, self.gru))

    def emission_log_prob(self, x, t0, t1, records):
        model = self.model
        return model.emission(_run_layers(self.dec_tail, records)).log_prob(x[: self.n, t0:t1])


def cell_update(gi, gh, h, hidden_size: int, gru: bool):
    """The recurrent state after one step from the gates' pre-activations ``gi = W_ih u + b_ih``
    and ``gh = W_hh h + b_hh`` (``[..., 3H]``; LSTM ``[..., 4H]``, state ``[h, c]``):
    ``torch.nn.GRUCell``'s or ``torch.nn.LSTMCell``'s equations."""
    H = hidden_size
    if gru:
        i_r, i_z, i_n = gi.split(H, -1)
        h_r, h_z, h_n = gh.split(H, -1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        new = torch.tanh(i_n + reset * h_n)
        return new + update * (h - new)
    i, f, g, o = (gi + gh).split(H, -1)
    c = torch.sigmoid(f) * h[..., H:] + torch.sigmoid(i) * torch.tanh(g)
    return torch.cat([torch.sigmoid(o) * torch.tanh(c), c], dim=-1)


class SRNNSteps(ProtocolSteps):
    """SRNN (SRNN eq. 3-4, 12, Algorithm 1).

    The first layers that read ``z_{t-1}`` (the guide head's and the prior's two networks) are
    one product per step; their ``a_t`` and ``d_t`` blocks, and the decoder's ``d_t`` block,
    are computed for all steps at once.
    """

    def start(self, x, mask, pre=None, summary=None):
        carry = super().start(x, mask, pre, summary)
        model = self.model
        widths = (model.z_dim, model.rnn_dim)
        nets = [model.prior_net.loc_net, model.prior_net.logvar_net]
        split = [_blocks(net, widths) for net in nets]
        self.prior_tails = [tail for _, _, tail in split]
        self.prior_static = torch.cat([F.linear(self.pre, w[1], b) for w, b, _ in split], -1)
        blocks = list(self.head_context) if self.factor_head else []
        self.z_merged = MergedFirstLayers(blocks + [(w[0], None) for w, _, _ in split])
        dec, dec_bias, self.dec_tail = _blocks(model.decoder, widths)
        self.dec_z = dec[0]
        self.dec_static = F.linear(self.pre, dec[1], dec_bias)                    # [B, T, N]
        return carry

    def dists(self, carry, t):
        guide = self.guide
        firsts = list(self.z_merged(carry.z))
        n = len(self.head_tails)
        outs = self.head(firsts[:n], t)
        static = self.prior_static[: self.n, t].split([f.shape[-1] for f in firsts[n:]], dim=-1)
        p_loc, p_lv = (_run_layers(tail, _add(f, s))
                       for tail, f, s in zip(self.prior_tails, firsts[n:], static))
        if guide.residual:
            outs[0] = outs[0] + p_loc
        return guide.latent_dist(*outs), gaussian(p_loc, logvar_to_scale(p_lv)), None

    def after(self, carry, t, z_t, state):
        return z_t, carry._replace(z=z_t)

    def emission_log_prob(self, x, t0, t1, records):
        first = F.linear(records, self.dec_z) + self.dec_static[: self.n, t0:t1]
        return self.model.emission(_run_layers(self.dec_tail, first)).log_prob(x[: self.n, t0:t1])


#: Model classes whose own networks are factored (exact types; subclasses use the protocol).
STEPS = {VRNN: VRNNSteps, STORN: VRNNSteps, SRNN: SRNNSteps}


def make_steps(model, guide) -> ProtocolSteps:
    """The per-step computation of ``model`` and ``guide`` (factored where known)."""
    standard = (_head_networks(getattr(guide, "head", None)) is not None
                and type(guide).proposal is SequenceGuide.proposal)
    return (STEPS.get(type(model), ProtocolSteps) if standard else ProtocolSteps)(model, guide)


def _draw(q, shape):
    # Pyro's sample statement: rsample where the family has it, from the plate-expanded q
    if q.batch_shape != shape:
        q = q.expand(shape)
    return q, (q.rsample() if q.has_rsample else q.sample())


def _prefix_mask(mask, lengths) -> bool:
    steps = torch.arange(mask.shape[1], device=mask.device)
    return bool((mask == (steps < lengths.unsqueeze(1))).all())


def _keep(carry, n):
    return carry._replace(**{k: v[..., :n, :] for k, v in carry._asdict().items()
                             if isinstance(v, torch.Tensor)})


@torch.no_grad()
def direct_log_weights(model, guide, x, mask, num_particles: int, *,
                       max_rows: int = DIRECT_MAX_ROWS) -> torch.Tensor:
    """Log weights ``log p(x, z^k) - log q(z^k | x)`` per particle and sequence, on the
    protocol (see the module's description).

    With the same random numbers this equals
    :func:`~pyro_seqvae.infer.importance.log_importance_weights` drawn in the same passes
    (one pass of ``K`` particles when ``K * B <= max_rows``). With Gaussian latents and
    padding at the end, the batch is sorted by length and a sequence leaves the computation
    after its last step (its padded steps add nothing to its weight); its standard normals are
    still drawn, so that every sequence gets the numbers the traced sampler gives it.

    :param model: a :class:`~pyro_seqvae.models.base.LatentSequenceModel`.
    :param guide: its :class:`~pyro_seqvae.guides.base.SequenceGuide`.
    :param torch.Tensor x: ``[B, T, D]``.
    :param torch.Tensor mask: ``[B, T]`` bool.
    :param int num_particles: ``K``.
    :param int max_rows: memory bound, in particle-steps as for the traced sampler: a step of
        ``K' * B <= max_rows / ROWS_SHARE`` particle rows at a time (``K'`` particles per pass,
        passes of equal size), and emission windows of as many rows.
    :returns: ``[K, B]``.
    :rtype: torch.Tensor
    """
    if not supports_direct(model, guide):
        check_guide_model(guide, model)
        raise ConfigError(f"the direct importance sampler needs a LatentSequenceModel and a "
                          f"SequenceGuide on the step protocol, got {type(model).__name__} and "
                          f"{type(guide).__name__}; use path='traced'")
    x, mask = model.check_batch(x, mask)
    B, T, _ = x.shape
    rows = max(1, max_rows // ROWS_SHARE)
    passes = math.ceil(num_particles / max(1, rows // B))
    per_pass = math.ceil(num_particles / passes)
    steps = make_steps(model, guide)
    lengths = mask.sum(-1)
    # Normal.rsample is loc + eps * scale with eps drawn for the whole [K, B]: the ended
    # sequences' numbers can be drawn and dropped (other families draw in their own way)
    shrink = (steps.factor_head and guide.latent_dist is gaussian
              and _prefix_mask(mask, lengths))
    active = [B] * T
    if shrink:
        order = torch.argsort(lengths, descending=True, stable=True)
        x, mask = x[order], mask[order]
        active = mask.sum(0).tolist()
    parts = []
    for first in range(0, num_particles, per_pass):
        K = min(per_pass, num_particles - first)
        window = max(1, rows // (K * B))
        log_w = x.new_zeros(K, B)
        carry = steps.start(x, mask)
        records, t0 = [], 0
        for t in range(T):
            n = active[t]
            if n == 0:  # only padding is left
                break
            if n != (steps.n or B):  # sequences have ended: keep the first n
                carry = _keep(carry, n)
                steps.n = n
            q, p, state = steps.dists(carry, t)
            if shrink:
                eps = x.new_empty(K, B, model.z_dim).normal_()[:, order[:n]]
                z_t = q.base_dist.loc + eps * q.base_dist.scale
            else:
                q, z_t = _draw(q, (K, B))
            log_w[:, :n] += torch.where(mask[:n, t], p.log_prob(z_t) - q.log_prob(z_t),
                                        log_w.new_zeros(()))
            record, carry = steps.after(carry, t, z_t, state)
            records.append(record)
            if len(records) == window or t + 1 == T or active[t + 1] != n:
                stacked = torch.stack(torch.broadcast_tensors(*records), dim=-2)
                log_x = steps.emission_log_prob(x, t0, t + 1, stacked)
                log_w[:, :n] += torch.where(mask[:n, t0:t + 1], log_x,
                                            log_x.new_zeros(())).sum(-1)
                records, t0 = [], t + 1
        steps.n = None
        parts.append(log_w[:, torch.argsort(order)] if shrink else log_w)
    return torch.cat(parts, dim=0)


__all__ = ["DIRECT_MAX_ROWS", "ROWS_SHARE", "MergedFirstLayers", "ProtocolSteps", "SRNNSteps",
           "cell_update",
           "VRNNSteps", "direct_log_weights", "make_steps", "register_pair", "supports_direct"]
