"""The NADE distribution over binary vectors (Larochelle & Murray 2011), conditioned as in RNN-NADE.

``p(x) = prod_k p(x_k | x_<k)`` over the keys in a fixed order, with (DESIGN.md, "Emissions
within a frame")

- ``g_k = sigmoid(c + W[:, <k] x_<k)``, the hidden units seen by key ``k`` (``[H]``);
- ``p(x_k = 1 | x_<k) = sigmoid(b_k + V_k . g_k)``.

In RNN-NADE (Boulanger-Lewandowski et al. 2012) the recurrent state sets the visible biases
``b`` and the hidden biases ``c`` at every step, and ``W [H, D]``, ``V [D, H]`` are shared over
time: here ``b`` and ``c`` carry the batch shape, ``W`` and ``V`` do not.

``log_prob`` is exact and takes one vectorised pass: the hidden pre-activations of all keys are
an exclusive cumulative sum over the ordered keys, ``O(D H)`` per vector, evaluated once per run
of keys that are off (:func:`nade_logits`). ``sample`` goes key by key (``D`` sequential steps,
vectorised over the batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

#: ``log_prob`` evaluates at most this many intermediate elements at once (64 MB in float32),
#: so that importance sampling with hundreds of particles stays within memory.
MAX_CHUNK_ELEMENTS = 2 ** 24


def nade_logits(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, W: torch.Tensor,
                V: torch.Tensor) -> torch.Tensor:
    """Conditional logits ``b_k + V_k . sigmoid(c + W[:, <k] x_<k)`` of every key, in one pass.

    Two exact ways, chosen by how many keys are on:

    - *by segments* (sparse frames, e.g. chords): the hidden pre-activation
      ``c + W[:, <k] x_<k`` only changes after a key that is on, so with ``n`` keys on there are
      ``S = n + 1`` distinct hidden vectors per frame. They are computed once each (``[S, D] @
      W^T``), their ``S`` logit vectors in one product with ``V^T``, and each key takes the row
      of its segment: ``O(S D H)`` multiply-adds in two matrix products and ``S H`` sigmoids.
      On chorales (``S <= 7``) this is about ten times faster than the dense pass.
    - *dense*: an exclusive cumulative sum of ``x_j W[:, j]`` over the ordered keys gives all
      ``D`` hidden vectors, ``O(D H)`` per frame (used when more than a quarter of the keys
      are on, and under ``torch.jit.trace``, whose graph must not depend on the data).

    :param torch.Tensor x: ``[..., D]`` binary values, keys in NADE order.
    :param torch.Tensor b: ``[..., D]`` visible biases.
    :param torch.Tensor c: ``[..., H]`` hidden biases.
    :param torch.Tensor W: ``[H, D]`` input-to-hidden weights.
    :param torch.Tensor V: ``[D, H]`` hidden-to-output weights.
    :returns: ``[..., D]`` logits of ``p(x_k = 1 | x_<k)`` (batch shapes broadcast).
    :rtype: torch.Tensor
    """
    D = x.shape[-1]
    # Under torch.jit.trace (JitTrace_ELBO) the number of segments would be frozen into the
    # compiled graph from the first batch: the dense pass has shapes that do not depend on x.
    if torch.jit.is_tracing():
        return _dense_logits(x, b, c, W, V)
    segments = _segments(x)
    if _is_dense(segments, D):
        return _dense_logits(x, b, c, W, V)
    on_before = x.cumsum(-1) - x  # [..., D]: keys on before key k (an integer count)
    s = torch.arange(segments, device=x.device, dtype=x.dtype).unsqueeze(-1)  # [S, 1]
    # M[.., s, j] = x_j if key j is among the first s keys that are on
    M = x.unsqueeze(-2) * (on_before.unsqueeze(-2) < s)  # [..., S, D]
    hidden = torch.sigmoid(torch.matmul(M, W.t()) + c.unsqueeze(-2))  # [..., S, H]
    per_segment = torch.matmul(hidden, V.t())  # [..., S, D]
    index = on_before.long().unsqueeze(-2)  # [..., 1, D]: the segment of each key
    index = index.expand(per_segment.shape[:-2] + index.shape[-2:])
    return b + per_segment.gather(-2, index).squeeze(-2)


def _segments(x) -> int:
    """``S``: one more than the most keys on in any frame of ``x``."""
    return int(x.sum(-1).max()) + 1 if x.numel() else 1


def _is_dense(segments: int, D: int) -> bool:
    return segments > max(8, D // 4)


def _row_elements(x, H: int) -> int:
    """Elements of the largest intermediate per frame of :func:`nade_logits`."""
    D = x.shape[-1]
    if torch.jit.is_tracing():
        return D * H
    S = _segments(x)
    return D * H if _is_dense(S, D) else S * max(D, H)


def _dense_logits(x, b, c, W, V):
    contrib = x[..., :-1].unsqueeze(-1) * W[:, :-1].t()  # [..., D-1, H]: x_j W[:, j]
    before = F.pad(contrib.cumsum(-2), (0, 0, 1, 0))  # [..., D, H]: sum_{j<k} x_j W[:, j]
    hidden = torch.sigmoid(before + c.unsqueeze(-2))
    return b + (hidden * V).sum(-1)


class NADE(TorchDistribution):
    """A NADE over binary vectors ``x`` of width ``D``: batch ``[...]``, event ``[D]``.

    :param torch.Tensor b: ``[..., D]`` visible biases, one per key (in the keys' own positions).
    :param torch.Tensor c: ``[..., H]`` hidden biases.
    :param torch.Tensor W: ``[H, D]`` input-to-hidden weights; column ``k`` belongs to the
        ``k``-th key of the order.
    :param torch.Tensor V: ``[D, H]`` hidden-to-output weights; row ``k`` likewise.
    :param torch.Tensor order: ``[D]`` permutation: the ``k``-th key scored is ``order[k]``
        (``None``: positions ``0, 1, ..., D-1``, i.e. low to high pitch on a piano roll).

    Example::

        d = NADE(torch.zeros(4, 88), torch.zeros(4, 150), 0.1 * torch.randn(150, 88),
                 0.1 * torch.randn(88, 150))
        x = d.sample()            # [4, 88] in {0, 1}
        d.log_prob(x)             # [4], exact
    """

    arg_constraints = {
        "b": constraints.independent(constraints.real, 1),
        "c": constraints.independent(constraints.real, 1),
        "W": constraints.independent(constraints.real, 2),
        "V": constraints.independent(constraints.real, 2),
    }
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, b, c, W, V, order=None, validate_args=None):
        D, H = b.shape[-1], c.shape[-1]
        if W.shape != (H, D) or V.shape != (D, H):
            raise ValueError(f"NADE: expected W [{H}, {D}] and V [{D}, {H}] for b [..., {D}] "
                             f"and c [..., {H}], got {tuple(W.shape)} and {tuple(V.shape)}")
        if order is not None and tuple(order.shape) != (D,):
            raise ValueError(f"NADE: order must be a permutation of shape [{D}], "
                             f"got {tuple(order.shape)}")
        batch_shape = torch.broadcast_shapes(b.shape[:-1], c.shape[:-1])
        self.b = b.expand(batch_shape + (D,))
        self.c = c.expand(batch_shape + (H,))
        self.W, self.V, self.order = W, V, order
        super().__init__(batch_shape, torch.Size([D]), validate_args=validate_args)

    @property
    def hidden_dim(self) -> int:
        return self.c.shape[-1]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NADE, _instance)
        batch_shape = torch.Size(batch_shape)
        new.b = self.b.expand(batch_shape + self.b.shape[-1:])
        new.c = self.c.expand(batch_shape + self.c.shape[-1:])
        new.W, new.V, new.order = self.W, self.V, self.order
        super(NADE, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _ordered(self, t):
        return t if self.order is None else t.index_select(-1, self.order)

    def log_prob(self, value):
        """Exact ``log p(x) = sum_k log p(x_k | x_<k)``, shape ``batch_shape`` (broadcast)."""
        if self._validate_args:
            self._validate_sample(value)
        x, b = self._ordered(value), self._ordered(self.b)
        shape = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        D, H = self.event_shape[0], self.hidden_dim
        rows = math.prod(shape)
        per_row = _row_elements(x, H)
        if rows * per_row <= MAX_CHUNK_ELEMENTS:
            logits = nade_logits(x, b, self.c, self.W, self.V)
            x, logits = torch.broadcast_tensors(x, logits)
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        # Large batches (importance sampling): the same pass in chunks of rows.
        x = x.expand(shape + (D,)).reshape(rows, D)
        b = b.expand(shape + (D,)).reshape(rows, D)
        c = self.c.expand(shape + (H,)).reshape(rows, H)
        step = max(1, MAX_CHUNK_ELEMENTS // per_row)
        parts = []
        for i in range(0, rows, step):
            logits = nade_logits(x[i:i + step], b[i:i + step], c[i:i + step], self.W, self.V)
            parts.append(-F.binary_cross_entropy_with_logits(
                logits, x[i:i + step], reduction="none").sum(-1))
        return torch.cat(parts).reshape(shape)

    def sample(self, sample_shape=()):
        """Draw ``sample_shape + batch_shape + [D]`` binary vectors, key by key in NADE order."""
        shape = self._extended_shape(sample_shape)
        D = self.event_shape[0]
        with torch.no_grad():
            b = self._ordered(self.b).expand(shape)
            pre = self.c.expand(shape[:-1] + self.c.shape[-1:]).clone()  # c + W[:, <k] x_<k
            x = b.new_empty(shape)
            W_t = self.W.t()
            for k in range(D):
                logit = b[..., k] + torch.sigmoid(pre) @ self.V[k]
                x_k = torch.bernoulli(torch.sigmoid(logit))
                x[..., k] = x_k
                pre = pre + x_k.unsqueeze(-1) * W_t[k]
            if self.order is not None:
                x = x.index_select(-1, torch.argsort(self.order))
        return x


__all__ = ["MAX_CHUNK_ELEMENTS", "NADE", "nade_logits"]
