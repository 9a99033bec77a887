"""The model contract: :class:`SequenceModel` and the step protocol of :class:`LatentSequenceModel`.

Every model is a named root :class:`~pyro.nn.PyroModule` called as ``model(x, mask, beta=1.0)``
with ``x`` of shape ``[B, T, D]`` and a bool ``mask`` of shape ``[B, T]``. Latent models
implement a handful of small step methods; the Pyro model (:meth:`LatentSequenceModel.forward`)
and ancestral sampling are written once on top of them, and the guides in
:mod:`pyro_seqvae.guides` use exactly the same methods, so model and guide cannot drift apart.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from ..emissions import make_emission
from ..errors import ConfigError, DataError
from ..layers import BlockHolder, check_network_settings, check_positive_int, register_params
from .pairing import check_guide_model, check_replayed_guide
from .reuse import GuideStates


class Carry(NamedTuple):
    """What a latent model carries from step ``t-1`` to step ``t``.

    :ivar z: ``z_{t-1}``, shape ``[..., B, Z]``.
    :ivar h: the z-dependent recurrent state ``[..., B, H]`` (VRNN's ``h_{t-1}``) or None.
    """

    z: torch.Tensor
    h: torch.Tensor | None = None


def check_batch(x, mask, x_dim: int, *, where: str = "model input", like=None):
    """Validate a padded batch and return ``(x, mask)``.

    ``x`` must have the dtype and device of the model's weights (``like``): a float64 or
    float16 batch is refused with the fix (``x.float()``) rather than cast silently, which
    would hide a copy per call and break the guide-to-model hand-over of
    :mod:`~pyro_seqvae.models.reuse` (it matches inputs by identity).

    :param torch.Tensor x: ``[B, T, D]`` floating tensor, ``B, T >= 1``.
    :param torch.Tensor mask: ``[B, T]`` bool tensor (True on real steps).
    :param torch.Tensor like: a weight of the model, whose dtype and device ``x`` must have.
    :raises DataError: naming the argument, the expected and the received shape or dtype.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        detail = f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""
        raise DataError(f"{where}: x must be a float tensor [B, T, D], got {shape}{detail}")
    if like is not None and x.dtype != like.dtype:
        raise DataError(f"{where}: x has dtype {x.dtype} but the model's weights are "
                        f"{like.dtype}; pass x.to({like.dtype}) (e.g. x.float())")
    if like is not None and x.device != like.device:
        raise DataError(f"{where}: x is on {x.device} but the model is on {like.device}; "
                        f"move one of them (x.to(device) or model.to(device))")
    if x.shape[-1] != x_dim:
        raise DataError(f"{where}: x has width D={x.shape[-1]} but the model expects "
                        f"x_dim={x_dim}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: x has no sequences (B = 0); expected B >= 1")
    if x.shape[1] == 0:
        raise DataError(f"{where}: x has no time steps")
    if not isinstance(mask, torch.Tensor) or mask.shape != x.shape[:2]:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise DataError(f"{where}: mask must have shape [B, T]={tuple(x.shape[:2])}, got {shape}")
    if mask.dtype != torch.bool:
        raise DataError(f"{where}: mask must be a bool tensor, got dtype {mask.dtype}")
    return x, mask


def _as_beta(beta, like: torch.Tensor):
    # A tensor beta keeps JitTrace_ELBO's compiled graph valid across annealing steps.
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1:
            raise ConfigError(f"beta must be a number or a 0-dim tensor, got shape "
                              f"{tuple(beta.shape)}")
        if not torch.jit.is_tracing() and not 0 < float(beta) < math.inf:
            raise ConfigError(f"beta (the KL weight) must be a finite number > 0, got "
                              f"{float(beta)}")
        return beta.to(device=like.device, dtype=like.dtype)
    # > 0: poutine.scale refuses 0 (and a KL weight of 0 leaves q unconstrained)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta < math.inf:
        raise ConfigError(f"beta (the KL weight) must be a finite number > 0, got {beta!r}")
    return float(beta)


class SequenceModel(BlockHolder, PyroModule):
    """Base class of every model: ``forward(x, mask, beta=1.0)`` and ``sample(...)``.

    :param int x_dim: ``D``, the width of an observation (88 for piano rolls).
    :param emission: an emission name (``bernoulli``, ``gauss``, ``gmm``) or an
        :class:`~pyro_seqvae.emissions.Emission`.
    :param dict emission_kwargs: keyword arguments of the emission (e.g. ``num_components``).
    :param str name: the root name of the parameters in Pyro's param store (default: the class
        name). Two live models with the same name would share parameters: give each its own
        name, or call ``pyro.clear_param_store()`` between them.
    """

    #: True for models with latent sites ``z_t``.
    has_latents = False
    #: Hidden activation and clamp of the model's networks; the guides take them by default.
    #: Models built on :meth:`_network_settings` store their own (the SRNN paper's leaky ReLU
    #: clamped at 3); the DMM keeps the ReLU of Pyro's example.
    activation, clip = "relu", None

    def __init__(self, x_dim: int = 88, *, emission="bernoulli", emission_kwargs=None,
                 name: str | None = None):
        super().__init__(name=name or type(self).__name__)
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.emission = make_emission(emission, x_dim, **(emission_kwargs or {}))

    def check_batch(self, x, mask):
        return check_batch(x, mask, self.x_dim, where=f"{type(self).__name__} input",
                           like=next(self.parameters(), None))

    def _network_settings(self, rnn_dim, hidden_dim, rnn_type, hidden_layers, activation, clip):
        """Validate and store the recurrent and feed-forward settings shared by the models.

        :returns: ``(hidden widths, MLP keyword arguments)``.
        """
        self.rnn_dim = check_positive_int("rnn_dim", rnn_dim)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.rnn_type = check_choice("rnn_type", rnn_type, ("gru", "lstm"))
        self.hidden_layers = check_positive_int("hidden_layers", hidden_layers)
        check_network_settings(activation, clip)
        self.activation, self.clip = activation, clip
        return [hidden_dim] * hidden_layers, {"activation": activation, "clip": clip}

    def config(self) -> dict:
        """The constructor's keyword arguments, enough to rebuild this model (JSON-safe)."""
        out = {}
        for key in inspect.signature(type(self).__init__).parameters:
            if key in ("self", "emission", "emission_kwargs", "name"):
                continue
            out[key] = getattr(self, key)
        out["emission"] = self.emission.name
        out["emission_kwargs"] = self.emission.config()
        return out

    def _param_like(self) -> torch.Tensor:
        return next(self.parameters())

    def _prepare_prefix(self, num_sequences, num_steps, prefix):
        like = self._param_like()
        x = like.new_zeros(num_sequences, num_steps, self.x_dim)
        if prefix is None:
            return x, 0
        prefix = torch.as_tensor(prefix, dtype=like.dtype, device=like.device)
        given = tuple(prefix.shape)
        if prefix.dim() == 2:
            prefix = prefix.expand(num_sequences, *prefix.shape)
        if prefix.dim() != 3 or prefix.shape[0] != num_sequences or prefix.shape[-1] != self.x_dim:
            raise DataError(f"prefix must be [P, {self.x_dim}] or [{num_sequences}, P, "
                            f"{self.x_dim}], got {given}")
        if prefix.shape[1] > num_steps:
            raise DataError(f"prefix has {prefix.shape[1]} steps but num_steps={num_steps}")
        x[:, : prefix.shape[1]] = prefix
        return x, prefix.shape[1]


class LatentSequenceModel(SequenceModel):
    """A model with one latent ``z_t`` per step, written as a small step protocol.

    Subclasses implement:

    - :meth:`precompute` ``(x, mask) -> pre [B, T, F]``: the z-independent per-step features,
      computed in one fused call (VRNN: ``phi_x(x_t)``; SRNN: ``d_t``; DMM: width 0), and
      optionally :meth:`precompute_step` ``(x, t, state) -> (pre_t, state)``, the same one step
      at a time (sampling);
    - :meth:`initial_carry` ``(x) -> Carry``;
    - :meth:`context` ``(carry, pre_t) -> [..., C]``: the z-dependent state a guide conditions on
      (VRNN: ``h_{t-1}``; SRNN and DMM: ``z_{t-1}``);
    - :meth:`prior_loc` ``(carry, pre_t)`` and :meth:`prior` ``(carry, pre_t, loc=None)``:
      ``p(z_t | .)``, whose mean is ``loc`` when the caller already has it (Res_q hand-over);
    - :meth:`emission_input` ``(carry, z_t) -> [..., R]``: what step ``t`` leaves for the emission;
    - :meth:`emission_dist` ``(pre, records [..., B, T, R]) -> Distribution`` batch ``[..., B, T]``;
    - :meth:`advance` ``(carry, pre_t, z_t) -> Carry``.

    The emission is scored in a single site ``x`` after the loop: given the latents, the
    observations factorise over time, so ``log p(x | z) = sum_t log p(x_t | .)`` is computed in
    one batched decoder call instead of T small ones.
    """

    has_latents = True
    #: True when the recurrent state depends on sampled z (VRNN): the guide must advance it.
    state_depends_on_z = False
    #: True when the prior has a learned mean network ``NN1_p`` (required by Res_q).
    has_learned_prior_loc = True
    #: The family of ``q(z_t | .)`` the guides build (:data:`pyro_seqvae.latents.LATENT_FAMILIES`):
    #: ``gaussian`` (reparameterised) or ``bernoulli`` (binary, score-function gradients: TSBN).
    latent_family = "gaussian"
    #: True when ``precompute`` already returns learned features of ``x_t`` (VRNN's phi_x),
    #: which the filtering guide then uses as its summary ``a_t`` directly.
    features_are_learned = False
    #: True when ``pre_t`` reads ``x_t`` itself (VRNN's ``phi_x(x_t)``), not only ``x_{<t}``:
    #: sampling then recomputes it once ``x_t`` is drawn (SRNN's ``d_t``, TSBN's and the DMM's
    #: features read ``x_{<t}`` only and are computed once per step).
    precompute_reads_x_t = True

    def __init__(self, x_dim=88, *, z_dim=100, emission="bernoulli", emission_kwargs=None,
                 name=None):
        super().__init__(x_dim, emission=emission, emission_kwargs=emission_kwargs, name=name)
        self.z_dim = check_positive_int("z_dim", z_dim)
        #: States the guide computed, reused when the model is replayed on its samples
        #: (see :mod:`pyro_seqvae.models.reuse`); set ``reuse_guide_states = False`` to disable.
        self.guide_states = GuideStates()
        self.reuse_guide_states = True

    # ---- the step protocol -------------------------------------------------------------------
    @property
    def pre_dim(self) -> int:
        """``F``, the width of :meth:`precompute`'s output."""
        raise NotImplementedError

    @property
    def context_dim(self) -> int:
        """``C``, the width of :meth:`context`'s output (default ``Z``: the context is
        ``z_{t-1}``, as in the state-space models SRNN, DMM and TSBN)."""
        return self.z_dim

    def precompute(self, x, mask):
        raise NotImplementedError

    def precompute_step(self, x, t: int, state=None):
        """``pre_t`` ``[B, F]`` of :meth:`precompute` for one step, for step-by-step sampling.

        ``pre_t`` may read ``x[:, :t + 1]`` only; ``state`` is what the call for step ``t - 1``
        returned (``None`` at ``t = 0``). :meth:`sample` calls it before ``x_t`` is drawn and,
        when :attr:`precompute_reads_x_t`, again after with the same ``state``, keeping the
        second result. The default
        recomputes :meth:`precompute` over the whole prefix, ``O(t)`` per step; models with a
        recurrent or per-step precompute override it so that sampling is ``O(T)``.

        :returns: ``(pre_t, state)``.
        """
        return self.precompute(x[:, : t + 1], None)[:, t], None

    def initial_carry(self, x) -> Carry:
        """``Carry(z=z_0)`` with ``z_0 = 0`` ``[B, Z]`` (SRNN A.2; the DMM learns its ``z_0``)."""
        return Carry(z=x.new_zeros(x.shape[0], self.z_dim))

    def context(self, carry: Carry, pre_t):
        """What a guide conditions on besides its summary: ``z_{t-1}`` by default (VRNN:
        ``h_{t-1}``)."""
        return carry.z

    def prior_loc(self, carry: Carry, pre_t):
        raise NotImplementedError

    def prior(self, carry: Carry, pre_t, loc=None):
        raise NotImplementedError

    def emission_input(self, carry: Carry, z_t):
        return z_t

    def emission_dist(self, pre, records):
        raise NotImplementedError

    def advance(self, carry: Carry, pre_t, z_t) -> Carry:
        return Carry(z=z_t, h=carry.h)

    def guide_features(self, x, pre):
        """What a guide summarises at each step: ``[B, T, G]`` (default ``[pre_t, x_t]``)."""
        return torch.cat([pre, x], dim=-1)

    @property
    def guide_feature_dim(self) -> int:
        return self.pre_dim + self.x_dim

    # ---- the Pyro model, written once --------------------------------------------------------
    def forward(self, x, mask, beta=1.0):
        """Run the generative model with ``x`` observed.

        Sites: ``z_1 .. z_T`` inside ``pyro.markov``, each scaled by ``beta`` (KL annealing) and
        masked beyond the sequence's length; one observed site ``x`` with batch ``[B]`` and
        event ``[T, D]``, masked per step. All inside ``pyro.plate("sequences", B, dim=-1)``.

        :param torch.Tensor x: ``[B, T, D]``.
        :param torch.Tensor mask: ``[B, T]`` bool.
        :param beta: KL weight; a float or a 0-dim tensor (use a tensor under JIT).
        """
        x, mask = self.check_batch(x, mask)
        check_replayed_guide(self)
        register_params(self)
        beta = _as_beta(beta, x)
        B, T, _ = x.shape
        states = self.guide_states if self.reuse_guide_states else None
        handed_over = states.precompute(self, x, mask) if states is not None else None
        if handed_over is None:
            states = None
            pre, carry = self.precompute(x, mask), self.initial_carry(x)
        else:
            pre, carry = handed_over
        records = []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                pre_t = pre[:, t]
                prior_loc = states.prior_loc(carry) if states is not None else None
                with poutine.scale(scale=beta):
                    z_t = pyro.sample(f"z_{t + 1}",
                                      self.prior(carry, pre_t, loc=prior_loc).mask(mask[:, t]))
                records.append(self.emission_input(carry, z_t))
                reused = states.advance(carry, z_t) if states is not None else None
                carry = reused if reused is not None else self.advance(carry, pre_t, z_t)
            records = torch.stack(torch.broadcast_tensors(*records), dim=-2)
            pyro.sample("x", self.emission_dist(pre, records).mask(mask).to_event(1), obs=x)
        self.guide_states.clear()
        return carry

    @torch.no_grad()
    def sample(self, num_sequences: int, num_steps: int, *, prefix=None, guide=None):
        """Draw sequences by ancestral sampling.

        With a ``prefix`` the first ``P`` steps are fixed to it and the latents of those steps
        are drawn from ``guide`` (the posterior given the prefix) if one is given, else from the
        prior; the rest continues from the model.

        :param int num_sequences: ``N``.
        :param int num_steps: ``T`` (including the prefix).
        :param torch.Tensor prefix: ``[P, D]`` or ``[N, P, D]`` opening to continue.
        :param guide: a guide of this model, used to infer the prefix's latents.
        :returns: ``[N, T, D]`` (binary for a Bernoulli emission).
        :rtype: torch.Tensor
        """
        check_positive_int("num_sequences", num_sequences)
        check_positive_int("num_steps", num_steps)
        x, P = self._prepare_prefix(num_sequences, num_steps, prefix)
        guide_z = {}
        if P and guide is not None:
            check_guide_model(guide, self)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            tr = poutine.trace(guide).get_trace(x[:, :P], mask[:, :P])
            guide_z = {t: tr.nodes[f"z_{t + 1}"]["value"] for t in range(P)}
        carry, state = self.initial_carry(x), None
        for t in range(num_steps):
            # x_t is still a placeholder here; pre_t may only depend on x_{<t} before x_t is set.
            pre_t, next_state = self.precompute_step(x, t, state)
            z_t = guide_z[t] if t in guide_z else self.prior(carry, pre_t).sample()
            if t >= P:
                record = self.emission_input(carry, z_t).unsqueeze(-2)
                x[:, t] = self.emission_dist(pre_t.unsqueeze(-2), record).sample()[:, 0]
                if self.precompute_reads_x_t:
                    pre_t, next_state = self.precompute_step(x, t, state)
            carry, state = self.advance(carry, pre_t, z_t), next_state
        return x


def gaussian(loc, scale):
    """A diagonal Gaussian over the last dimension: ``Normal(loc, scale).to_event(1)``."""
    return dist.Normal(loc, scale).to_event(1)


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


__all__ = ["Carry", "LatentSequenceModel", "SequenceModel", "check_batch", "gaussian"]
