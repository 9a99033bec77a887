"""SRNN (Fraccaro et al. 2016): a state-space model stacked on a deterministic RNN."""

from __future__ import annotations

from pyro.nn import pyro_method

from ..layers import (
    MLP,
    PAPER_ACTIVATION,
    PAPER_CLIP,
    GaussianHead,
    SequenceRNN,
    broadcast_cat,
    previous_frame,
    shift_right,
)
from .base import LatentSequenceModel, gaussian
from .feedback_noise import FeedbackNoise


class SRNN(FeedbackNoise, LatentSequenceModel):
    """The stochastic recurrent neural network.

    - ``d_t = GRU(d_{t-1}, u_t)`` with ``u_t = x_{t-1}``: one fused RNN call (SRNN eq. 2);
    - prior ``p(z_t | z_{t-1}, d_t) = N(mu_p, v_p)``, ``mu_p = NN1_p(z_{t-1}, d_t)``,
      ``log v_p = NN2_p(z_{t-1}, d_t)``, ``z_0 = 0`` (eq. 3, A.2);
    - emission ``p(x_t | z_t, d_t)`` (eq. 4).

    :param int x_dim: ``D``.
    :param int z_dim: latent width (100).
    :param int rnn_dim: width of ``d_t`` (300).
    :param int hidden_dim: hidden width of every network (500).
    :param str rnn_type: ``gru`` (the paper) or ``lstm``.
    :param int hidden_layers: hidden layers per network (music: 1; SRNN speech: 2).
    :param str activation: hidden activation (default ``leaky_relu``, slope 1/3: SRNN A.1-A.2).
    :param float clip: clamp hidden activations to ``[-clip, clip]`` (default 3, SRNN A.1-A.2;
        ``None``: no clamp).
    :param float input_dropout: in training steps, drop each key of ``u_t`` with this
        probability (:mod:`~pyro_seqvae.models.feedback_noise`; default 0).
    :param float input_flip: in training steps, flip each key of ``u_t`` with this
        probability (default 0).

    Example::

        model = SRNN(x_dim=88)
        guide = SmoothingGuide(model, residual=True)   # the paper's best: smoothing + Res_q
    """

    precompute_reads_x_t = False  # d_t reads x_{<t}

    def __init__(self, x_dim=88, *, z_dim=100, rnn_dim=300, hidden_dim=500, rnn_type="gru",
                 hidden_layers=1, activation=PAPER_ACTIVATION, clip=PAPER_CLIP,
                 emission="bernoulli", emission_kwargs=None, input_dropout=0.0, input_flip=0.0,
                 name=None):
        super().__init__(x_dim, z_dim=z_dim, emission=emission, emission_kwargs=emission_kwargs,
                         name=name)
        self._set_feedback_noise(input_dropout, input_flip)
        hidden, nn_kw = self._network_settings(rnn_dim, hidden_dim, rnn_type, hidden_layers,
                                               activation, clip)
        self.rnn = SequenceRNN(x_dim, rnn_dim, rnn_type)
        self.prior_net = GaussianHead(z_dim + rnn_dim, z_dim, hidden, **nn_kw)
        self.decoder = MLP(z_dim + rnn_dim, hidden, self.emission.param_dim, **nn_kw)

    @property
    def pre_dim(self):
        return self.rnn_dim

    @pyro_method
    def precompute(self, x, mask):
        return self.rnn(self.feedback(shift_right(x)))

    @pyro_method
    def precompute_step(self, x, t, state=None):
        """``d_t = GRU(d_{t-1}, x_{t-1})`` from the state ``d_{t-1}``: ``O(1)`` per step."""
        return self.rnn.step(self.feedback(previous_frame(x, t)), state)

    @pyro_method
    def prior_loc(self, carry, pre_t):
        return self.prior_net.loc(broadcast_cat([carry.z, pre_t]))

    @pyro_method
    def prior(self, carry, pre_t, loc=None):
        inputs = broadcast_cat([carry.z, pre_t])
        return gaussian(self.prior_net.loc(inputs) if loc is None else loc,
                        self.prior_net.scale(inputs))

    @pyro_method
    def emission_dist(self, pre, records):
        return self.emission(self.decoder(broadcast_cat([records, pre])))
