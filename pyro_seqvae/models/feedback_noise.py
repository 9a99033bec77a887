"""Corrupting the fed-back notes ``u_t = x_{t-1}`` while training (issue 12).

A model whose recurrent state reads its own previous output (RNN, SRNN) is trained only on the
data's chords, but samples from its own draws: independent Bernoulli keys produce chords the
data never has, the state leaves the region it was trained on and the samples can settle on
dense note clouds (exposure bias). Training on slightly corrupted inputs teaches the state to
tolerate such chords; the likelihood itself is unchanged (the observed ``x_t`` is not touched,
only the input ``u_t`` that predicts it).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

#: The training runs' default ``input_flip`` (:class:`~pyro_seqvae.training.TrainConfig`); the
#: models themselves default to 0, so a bare model is exactly the model it defines.
DEFAULT_INPUT_FLIP = 0.02
#: The models that get :data:`DEFAULT_INPUT_FLIP` in a training run (measured, README issue 12):
#: every model that reads its notes back (VRNN and STORN: the ``x_t`` entering ``phi_x``).
DEFAULT_INPUT_FLIP_MODELS = ("rnn", "srnn", "vrnn", "storn", "tsbn")


def check_rate(name: str, value) -> float:
    """A probability in ``[0, 1)``; a clear :class:`ConfigError` otherwise."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return rate


def corrupt_feedback(u: torch.Tensor, *, dropout: float = 0.0, flip: float = 0.0) -> torch.Tensor:
    """Corrupt binary inputs: each key independently dropped, then each key flipped.

    :param torch.Tensor u: ``[B, T, D]`` inputs (``u_t = x_{t-1}``, binary for piano rolls).
    :param float dropout: probability that a key is set to 0 (a note is lost).
    :param float flip: probability that a key is flipped (``1 - u``: spurious or lost notes).
    :returns: a tensor of ``u``'s shape; ``u`` itself when both rates are 0.
    """
    if dropout > 0:
        u = u * (torch.rand_like(u) >= dropout).to(u.dtype)
    if flip > 0:
        flips = (torch.rand_like(u) < flip).to(u.dtype)
        u = u + flips * (1 - 2 * u)
    return u


class FeedbackNoise:
    """Mixin of the models that read their own notes back: ``input_dropout``, ``input_flip``.

    The noise is applied only while the module is in training mode *and* gradients are on (an
    SVI step); evaluation, validation (``model.eval()``) and sampling (``torch.no_grad``) see
    the exact inputs, so log-likelihoods and samples are those of the model as defined.
    """

    input_dropout = 0.0
    input_flip = 0.0

    def _set_feedback_noise(self, input_dropout, input_flip):
        self.input_dropout = check_rate("input_dropout", input_dropout)
        self.input_flip = check_rate("input_flip", input_flip)

    def feedback(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` corrupted during training steps, ``u`` unchanged otherwise: ``[B, T, D]``."""
        if self.training and torch.is_grad_enabled() and (self.input_dropout or self.input_flip):
            return corrupt_feedback(u, dropout=self.input_dropout, flip=self.input_flip)
        return u


__all__ = ["DEFAULT_INPUT_FLIP", "DEFAULT_INPUT_FLIP_MODELS", "FeedbackNoise", "check_rate",
           "corrupt_feedback"]
