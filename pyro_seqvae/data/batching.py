"""Mini-batches of variable-length sequences: zero padding, masks and length bucketing.

Shuffling uses a local :class:`torch.Generator` seeded with ``seed + epoch``, so batch order is
reproducible, differs between epochs, and never touches the global random state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from pyro_seqvae.data.sequences import Split
from pyro_seqvae.errors import ConfigError, DataError

__all__ = ["Batch", "pad_sequences", "iterate_batches", "BatchLoader"]

#: With bucketing and shuffling, sequences are sorted by length within chunks of this many
#: batches, which limits padding while keeping batches random.
BUCKET_CHUNK_BATCHES = 50


@dataclass
class Batch:
    """A zero-padded mini-batch.

    :param torch.Tensor x: the padded sequences, ``[B, T, D]`` float; zero beyond each length.
    :param torch.Tensor mask: ``[B, T]`` bool, True at the valid steps.
    :param torch.Tensor lengths: ``[B]`` long, the sequence lengths.
    :param torch.Tensor index: ``[B]`` long, the positions of the sequences in their split.
    """

    x: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy with every tensor on ``device``.

        :param device: the target device.
        :param bool non_blocking: passed to :meth:`torch.Tensor.to`.
        :returns: the moved batch.
        :rtype: Batch
        """
        return Batch(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.x, self.mask, self.lengths, self.index)
            )
        )

    @property
    def batch_size(self) -> int:
        """The number of sequences ``B``."""
        return self.x.shape[0]

    def __len__(self) -> int:
        return self.batch_size


def pad_sequences(
    seqs: Sequence[torch.Tensor],
    *,
    index: Sequence[int] | torch.Tensor | None = None,
    pad_to_multiple: int | None = None,
) -> Batch:
    """Stack ``[T_i, D]`` sequences into a zero-padded batch.

    :param seqs: ``B >= 1`` tensors of equal ``D``.
    :param index: the positions to record in :attr:`Batch.index`; ``0..B-1`` by default.
    :param int pad_to_multiple: round the padded length ``T`` up to a multiple of this
        (e.g. to limit the number of distinct shapes a JIT compiler sees).
    :returns: the batch.
    :rtype: Batch
    """
    if len(seqs) == 0:
        raise DataError("pad_sequences: expected at least one sequence, got none")
    first = seqs[0]
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    max_len = int(lengths.max())
    if pad_to_multiple is not None:
        if pad_to_multiple < 1:
            raise ConfigError(f"pad_to_multiple must be a positive int, got {pad_to_multiple!r}")
        max_len = -(-max_len // pad_to_multiple) * pad_to_multiple
    x = first.new_zeros((len(seqs), max_len, *first.shape[1:]))
    for b, s in enumerate(seqs):
        x[b, : s.shape[0]] = s
    mask = torch.arange(max_len) < lengths[:, None]
    index = torch.arange(len(seqs)) if index is None else torch.as_tensor(index, dtype=torch.long)
    return Batch(x=x, mask=mask, lengths=lengths, index=index).to(x.device)


def _batch_indices(
    lengths: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    bucket_by_length: bool,
    drop_last: bool,
) -> list[torch.Tensor]:
    n = lengths.numel()
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if bucket_by_length:
        chunk = BUCKET_CHUNK_BATCHES * batch_size if shuffle else n
        pieces = []
        for c in order.split(chunk):
            pieces.append(c[torch.sort(lengths[c], stable=True).indices])
        order = torch.cat(pieces)
    batches = list(order.split(batch_size))
    if drop_last and batches and batches[-1].numel() < batch_size:
        batches.pop()
    if bucket_by_length and shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def iterate_batches(
    data: Split | Sequence[torch.Tensor],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    bucket_by_length: bool = False,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    pad_to_multiple: int | None = None,
) -> Iterator[Batch]:
    """Yield zero-padded mini-batches covering every sequence once.

    :param data: a :class:`Split` or a list of ``[T_i, D]`` tensors.
    :param int batch_size: sequences per batch.
    :param bool shuffle: shuffle with a generator seeded by ``seed + epoch``.
    :param int seed: base seed of the shuffle.
    :param int epoch: added to ``seed``, so each epoch gets a different order.
    :param bool bucket_by_length: sort by length (within chunks of
        ``BUCKET_CHUNK_BATCHES * batch_size`` when shuffling, globally otherwise) before cutting
        batches, then shuffle the batch order if ``shuffle``; this limits padding.
    :param device: move each batch to this device.
    :param bool drop_last: drop a final batch smaller than ``batch_size``.
    :param int pad_to_multiple: see :func:`pad_sequences`.
    :returns: an iterator of :class:`Batch`, whose ``index`` refers to positions in ``data``.
    """
    _check_batch_size(batch_size)
    seqs = data.sequences if isinstance(data, Split) else list(data)
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    for idx in _batch_indices(
        lengths,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        bucket_by_length=bucket_by_length,
        drop_last=drop_last,
    ):
        batch = pad_sequences(
            [seqs[i] for i in idx.tolist()], index=idx, pad_to_multiple=pad_to_multiple
        )
        yield batch if device is None else batch.to(device)


class BatchLoader:
    """A re-iterable view of :func:`iterate_batches`; call :meth:`set_epoch` between epochs.

    :param data: a :class:`Split` or a list of ``[T_i, D]`` tensors.
    :param int batch_size: sequences per batch.
    :param kwargs: the keyword arguments of :func:`iterate_batches` except ``epoch``.
    """

    def __init__(self, data: Split | Sequence[torch.Tensor], batch_size: int, **kwargs) -> None:
        if "epoch" in kwargs:
            raise TypeError("BatchLoader: pass the epoch with set_epoch()")
        self.data = data
        self.batch_size = _check_batch_size(batch_size)
        self.kwargs = kwargs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` for the next iterations.

        :param int epoch: the epoch number.
        """
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        return iterate_batches(self.data, self.batch_size, epoch=self.epoch, **self.kwargs)

    def __len__(self) -> int:
        n = len(self.data)
        if self.kwargs.get("drop_last", False):
            return n // self.batch_size
        return -(-n // self.batch_size)
