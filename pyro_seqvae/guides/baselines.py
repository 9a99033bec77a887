"""Variance reduction for non-reparameterised latents: Pyro's baselines on the guide's sites.

Score-function gradients of binary latents (TSBN) weight ``grad log q(z_t | .)`` by the
downstream cost ``sum_{s >= t} [log p - log q]``; subtracting a baseline ``b`` that does not
depend on ``z_t`` leaves the gradient unbiased and can shrink its variance (Mnih & Gregor 2014,
NVIL, the recipe of the TSBN paper). Pyro's ``TraceGraph_ELBO`` reads the baseline from each
site's ``infer={"baseline": {...}}``:

- ``decaying``: a decaying average of the site's downstream cost (``use_decaying_avg_baseline``,
  ``baseline_beta``), kept by Pyro in the param store per site and per batch position;
- ``neural``: NVIL's input-dependent baseline ``b(a_t, z_{t-1}, steps left)``, an MLP
  (:class:`NeuralBaseline`) trained by Pyro on ``(cost - b)^2`` alongside the model;
- ``nvil``: NVIL's whole recipe, the neural baseline on a signal centred by running means per
  number of steps left and divided by a running standard deviation
  (:mod:`pyro_seqvae.guides.nvil`; :class:`~pyro_seqvae.infer.downstream.DownstreamCostELBO`
  only).

``Trace_ELBO`` ignores baselines; :class:`~pyro_seqvae.infer.downstream.DownstreamCostELBO`
(the training configuration's choice when a baseline is asked for) and Pyro's
``TraceGraph_ELBO`` apply them.
"""

from __future__ import annotations

import pyro
import torch
from pyro.poutine.runtime import get_plates
from torch import nn

from ..layers import MLP, broadcast_cat

#: Names accepted by the guides' ``baseline`` option and the CLI's ``--baseline``.
BASELINES = ("none", "decaying", "neural", "nvil")
#: The decaying average's weight on its old value (Pyro's default is 0.90).
DECAY = 0.90
#: Prefix of the param-store entries of Pyro's decaying averages (pyro/infer/tracegraph_elbo.py).
_AVERAGE_PREFIX = "__baseline_avg_downstream_cost_"
#: Scale of the steps-left input of the neural baseline (JSB chorales: 24-193 steps).
STEPS_SCALE = 100.0


class NeuralBaseline(nn.Module):
    """NVIL's baseline: ``[..., B, I] -> [..., B]``, one hidden layer (100 tanh units in NVIL).

    :param int in_dim: input width ``I``.
    :param int hidden_dim: hidden width.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 100):
        super().__init__()
        self.net = MLP(in_dim, [hidden_dim], 1, activation="tanh")

    def forward(self, inputs):
        return self.net(inputs).squeeze(-1)


def site_batch_shape() -> torch.Size:
    """The batch shape of a sample site in the enclosing plates (``[B]``, ``[K, B]`` ...)."""
    frames = [f for f in get_plates() if f.vectorized and f.dim is not None]
    if not frames:
        return torch.Size()
    shape = [1] * max(-f.dim for f in frames)
    for f in frames:
        shape[f.dim] = f.size
    return torch.Size(shape)


def fit_decaying_averages(names, shape: torch.Size) -> None:
    """Make Pyro's stored decaying averages of ``names`` fit this batch's site shape.

    Pyro keeps one average per batch position; a batch of another size (the last batch of an
    epoch, a particle plate) would not broadcast against it, so a stale average is replaced by
    its mean, which carries the running level over to the new shape.
    """
    store = pyro.get_param_store()
    for name in names:
        key = _AVERAGE_PREFIX + name
        if key in store:
            old = store[key]
            if old.shape != shape:
                store[key] = old.detach().mean().expand(shape).clone()


def decaying_average_state() -> dict:
    """Pyro's decaying averages in the param store, ``{site name: tensor}`` (plain data).

    Pyro keeps them outside any module, so a checkpoint stores them separately
    (:class:`~pyro_seqvae.training.Trainer`) and a resumed run continues with the same baseline.
    """
    store = pyro.get_param_store()
    return {key[len(_AVERAGE_PREFIX):]: store[key].detach().to("cpu", copy=True)
            for key in store.keys() if key.startswith(_AVERAGE_PREFIX)}


def restore_decaying_averages(state, device=None) -> None:
    """Replace the param store's decaying averages by ``state`` (:func:`decaying_average_state`)."""
    store = pyro.get_param_store()
    for key in [k for k in store.keys() if k.startswith(_AVERAGE_PREFIX)]:
        del store[key]
    for name, value in (state or {}).items():
        store[_AVERAGE_PREFIX + name] = value.to(device) if device is not None else value


def decaying_infer() -> dict:
    return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": DECAY}}


def neural_infer(net: NeuralBaseline, inputs, steps_left, shape: torch.Size) -> dict:
    """The site's ``infer`` dict of the neural baseline on ``[inputs, steps_left]``."""
    features = broadcast_cat([inputs, steps_left])
    features = features.expand(shape + features.shape[-1:])
    return {"baseline": {"nn_baseline": net, "nn_baseline_input": features}}


__all__ = ["BASELINES", "NeuralBaseline", "decaying_average_state", "decaying_infer",
           "fit_decaying_averages", "neural_infer", "restore_decaying_averages",
           "site_batch_shape"]
