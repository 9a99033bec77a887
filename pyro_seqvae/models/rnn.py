"""The RNN baseline: an exact-likelihood autoregressive model with no latent variable."""

from __future__ import annotations

import pyro
import torch
from pyro.nn import pyro_method

from ..layers import (
    MLP,
    PAPER_ACTIVATION,
    PAPER_CLIP,
    SequenceRNN,
    check_positive_int,
    previous_frame,
    register_params,
    shift_right,
)
from .base import SequenceModel, _as_beta
from .feedback_noise import FeedbackNoise


class RNN(FeedbackNoise, SequenceModel):
    """``h_t = f(h_{t-1}, u_t)`` with ``u_t = x_{t-1}``; ``p(x_t | x_<t) = Emission(MLP(h_t))``.

    ``log p(x)`` is exact (:meth:`log_likelihood`); as a Pyro model it has one observed site
    ``x`` and no latent site, so it trains with :class:`~pyro_seqvae.guides.EmptyGuide`.

    :param int x_dim: ``D``.
    :param int rnn_dim: recurrent width (300).
    :param int hidden_dim: hidden width of the output network (500).
    :param str rnn_type: ``gru`` or ``lstm``.
    :param int hidden_layers: hidden layers per network (music: 1; SRNN speech: 2).
    :param str activation: hidden activation (default ``leaky_relu``, slope 1/3: SRNN A.1-A.2).
    :param float clip: clamp hidden activations to ``[-clip, clip]`` (default 3, SRNN A.1-A.2;
        ``None``: no clamp).
    :param float input_dropout: in training steps, drop each key of ``u_t`` with this
        probability (:mod:`~pyro_seqvae.models.feedback_noise`; default 0).
    :param float input_flip: in training steps, flip each key of ``u_t`` with this
        probability (default 0).
    """

    def __init__(self, x_dim=88, *, rnn_dim=300, hidden_dim=500, rnn_type="gru",
                 hidden_layers=1, activation=PAPER_ACTIVATION, clip=PAPER_CLIP,
                 emission="bernoulli", emission_kwargs=None, input_dropout=0.0, input_flip=0.0,
                 name=None):
        super().__init__(x_dim, emission=emission, emission_kwargs=emission_kwargs, name=name)
        self._set_feedback_noise(input_dropout, input_flip)
        hidden, nn_kw = self._network_settings(rnn_dim, hidden_dim, rnn_type, hidden_layers,
                                               activation, clip)
        self.rnn = SequenceRNN(x_dim, rnn_dim, rnn_type)
        self.decoder = MLP(rnn_dim, hidden, self.emission.param_dim, **nn_kw)

    @pyro_method
    def predictive(self, x):
        """``p(x_t | x_<t)`` for every step: a distribution with batch ``[B, T]``, event ``[D]``."""
        return self._predict(shift_right(x))

    def _predict(self, u):
        return self.emission(self.decoder(self.rnn(u)))

    def forward(self, x, mask, beta=1.0):
        """The Pyro model: one observed site ``x`` (batch ``[B]``, event ``[T, D]``), masked."""
        x, mask = self.check_batch(x, mask)
        _as_beta(beta, x)  # no latents to weight, but a negative or NaN beta is still refused
        register_params(self)
        with pyro.plate("sequences", x.shape[0], dim=-1):
            predictive = self._predict(self.feedback(shift_right(x)))
            pyro.sample("x", predictive.mask(mask).to_event(1), obs=x)

    def log_likelihood(self, x, mask):
        """Exact ``log p(x)`` per sequence: ``sum_t mask_t log p(x_t | x_<t)``, shape ``[B]``."""
        x, mask = self.check_batch(x, mask)
        return (self.predictive(x).log_prob(x) * mask).sum(-1)

    @torch.no_grad()
    def sample(self, num_sequences, num_steps, *, prefix=None, guide=None):
        """Draw ``[N, T, D]`` sequences, continuing ``prefix`` (``[P, D]`` or ``[N, P, D]``)."""
        check_positive_int("num_sequences", num_sequences)
        check_positive_int("num_steps", num_steps)
        x, P = self._prepare_prefix(num_sequences, num_steps, prefix)
        # h_t = f(h_{t-1}, x_{t-1}), one step at a time (O(T)); the prefix in one fused call
        state = self._prefix_state(x[:, :P]) if P else None
        for t in range(P, num_steps):
            predictive, state = self._predict_step(previous_frame(x, t), state)
            x[:, t] = predictive.sample()[:, 0]
        return x

    @pyro_method
    def _prefix_state(self, prefix):
        """The recurrent state after ``u_1 .. u_P`` of a ``[B, P, D]`` prefix (one fused call)."""
        return self.rnn.rnn(shift_right(prefix))[1]

    @pyro_method
    def _predict_step(self, u_t, state):
        """``p(x_t | x_<t)`` with batch ``[B, 1]`` from ``u_t = x_{t-1}`` ``[B, D]`` and the
        recurrent state after ``u_{t-1}``; returns ``(distribution, state)``."""
        h_t, state = self.rnn.step(u_t, state)
        return self.emission(self.decoder(h_t.unsqueeze(-2))), state
