"""The training ELBO computed directly on the step protocol: :class:`DirectELBO`.

Pyro's ``Trace_ELBO`` runs the guide, records every site, replays the model on the guide's
samples and sums the sites' ``log_prob``. For the library's own models and guides the same
objective,

    ``ELBO = sum_t mask_t [log p(x_t | .) - beta (log q(z_t | .) - log p(z_t | .))]``

(``TraceMeanField_ELBO``: the bracket ``log q - log p`` replaced by ``KL(q(z_t|.) || p(z_t|.))``,
SRNN eq. 6), is computed here from the protocol of
:class:`~pyro_seqvae.models.base.LatentSequenceModel` and
:class:`~pyro_seqvae.guides.base.SequenceGuide`, as :mod:`~pyro_seqvae.infer.direct` computes
importance weights. Only the guide's sampling recursion stays in the per-step loop:

- the z-independent features (SRNN's ``d_t``, VRNN's ``phi_x(x_t)``), the guide's summary (the
  backward GRU) and the share of every first layer that reads them are computed for all steps in
  one batched call, as in importance sampling;
- the first layers that read the same per-step input (``z_{t-1}``, or VRNN's ``h_{t-1}``) are one
  matrix product per step;
- the model is scored on the guide's samples after the loop: given ``z_{1:T}`` (and VRNN's
  ``h_{0:T-1}``, which the guide's recursion produced), the prior ``p(z_t | z_{t-1}, d_t)`` or
  ``p(z_t | h_{t-1})``, the KL terms and the emission of every step are one batched call each.
  Under Res_q the prior mean is part of ``q`` and stays in the loop; its variance does not;
- in :meth:`DirectELBO.loss_and_grads` the weight gradients of the layers used at every step are
  formed after ``backward`` as one product over all steps (:class:`_DeferredLinear`), not as a
  small product per step.

SRNN, VRNN and STORN have loops of their own here; other protocol models (the DMM) run the
protocol's step methods (:class:`~pyro_seqvae.infer.direct.ProtocolSteps`), still without traces.

The value and the gradients are those of ``Trace_ELBO`` (``analytic_kl=False``) or
``TraceMeanField_ELBO`` (``analytic_kl=True``) on the same pair: with the same random numbers the
same samples are drawn in the same order, and ``tests/infer/test_direct_elbo.py`` checks loss and
every gradient in float64 (to rounding: some sums run in another order). It is an ELBO
subclass, so it goes straight into ``SVI``::

    svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), DirectELBO(analytic_kl=True))

Pairs outside the protocol (a model written as a free Pyro program, binary latents with their
score-function gradients, a guide that overrides ``forward``) raise :class:`ConfigError`;
:func:`~pyro_seqvae.infer.elbo.make_elbo` with ``path="auto"`` falls back to Pyro's ELBO for
them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.infer import ELBO
from torch import nn
from torch.distributions import kl_divergence

from ..errors import ConfigError
from ..layers import LOGVAR_MAX, LOGVAR_MIN, broadcast_cat, logvar_to_scale
from ..models.base import _as_beta, gaussian
from ..models.pairing import check_guide_model
from ..models.srnn import SRNN
from ..models.storn import STORN
from ..models.vrnn import VRNN
from .direct import ProtocolSteps, _draw, cell_update, make_steps, register_pair, supports_direct


def supports_direct_elbo(model, guide) -> bool:
    """Whether :class:`DirectELBO` computes this pair's ELBO: the pair is on the step protocol
    (:func:`~pyro_seqvae.infer.direct.supports_direct`) with Gaussian latents and no baseline."""
    return (supports_direct(model, guide) and model.latent_family == "gaussian"
            and getattr(guide, "baseline", "none") == "none")


def _latent_terms(q, p, z, analytic_kl):
    """``KL(q || p)`` or ``log q(z) - log p(z)``, summed over the latent dimensions."""
    if analytic_kl:
        return kl_divergence(q, p)
    return q.log_prob(z) - p.log_prob(z)


class _Steps:
    """Run a model/guide pair over a batch: ``elbo(x, mask, beta, shape) -> [..., B]`` summed."""

    def __init__(self, model, guide, analytic_kl, defer=False):
        self.model, self.guide, self.analytic_kl = model, guide, analytic_kl
        #: the per-step linear maps (weight gradients deferred when ``defer``)
        self.loop = _Loop(defer)

    def elbo(self, x, mask, beta, shape):
        """The generic path: :class:`ProtocolSteps` (first layers factored where known), the
        prior formed at every step."""
        steps = make_steps(self.model, self.guide)
        carry = steps.start(x, mask)
        latent, records = [], []
        for t in range(x.shape[1]):
            q, p, state = steps.dists(carry, t)
            q, z_t = _draw(q, shape)
            latent.append(_latent_terms(q, p, z_t, self.analytic_kl))
            record, carry = steps.after(carry, t, z_t, state)
            records.append(record)
        records = torch.stack(torch.broadcast_tensors(*records), dim=-2)
        log_x = steps.emission_log_prob(x, 0, x.shape[1], records)
        return _combine(log_x, torch.stack(latent, dim=-1), mask, beta)


def _combine(log_x, latent, mask, beta):
    """``sum_t mask_t [log p(x_t|.) - beta * latent_t]`` over steps: ``[..., B]``."""
    zero = log_x.new_zeros(())
    return (torch.where(mask, log_x, zero).sum(-1)
            - beta * torch.where(mask, latent, zero).sum(-1))


class _LinearInputGrad(torch.autograd.Function):
    """``y = x W^T + b`` with ``W`` and ``b`` held fixed: the backward pass returns ``dL/dx`` only
    and hands ``dL/dy`` to its :class:`_DeferredLinear`, which forms the weight's gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, grads, index):
        ctx.save_for_backward(weight)
        ctx.grads, ctx.index = grads, index
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        ctx.grads[ctx.index] = grad
        return (grad @ weight if ctx.needs_input_grad[0] else None), None, None, None, None


class _DeferredLinear:
    """A linear map used once per step whose weight gradient is one product over all steps.

    Autograd would form ``dL/dW += g_t^T x_t`` at every step of the backward pass, a small
    matrix product each; here ``g_t`` and ``x_t`` are kept and :meth:`accumulate` adds
    ``G^T X`` (all steps' rows stacked) to the parameters' ``.grad`` after ``backward`` (the same
    sum in another order). The map may be several first layers that read the same input, stacked
    by rows (one product per step for all of them).

    :param list pieces: ``(weight parameter, first column, last column, bias parameter or
        None)`` per stacked layer: rows ``W[:, c0:c1]``.
    :param bool defer: False computes an ordinary differentiable ``F.linear``.
    """

    def __init__(self, pieces, defer: bool):
        self.pieces, self.defer = pieces, defer
        self.weight, self.bias = self._stacked(detach=defer)
        self.widths = [w.shape[0] for w, *_ in pieces]
        self.inputs, self.grads = [], {}

    def _stacked(self, detach: bool):
        prep = (lambda t: t.detach()) if detach else (lambda t: t)
        weights = [prep(w)[:, c0:c1] for w, c0, c1, _ in self.pieces]
        weight = torch.cat(weights) if len(weights) > 1 else weights[0]
        bias = None
        if any(b is not None for *_, b in self.pieces):
            biases = [prep(b) if b is not None else w.new_zeros(w.shape[0])
                      for w, _, _, b in self.pieces]
            bias = torch.cat(biases) if len(biases) > 1 else biases[0]
        return weight, bias

    def __call__(self, x):
        if not self.defer:
            return F.linear(x, self.weight, self.bias)
        if not x.requires_grad:  # e.g. z_0 = 0: no backward node would see dL/dy
            return F.linear(x, *self._stacked(detach=False))
        self.inputs.append(x.detach())
        return _LinearInputGrad.apply(x, self.weight, self.bias, self.grads, len(self.inputs) - 1)

    def accumulate(self):
        """Add the weights' (and biases') gradients of all steps to the parameters' ``.grad``."""
        if not self.grads:
            return
        rows, cols = self.weight.shape
        steps = sorted(self.grads)
        g = torch.cat([self.grads[i].reshape(-1, rows) for i in steps])
        x = torch.cat([self.inputs[i].expand(self.grads[i].shape[:-1] + (cols,))
                       .reshape(-1, cols) for i in steps])
        d_weight, d_bias = g.t() @ x, g.sum(0)
        first = 0
        for (w, c0, c1, b), n in zip(self.pieces, self.widths):
            _add_grad(w, (slice(None), slice(c0, c1)), d_weight[first:first + n])
            if b is not None:
                _add_grad(b, slice(None), d_bias[first:first + n])
            first += n
        self.inputs, self.grads = [], {}


def _add_grad(param, index, value):
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    param.grad[index] += value


class _Loop:
    """The per-step linear maps of one ELBO evaluation (deferred weight gradients when
    ``defer``)."""

    def __init__(self, defer: bool):
        self.defer = defer
        self.linears = []
        self._by_layer = {}

    def linear(self, pieces) -> _DeferredLinear:
        out = _DeferredLinear(pieces, self.defer)
        self.linears.append(out)
        return out

    def run(self, layers, h):
        """Apply ``layers`` (an MLP's modules) to ``h``; its linear layers are deferred."""
        for layer in layers:
            if isinstance(layer, nn.Linear):
                if layer not in self._by_layer:
                    self._by_layer[layer] = self.linear(
                        [(layer.weight, 0, layer.in_features, layer.bias)])
                h = self._by_layer[layer](h)
            else:
                h = layer(h)
        return h

    def accumulate(self):
        for linear in self.linears:
            linear.accumulate()


class _LogvarToScale(torch.autograd.Function):
    """:func:`~pyro_seqvae.layers.logvar_to_scale` (the same operations) as one autograd node:
    ``d scale / d log v = scale / 2 * sigmoid(2 (x - low)) * sigmoid(2 (high - u))`` with
    ``u = low + softplus_2(x - low)``, instead of the dozen nodes of the composed formula, in the
    per-step loop."""

    @staticmethod
    def forward(ctx, log_var):
        inner = log_var - LOGVAR_MIN
        upper = LOGVAR_MAX - (LOGVAR_MIN + F.softplus(inner, beta=2.0))
        scale = (0.5 * (LOGVAR_MAX - F.softplus(upper, beta=2.0))).exp()
        ctx.save_for_backward(inner, upper, scale)
        return scale

    @staticmethod
    def backward(ctx, grad):
        inner, upper, scale = ctx.saved_tensors
        return grad * scale * 0.5 * _softplus2_slope(inner) * _softplus2_slope(upper)


def _softplus2_slope(y):
    """The derivative of ``F.softplus(y, beta=2)`` as autograd computes it: ``sigmoid(2 y)``,
    and exactly 1 where softplus returns ``y`` itself (``2 y > 20``, its threshold)."""
    slope = torch.sigmoid(2.0 * y)
    return slope.masked_fill_(2.0 * y > 20.0, 1.0)


def _scale(log_var):
    return _LogvarToScale.apply(log_var) if torch.is_grad_enabled() else logvar_to_scale(log_var)


def _layer_key(layer):
    return (type(layer), getattr(layer, "negative_slope", None), getattr(layer, "bound", None))


def _shared_prefix(tails):
    """How many leading layers (activation, clamp: no parameters) all ``tails`` share: those
    act once on the concatenated first-layer outputs instead of once per network."""
    k = 0
    while all(len(t) > k and not isinstance(t[k], nn.Linear) for t in tails) and \
            len({_layer_key(t[k]) for t in tails}) == 1:
        k += 1
    return k


def _head_parts(guide, summary, context_dim):
    """The guide head's networks on ``[a_t, context]``: per network, the ``a_t`` block and the
    bias for all steps (unbound once: indexing ``[:, t]`` in the loop would cost a zero-filled
    ``[B, T, H]`` gradient per step in the backward pass), the tail, and the context block's
    piece of the per-step product."""
    A = summary.shape[-1]
    nets = [guide.head.loc_net, guide.head.logvar_net]
    statics = [F.linear(summary, net.layers[0].weight[:, :A], net.layers[0].bias).unbind(-2)
               for net in nets]
    pieces = [(net.layers[0].weight, A, A + context_dim, None) for net in nets]
    return statics, [net.layers[1:] for net in nets], pieces


class _SRNNSteps(_Steps):
    """SRNN (SRNN eq. 3-4, 12, Algorithm 1): in the loop only ``q``'s head (and Res_q's prior
    mean) on ``z_{t-1}``; the prior and the decoder on ``[z_{t-1} | z_t, d_t]`` after it."""

    def elbo(self, x, mask, beta, shape):
        model, guide, loop = self.model, self.guide, self.loop
        Z = model.z_dim
        pre = model.precompute(x, mask)                                        # d [B, T, R]
        summary = guide.summarise(x, mask, pre)                                # a [B, T, A]
        statics, tails, pieces = _head_parts(guide, summary, Z)
        loc_net, lv_net = model.prior_net.loc_net, model.prior_net.logvar_net
        if guide.residual:                       # NN1_p(z_{t-1}, d_t) is part of q
            first = loc_net.layers[0]
            statics.append(F.linear(pre, first.weight[:, Z:], first.bias).unbind(-2))
            tails.append(loc_net.layers[1:])
            pieces.append((first.weight, 0, Z, None))
        merged = loop.linear(pieces)
        # the a_t / d_t blocks of all networks as one [B, sum H] per step; their shared
        # activation and clamp act once on the sum
        statics = [torch.cat(parts, -1) for parts in zip(*statics)]
        shared = _shared_prefix(tails)
        prefix, tails = tails[0][:shared], [tail[shared:] for tail in tails]
        z = x.new_zeros(shape + (Z,))            # z_0 = 0 (SRNN A.2)
        zs, q_locs, q_scales, p_locs = [], [], [], []
        for t in range(x.shape[1]):
            hidden = loop.run(prefix, merged(z) + statics[t])
            outs = [loop.run(tail, h) for tail, h in zip(tails, hidden.split(merged.widths, -1))]
            loc, scale = outs[0], _scale(outs[1])
            if guide.residual:
                p_locs.append(outs[2])
                loc = loc + outs[2]
            q_locs.append(loc)
            q_scales.append(scale)
            z = _rsample(loc, scale, shape)
            zs.append(z)
        z_all = torch.stack(zs, dim=-2)                                     # [..., B, T, Z]
        z_prev = torch.cat([z_all.new_zeros(z_all.shape[:-2] + (1, Z)), z_all[..., :-1, :]],
                           dim=-2)
        inputs = broadcast_cat([z_prev, pre])
        p_loc = torch.stack(p_locs, dim=-2) if guide.residual else loc_net(inputs)
        p = gaussian(p_loc, logvar_to_scale(lv_net(inputs)))
        q = gaussian(_stack(q_locs, shape), _stack(q_scales, shape))
        latent = _latent_terms(q, p, z_all, self.analytic_kl)
        log_x = model.emission_dist(pre, z_all).log_prob(x)
        return _combine(log_x, latent, mask, beta)


class _VRNNSteps(_Steps):
    """VRNN and STORN (VRNN eq. 5-7, 9): in the loop ``q``'s head on ``[phi_x(x_t), h_{t-1}]``,
    ``phi_z(z_t)`` and the GRU; the prior on ``h_{t-1}`` and the decoder on
    ``[phi_z(z_t), h_{t-1}]`` after it."""

    def elbo(self, x, mask, beta, shape):
        model, guide, loop = self.model, self.guide, self.loop
        pre = model.precompute(x, mask)                                     # phi_x [B, T, P]
        summary = guide.summarise(x, mask, pre)
        carry = model.initial_carry(x)
        cell = model.cell.cell
        gru = model.cell.kind == "gru"
        H, P = cell.hidden_size, model.pre_dim
        statics, tails, pieces = _head_parts(guide, summary, model.context_dim)
        if guide.residual:                       # NN1_p(h_{t-1}) is part of q
            first = model.prior_net.loc_net.layers[0]
            tails.append(model.prior_net.loc_net.layers[1:])
            pieces.append((first.weight, 0, first.in_features, first.bias))
        pieces.append((cell.weight_hh, 0, H, cell.bias_hh))
        on_h = loop.linear(pieces)                               # every first layer on h_{t-1}
        on_z = loop.linear([(cell.weight_ih, P, P + model.hidden_dim, None)])
        static_gates = F.linear(pre, cell.weight_ih[:, :P], cell.bias_ih).unbind(-2)
        n = len(statics)
        h = carry.h.expand(shape + carry.h.shape[-1:])
        hs, feats, zs, q_locs, q_scales, p_locs = [], [], [], [], [], []
        for t in range(x.shape[1]):
            h_out = model.cell.output(h)
            firsts = on_h(h_out).split(on_h.widths, -1)
            loc, log_var = (loop.run(tail, f + s[t])
                            for tail, f, s in zip(tails, firsts, statics))
            if guide.residual:
                p_loc = loop.run(tails[n], firsts[n])
                p_locs.append(p_loc)
                loc = loc + p_loc
            scale = _scale(log_var)
            z = _rsample(loc, scale, shape)
            f = loop.run(model.phi_z.layers, z)
            h_next = cell_update(on_z(f) + static_gates[t], firsts[-1], h, H, gru)
            hs.append(h_out)
            feats.append(f)
            zs.append(z)
            q_locs.append(loc)
            q_scales.append(scale)
            h = h_next
        h_all = torch.stack(hs, dim=-2)                                     # [..., B, T, R]
        z_all = torch.stack(zs, dim=-2)
        q = gaussian(_stack(q_locs, shape), _stack(q_scales, shape))
        if type(model) is STORN:                 # N(0, I)
            zeros = h_all.new_zeros(h_all.shape[:-1] + (model.z_dim,))
            p = gaussian(zeros, torch.ones_like(zeros))
        else:
            p_loc = (torch.stack(p_locs, dim=-2) if guide.residual
                     else model.prior_net.loc(h_all))
            p = gaussian(p_loc, model.prior_net.scale(h_all))
        latent = _latent_terms(q, p, z_all, self.analytic_kl)
        decoded = model.decoder(torch.cat([torch.stack(feats, dim=-2), h_all], dim=-1))
        log_x = model.emission(decoded).log_prob(x)
        return _combine(log_x, latent, mask, beta)


def _stack(tensors, shape):
    return torch.stack([t.expand(shape + t.shape[-1:]) for t in tensors], dim=-2)


def _rsample(loc, scale, shape):
    """Pyro's sample statement on the plate-expanded ``N(loc, scale)``: ``loc + eps * scale``
    with ``eps`` drawn for the batch ``shape`` (the same random numbers as ``Normal.rsample``)."""
    eps = loc.new_empty(shape + loc.shape[-1:]).normal_()
    return loc + eps * scale


#: Model classes with a loop of their own (exact types; subclasses take the generic path).
_STEPS = {SRNN: _SRNNSteps, VRNN: _VRNNSteps, STORN: _VRNNSteps}


def _steps_for(model, guide, analytic_kl, defer=False) -> _Steps:
    factored = type(make_steps(model, guide)) is not ProtocolSteps
    cls = _STEPS.get(type(model), _Steps) if factored else _Steps
    return cls(model, guide, analytic_kl, defer and torch.is_grad_enabled())


class DirectELBO(ELBO):
    """``Trace_ELBO`` (or, with ``analytic_kl``, ``TraceMeanField_ELBO``) of a library model and
    guide, computed on the step protocol without Pyro traces (see the module's description).

    Called like Pyro's ELBOs, ``loss(model, guide, x, mask, beta=1.0)`` and
    ``loss_and_grads(...)``, so ``SVI`` takes it as it is. With ``num_particles > 1`` the
    particles are a leading batch dimension and the loss is their mean (Pyro's
    ``vectorize_particles=True``).

    :param bool analytic_kl: the KL of each step in closed form (``TraceMeanField_ELBO``)
        instead of the sampled ``log q(z_t) - log p(z_t)`` (``Trace_ELBO``).
    :param int num_particles: samples of the latents per sequence.
    :param fallback: an ELBO for pairs outside the protocol (``make_elbo(path="auto")``: Pyro's
        ``Trace_ELBO`` or ``TraceMeanField_ELBO``); None raises :class:`ConfigError` for them.
    """

    def __init__(self, *, analytic_kl: bool = False, num_particles: int = 1, fallback=None):
        super().__init__(num_particles=num_particles, max_plate_nesting=1,
                         vectorize_particles=num_particles > 1)
        self.analytic_kl = bool(analytic_kl)
        self.fallback = fallback

    def _differentiable_loss(self, model, guide, x, mask, beta=1.0, *, defer=False):
        if not supports_direct_elbo(model, guide):
            check_guide_model(guide, model)
            raise ConfigError(
                f"DirectELBO needs a LatentSequenceModel with Gaussian latents and a "
                f"SequenceGuide on the step protocol without a baseline, got "
                f"{type(model).__name__} and {type(guide).__name__}; use Pyro's ELBO "
                f"(make_elbo(..., path='pyro'))")
        x, mask = model.check_batch(x, mask)
        beta = _as_beta(beta, x)
        register_pair(model, guide)
        shape = (x.shape[0],) if self.num_particles == 1 else (self.num_particles, x.shape[0])
        steps = _steps_for(model, guide, self.analytic_kl, defer)
        elbo = steps.elbo(x, mask, beta, shape)
        return -elbo.sum() / self.num_particles, steps.loop

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("DirectELBO computes the ELBO without traces")

    def _use_fallback(self, model, guide) -> bool:
        return self.fallback is not None and not supports_direct_elbo(model, guide)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss ``-ELBO`` as a tensor that carries gradients."""
        if self._use_fallback(model, guide):
            return self.fallback.differentiable_loss(model, guide, *args, **kwargs)
        return self._differentiable_loss(model, guide, *args, **kwargs)[0]

    def loss(self, model, guide, *args, **kwargs):
        """``-ELBO`` as a float, without gradients."""
        if self._use_fallback(model, guide):
            return self.fallback.loss(model, guide, *args, **kwargs)
        with torch.no_grad():
            return float(self._differentiable_loss(model, guide, *args, **kwargs)[0])

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """``-ELBO`` as a float; its gradients are accumulated in the parameters' ``.grad``."""
        if self._use_fallback(model, guide):
            return self.fallback.loss_and_grads(model, guide, *args, **kwargs)
        loss, loop = self._differentiable_loss(model, guide, *args, defer=True, **kwargs)
        loss.backward()
        loop.accumulate()  # the per-step layers' weight gradients, one product each
        return float(loss.detach())


__all__ = ["DirectELBO", "supports_direct_elbo"]
