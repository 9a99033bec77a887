"""Emission distributions ``p(x_t | features)``: decoder outputs to a Pyro distribution.

A model's decoder network outputs ``param_dim`` numbers per step; an :class:`Emission` turns
them into a distribution with ``event_dim=1`` over ``x_t`` (``[..., D]``). Models never look
inside an emission, so Gaussian and mixture outputs plug in without touching them.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule

from .errors import ConfigError
from .layers import LOGVAR_MAX, LOGVAR_MIN, check_positive_int


class Emission(PyroModule):
    """Base class: ``forward(params [..., P]) -> Distribution``, batch ``...``, event ``[D]``.

    :param int x_dim: ``D``, the width of an observation.
    """

    #: Name used by the registry and the CLI's ``--emission``.
    name = "emission"

    def __init__(self, x_dim: int):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)

    @property
    def param_dim(self) -> int:
        """Number of decoder outputs per step."""
        raise NotImplementedError

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor keyword arguments beyond ``x_dim`` (recorded in checkpoints)."""
        return {}


class BernoulliEmission(Emission):
    """Independent Bernoulli units with logits: the piano-roll emission (88 pitches)."""

    name = "bernoulli"

    @property
    def param_dim(self) -> int:
        return self.x_dim

    def forward(self, params):
        return dist.Bernoulli(logits=params).to_event(1)


class GaussianEmission(Emission):
    """Diagonal Gaussian: ``params = [mu, log sigma^2]`` (the papers' *-Gauss* rows)."""

    name = "gauss"

    @property
    def param_dim(self) -> int:
        return 2 * self.x_dim

    def forward(self, params):
        loc, logvar = params.split(self.x_dim, dim=-1)
        scale = (0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)).exp()
        return dist.Normal(loc, scale).to_event(1)


class GMMEmission(Emission):
    """Mixture of ``M`` diagonal Gaussians (the papers' *-GMM* rows, VRNN paper sec. 3).

    ``params = [mixture logits (M), means (M*D), log variances (M*D)]``; the weights are a
    softmax of the logits.

    :param int x_dim: ``D``.
    :param int num_components: ``M``.
    """

    name = "gmm"

    def __init__(self, x_dim: int, num_components: int = 20):
        super().__init__(x_dim)
        self.num_components = check_positive_int("num_components", num_components)

    @property
    def param_dim(self) -> int:
        return self.num_components * (1 + 2 * self.x_dim)

    def config(self):
        return {"num_components": self.num_components}

    def forward(self, params):
        M, D = self.num_components, self.x_dim
        logits, loc, logvar = params.split([M, M * D, M * D], dim=-1)
        loc = loc.reshape(loc.shape[:-1] + (M, D))
        scale = (0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)).exp().reshape(loc.shape)
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=F.log_softmax(logits, -1)),
                                      components)


EMISSIONS = {cls.name: cls for cls in (BernoulliEmission, GaussianEmission, GMMEmission)}


def make_emission(emission, x_dim: int, **kwargs) -> Emission:
    """Build an emission from a registry name, or pass an :class:`Emission` instance through.

    :param emission: a name in :data:`EMISSIONS` or an :class:`Emission`.
    :param int x_dim: ``D``.
    :raises ConfigError: for an unknown name or an instance of the wrong width.
    """
    if isinstance(emission, Emission):
        if emission.x_dim != x_dim:
            raise ConfigError(
                f"emission has x_dim={emission.x_dim} but the model has x_dim={x_dim}")
        return emission
    if emission not in EMISSIONS:
        raise ConfigError(f"unknown emission {emission!r}; expected one of {sorted(EMISSIONS)}")
    return EMISSIONS[emission](x_dim, **kwargs)
