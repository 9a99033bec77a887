"""Reuse of the deterministic states a guide computed, by the model scored on the guide's samples.

In ``SVI`` the guide runs first and the model is then replayed on the guide's samples: with the
same ``x``, the same parameters and the very same ``z_t`` tensors, the model would recompute
exactly the deterministic path the guide has just computed: the fused ``precompute`` call, for
a VRNN the recurrence ``h_t = f(h_{t-1}, phi_x(x_t), phi_z(z_t))`` at every step, and with Res_q
the prior-mean network ``NN1_p(z_{t-1}, d_t)`` the guide evaluated on the same carry. Handing
those states over cut the VRNN's SVI step from 1.78x to about 1.4x a plain PyTorch step on CPU
(``benchmarks/speed.py``).

The reuse is safe by construction: a state is handed over only when the model's inputs are the
*identical* tensor objects the guide used (``is``, not equality: ``poutine.replay`` passes the
guide's sample objects through), no parameter of the model has been modified in place since (torch
version counters), and autograd is in the same mode. Anything else (a model run on its own, a
different trace, an in-place parameter change in between) misses and recomputes. Gradients are
unchanged: the reused tensors are the same function of the same parameters and samples.

The hand-over is one-shot: a guide run starts it and the model's next run consumes and clears it,
which is the order of every Pyro ELBO. Optimizers that write through ``p.data`` (Pyro's
``ClippedAdam`` does) do not move version counters, so a script that runs the guide, steps an
optimizer *without* running the model, and only then replays the model on that old guide trace
must set ``model.reuse_guide_states = False``.
"""

from __future__ import annotations

import torch


def _versions(module) -> tuple:
    return tuple(p._version for p in module.parameters())


class GuideStates:
    """A one-shot hand-over of deterministic states from a guide run to the next model run."""

    def __init__(self):
        self.clear()

    def clear(self):
        self._key = None
        self._pre = None
        self._initial = None
        self._steps = {}
        self._prior_locs = {}

    def start(self, model, x, mask, pre, initial_carry):
        """Called by the guide with its ``pre = model.precompute(x, mask)`` and initial carry."""
        self._key = (x, mask, _versions(model), torch.is_grad_enabled())
        self._pre = pre
        self._initial = initial_carry
        self._steps = {}
        self._prior_locs = {}

    def record(self, carry, z_t, new_carry):
        """Called by the guide after ``new_carry = model.advance(carry, pre_t, z_t)``."""
        if self._key is not None:
            self._steps[id(z_t)] = (carry.h, z_t, new_carry)

    def precompute(self, model, x, mask):
        """The guide's ``(pre, initial carry)`` if computed from these very inputs and weights."""
        key = self._key
        if (key is not None and key[0] is x and key[1] is mask
                and key[3] == torch.is_grad_enabled() and key[2] == _versions(model)):
            return self._pre, self._initial
        self.clear()
        return None

    def record_prior_loc(self, carry, loc):
        """Called by a Res_q guide with the model's ``NN1_p`` output on the guide's own carry."""
        if self._key is not None:
            self._prior_locs[id(carry.z)] = (carry.z, carry.h, loc)

    def prior_loc(self, carry):
        """The guide's ``NN1_p`` output for this very carry, or None."""
        hit = self._prior_locs.get(id(carry.z))
        if hit is not None and hit[0] is carry.z and hit[1] is carry.h:
            return hit[2]
        return None

    def advance(self, carry, z_t):
        """The guide's next carry for this very ``(carry.h, z_t)``, or None."""
        hit = self._steps.get(id(z_t))
        if hit is not None and hit[0] is carry.h and hit[1] is z_t:
            return hit[2]
        return None
