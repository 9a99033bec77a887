"""Data-parallel training on ``torch.distributed``: one SVI loop for one process and many.

The :class:`~pyro_seqvae.training.trainer.Trainer` talks to a *parallel context*:
:class:`SingleProcess` (the default; every hook is today's single-process code, bit for bit) or
:class:`DistributedGroup` (a ``torch.distributed`` process group, normally made by ``torchrun``
and found by :func:`from_environment`).

Under a group of ``W`` ranks:

- ``config.batch_size`` is the **global** batch, the sequences of one update summed over ranks.
  Every rank builds the same global batches (same seed, same length bucketing, same epoch order,
  same transposition), and rank ``r`` keeps rows ``tensor_split(range(B), W)[r]`` of each one.
- One update: ``elbo.loss_and_grads`` on the local shard inside
  ``poutine.trace(param_only=True)`` (exactly as ``pyro.infer.SVI.step``), an all-reduce (SUM)
  of the gradients and the losses, then ``optim(params)`` and ``zero_grads(params)``. The ELBO
  is a sum over sequences, so the summed gradient is the gradient of the global batch, and
  ``ClippedAdam``'s element-wise clip acts on it as in one process: ``W`` ranks with ``B/W``
  sequences each follow the trajectory of one process with ``B`` (up to floating-point
  summation order and the guide's random draws, which differ per rank).
- The validation ELBO is sharded by batch (batch ``i`` on rank ``i mod W``) and reduced.
- Rank 0 alone writes files; a resumed checkpoint is read on rank 0 and broadcast; the loss,
  hence the NaN guard, and the validation ELBO, hence early stopping, are the same on every rank.
- A rank whose update raises tells the others through the same all-reduce: they stop with
  :class:`PeerFailedError`, and only the failing rank (plus one line of rank 0) reports.
  A rank that dies outright is handled by ``torchrun``'s agent, which tears the group down.

The backend is chosen from the device: ``nccl`` on CUDA (rank ``LOCAL_RANK`` uses
``cuda:LOCAL_RANK``), ``gloo`` otherwise. A manual all-reduce, rather than wrapping the ELBO
module in DDP, keeps Pyro's global param store, the named ``PyroModule`` roots, ``ClippedAdam``
and the Trainer's reliability guards on one code path (STYLE.md, "Pyro under DDP").
"""

from __future__ import annotations

import datetime
import inspect
import os

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer.util import torch_item, zero_grads

from ..errors import ConfigError, DivergenceError, SeqVAEError

__all__ = ["DistributedGroup", "PeerFailedError", "SingleProcess", "backend_for",
           "error_line", "from_environment"]


class PeerFailedError(SeqVAEError, RuntimeError):
    """Another rank of the process group failed; this rank stopped with it."""


def backend_for(device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` for anything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


class SingleProcess:
    """One process, rank 0 of 1: every hook is what the Trainer did before data parallelism."""

    rank, world_size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        return device

    def shard(self, x: torch.Tensor, mask: torch.Tensor):
        """This rank's rows of a global batch: ``x`` ``[B, T, D]``, ``mask`` ``[B, T]``."""
        return x, mask

    def step(self, svi, *args):
        """One SVI update on the global batch; returns the global loss (a float)."""
        return svi.step(*args)

    def evaluate(self, per_step, model, guide, batches) -> float:
        """``per_step(model, guide, batches)``, a figure per step such as
        :func:`~pyro_seqvae.infer.evaluation.elbo_per_step`; every rank gets the same value."""
        return per_step(model, guide, batches)

    def load_on_main(self, reader, path, *, map_location):
        """``reader(path, map_location=...)`` (a checkpoint reader) on rank 0, given to all."""
        return reader(path, map_location=map_location)

    def run_on_main(self, fn):
        """``fn()`` on rank 0; its result, or its :class:`SeqVAEError`, reaches every rank."""
        return fn()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        return obj

    def begin_fit(self, model, guide, *, seed: int, step: int):
        """Called once the weights and RNG are set (fresh or resumed), before the first update."""

    def close(self):
        """Leave the process group (nothing to do for one process)."""

    def describe(self) -> str:
        return "one process"


class DistributedGroup(SingleProcess):
    """Rank ``rank`` of a ``torch.distributed`` group of ``world_size`` data-parallel ranks.

    :param torch.device device: the device of this rank (``cuda:LOCAL_RANK`` under CUDA).
    :param int local_rank: the rank within this node.
    :param bool owns_group: destroy the process group in :meth:`close` (it was made here).
    """

    def __init__(self, device, *, local_rank: int = 0, owns_group: bool = False):
        if not dist.is_initialized():
            raise ConfigError("DistributedGroup: torch.distributed is not initialised")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = local_rank
        self.device = torch.device(device)
        self.owns_group = owns_group
        self._params = None  # (key, ordered parameters, index by id) of the last model/guide

    # ---- the device and the data ---------------------------------------------------------
    def local_device(self, device: torch.device) -> torch.device:
        if device.type != self.device.type:
            raise ConfigError(f"device {device} differs from the process group's {self.device}")
        return self.device

    def shard(self, x, mask):
        """Rows ``tensor_split(range(B), W)[rank]``. A rank left without rows (a final batch
        smaller than ``W``) gets the first row with an all-False mask: :meth:`step` runs it, so
        that the same parameters are traced (and named in the param store, where a resumed
        optimizer state is found) on every rank, and then drops its loss and gradients."""
        rows = torch.tensor_split(torch.arange(x.shape[0], device=x.device),
                                  self.world_size)[self.rank]
        if rows.numel() == 0:
            return x[:1], torch.zeros_like(mask[:1])
        return x[rows], mask[rows]

    # ---- collectives ---------------------------------------------------------------------
    def _all_reduce(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except RuntimeError as exc:  # gloo/nccl errors (DistBackendError is one)
            raise PeerFailedError(f"rank {self.rank} of {self.world_size}: lost contact with "
                                  f"the other ranks during {what} ({str(exc).splitlines()[0]})"
                                  ) from exc
        return tensor

    def _stop_if_failed(self, failed: torch.Tensor, what: str, error: BaseException | None):
        """``failed`` (``[W]``, reduced) marks the ranks that raised; everyone stops together."""
        if not bool(failed.any()):
            return
        if error is not None:
            raise error
        ranks = ", ".join(str(r) for r in failed.nonzero().flatten().tolist())
        raise PeerFailedError(f"rank {ranks} of {self.world_size} failed during {what} (its "
                              "error is printed by that rank); all ranks stopped")

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def _object_device(self):
        return self.device if backend_for(self.device) == "nccl" else None

    def run_on_main(self, fn):
        result, message, error = None, None, None
        if self.is_main:
            try:
                result = fn()
            except SeqVAEError as exc:
                message, error = str(exc), exc
        result, message = self.broadcast_object((result, message))
        if error is not None:
            raise error
        if message is not None:
            raise PeerFailedError(f"rank 0 of {self.world_size} failed: {message}")
        return result

    def load_on_main(self, reader, path, *, map_location):
        # rank 0 reads (other nodes may not share its disk) on CPU; restore_modules and
        # ClippedAdam.set_state move the tensors to each rank's device
        return self.run_on_main(lambda: reader(path, map_location="cpu"))

    def begin_fit(self, model, guide, *, seed: int, step: int):
        """Give every rank rank 0's weights and a guide-sampling stream of its own.

        The weights are equal already when every rank seeded and built alike (the CLI does); the
        broadcast makes it so whatever the caller did. Rank 0 keeps its RNG state, so the
        checkpoints it writes resume exactly; rank ``r > 0`` reseeds from ``(seed, r, step)``.
        """
        for module in (model, guide):
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)
        if self.rank > 0:
            pyro.set_rng_seed((seed * 1_000_003 + self.rank * 7_919 + step) % 2**32)

    # ---- the update ----------------------------------------------------------------------
    def _ordered_params(self, svi):
        """The model's and guide's parameters, in the same order on every rank."""
        key = (id(svi.model), id(svi.guide))
        if self._params is None or self._params[0] != key:
            params = [p for module in (svi.model, svi.guide) for p in module.parameters()]
            self._params = key, params, {id(p): i for i, p in enumerate(params)}
        return self._params[1:]

    def step(self, svi, x, mask, *args):
        """``SVI.step`` with the gradients and losses summed over the ranks."""
        params, where = self._ordered_params(svi)
        loss, error = 0.0, None
        used = torch.zeros(len(params), dtype=torch.float64, device=self.device)
        try:
            with poutine.trace(param_only=True) as capture:
                loss = svi.loss_and_grads(svi.model, svi.guide, x, mask, *args)
            loss = torch_item(loss)
            if not bool(mask.any()):  # a stand-in for an empty shard (see shard): no share
                loss = 0.0
                for p in params:
                    if p.grad is not None:
                        p.grad.zero_()
            for site in capture.trace.nodes.values():
                index = where.get(id(site["value"].unconstrained()))
                if index is None:
                    raise ConfigError(
                        f"parameter {site['name']!r} is not a parameter of the model or guide "
                        "modules; data-parallel training needs every parameter there")
                used[index] = 1.0
        except Exception as exc:  # reported to the other ranks, re-raised below
            error = exc
        meta = torch.zeros(self.world_size + 1, dtype=torch.float64, device=self.device)
        meta[self.rank] = float(error is not None)
        if error is None:
            meta[-1] = loss
        meta = self._all_reduce(torch.cat([meta, used]), "an update")
        self._stop_if_failed(meta[:self.world_size], "an update", error)
        used = meta[self.world_size + 1:] > 0
        active = [p for p, u in zip(params, used.tolist()) if u]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in active]
        if grads:
            flat = self._all_reduce(torch.cat([g.reshape(-1) for g in grads]), "an update")
            offset = 0
            for p in active:
                p.grad = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
        svi.optim(set(active))
        zero_grads(active)
        return float(meta[self.world_size])

    def evaluate(self, per_step, model, guide, batches) -> float:
        total, steps, error = 0.0, 0, None
        try:
            mine = [b for i, b in enumerate(batches) if i % self.world_size == self.rank]
            if mine:
                steps = sum(int(b.mask.sum()) for b in mine)
                total = per_step(model, guide, mine) * steps
        except Exception as exc:  # reported to the other ranks, re-raised below
            error = exc
        meta = torch.zeros(self.world_size + 2, dtype=torch.float64, device=self.device)
        meta[self.rank] = float(error is not None)
        if error is None:
            meta[-2:] = torch.tensor([total, float(steps)], dtype=torch.float64)
        meta = self._all_reduce(meta, "validation")
        self._stop_if_failed(meta[:self.world_size], "validation", error)
        return float(meta[-2] / meta[-1])

    def close(self):
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def describe(self) -> str:
        return (f"rank {self.rank} of {self.world_size} ({backend_for(self.device)}, "
                f"{self.device})")


def from_environment(device="cpu", *, timeout_minutes: float = 30.0) -> SingleProcess:
    """The parallel context that ``torchrun`` (or SLURM through TorchElastic) asked for.

    With ``WORLD_SIZE`` unset or 1: :class:`SingleProcess` (unless ``PYRO_SEQVAE_DISTRIBUTED=1``,
    which makes even one rank join a group: a check of the backend on a machine with one GPU,
    where two ``nccl`` ranks cannot share the device). Otherwise join the group through
    ``env://`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, set by ``torchrun``)
    with ``nccl`` for a CUDA ``device`` (this rank then uses ``cuda:LOCAL_RANK``) or ``gloo``.

    :param device: the device asked for, e.g. ``"cpu"`` or ``"cuda"`` (no index under a group).
    :raises ConfigError: an unusable environment or device.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 and os.environ.get("PYRO_SEQVAE_DISTRIBUTED") != "1":
        return SingleProcess()
    rank, local_rank = _env_int("RANK", None), _env_int("LOCAL_RANK", 0)
    if rank is None:
        raise ConfigError("WORLD_SIZE is set but RANK is not; launch with torchrun")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available")
        if device.index is not None:
            raise ConfigError(f"--device {device}: under torchrun give --device cuda; each "
                              "rank uses cuda:LOCAL_RANK")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                              "CUDA devices on this node; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        options = {}
        if device.type == "cuda" and "device_id" in inspect.signature(
                dist.init_process_group).parameters:  # torch >= 2.3: bind the NCCL communicator
            options["device_id"] = device
        dist.init_process_group(backend_for(device), init_method="env://",
                                timeout=datetime.timedelta(minutes=timeout_minutes), **options)
    return DistributedGroup(device, local_rank=local_rank, owns_group=owns)


def error_line(prefix: str, exc: SeqVAEError) -> str | None:
    """The one line a rank prints for ``exc``, or None when another rank reports it.

    One process, or rank 0: ``"{prefix}: error: {exc}"``. Rank ``r > 0``: the same with
    ``rank r of W:``, except for the errors every rank meets together (a divergence, which rank
    0 reports, and :class:`PeerFailedError`, the echo of another rank's failure).
    """
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if world <= 1 or rank == 0:
        return f"{prefix}: error: {exc}"
    if isinstance(exc, (PeerFailedError, DivergenceError)):
        return None
    return f"{prefix}: error: rank {rank} of {world}: {exc}"


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer") from exc
