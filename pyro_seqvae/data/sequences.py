"""Containers for a data set of variable-length sequences split into train/valid/test.

The containers are generic over the feature dimension ``D``: a piano roll has ``D = 88``,
but continuous data reuse the same classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_seqvae.errors import DataError

__all__ = ["Split", "Splits", "SPLIT_NAMES"]

#: The names of the three splits, in order.
SPLIT_NAMES = ("train", "valid", "test")


def _check_sequence(seq: Any, where: str) -> torch.Tensor:
    if not isinstance(seq, torch.Tensor):
        raise DataError(
            f"{where}: expected a torch.Tensor of shape [T, D], got {type(seq).__name__}"
        )
    if seq.dim() != 2:
        raise DataError(f"{where}: expected shape [T, D], got shape {list(seq.shape)}")
    if seq.shape[0] < 1 or seq.shape[1] < 1:
        raise DataError(f"{where}: expected a non-empty [T, D] tensor, got shape {list(seq.shape)}")
    if not seq.is_floating_point():
        raise DataError(f"{where}: expected a floating-point tensor, got dtype {seq.dtype}")
    return seq.to(torch.float32)


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set: a list of ``[T_i, D]`` float32 sequences of equal ``D``.

    :param str name: the split's name, e.g. ``"train"``.
    :param list sequences: the sequences, each a ``[T_i, D]`` floating-point tensor with
        ``T_i >= 1``; they are stored as float32.
    """

    name: str
    sequences: list[torch.Tensor]

    def __post_init__(self) -> None:
        seqs = [
            _check_sequence(s, f"split {self.name!r}, sequence {i}")
            for i, s in enumerate(self.sequences)
        ]
        if not seqs:
            raise DataError(f"split {self.name!r}: expected at least one sequence, got none")
        x_dim = seqs[0].shape[1]
        for i, s in enumerate(seqs):
            if s.shape[1] != x_dim:
                raise DataError(
                    f"split {self.name!r}, sequence {i}: expected feature dimension {x_dim} "
                    f"(as sequence 0), got shape {list(s.shape)}"
                )
        object.__setattr__(self, "sequences", seqs)

    @property
    def lengths(self) -> torch.Tensor:
        """The sequence lengths, a LongTensor of shape ``[N]``."""
        return torch.tensor([s.shape[0] for s in self.sequences], dtype=torch.long)

    @property
    def num_steps(self) -> int:
        """The total number of time steps over all sequences."""
        return sum(s.shape[0] for s in self.sequences)

    @property
    def x_dim(self) -> int:
        """The feature dimension ``D``."""
        return self.sequences[0].shape[1]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sequences[index]

    def __repr__(self) -> str:
        return f"Split(name={self.name!r}, num_sequences={len(self)}, num_steps={self.num_steps})"


@dataclass(frozen=True, eq=False)
class Splits:
    """A data set: train, valid and test :class:`Split` of equal feature dimension.

    :param Split train: the training split.
    :param Split valid: the validation split.
    :param Split test: the test split.
    :param str source: where the data came from (``"jsb"``, a file or folder path).
    :param dict info: provenance, e.g. ``"recipe_version"``, ``"steps_per_beat"``,
        ``"skipped"`` (``{item: reason}``) and ``"names"`` (``{split: [source name, ...]}``).
    """

    train: Split
    valid: Split
    test: Split
    source: str
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            split = getattr(self, name)
            if not isinstance(split, Split):
                raise DataError(
                    f"{self.source}: field {name!r} must be a Split, got {type(split).__name__}"
                )
        dims = {split.name: split.x_dim for split in self}
        if len(set(dims.values())) != 1:
            raise DataError(f"{self.source}: splits have different feature dimensions {dims}")

    @property
    def x_dim(self) -> int:
        """The feature dimension ``D`` shared by all splits."""
        return self.train.x_dim

    def __iter__(self) -> Iterator[Split]:
        return iter((self.train, self.valid, self.test))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s.name}={len(s)}" for s in self)
        return f"Splits(source={self.source!r}, x_dim={self.x_dim}, {sizes})"

    @classmethod
    def from_lists(
        cls, sequences: dict[str, Sequence[torch.Tensor]], *, source: str, info: dict | None = None
    ) -> Splits:
        """Build from ``{"train": [...], "valid": [...], "test": [...]}``.

        :param dict sequences: per split name, a list of ``[T, D]`` tensors.
        :param str source: see :class:`Splits`.
        :param dict info: see :class:`Splits`.
        :returns: the data set.
        :rtype: Splits
        """
        missing = [name for name in SPLIT_NAMES if name not in sequences]
        if missing:
            raise DataError(f"{source}: missing split(s) {missing}")
        splits = {}
        for name in SPLIT_NAMES:
            try:
                splits[name] = Split(name, list(sequences[name]))
            except DataError as e:
                raise DataError(f"{source}: {e}") from None
        return cls(**splits, source=source, info=dict(info or {}))
