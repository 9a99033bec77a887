"""Latent families: how a guide turns its head's output into ``q(z_t | .)``.

A latent model declares :attr:`~pyro_seqvae.models.LatentSequenceModel.latent_family`; the
guides (:mod:`pyro_seqvae.guides`) build their head and their per-step distribution from
:data:`LATENT_FAMILIES`, so one guide loop serves Gaussian and binary latents:

- ``gaussian``: :class:`~pyro_seqvae.layers.GaussianHead` -> ``(loc, scale)`` ->
  ``N(loc, scale)`` (reparameterised; SRNN eq. 12);
- ``bernoulli``: :class:`LogitHead` -> ``(logits,)`` -> ``Bernoulli(sigmoid(logits))`` over
  ``{0, 1}^Z`` (not reparameterisable: score-function gradients; TSBN, Gan et al. 2015). With
  no hidden layer the head is linear, ``logits = U [a_t, z_{t-1}] + d``: the TSBN recognition
  model.
"""

from __future__ import annotations

import pyro.distributions as dist
from torch import nn

from .errors import ConfigError
from .layers import MLP, GaussianHead
from .models.base import gaussian


def bernoulli(logits):
    """Independent Bernoulli units over the last dimension: ``Bernoulli(logits).to_event(1)``."""
    return dist.Bernoulli(logits=logits).to_event(1)


class LogitHead(nn.Module):
    """Map an input to the logits of independent Bernoulli latents: ``[..., I] -> ([..., Z],)``.

    :param int in_dim: input width.
    :param int z_dim: number of binary units.
    :param list hidden_dims: hidden widths (empty: a linear map).
    """

    def __init__(self, in_dim, z_dim, hidden_dims=(500,), *, activation="relu", clip=None):
        super().__init__()
        self.logit_net = MLP(in_dim, hidden_dims, z_dim, activation=activation, clip=clip)

    def forward(self, inputs):
        return (self.logit_net(inputs),)


#: Family name -> (head class, distribution constructor taking the head's outputs).
LATENT_FAMILIES = {"gaussian": (GaussianHead, gaussian), "bernoulli": (LogitHead, bernoulli)}


def latent_family(model):
    """The ``(head class, distribution constructor)`` of ``model``'s latent family."""
    family = getattr(model, "latent_family", "gaussian")
    if family not in LATENT_FAMILIES:
        raise ConfigError(f"{type(model).__name__}.latent_family must be one of "
                          f"{sorted(LATENT_FAMILIES)}, got {family!r}")
    return LATENT_FAMILIES[family]


__all__ = ["LATENT_FAMILIES", "LogitHead", "bernoulli", "latent_family"]
