"""Emission distributions ``p(x_t | features)``: decoder outputs to a Pyro distribution.

A model's decoder network outputs ``param_dim`` numbers per step; an :class:`Emission` turns
them into a distribution with ``event_dim=1`` over ``x_t`` (``[..., D]``). Models never look
inside an emission, so Gaussian and mixture outputs plug in without touching them.

Registered names (:data:`EMISSIONS`, the CLI's ``--emission``): ``bernoulli`` (piano rolls),
``nade`` (piano rolls with the keys of a frame dependent: a NADE, RNN-NADE's output), ``gauss``
(diagonal Gaussian), ``gmm`` (mixture of diagonal Gaussians) and ``stroke`` (bivariate Gaussian
mixture with correlation plus a pen-up bit, ``x_t = (dx, dy, pen)``).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from .errors import ConfigError
from .layers import LOGVAR_MAX, LOGVAR_MIN, check_positive_int, soft_clamp
from .nade import NADE


class Emission(nn.Module):
    """Base class: ``forward(params [..., P]) -> Distribution``, batch ``...``, event ``[D]``.

    :param int x_dim: ``D``, the width of an observation.
    """

    #: Name used by the registry and the CLI's ``--emission``.
    name = "emission"

    def __init__(self, x_dim: int):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)

    @property
    def param_dim(self) -> int:
        """Number of decoder outputs per step."""
        raise NotImplementedError

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor keyword arguments beyond ``x_dim`` (recorded in checkpoints)."""
        return {}

    #: What :meth:`outside_support` accepts, for error messages.
    support_text = "finite real numbers"

    def outside_support(self, x: torch.Tensor) -> torch.Tensor:
        """Which values of ``x`` ``[..., D]`` lie outside the support (default: non-finite).

        One vectorised pass, cheap enough to run on every data set when it is loaded.

        :returns: a bool tensor of the shape of ``x``.
        """
        return ~torch.isfinite(x)


class BernoulliEmission(Emission):
    """Independent Bernoulli units with logits: the piano-roll emission (88 pitches)."""

    name = "bernoulli"
    support_text = "0 or 1 (a binary piano roll)"

    def outside_support(self, x):
        return (x != 0) & (x != 1)

    @property
    def param_dim(self) -> int:
        return self.x_dim

    def forward(self, params):
        return dist.Bernoulli(logits=params).to_event(1)


#: Key orders of :class:`NADEEmission`.
NADE_ORDERS = ("low_to_high", "high_to_low", "random")


class NADEEmission(Emission):
    """A NADE over the keys of a frame whose biases the step's features set (RNN-NADE).

    ``p(x_t | s_t) = prod_k p(x_tk | x_t,<k, s_t)``, ``p(x_tk = 1 | .) = sigmoid(b_k(s_t) +
    V_k . sigmoid(c(s_t) + W[:, <k] x_t,<k))`` (DESIGN.md, "Emissions within a frame";
    Boulanger-Lewandowski et al. 2012). The decoder outputs ``params = [b (D),
    c (H)]``; the weights ``W [H, D]`` and ``V [D, H]`` are parameters of this module, shared over
    time (they are saved with the model's ``state_dict``). The distribution is a
    :class:`~pyro_seqvae.nade.NADE`: batch ``[...]``, event ``[D]``, exact ``log_prob``.

    :param int x_dim: ``D``.
    :param int hidden_dim: ``H``, the NADE's hidden width (150).
    :param str order: the order in which the keys are conditioned: ``low_to_high`` (index 0
        first: the lowest pitch of a piano roll, the default), ``high_to_low`` or ``random`` (a
        fixed permutation drawn from seed 0, the same at every rebuild).

    Example::

        model = RNN(x_dim=88, emission="nade", emission_kwargs={"hidden_dim": 150})  # RNN-NADE
    """

    name = "nade"

    def __init__(self, x_dim: int, hidden_dim: int = 150, order: str = "low_to_high"):
        super().__init__(x_dim)
        self.hidden_dim = check_positive_int("NADE hidden_dim", hidden_dim)
        if order not in NADE_ORDERS:
            raise ConfigError(f"NADE order must be one of {list(NADE_ORDERS)}, got {order!r}")
        self.order = order
        D, H = self.x_dim, self.hidden_dim
        # torch.nn.Linear's default initialisation for x -> hidden and hidden -> logits
        self.W = nn.Parameter(torch.empty(H, D).uniform_(-1, 1) / math.sqrt(D))
        self.V = nn.Parameter(torch.empty(D, H).uniform_(-1, 1) / math.sqrt(H))
        if order == "low_to_high":
            self.key_order = None
        else:
            perm = (torch.arange(D - 1, -1, -1) if order == "high_to_low" else
                    torch.randperm(D, generator=torch.Generator().manual_seed(0)))
            self.register_buffer("key_order", perm)

    @property
    def param_dim(self) -> int:
        return self.x_dim + self.hidden_dim

    def config(self):
        out = {"hidden_dim": self.hidden_dim}
        if self.order != "low_to_high":
            out["order"] = self.order
        return out

    def forward(self, params):
        b, c = params.split([self.x_dim, self.hidden_dim], dim=-1)
        return NADE(b, c, self.W, self.V, order=self.key_order)


#: Floor of a predicted standard deviation: ``exp(LOGVAR_MIN / 2)`` (about 2.5e-3). Both scale
#: parametrisations respect it, so a decoder cannot drive the likelihood of a (normalised)
#: training value to infinity by shrinking a scale to zero.
SCALE_MIN = math.exp(0.5 * LOGVAR_MIN)

#: The ways a decoder output ``s`` becomes a standard deviation ``sigma``.
SCALE_TRANSFORMS = ("exp", "softplus")


def output_scale(raw: torch.Tensor, transform: str = "exp") -> torch.Tensor:
    """Map raw decoder outputs to standard deviations.

    - ``"exp"``: ``raw`` is a log-variance, ``sigma = exp(soft_clamp(raw, LOGVAR_MIN, LOGVAR_MAX)
      / 2)`` (the SRNN paper's ``log v`` parametrisation and this library's default), bounding
      ``sigma`` to ``(2.5e-3, 55)`` with a gradient everywhere.
    - ``"softplus"``: ``sigma = softplus(raw) + SCALE_MIN`` (the VRNN paper's implementation);
      the additive floor keeps a gradient everywhere.

    :param torch.Tensor raw: ``[...]`` decoder outputs.
    :param str transform: ``"exp"`` or ``"softplus"``.
    :returns: ``[...]`` positive scales.
    :rtype: torch.Tensor
    """
    if transform == "exp":
        return (0.5 * soft_clamp(raw, LOGVAR_MIN, LOGVAR_MAX)).exp()
    if transform == "softplus":
        return F.softplus(raw) + SCALE_MIN
    raise ConfigError(f"scale must be one of {list(SCALE_TRANSFORMS)}, got {transform!r}")


def _check_scale(transform) -> str:
    if transform not in SCALE_TRANSFORMS:
        raise ConfigError(f"scale must be one of {list(SCALE_TRANSFORMS)}, got {transform!r}")
    return transform


class GaussianEmission(Emission):
    """Diagonal Gaussian (the papers' *-Gauss* rows, e.g. VRNN-Gauss, SRNN on speech).

    ``p(x_t | .) = prod_d N(x_{t,d}; mu_d, sigma_d^2)`` with ``params = [mu (D), s (D)]`` and
    ``sigma = exp(s / 2)`` (``s`` a log-variance, the default) or ``sigma = softplus(s)``
    (:func:`output_scale`); either way ``sigma >= SCALE_MIN``.

    :param int x_dim: ``D``.
    :param str scale: ``"exp"`` (default) or ``"softplus"``.
    """

    name = "gauss"

    def __init__(self, x_dim: int, scale: str = "exp"):
        super().__init__(x_dim)
        self.scale = _check_scale(scale)

    @property
    def param_dim(self) -> int:
        return 2 * self.x_dim

    def config(self):
        # The default is left out so that configs written before the option existed still match.
        return {} if self.scale == "exp" else {"scale": self.scale}

    def forward(self, params):
        loc, raw = params.split(self.x_dim, dim=-1)
        return dist.Normal(loc, output_scale(raw, self.scale)).to_event(1)


class GMMEmission(Emission):
    """Mixture of ``M`` diagonal Gaussians (the papers' *-GMM* rows, VRNN paper sec. 3).

    ``p(x_t | .) = sum_m pi_m prod_d N(x_{t,d}; mu_{m,d}, sigma_{m,d}^2)`` with
    ``params = [mixture logits (M), means (M*D), scale outputs (M*D)]``, component-major
    (``mu_{m,d}`` at ``M + m*D + d``); ``pi = softmax(logits)`` and the scales as in
    :class:`GaussianEmission`. With ``M = 1`` it equals :class:`GaussianEmission`.

    The distribution is a :class:`pyro.distributions.MixtureSameFamily`: batch ``[...]``,
    event ``[D]``; it has ``sample`` but no ``rsample`` (observations are never reparametrised).

    :param int x_dim: ``D``.
    :param int num_components: ``M``.
    :param str scale: ``"exp"`` (default) or ``"softplus"``.
    """

    name = "gmm"

    def __init__(self, x_dim: int, num_components: int = 20, scale: str = "exp"):
        super().__init__(x_dim)
        self.num_components = check_positive_int("num_components", num_components)
        self.scale = _check_scale(scale)

    @property
    def param_dim(self) -> int:
        return self.num_components * (1 + 2 * self.x_dim)

    def config(self):
        out = {"num_components": self.num_components}
        if self.scale != "exp":
            out["scale"] = self.scale
        return out

    def forward(self, params):
        M, D = self.num_components, self.x_dim
        logits, loc, raw = params.split([M, M * D, M * D], dim=-1)
        loc = loc.reshape(loc.shape[:-1] + (M, D))
        scale = output_scale(raw, self.scale).reshape(loc.shape)
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=F.log_softmax(logits, -1)),
                                      components)


class _StrokeSupport(constraints.Constraint):
    """Vectors ``(dx, dy, pen)``: finite real offsets and a pen bit in ``{0, 1}``."""

    event_dim = 1

    def check(self, value):
        if value.shape[-1] != 3:
            return torch.zeros(value.shape[:-1], dtype=torch.bool, device=value.device)
        pen = value[..., 2]
        return torch.isfinite(value[..., :2]).all(-1) & ((pen == 0) | (pen == 1))

    def __repr__(self):
        return "StrokeSupport()"


#: The support of :class:`BivariateMixturePen`.
stroke_support = _StrokeSupport()

#: Correlations are ``RHO_MAX * tanh(.)`` so that ``1 - rho^2 >= 2e-3``.
RHO_MAX = 0.999


class BivariateMixturePen(TorchDistribution):
    """A pen-stroke point ``x = (dx, dy, pen)``: a bivariate Gaussian mixture times a Bernoulli.

    ``p(x) = [sum_m pi_m N2((dx, dy); mu_m, Sigma_m)] * Bernoulli(pen; sigmoid(e))`` with
    ``Sigma_m = [[sx^2, rho sx sy], [rho sx sy, sy^2]]`` (Graves 2013, eqs. 23-26; the offsets and
    the pen bit are independent given the parameters). Batch ``[...]``, event ``[3]``.

    :param torch.Tensor logits: ``[..., M]`` mixture logits (``pi = softmax(logits)``).
    :param torch.Tensor loc: ``[..., M, 2]`` component means ``(mu_x, mu_y)``.
    :param torch.Tensor scale: ``[..., M, 2]`` component standard deviations ``(sx, sy)``.
    :param torch.Tensor rho: ``[..., M]`` correlations in ``(-1, 1)``.
    :param torch.Tensor pen_logits: ``[...]`` logit of ``pen = 1`` (pen lifted after the point).
    """

    arg_constraints = {
        "logits": constraints.independent(constraints.real, 1),
        "loc": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
        "rho": constraints.independent(constraints.interval(-1.0, 1.0), 1),
        "pen_logits": constraints.real,
    }
    support = stroke_support
    has_rsample = False

    def __init__(self, logits, loc, scale, rho, pen_logits, validate_args=None):
        M = logits.shape[-1]
        batch_shape = torch.broadcast_shapes(logits.shape[:-1], loc.shape[:-2],
                                             scale.shape[:-2], rho.shape[:-1], pen_logits.shape)
        if loc.shape[-2:] != (M, 2) or scale.shape[-2:] != (M, 2) or rho.shape[-1] != M:
            raise ValueError(
                f"BivariateMixturePen: expected loc and scale [..., {M}, 2] and rho [..., {M}], "
                f"got {tuple(loc.shape)}, {tuple(scale.shape)}, {tuple(rho.shape)}")
        self.logits = logits.expand(batch_shape + (M,))
        self.loc = loc.expand(batch_shape + (M, 2))
        self.scale = scale.expand(batch_shape + (M, 2))
        self.rho = rho.expand(batch_shape + (M,))
        self.pen_logits = pen_logits.expand(batch_shape)
        super().__init__(batch_shape, torch.Size([3]), validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.logits.shape[-1]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BivariateMixturePen, _instance)
        batch_shape = torch.Size(batch_shape)
        M = self.num_components
        new.logits = self.logits.expand(batch_shape + (M,))
        new.loc = self.loc.expand(batch_shape + (M, 2))
        new.scale = self.scale.expand(batch_shape + (M, 2))
        new.rho = self.rho.expand(batch_shape + (M,))
        new.pen_logits = self.pen_logits.expand(batch_shape)
        super(BivariateMixturePen, new).__init__(batch_shape, self.event_shape,
                                                 validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mixture_probs(self) -> torch.Tensor:
        """``pi``, shape ``[..., M]``."""
        return F.softmax(self.logits, dim=-1)

    @property
    def mean(self):
        offsets = (self.mixture_probs.unsqueeze(-1) * self.loc).sum(-2)
        return torch.cat([offsets, torch.sigmoid(self.pen_logits).unsqueeze(-1)], dim=-1)

    def log_prob(self, value):
        """``log sum_m pi_m N2(dx, dy; mu_m, Sigma_m) + log Bernoulli(pen)``, shape ``[...]``."""
        if self._validate_args:
            self._validate_sample(value)
        xy = value[..., :2].unsqueeze(-2)  # [..., 1, 2]
        z = (xy - self.loc) / self.scale  # [..., M, 2]
        zx, zy = z.unbind(-1)
        one_minus_rho2 = 1 - self.rho.pow(2)
        quad = (zx.pow(2) + zy.pow(2) - 2 * self.rho * zx * zy) / one_minus_rho2
        log_n2 = (-math.log(2 * math.pi) - self.scale.log().sum(-1)
                  - 0.5 * one_minus_rho2.log() - 0.5 * quad)
        log_mix = torch.logsumexp(F.log_softmax(self.logits, dim=-1) + log_n2, dim=-1)
        pen = value[..., 2]
        pen_logits, pen = torch.broadcast_tensors(self.pen_logits, pen)
        log_pen = -F.binary_cross_entropy_with_logits(pen_logits, pen, reduction="none")
        return log_mix + log_pen

    def sample(self, sample_shape=()):
        """Draw ``sample_shape + batch_shape + [3]`` points (pen bits are exactly 0 or 1)."""
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            index = k.unsqueeze(-1)
            rho = self.rho.expand(shape[:-1] + self.rho.shape[-1:]).gather(-1, index)[..., 0]
            pick = index.unsqueeze(-1).expand(shape[:-1] + (1, 2))
            loc = self.loc.expand(shape[:-1] + self.loc.shape[-2:]).gather(-2, pick)[..., 0, :]
            scale = self.scale.expand(shape[:-1] + self.scale.shape[-2:]).gather(-2, pick)[
                ..., 0, :]
            e1, e2 = torch.randn(shape[:-1] + (2,), dtype=loc.dtype,
                                 device=loc.device).unbind(-1)
            dx = loc[..., 0] + scale[..., 0] * e1
            dy = loc[..., 1] + scale[..., 1] * (rho * e1 + (1 - rho.pow(2)).sqrt() * e2)
            pen = torch.bernoulli(torch.sigmoid(self.pen_logits).expand(shape[:-1]))
            return torch.stack([dx, dy, pen], dim=-1)


class StrokeEmission(Emission):
    """Pen strokes ``x_t = (dx, dy, pen)``: bivariate Gaussian mixture plus a pen-up bit.

    ``p(x_t | .) = [sum_m pi_m N2((dx, dy); mu_m, Sigma_m(rho_m))] * Bernoulli(pen; sigmoid(e))``
    (Graves 2013, eqs. 18-26). The decoder outputs ``6M + 1`` numbers, in order: ``M`` mixture
    logits (``pi = softmax``), ``2M`` means (``(mu_x, mu_y)`` per component), ``2M`` scale outputs
    (per component ``(s_x, s_y)``, mapped by :func:`output_scale`), ``M`` correlation outputs
    (``rho = 0.999 tanh(.)``) and one pen logit ``e``. The distribution is a
    :class:`BivariateMixturePen` with event ``[3]``.

    :param int x_dim: must be 3.
    :param int num_components: ``M`` (20 in Graves 2013).
    :param str scale: ``"exp"`` (default) or ``"softplus"``.
    :raises ConfigError: if ``x_dim != 3``.
    """

    name = "stroke"

    def __init__(self, x_dim: int = 3, num_components: int = 20, scale: str = "exp"):
        super().__init__(x_dim)
        if self.x_dim != 3:
            raise ConfigError(f"the stroke emission models (dx, dy, pen): x_dim must be 3, "
                              f"got {x_dim}")
        self.num_components = check_positive_int("num_components", num_components)
        self.scale = _check_scale(scale)

    @property
    def param_dim(self) -> int:
        return 6 * self.num_components + 1

    def config(self):
        return {"num_components": self.num_components, "scale": self.scale}

    support_text = "finite (dx, dy) and a pen bit of 0 or 1"

    def outside_support(self, x):
        bad = ~torch.isfinite(x)
        pen = x[..., 2:3]
        bad[..., 2:3] |= (pen != 0) & (pen != 1)
        return bad

    def forward(self, params):
        M = self.num_components
        logits, loc, raw, rho, pen = params.split([M, 2 * M, 2 * M, M, 1], dim=-1)
        loc = loc.reshape(loc.shape[:-1] + (M, 2))
        scale = output_scale(raw, self.scale).reshape(loc.shape)
        return BivariateMixturePen(logits, loc, scale, RHO_MAX * torch.tanh(rho), pen[..., 0])


EMISSIONS = {cls.name: cls for cls in (BernoulliEmission, GaussianEmission, GMMEmission,
                                       StrokeEmission, NADEEmission)}


def make_emission(emission, x_dim: int, **kwargs) -> Emission:
    """Build an emission from a registry name, or pass an :class:`Emission` instance through.

    :param emission: a name in :data:`EMISSIONS` or an :class:`Emission`.
    :param int x_dim: ``D``.
    :raises ConfigError: for an unknown name or an instance of the wrong width.
    """
    if isinstance(emission, Emission):
        if emission.x_dim != x_dim:
            raise ConfigError(
                f"emission has x_dim={emission.x_dim} but the model has x_dim={x_dim}")
        return emission
    if emission not in EMISSIONS:
        raise ConfigError(f"unknown emission {emission!r}; expected one of {sorted(EMISSIONS)}")
    return EMISSIONS[emission](x_dim, **kwargs)
