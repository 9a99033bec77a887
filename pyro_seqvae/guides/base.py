"""The guide contract: :class:`SequenceGuide` samples the model's ``z_t`` sites step by step.

A guide refers to its model without owning it (``self._model = (model,)``, Pyro's AutoGuide
idiom): the model's parameters keep their own names and are trained through both traces.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule

from ..errors import ConfigError, IncompatibleGuideError
from ..latents import latent_family
from ..layers import (
    BlockHolder,
    broadcast_cat,
    check_network_settings,
    check_positive_int,
    register_params,
)
from ..models.base import LatentSequenceModel, SequenceModel, _as_beta
from ..models.pairing import PAIRING_KEY
from .baselines import (
    BASELINES,
    STEPS_SCALE,
    NeuralBaseline,
    decaying_infer,
    fit_decaying_averages,
    neural_infer,
    site_batch_shape,
)
from .nvil import SignalNormaliser, nvil_infer

#: Sentinel of ``activation`` and ``clip``: take the guided model's setting.
FROM_MODEL = "model"


class Proposal(NamedTuple):
    """The guide's ``q(z_t | .)`` at one step, and the model's prior mean when Res_q used it."""

    dist: object
    prior_loc: object = None
    #: the head's input ``[a_t, context]`` (the neural baseline reads it)
    inputs: object = None


class SequenceGuide(BlockHolder, PyroModule):
    """Base class of the guides ``q(z_{1:T} | x)``, called as ``guide(x, mask, beta=1.0)``.

    At step ``t`` the guide forms ``q(z_t | .) = N(mu_q, v_q)`` from the per-step summary
    ``a_t`` (:meth:`summarise`) and the model's context (``z_{t-1}`` for SRNN and DMM, ``h_{t-1}``
    for VRNN): ``mu_q = NN1_q(context, a_t)``, ``log v_q = NN2_q(context, a_t)`` (SRNN eq. 12).
    With ``residual=True`` the mean is ``NN1_p(z_{t-1}, d_t) + NN1_q(z_{t-1}, a_t)``, reusing the
    model's prior-mean network on the guide's own sample (Res_q, SRNN Algorithm 1). After each
    sample the guide advances the model's recurrence with it, so a VRNN guide conditions on the
    same ``h_{t-1}`` as the model.

    The family of ``q(z_t | .)`` is the model's :attr:`latent_family`
    (:mod:`pyro_seqvae.latents`): Gaussian as above, or independent Bernoulli units with
    ``logits = NN_q(context, a_t)`` for binary latents (TSBN).

    :param model: a :class:`~pyro_seqvae.models.LatentSequenceModel`.
    :param bool residual: use the residual mean Res_q.
    :param int hidden_dim: hidden width of ``NN1_q`` and ``NN2_q`` (500).
    :param int hidden_layers: hidden layers per network (1; SRNN speech: 2; 0: linear maps, with
        a :class:`FilteringGuide` of a TSBN exactly the paper's recognition model).
    :param str activation: hidden activation; ``"model"`` (the default): the model's own
        (:attr:`~pyro_seqvae.models.SequenceModel.activation`, the SRNN paper's ``leaky_relu``
        for RNN, VRNN, STORN and SRNN, ``relu`` for the DMM).
    :param clip: clamp hidden activations to ``[-clip, clip]``; ``"model"`` (the default): the
        model's own (3 for the paper's networks, None for the DMM).
    :param str baseline: variance reduction for binary latents (:mod:`.baselines`): ``none``,
        ``decaying`` (a decaying average of the downstream cost) or ``neural`` (NVIL's network),
        read by :class:`~pyro_seqvae.infer.DownstreamCostELBO` and ``TraceGraph_ELBO``; ``nvil``
        (the network on a centred, variance-normalised signal, :mod:`.nvil`), read by
        :class:`~pyro_seqvae.infer.DownstreamCostELBO` only.
    :param str name: root name in the param store (default: the class name).
    """

    #: Name used by the registry and the CLI's ``--guide``.
    name = "guide"

    def __init__(self, model, *, residual: bool = False, hidden_dim: int = 500,
                 hidden_layers: int = 1, activation: str = FROM_MODEL, clip=FROM_MODEL,
                 baseline: str = "none", name: str | None = None):
        self.check_compatible(model, residual=residual)
        if baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {list(BASELINES)}, got {baseline!r}")
        if baseline != "none" and model.latent_family == "gaussian":
            raise IncompatibleGuideError(
                f"{type(self).__name__}(baseline={baseline!r}) cannot guide "
                f"{type(model).__name__}: its Gaussian latents have reparameterised gradients, "
                "which use no baseline")
        super().__init__(name=name or type(self).__name__)
        self._model = (model,)
        self.residual = bool(residual)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        if hidden_layers != 0:
            check_positive_int("hidden_layers", hidden_layers)
        self.hidden_layers = hidden_layers
        self.baseline = baseline
        self.activation = model.activation if activation == FROM_MODEL else activation
        self.clip = model.clip if clip == FROM_MODEL else clip
        check_network_settings(self.activation, self.clip)

    @classmethod
    def check_compatible(cls, model, *, residual: bool = False):
        """Raise :class:`IncompatibleGuideError` if this guide cannot be paired with ``model``."""
        if not isinstance(model, SequenceModel):
            raise IncompatibleGuideError(
                f"{cls.__name__} needs a pyro_seqvae model, got {type(model).__name__}")
        if not isinstance(model, LatentSequenceModel):
            raise IncompatibleGuideError(
                f"{cls.__name__} cannot guide {type(model).__name__}: it has no latent sites; "
                "use EmptyGuide")
        if residual and model.latent_family != "gaussian":
            raise IncompatibleGuideError(
                f"{cls.__name__}(residual=True) cannot guide {type(model).__name__}: Res_q "
                f"shifts the mean of a Gaussian guide, and its latents are "
                f"{model.latent_family}")
        if residual and not model.has_learned_prior_loc:
            raise IncompatibleGuideError(
                f"{cls.__name__}(residual=True) cannot guide {type(model).__name__}: its prior "
                "has no learned mean network NN1_p for the residual mean Res_q")

    @property
    def model(self):
        """The model this guide belongs to (a reference, not a submodule)."""
        return self._model[0]

    def _build_head(self, summary_dim: int):
        head, self.latent_dist = latent_family(self.model)
        in_dim = summary_dim + self.model.context_dim
        self.head = head(in_dim, self.model.z_dim, self.hidden, **self.nn_kwargs)
        if self.baseline in ("neural", "nvil"):  # input: the head's input and the steps left
            self.baseline_net = NeuralBaseline(in_dim + 1)
        if self.baseline == "nvil":
            self.signal_normaliser = SignalNormaliser()

    @property
    def hidden(self) -> list:
        return [self.hidden_dim] * self.hidden_layers

    @property
    def nn_kwargs(self) -> dict:
        return {"activation": self.activation, "clip": self.clip}

    def config(self) -> dict:
        """The constructor's keyword arguments beyond the model (JSON-safe)."""
        out = {"residual": self.residual, "hidden_dim": self.hidden_dim,
               "hidden_layers": self.hidden_layers, "activation": self.activation,
               "clip": self.clip}
        if self.baseline != "none":
            out["baseline"] = self.baseline
        return out

    def summarise(self, x, mask, pre):
        """Per-step summaries ``a_t``: ``[B, T, A]``."""
        raise NotImplementedError

    def proposal(self, carry, summary_t, pre_t) -> Proposal:
        """Form ``q(z_t | .)`` at step ``t``: the one formula of :meth:`forward` and of SMC.

        ``mu_q = NN1_q(a_t, context)``, ``log v_q = NN2_q(a_t, context)`` (SRNN eq. 12); with
        Res_q the mean adds the model's ``NN1_p`` on this carry (SRNN Algorithm 1).

        :param carry: the model's :class:`~pyro_seqvae.models.base.Carry` (``[..., B, .]``).
        :param torch.Tensor summary_t: ``a_t``, ``[B, A]``.
        :param torch.Tensor pre_t: the model's ``pre_t``, ``[B, F]``.
        :returns: ``(q_t, prior_loc, inputs)``: ``q_t`` with batch shape ``[..., B]`` (the
            model's latent family: Gaussian, or Bernoulli for TSBN); ``prior_loc`` the model's
            prior mean on this carry when Res_q computed it (else None), so that a caller
            scoring ``p(z_t | .)`` need not compute it again; ``inputs`` the head's input.
        :rtype: Proposal
        """
        model = self.model
        inputs = broadcast_cat([summary_t, model.context(carry, pre_t)])
        loc, *rest = self.head(inputs)  # Gaussian: (loc, scale); Bernoulli: (logits,)
        prior_loc = None
        if self.residual:
            prior_loc = model.prior_loc(carry, pre_t)
            loc = loc + prior_loc
        return Proposal(self.latent_dist(loc, *rest), prior_loc, inputs)

    def step_dist(self, carry, summary_t, pre_t):
        """``q(z_t | .)`` at step ``t`` (:meth:`proposal` without the prior mean)."""
        return self.proposal(carry, summary_t, pre_t).dist

    def forward(self, x, mask, beta=1.0):
        """Sample ``z_1 .. z_T`` (the model's sites) given ``x`` ``[B, T, D]`` and ``mask``."""
        model = self.model
        x, mask = model.check_batch(x, mask)
        register_params(self)
        beta = _as_beta(beta, x)
        B, T, _ = x.shape
        pre = model.precompute(x, mask)
        carry = model.initial_carry(x)
        states = model.guide_states if model.reuse_guide_states else None
        if states is not None:
            states.start(model, x, mask, pre, carry)
        summary = self.summarise(x, mask, pre)
        mark = {PAIRING_KEY: self}  # the model checks, when replayed, that it is ours
        infer = None
        with pyro.plate("sequences", B, dim=-1):
            if self.baseline != "none":
                shape, steps_left = self._baseline_setup(mask, T)
            if self.baseline == "nvil":
                # k = L - t + 1 as integers, 0 on padded steps (NVIL's running means by k)
                steps_int = (steps_left.squeeze(-1) * STEPS_SCALE).round().long() * mask
            for t in pyro.markov(range(T)):
                pre_t = pre[:, t]
                q_t, prior_loc, inputs = self.proposal(carry, summary[:, t], pre_t)
                if prior_loc is not None and states is not None:
                    states.record_prior_loc(carry, prior_loc)
                if self.baseline == "neural":
                    infer = neural_infer(self.baseline_net, inputs, steps_left[:, t], shape)
                elif self.baseline == "nvil":
                    infer = nvil_infer(self.signal_normaliser, self.baseline_net, inputs,
                                       steps_int[:, t], steps_left[:, t], shape)
                elif self.baseline == "decaying":
                    infer = decaying_infer()
                with poutine.scale(scale=beta):
                    z_t = pyro.sample(f"z_{t + 1}", q_t.mask(mask[:, t]),
                                      infer={**mark, **(infer or {})} if t == 0 else infer)
                new_carry = model.advance(carry, pre_t, z_t)
                if states is not None and model.state_depends_on_z:
                    states.record(carry, z_t, new_carry)
                carry = new_carry
        return carry

    def _baseline_setup(self, mask, T):
        """The sites' batch shape and the steps left ``[B, T, 1]`` (for the baselines)."""
        shape = site_batch_shape()
        if self.baseline == "decaying":
            fit_decaying_averages([f"z_{t + 1}" for t in range(T)], shape)
        lengths = mask.sum(-1, keepdim=True)
        steps = torch.arange(T, device=mask.device)
        steps_left = (lengths - steps).clamp(min=0).to(self.head_dtype) / STEPS_SCALE
        return shape, steps_left.unsqueeze(-1)

    @property
    def head_dtype(self):
        return next(self.head.parameters()).dtype


class EmptyGuide(PyroModule):
    """The guide of a model without latent sites (the RNN baseline): it samples nothing."""

    name = "none"

    def __init__(self, model, *, residual: bool = False, name: str | None = None):
        if residual:
            raise IncompatibleGuideError(
                f"EmptyGuide(residual=True) cannot guide {type(model).__name__}: an empty guide "
                "has no mean to make residual")
        if not isinstance(model, SequenceModel) or model.has_latents:
            raise IncompatibleGuideError(
                f"EmptyGuide cannot guide {type(model).__name__}: it has latent sites z_t; "
                "use FilteringGuide or SmoothingGuide")
        super().__init__(name=name or type(self).__name__)
        self._model = (model,)
        self.residual = False

    @property
    def model(self):
        return self._model[0]

    def config(self) -> dict:
        return {}

    def forward(self, x, mask, beta=1.0):
        return None


