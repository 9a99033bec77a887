"""STORN / VRNN-I (Bayer & Osendorfer 2014): the VRNN with a standard normal prior."""

from __future__ import annotations

from pyro.nn import pyro_method

from ..errors import IncompatibleGuideError
from .base import gaussian
from .vrnn import VRNN


class STORN(VRNN):
    """VRNN whose prior is ``N(0, I)`` at every step: no temporal dependence between latents
    through the prior (the VRNN paper's *VRNN-I*). Everything else is the VRNN's.

    It has no prior-mean network, so the residual guide (Res_q) cannot be paired with it.
    """

    has_learned_prior_loc = False

    def _build_prior(self, hidden, nn_kw):
        pass

    @pyro_method
    def prior_loc(self, carry, pre_t):
        raise IncompatibleGuideError("STORN's prior N(0, I) has no prior-mean network")

    @pyro_method
    def prior(self, carry, pre_t, loc=None):
        h = self.cell.output(carry.h)
        loc = h.new_zeros(()).expand(h.shape[:-1] + (self.z_dim,))
        return gaussian(loc, loc.new_ones(()).expand(loc.shape))
