"""VRNN (Chung et al. 2015): a recurrent state driven by both the data and the latents."""

from __future__ import annotations

import torch
from pyro.nn import pyro_method

from ..layers import MLP, PAPER_ACTIVATION, PAPER_CLIP, GaussianHead, RecurrentCell, broadcast_cat
from .base import Carry, LatentSequenceModel, gaussian
from .feedback_noise import FeedbackNoise


class VRNN(FeedbackNoise, LatentSequenceModel):
    """The variational recurrent neural network.

    - features ``phi_x(x_t)``, ``phi_z(z_t)``: one layer of ``hidden_dim`` units each;
    - prior ``p(z_t | x_<t, z_<t) = N(phi_prior(h_{t-1}))`` (VRNN eq. 5);
    - emission ``p(x_t | z_<=t, x_<t) = Emission(phi_dec(phi_z(z_t), h_{t-1}))`` (eq. 6);
    - recurrence ``h_t = f(h_{t-1}, phi_x(x_t), phi_z(z_t))`` with a GRU or LSTM ``f`` (eq. 7).

    Pair it with :class:`~pyro_seqvae.guides.FilteringGuide` for the paper's encoder
    ``q(z_t | x_<=t, z_<t) = N(phi_enc(phi_x(x_t), h_{t-1}))`` (eq. 9).

    :param int x_dim: ``D``.
    :param int z_dim: latent width (music default 100).
    :param int rnn_dim: recurrent width (300).
    :param int hidden_dim: width of every network's hidden layer and of the features (500).
    :param str rnn_type: ``gru`` or ``lstm``.
    :param int hidden_layers: hidden layers per network (music: 1; SRNN speech: 2).
    :param str activation: hidden activation (default ``leaky_relu``, slope 1/3: SRNN A.1-A.2).
    :param float clip: clamp hidden activations to ``[-clip, clip]`` (default 3, SRNN A.1-A.2;
        ``None``: no clamp).
    :param float input_dropout: in training steps, drop each key of the ``x_t`` that enters
        ``phi_x`` (the recurrence and the guide's features; not the observed ``x_t``) with this
        probability (:mod:`~pyro_seqvae.models.feedback_noise`; default 0; training runs:
        ``TrainConfig.input_flip``).
    :param float input_flip: in training steps, flip each such key with this probability
        (default 0).

    Example::

        model = VRNN(x_dim=88)
        guide = FilteringGuide(model)
        svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), Trace_ELBO())
        svi.step(batch.x, batch.mask)
    """

    state_depends_on_z = True
    features_are_learned = True

    def __init__(self, x_dim=88, *, z_dim=100, rnn_dim=300, hidden_dim=500, rnn_type="gru",
                 hidden_layers=1, activation=PAPER_ACTIVATION, clip=PAPER_CLIP,
                 emission="bernoulli", emission_kwargs=None, input_dropout=0.0, input_flip=0.0,
                 name=None):
        super().__init__(x_dim, z_dim=z_dim, emission=emission, emission_kwargs=emission_kwargs,
                         name=name)
        self._set_feedback_noise(input_dropout, input_flip)
        hidden, nn_kw = self._network_settings(rnn_dim, hidden_dim, rnn_type, hidden_layers,
                                               activation, clip)
        self.phi_x = MLP(x_dim, hidden, **nn_kw)
        self.phi_z = MLP(z_dim, hidden, **nn_kw)
        self.cell = RecurrentCell(2 * hidden_dim, rnn_dim, rnn_type)
        self.decoder = MLP(hidden_dim + rnn_dim, hidden, self.emission.param_dim, **nn_kw)
        self._build_prior(hidden, nn_kw)

    def _build_prior(self, hidden, nn_kw):
        self.prior_net = GaussianHead(self.rnn_dim, self.z_dim, hidden, **nn_kw)

    @property
    def pre_dim(self):
        return self.hidden_dim

    @property
    def context_dim(self):
        return self.rnn_dim

    @property
    def guide_feature_dim(self):
        return self.hidden_dim

    def guide_features(self, x, pre):
        return pre

    @pyro_method
    def precompute(self, x, mask):
        return self.phi_x(self.feedback(x))

    @pyro_method
    def precompute_step(self, x, t, state=None):
        """``phi_x(x_t)`` of the one step: ``[B, hidden_dim]``."""
        return self.phi_x(self.feedback(x[:, t])), None

    def initial_carry(self, x):
        return Carry(z=x.new_zeros(x.shape[0], self.z_dim),
                     h=x.new_zeros(x.shape[0], self.cell.state_dim))

    def context(self, carry, pre_t):
        return self.cell.output(carry.h)

    @pyro_method
    def prior_loc(self, carry, pre_t):
        return self.prior_net.loc(self.cell.output(carry.h))

    @pyro_method
    def prior(self, carry, pre_t, loc=None):
        h = self.cell.output(carry.h)
        return gaussian(self.prior_net.loc(h) if loc is None else loc, self.prior_net.scale(h))

    def emission_input(self, carry, z_t):
        return broadcast_cat([z_t, self.cell.output(carry.h)])

    @pyro_method
    def emission_dist(self, pre, records):
        z, h = records.split([self.z_dim, self.rnn_dim], dim=-1)
        return self.emission(self.decoder(torch.cat([self.phi_z(z), h], dim=-1)))

    @pyro_method
    def advance(self, carry, pre_t, z_t):
        return Carry(z=z_t, h=self.cell(broadcast_cat([pre_t, self.phi_z(z_t)]), carry.h))
