"""Data-dependent initialisation of the emission's output bias (issue 12).

Why: a Bernoulli decoder starts with output biases near 0, i.e. ``p(x_td = 1) = 1/2`` for every
key. Training suppresses the keys the chorales never use (49 of 88 are never on) almost only
through the last layer's *weights* (``W h`` of -10 on the training states) while their biases
stay at their initial values (-0.05 after the 20-epoch default run:
``benchmarks/results/sample_diagnostics_*.json``). A free-running sample whose recurrent state
leaves the training region loses that suppression: the logits of the unused keys return to
about their initial 0 to +1, half the keyboard sounds (about 45 notes per step, keys C1-C3 and
C7-C8), and the fed-back chord drives the state further out, so the sample never recovers.

The fix is the standard one: start the output bias at the log-odds of each key's frequency in
the training data, so that ``p(x_td = 1)`` is the data's marginal wherever the hidden units
contribute little, and the network learns deviations from it. A key never on in the data starts
at the log-odds of half a count (about -10 on the embedded chorales).
"""

from __future__ import annotations

import torch
from torch import nn

from ..emissions import BernoulliEmission

#: The names under which the models keep the network whose output feeds the emission: an MLP
#: (``decoder``, ``emitter``) or a plain linear layer (TSBN's ``decoder_z``, ``W2 z_t + c``).
OUTPUT_NETWORKS = ("decoder", "emitter", "decoder_z")


def emission_output_layer(model) -> nn.Linear | None:
    """The final linear layer producing the emission's parameters, or None if there is none.

    :param model: a :class:`~pyro_seqvae.models.SequenceModel`.
    """
    for name in OUTPUT_NETWORKS:
        net = getattr(model, name, None)
        layers = [net] if isinstance(net, nn.Linear) else getattr(net, "layers", None)
        if layers is not None and len(layers) and isinstance(layers[-1], nn.Linear) \
                and layers[-1].out_features == model.emission.param_dim:
            return layers[-1]
    return None


def key_log_odds(sequences, *, transpose: int = 0) -> torch.Tensor:
    """Log-odds of each key's frequency over all steps, ``[D]``, with half a count of smoothing.

    ``logit((n_d + 1/2) / (N + 1))``, ``n_d`` the steps with key ``d`` on, ``N`` all steps. With
    ``transpose = k`` the frequencies are averaged over the shifts ``-k .. k`` (the training
    augmentation), so keys only reached by transposition are not started at the floor.

    :param sequences: ``[T_i, D]`` binary rolls.
    :param int transpose: the run's transposition range.
    :rtype: torch.Tensor
    """
    counts = torch.stack([torch.as_tensor(s, dtype=torch.float64).sum(0) for s in sequences])
    counts, steps = counts.sum(0), float(sum(int(s.shape[0]) for s in sequences))
    if transpose:
        shifted = torch.zeros(2 * transpose + 1, counts.numel(), dtype=torch.float64)
        for i, k in enumerate(range(-transpose, transpose + 1)):
            if k >= 0:
                shifted[i, k:] = counts[: counts.numel() - k]
            else:
                shifted[i, :k] = counts[-k:]
        counts = shifted.mean(0)
    freq = (counts + 0.5) / (steps + 1.0)
    return torch.logit(freq)


@torch.no_grad()
def init_output_bias(model, sequences, *, transpose: int = 0) -> torch.Tensor | None:
    """Set the output bias of a Bernoulli decoder to the data's key log-odds (see above).

    Other emissions and models without a plain linear output layer are left unchanged.

    :param model: a :class:`~pyro_seqvae.models.SequenceModel`.
    :param sequences: the training rolls ``[T_i, D]``.
    :param int transpose: the run's transposition range (see :func:`key_log_odds`).
    :returns: the new bias ``[D]``, or None when nothing was changed.
    """
    if not isinstance(model.emission, BernoulliEmission):
        return None
    layer = emission_output_layer(model)
    if layer is None or layer.bias is None:
        return None
    bias = key_log_odds(sequences, transpose=transpose)
    layer.bias.copy_(bias.to(layer.bias))
    return layer.bias.detach().clone()


__all__ = ["OUTPUT_NETWORKS", "emission_output_layer", "init_output_bias", "key_log_odds"]
