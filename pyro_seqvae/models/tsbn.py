"""TSBN (Gan, Li, Henao, Carlson & Carin 2015): the temporal sigmoid belief network."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import pyro_method
from torch import nn

from ..errors import ConfigError, IncompatibleGuideError
from ..layers import check_positive_int, previous_frame, shift_right
from .base import LatentSequenceModel
from .feedback_noise import FeedbackNoise


class TSBN(FeedbackNoise, LatentSequenceModel):
    """The temporal sigmoid belief network: binary latents ``z_t`` in ``{0, 1}^H``.

    - prior ``p(z_t | z_{t-1}, x_{t-1}) = Bernoulli(sigmoid(W1 z_{t-1} + W3 x_{t-1} + b))``;
    - emission ``p(x_t | z_t, x_{t-1}) = Emission(W2 z_t + W4 x_{t-1} + c)`` (with the default
      Bernoulli emission: ``Bernoulli(sigmoid(.))``, DESIGN.md "TSBN");
    - ``z_0 = 0``, ``x_0 = 0``.

    Its guides (:class:`~pyro_seqvae.guides.FilteringGuide`, :class:`~pyro_seqvae.guides.
    SmoothingGuide`) see ``latent_family = "bernoulli"`` and form ``q(z_t | .)`` as independent
    Bernoulli units; ``FilteringGuide(model, hidden_layers=0)`` is exactly the paper's
    recognition model ``q(z_t | z_{t-1}, x_t, x_{t-1}) = Bernoulli(sigmoid(U1 z_{t-1} + U2 x_t
    + U3 x_{t-1} + d))``. The latents are not reparameterisable: ``Trace_ELBO`` uses
    score-function gradients, ``TraceGraph_ELBO`` adds Rao-Blackwellisation and the guides'
    ``baseline`` option (NVIL).

    **Deep TSBN** (``layers = L > 1``, the paper's stacked variant): ``z_t`` is the concatenation
    ``[z_t^(1), ..., z_t^(L)]`` of ``L`` layers of ``H = z_dim / L`` units; the top layer is a
    TSBN prior, each lower layer is generated from the layer above at the same step and its own
    past, ``p(z_t^(l) | .) = Bernoulli(sigmoid(W1^(l) z_{t-1}^(l) + V^(l) z_t^(l+1) + W3^(l)
    x_{t-1} + b^(l)))``, and ``x_t`` from the bottom layer ``z_t^(1)``. One sample site per step
    holds all layers.

    :param int x_dim: ``D``.
    :param int z_dim: total number of binary latent units per step (100), split evenly over
        the layers.
    :param int layers: stacked latent layers ``L`` (1: the TSBN; 2: a deep TSBN).
    :param float input_dropout: in training steps, drop each key of the fed-back ``x_{t-1}``
        with this probability (:mod:`~pyro_seqvae.models.feedback_noise`; default 0).
    :param float input_flip: in training steps, flip each key of the fed-back ``x_{t-1}`` with
        this probability (default 0).

    Example::

        model = TSBN(x_dim=88, z_dim=100)
        guide = FilteringGuide(model, hidden_layers=0)      # the paper's recognition model
    """

    latent_family = "bernoulli"
    # the prior has no Gaussian mean network for Res_q
    has_learned_prior_loc = False
    precompute_reads_x_t = False  # [x_{t-1}, W3 x_{t-1} + b]

    def __init__(self, x_dim=88, *, z_dim=100, layers=1, emission="bernoulli",
                 emission_kwargs=None, input_dropout=0.0, input_flip=0.0, name=None):
        super().__init__(x_dim, z_dim=z_dim, emission=emission, emission_kwargs=emission_kwargs,
                         name=name)
        self._set_feedback_noise(input_dropout, input_flip)
        self.layers = check_positive_int("layers", layers)
        if z_dim % layers:
            raise ConfigError(f"z_dim must be a multiple of layers={layers} (the units are "
                              f"split evenly over the layers), got {z_dim}")
        H = self.layer_dim = z_dim // layers
        self.prior_x = nn.Linear(x_dim, z_dim)  # W3 and b of every layer
        self.prior_z = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in range(layers))  # W1
        self.top_down = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in range(layers - 1))
        self.decoder_z = nn.Linear(H, self.emission.param_dim)  # W2 and c
        self.decoder_x = nn.Linear(x_dim, self.emission.param_dim, bias=False)  # W4

    @property
    def pre_dim(self):
        return self.x_dim + self.z_dim

    @property
    def guide_feature_dim(self):
        return 2 * self.x_dim

    @pyro_method
    def precompute(self, x, mask):
        """``[u_t, W3 u_t + b]`` with ``u_t = x_{t-1}`` (corrupted in training steps when
        ``input_flip``/``input_dropout`` are set): ``[B, T, D + Z]``, one batched call."""
        u = self.feedback(shift_right(x))
        return torch.cat([u, self.prior_x(u)], dim=-1)

    @pyro_method
    def precompute_step(self, x, t, state=None):
        """``[x_{t-1}, W3 x_{t-1} + b]`` of the one step: ``[B, D + Z]``."""
        u_t = previous_frame(x, t)
        return torch.cat([u_t, self.prior_x(u_t)], dim=-1), None

    def guide_features(self, x, pre):
        """``[x_{t-1}, x_t]``: ``[B, T, 2D]``, what a guide reads besides ``z_{t-1}``."""
        return torch.cat([pre[..., : self.x_dim], x], dim=-1)

    @pyro_method
    def prior_loc(self, carry, pre_t):
        raise IncompatibleGuideError("TSBN's binary prior has no Gaussian mean network for Res_q")

    @pyro_method
    def prior(self, carry, pre_t, loc=None):
        z = carry.z
        if self.layers == 1:
            recurrent = self.prior_z[0](z)
        else:
            recurrent = torch.cat([net(part) for net, part in
                                   zip(self.prior_z, z.split(self.layer_dim, dim=-1))], dim=-1)
        logits = pre_t[..., self.x_dim :] + recurrent
        if self.layers == 1:
            return dist.Bernoulli(logits=logits).to_event(1)
        return LayeredBernoulli(logits, self.top_down, self.layer_dim)

    def emission_input(self, carry, z_t):
        return z_t if self.layers == 1 else z_t[..., : self.layer_dim]

    @pyro_method
    def emission_dist(self, pre, records):
        return self.emission(self.decoder_z(records) + self.decoder_x(pre[..., : self.x_dim]))


class LayeredBernoulli(TorchDistribution):
    """The within-step distribution of a deep TSBN's layers ``[z^(1), ..., z^(L)]``.

    ``p(z) = prod_l Bernoulli(z^(l) | sigmoid(a^(l) + V^(l) z^(l+1)))`` with ``V^(L) z^(L+1) =
    0``: the top layer is drawn first, each lower one given the layer above.

    :param torch.Tensor logits: ``a``, ``[..., L * H]``, the bottom-up logits without the
        top-down terms.
    :param top_down: ``L - 1`` linear maps ``V^(l)`` (``H -> H``).
    :param int layer_dim: ``H``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits, top_down, layer_dim, validate_args=None):
        self.logits, self.top_down, self.layer_dim = logits, top_down, layer_dim
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return LayeredBernoulli(self.logits.expand(batch_shape + self.event_shape),
                                self.top_down, self.layer_dim)

    def _full_logits(self, value):
        parts = list(self.logits.split(self.layer_dim, dim=-1))
        values = value.split(self.layer_dim, dim=-1)
        for layer, net in enumerate(self.top_down):
            parts[layer] = parts[layer] + net(values[layer + 1])
        return torch.cat(torch.broadcast_tensors(*parts), dim=-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits = self._full_logits(value)
        return dist.Bernoulli(logits=logits, validate_args=False).log_prob(value).sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape=()):
        sample_shape = torch.Size(sample_shape)
        logits = self.logits.expand(self._extended_shape(sample_shape))
        parts = logits.split(self.layer_dim, dim=-1)
        layers = [None] * len(parts)
        layers[-1] = torch.bernoulli(torch.sigmoid(parts[-1]))
        for layer in reversed(range(len(parts) - 1)):
            top = self.top_down[layer](layers[layer + 1])
            layers[layer] = torch.bernoulli(torch.sigmoid(parts[layer] + top))
        return torch.cat(layers, dim=-1)


__all__ = ["LayeredBernoulli", "TSBN"]
