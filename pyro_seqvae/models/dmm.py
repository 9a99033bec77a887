"""DMM (Krishnan et al. 2017): the deep Markov model of Pyro's ``examples/dmm.py``."""

from __future__ import annotations

import torch
import torch.nn as nn
from pyro.nn import pyro_method

from ..layers import MLP, bounded_softplus_scale, check_positive_int, soft_clamp
from .base import Carry, LatentSequenceModel, gaussian

#: Soft bound of the transition mean. The linear path ``W_loc z`` (initialised to the identity)
#: makes ``z_{t-1} -> z_t`` a linear chain over T steps: one Adam update of 3e-3 on every entry of
#: ``W_loc`` gives it an eigenvalue near ``1 + Z * 3e-3 = 1.3``, and over a 120-step chorale the
#: Res_q guide's samples grew to 1e14 at the 6th update (then NaN). Healthy runs keep ``|loc|``
#: below about 6, where the soft bound is the identity to within ``exp(-28)``.
LOC_BOUND = 20.0


class GatedTransition(nn.Module):
    """The DMM's gated transition ``p(z_t | z_{t-1})`` (Krishnan et al. 2017, sec. 5).

    ``g = sigmoid(W2 relu(W1 z))``, ``h = W4 relu(W3 z)``,
    ``loc = soft_clamp((1 - g) * W_loc z + g * h, -20, 20)`` (``W_loc`` starts at the identity),
    ``scale = softplus(W_s relu(h))`` with its log-variance softly bounded to ``[-12, 8]``
    (:func:`~pyro_seqvae.layers.bounded_softplus_scale`). Shapes ``[..., Z] -> [..., Z]``.

    Both bounds are additions to Pyro's example (identities in a healthy run): without them the
    DMM with a Res_q guide (lr 3e-3, 16 JSB sequences) ran its latent chain away (see
    :data:`LOC_BOUND`) and a transition scale underflowed to 0 within 5 updates, which stopped
    the run with an invalid ``Normal``.
    """

    def __init__(self, z_dim, transition_dim):
        super().__init__()
        self.gate = MLP(z_dim, [transition_dim], z_dim)
        self.proposed_mean = MLP(z_dim, [transition_dim], z_dim)
        self.z_to_loc = nn.Linear(z_dim, z_dim)
        self.scale_net = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.z_to_loc.weight.copy_(torch.eye(z_dim))
            self.z_to_loc.bias.zero_()

    def _loc(self, z, proposed):
        gate = torch.sigmoid(self.gate(z))
        return soft_clamp((1 - gate) * self.z_to_loc(z) + gate * proposed, -LOC_BOUND, LOC_BOUND)

    def _scale(self, proposed):
        return bounded_softplus_scale(self.scale_net(torch.relu(proposed)))

    def loc(self, z):
        return self._loc(z, self.proposed_mean(z))

    def scale(self, z):
        return self._scale(self.proposed_mean(z))

    def forward(self, z):
        proposed = self.proposed_mean(z)
        return self._loc(z, proposed), self._scale(proposed)


class DMM(LatentSequenceModel):
    """The deep Markov model: ``z_t ~ N(GatedTransition(z_{t-1}))``, ``x_t ~ Emission(MLP(z_t))``.

    Comparable with Pyro's ``examples/dmm.py`` (same transition and a two-hidden-layer
    emitter; defaults ``z_dim=100, transition_dim=200, emission_dim=100``); here the emitter
    outputs logits and ``z_0`` is a learned parameter shared by model and guide. Pair it with
    :class:`~pyro_seqvae.guides.SmoothingGuide` for the example's backward-RNN guide.

    :param int x_dim: ``D``.
    :param int z_dim: latent width.
    :param int transition_dim: hidden width of the gated transition.
    :param int emission_dim: hidden width of the emitter's two layers.
    """

    precompute_reads_x_t = False  # no features

    def __init__(self, x_dim=88, *, z_dim=100, transition_dim=200, emission_dim=100,
                 emission="bernoulli", emission_kwargs=None, name=None):
        super().__init__(x_dim, z_dim=z_dim, emission=emission, emission_kwargs=emission_kwargs,
                         name=name)
        self.transition_dim = check_positive_int("transition_dim", transition_dim)
        self.emission_dim = check_positive_int("emission_dim", emission_dim)
        self.transition = GatedTransition(z_dim, transition_dim)
        self.emitter = MLP(z_dim, [emission_dim, emission_dim], self.emission.param_dim)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))

    @property
    def pre_dim(self):
        return 0

    @pyro_method
    def precompute(self, x, mask):
        return x.new_zeros(x.shape[:-1] + (0,))

    def precompute_step(self, x, t, state=None):
        return x.new_zeros(x.shape[0], 0), None

    @pyro_method
    def initial_carry(self, x):
        return Carry(z=self.z_0.expand(x.shape[0], self.z_dim))

    @pyro_method
    def prior_loc(self, carry, pre_t):
        return self.transition.loc(carry.z)

    @pyro_method
    def prior(self, carry, pre_t, loc=None):
        if loc is None:
            return gaussian(*self.transition(carry.z))
        return gaussian(loc, self.transition.scale(carry.z))

    @pyro_method
    def emission_dist(self, pre, records):
        return self.emission(self.emitter(records))
