"""The smoothing guide: ``q(z_t | z_{t-1}, x_{1:T})`` through a backward GRU."""

from __future__ import annotations

import torch

from ..layers import SequenceRNN, check_positive_int, reverse_padded
from .base import SequenceGuide


class SmoothingGuide(SequenceGuide):
    """Smoothing guide: ``a_t = g(a_{t+1}, [d_t, x_t])``, a GRU run backwards from
    ``a_{T+1} = 0`` over each sequence's own length (SRNN eq. 11), so ``a_t`` sees the future.

    The GRU input is the model's :meth:`guide_features` (SRNN ``[d_t, x_t]``, DMM ``x_t``,
    VRNN/STORN ``phi_x(x_t)``); the head then conditions on ``a_t`` and the model's context.
    Padding never reaches a real step: sequences are reversed within their lengths.

    :param model: a latent model.
    :param bool residual: Res_q (SRNN Algorithm 1).
    :param int hidden_dim: hidden width of ``NN1_q``, ``NN2_q`` (500).
    :param network: ``hidden_layers``, ``activation``, ``clip`` (see :class:`SequenceGuide`).
    :param int summary_dim: width of the backward GRU, i.e. of ``a_t`` (300).
    :param str rnn_type: ``gru`` or ``lstm``.

    Example::

        guide = SmoothingGuide(SRNN(), residual=True)   # SRNN smooth + Res_q
    """

    name = "smooth"

    def __init__(self, model, *, residual=False, hidden_dim=500, summary_dim=300,
                 rnn_type="gru", name=None, **network):
        super().__init__(model, residual=residual, hidden_dim=hidden_dim, name=name, **network)
        self.summary_dim = check_positive_int("summary_dim", summary_dim)
        self.rnn_type = rnn_type
        self.backward_rnn = SequenceRNN(model.guide_feature_dim, summary_dim, rnn_type)
        self._build_head(summary_dim)

    def config(self):
        return {**super().config(), "summary_dim": self.summary_dim, "rnn_type": self.rnn_type}

    def summarise(self, x, mask, pre):
        features = self.model.guide_features(x, pre)
        lengths = mask.sum(-1) if mask is not None else torch.full(
            x.shape[:1], x.shape[1], dtype=torch.long, device=x.device)
        return reverse_padded(self.backward_rnn(reverse_padded(features, lengths)), lengths)
