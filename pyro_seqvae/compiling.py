"""Regional ``torch.compile`` of a model's and a guide's per-step networks.

The per-step loop of a model or guide calls the same few small networks at every time step
(MLPs, Gaussian heads' mean and log-variance networks, recurrent cells). Compiling each of them
once, in place, with ``dynamic=True`` (so that batch size, particle count and sequence length do
not trigger a recompile) is *regional compilation*: the Pyro loop, the sample sites and
``pyro.markov`` stay eager, only the networks are compiled. Parameter names and
``state_dict`` keys do not change, so checkpoints are the same as those of an eager run.

Use in your own SVI script::

    from pyro_seqvae.compiling import compile_networks
    compile_networks(model, guide)          # before building SVI; once
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), Trace_ELBO())
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .layers import MLP, RecurrentCell

#: The network types compiled by :func:`compile_networks`.
COMPILED_TYPES = (MLP, RecurrentCell)


def compile_networks(*modules: nn.Module, dynamic: bool = True, **compile_kwargs) -> int:
    """Compile, in place, every :class:`~pyro_seqvae.layers.MLP` and
    :class:`~pyro_seqvae.layers.RecurrentCell` found in ``modules``.

    Each network's ``__call__`` goes through ``torch.compile`` (``nn.Module.compile``); its
    parameters, names and ``state_dict`` are unchanged. Compilation happens lazily at the first
    call of each network (and once more for its backward).

    :param modules: models and guides (any ``nn.Module``).
    :param bool dynamic: compile with symbolic batch sizes (default True: no recompile per
        batch size, particle count or length).
    :returns: the number of networks compiled.
    """
    with warnings.catch_warnings():  # torch 2.13's inductor uses its own deprecated script_method
        warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated",
                                DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401
    count = 0
    for root in modules:
        for module in root.modules():
            if isinstance(module, COMPILED_TYPES) and getattr(module, "_compiled_call_impl",
                                                               None) is None:
                module.compile(dynamic=dynamic, **compile_kwargs)
                count += 1
    return count


def compile_available() -> bool:
    """True when this torch has ``torch.compile`` (2.0 or later)."""
    return hasattr(torch, "compile")
