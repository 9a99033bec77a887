"""Plain torch building blocks shared by models and guides.

The blocks are ordinary :class:`torch.nn.Module` s. Their root (a model or guide, a named
:class:`~pyro.nn.PyroModule`) registers all their parameters with Pyro once per call, under its
own name (``SRNN.prior_net.loc_net.layers.0.weight``): see :func:`register_params`. Registering
once per call instead of at every attribute access of every time step removed about a tenth of
an SVI step (``benchmarks/speed.py``).
"""

from __future__ import annotations

import pyro
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro.nn import PyroModule

from .errors import ConfigError

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(1.0 / 3.0),
    "elu": nn.ELU,
}
#: Names accepted as ``activation`` by :class:`MLP` and the models.
ACTIVATIONS = tuple(sorted(_ACTIVATIONS))

#: The SRNN paper's hidden units (appendix A.1, used for music too by A.2): leaky ReLU with
#: slope 1/3, clamped to [-3, 3]. The clamp bounds every network's output for any input, which
#: keeps the latent chain ``z_{t-1} -> z_t`` from turning explosive (with unclamped ReLU at lr 1e-3
#: the paper-size SRNN sampled ``|z_t|`` of 2e6 at its 6th update and a NaN loss at its 8th:
#: ``benchmarks/stability.py``).
PAPER_ACTIVATION, PAPER_CLIP = "leaky_relu", 3.0

#: Bounds of a predicted log-variance; exp(-12) and exp(8) keep the scale finite in float32.
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


def soft_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Bound ``x`` to ``(low, high)`` smoothly: about the identity well inside, never flat.

    ``high - softplus_2(high - (low + softplus_2(x - low)))`` (``softplus_2``: softplus of
    sharpness 2, so the map is the identity to within ``exp(-2 d) / 2`` at a distance ``d`` from
    the nearer bound). Unlike ``clamp``, the gradient
    never vanishes, so a log-variance pushed onto a bound can come back: with a hard clamp an
    SRNN prior collapsed onto the floor within six updates at the paper's settings and stayed
    there (``log p(z)`` of -1e9).
    """
    return high - F.softplus(high - (low + F.softplus(x - low, beta=2.0)), beta=2.0)


def logvar_to_scale(log_var: torch.Tensor) -> torch.Tensor:
    """``exp(soft_clamp(log v) / 2)``: a standard deviation from a predicted log-variance, bounded
    softly to ``(LOGVAR_MIN, LOGVAR_MAX)`` (:class:`GaussianHead`)."""
    return (0.5 * soft_clamp(log_var, LOGVAR_MIN, LOGVAR_MAX)).exp()


def broadcast_cat(tensors) -> torch.Tensor:
    """Concatenate along the last dimension after broadcasting the leading ones.

    Needed where a ``[K, B, Z]`` particle sample meets a ``[B, H]`` deterministic state.
    ``None`` entries are skipped.

    :param list tensors: tensors ``[..., D_i]`` with broadcastable leading shapes.
    :returns: ``[..., sum D_i]``.
    :rtype: torch.Tensor
    """
    tensors = [t for t in tensors if t is not None]
    if len(tensors) == 1:
        return tensors[0]
    leading = tensors[0].shape[:-1]
    if all(t.shape[:-1] == leading for t in tensors):  # the per-step common case: no broadcast
        return torch.cat(tensors, dim=-1)
    batch = torch.broadcast_shapes(*[t.shape[:-1] for t in tensors])
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], dim=-1)


class BlockHolder:
    """Mixin for the root PyroModules (models, guides) that hold plain torch blocks.

    A block is stored both in ``_modules`` (so ``state_dict``, ``.to`` and ``parameters`` see it)
    and as an ordinary instance attribute, so that reading ``self.decoder`` at every time step
    does not go through ``PyroModule.__getattr__``, which would issue a ``pyro.module``
    statement over all the block's parameters at each access. The root calls
    :func:`register_params` once per call instead.
    """

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) and not isinstance(value, PyroModule):
            object.__setattr__(self, name, value)


def register_params(root) -> None:
    """Record every parameter of ``root`` in Pyro's param store and the current trace, once.

    The module's own tensors are the source of truth: a param-store entry of the same name that
    holds another tensor (left by an earlier model of the same name) is replaced, so the weights
    that compute are the weights that the optimizer updates.

    :param root: a named :class:`~pyro.nn.PyroModule` (a model or a guide).
    """
    store = pyro.get_param_store()
    prefix = root._pyro_name
    for name, param in root.named_parameters():
        if "." not in name:  # the root's own parameters go through PyroModule already
            continue
        fullname = f"{prefix}.{name}"
        if store._params.get(fullname) is not param:
            store[fullname] = param
        pyro.param(fullname, param)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length, leaving the padding in place.

    :param torch.Tensor x: ``[B, T, D]`` batch-first padded sequences.
    :param torch.Tensor lengths: ``[B]`` true lengths.
    :returns: ``[B, T, D]`` with ``out[b, t] = x[b, lengths[b] - 1 - t]`` for ``t < lengths[b]``
        and ``x[b, t]`` elsewhere. The map is its own inverse.
    :rtype: torch.Tensor
    """
    T = x.shape[1]
    steps = torch.arange(T, device=x.device).expand(x.shape[0], T)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is a positive int, else raise a :class:`ConfigError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


class MLP(nn.Module):
    """A multilayer perceptron ``in_dim -> hidden_dims... -> out_dim``.

    With ``out_dim=None`` the last hidden layer is the output (activated): a feature extractor
    such as the VRNN's ``phi_x`` is then ``MLP(x_dim, [500])``.

    :param int in_dim: input width.
    :param list hidden_dims: widths of the hidden layers (the papers' music setting: ``[500]``).
    :param int out_dim: output width, or None.
    :param str activation: ``relu``, ``tanh``, ``leaky_relu`` (slope 1/3, the SRNN paper's) or
        ``elu``.
    :param float clip: if given, hidden activations are clamped to ``[-clip, clip]`` (SRNN A.1:
        3).
    """

    def __init__(self, in_dim, hidden_dims=(500,), out_dim=None, *, activation="relu", clip=None):
        super().__init__()
        check_network_settings(activation, clip)
        dims = [check_positive_int("in_dim", in_dim)] + [
            check_positive_int("hidden_dims", h) for h in hidden_dims]
        if out_dim is None and len(dims) == 1:
            raise ConfigError("an MLP with out_dim=None needs at least one hidden layer")
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(a, b))
            layers.append(_ACTIVATIONS[activation]())
            if clip is not None:
                layers.append(_Clamp(clip))
        if out_dim is not None:
            layers.append(nn.Linear(dims[-1], check_positive_int("out_dim", out_dim)))
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim if out_dim is not None else dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def check_network_settings(activation, clip):
    """Raise a :class:`ConfigError` unless ``activation`` is known and ``clip`` is None or > 0."""
    if activation not in _ACTIVATIONS:
        raise ConfigError(
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not clip > 0):
        raise ConfigError(f"clip must be None or a positive number, got {clip!r}")


class _Clamp(nn.Module):
    def __init__(self, bound: float):
        super().__init__()
        self.bound = float(bound)

    def forward(self, x):
        # hardtanh: clamp's values, with a backward pass of one op instead of three
        return F.hardtanh(x, -self.bound, self.bound)


class GaussianHead(nn.Module):
    """Map an input to the mean and scale of a diagonal Gaussian with two networks.

    ``mu = NN1(input)``, ``log v = NN2(input)``, ``scale = exp(log v / 2)`` (SRNN eq. 9 and 12).
    The mean network is exposed as ``loc_net`` so that Res_q can reuse the prior's.

    :param int in_dim: input width.
    :param int z_dim: output (latent) width.
    :param list hidden_dims: hidden widths of each network.
    """

    def __init__(self, in_dim, z_dim, hidden_dims=(500,), *, activation="relu", clip=None):
        super().__init__()
        self.loc_net = MLP(in_dim, hidden_dims, z_dim, activation=activation, clip=clip)
        self.logvar_net = MLP(in_dim, hidden_dims, z_dim, activation=activation, clip=clip)

    def loc(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.loc_net(inputs)

    def scale(self, inputs: torch.Tensor) -> torch.Tensor:
        return logvar_to_scale(self.logvar_net(inputs))

    def forward(self, inputs: torch.Tensor):
        return self.loc(inputs), self.scale(inputs)


def bounded_softplus_scale(raw: torch.Tensor) -> torch.Tensor:
    """``sigma = softplus(raw)`` with its log-variance softly bounded like :class:`GaussianHead`'s.

    ``log v = soft_clamp(2 log softplus(raw), LOGVAR_MIN, LOGVAR_MAX)``, ``sigma = exp(log v / 2)``:
    about ``softplus(raw)`` inside ``(2.5e-3, 55)``, never 0 or inf, with a gradient everywhere.
    ``log softplus(raw)`` is taken as ``raw`` below ``-10`` (equal to 3e-5), so a large negative
    ``raw`` underflows neither the value nor the gradient.

    :param torch.Tensor raw: ``[...]`` network outputs.
    :returns: ``[...]`` standard deviations.
    """
    log_scale = torch.where(raw > -10.0, F.softplus(raw.clamp(min=-10.0)).log(), raw)
    return (0.5 * soft_clamp(2.0 * log_scale, LOGVAR_MIN, LOGVAR_MAX)).exp()


class RecurrentCell(nn.Module):
    """A GRU or LSTM cell that accepts any leading batch shape.

    The state is a single tensor ``[..., H]`` for a GRU and ``[..., 2H]`` (``h`` then ``c``)
    for an LSTM, so that it can be carried and broadcast like any other tensor.

    :param int in_dim: input width.
    :param int hidden_dim: ``H``.
    :param str kind: ``gru`` or ``lstm``.
    """

    def __init__(self, in_dim, hidden_dim, kind="gru"):
        super().__init__()
        if kind not in ("gru", "lstm"):
            raise ConfigError(f"rnn_type must be 'gru' or 'lstm', got {kind!r}")
        self.kind = kind
        self.hidden_dim = check_positive_int("rnn_dim", hidden_dim)
        cls = nn.GRUCell if kind == "gru" else nn.LSTMCell
        self.cell = cls(in_dim, hidden_dim)

    @property
    def state_dim(self) -> int:
        return self.hidden_dim * (1 if self.kind == "gru" else 2)

    def output(self, state: torch.Tensor) -> torch.Tensor:
        """The part of the state that the network reads: ``h`` (``[..., H]``)."""
        return state if self.kind == "gru" else state[..., : self.hidden_dim]

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        batch_shape = torch.broadcast_shapes(inputs.shape[:-1], state.shape[:-1])
        inputs = inputs.expand(batch_shape + inputs.shape[-1:]).reshape(-1, inputs.shape[-1])
        state = state.expand(batch_shape + state.shape[-1:]).reshape(-1, state.shape[-1])
        if self.kind == "gru":
            new = self.cell(inputs, state)
        else:
            h, c = self.cell(inputs, (state[:, : self.hidden_dim], state[:, self.hidden_dim :]))
            new = torch.cat([h, c], dim=-1)
        return new.reshape(batch_shape + new.shape[-1:])


class SequenceRNN(nn.Module):
    """A fused GRU/LSTM over a whole padded batch, batch-first: ``[B, T, D] -> [B, T, H]``."""

    def __init__(self, in_dim, hidden_dim, kind="gru"):
        super().__init__()
        if kind not in ("gru", "lstm"):
            raise ConfigError(f"rnn_type must be 'gru' or 'lstm', got {kind!r}")
        cls = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = cls(in_dim, check_positive_int("rnn_dim", hidden_dim),
                                   batch_first=True)
        self.hidden_dim = hidden_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(inputs)
        return out

    def step(self, input_t: torch.Tensor, state=None):
        """One step of the same RNN, for step-by-step sampling: ``[B, D] -> ([B, H], state)``.

        ``state`` is what the previous call returned (``None``: the zero state of
        :meth:`forward`); running ``step`` over ``t = 1..T`` gives :meth:`forward`'s outputs.
        """
        out, state = self.rnn(input_t.unsqueeze(-2), state)
        return out[..., 0, :], state


def previous_frame(x: torch.Tensor, t: int) -> torch.Tensor:
    """``u_t = x_{t-1}`` of one step (``0`` at ``t = 0``): ``[B, T, D] -> [B, D]``, the step of
    :func:`shift_right` that step-by-step sampling needs."""
    return x[:, t - 1] if t > 0 else x.new_zeros(x.shape[0], x.shape[-1])


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """Return ``u`` with ``u_t = x_{t-1}`` and ``u_1 = 0``: ``[B, T, D] -> [B, T, D]``."""
    return torch.cat([x.new_zeros(x.shape[:-2] + (1, x.shape[-1])), x[..., :-1, :]], dim=-2)
