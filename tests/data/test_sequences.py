import pytest
import torch

from pyro_seqvae.data import Split, Splits
from pyro_seqvae.errors import DataError


def _split(name, lengths, dim=3):
    return Split(name, [torch.ones(t, dim) for t in lengths])


def test_split_properties():
    split = _split("train", [2, 5, 1])
    assert len(split) == 3
    assert split.lengths.tolist() == [2, 5, 1] and split.lengths.dtype == torch.long
    assert split.num_steps == 8
    assert split.x_dim == 3
    assert split[1].shape == (5, 3) and split[1].dtype == torch.float32


def test_split_converts_to_float32():
    split = Split("train", [torch.ones(2, 4, dtype=torch.float64)])
    assert split[0].dtype == torch.float32


@pytest.mark.parametrize(
    "seqs, match",
    [
        ([], "at least one sequence"),
        ([torch.ones(3)], r"shape \[T, D\]"),
        ([torch.ones(0, 3)], "non-empty"),
        ([torch.ones(2, 3, dtype=torch.long)], "floating-point"),
        ([torch.ones(2, 3), torch.ones(2, 4)], "sequence 1: expected feature dimension 3"),
        ([[1.0, 2.0]], "torch.Tensor"),
    ],
)
def test_split_rejects_bad_sequences(seqs, match):
    with pytest.raises(DataError, match=match):
        Split("train", seqs)


def test_splits_iteration_and_x_dim():
    splits = Splits(_split("train", [2]), _split("valid", [3]), _split("test", [4]), "src", {})
    assert [s.name for s in splits] == ["train", "valid", "test"]
    assert splits.x_dim == 3


def test_splits_rejects_mismatched_dims():
    with pytest.raises(DataError, match="src: splits have different feature dimensions"):
        Splits(_split("train", [2]), _split("valid", [3], dim=4), _split("test", [4]), "src", {})


def test_from_lists_names_source():
    seqs = {"train": [torch.ones(2, 3)], "valid": [torch.ones(2, 3)], "test": []}
    with pytest.raises(DataError, match="file.pkl: split 'test': expected at least one"):
        Splits.from_lists(seqs, source="file.pkl")
    with pytest.raises(DataError, match=r"file.pkl: missing split\(s\) \['test'\]"):
        Splits.from_lists({"train": [], "valid": []}, source="file.pkl")
