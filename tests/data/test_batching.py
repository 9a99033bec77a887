import pytest
import torch

from pyro_seqvae.data import Batch, BatchLoader, Split, iterate_batches, pad_sequences


def _seqs(lengths, dim=4):
    return [torch.full((t, dim), float(i + 1)) for i, t in enumerate(lengths)]


def test_pad_sequences_zero_padding_and_mask():
    batch = pad_sequences(_seqs([3, 1, 2]))
    assert batch.x.shape == (3, 3, 4)
    assert batch.lengths.tolist() == [3, 1, 2] and batch.lengths.dtype == torch.long
    assert batch.mask.dtype == torch.bool
    assert batch.mask.sum(1).tolist() == [3, 1, 2]
    assert (batch.x[~batch.mask] == 0).all()
    assert (batch.x[1, 0] == 2).all() and (batch.x[2, :2] == 3).all()
    assert batch.index.tolist() == [0, 1, 2] and len(batch) == 3


def test_pad_to_multiple():
    batch = pad_sequences(_seqs([33, 5]), pad_to_multiple=32)
    assert batch.x.shape[1] == 64 and batch.mask.shape == (2, 64)
    assert batch.mask.sum().item() == 38


def test_every_sequence_once_per_epoch():
    lengths = torch.randint(1, 30, (53,), generator=torch.Generator().manual_seed(1)).tolist()
    split = Split("train", _seqs(lengths))
    for kwargs in ({}, {"shuffle": True}, {"shuffle": True, "bucket_by_length": True}):
        batches = list(iterate_batches(split, 8, **kwargs))
        index = torch.cat([b.index for b in batches])
        assert sorted(index.tolist()) == list(range(53))
        for b in batches:
            assert torch.equal(b.lengths, split.lengths[b.index])
            assert torch.equal(b.mask.sum(1), b.lengths)
            for row, i in enumerate(b.index.tolist()):
                assert torch.equal(b.x[row, : b.lengths[row]], split[i])


def test_seeded_shuffle_reproducible_and_epoch_dependent():
    seqs = _seqs([5] * 40)
    state = torch.random.get_rng_state()

    def order(**kw):
        return [b.index.tolist() for b in iterate_batches(seqs, 4, shuffle=True, **kw)]

    assert order(seed=3, epoch=0) == order(seed=3, epoch=0)
    assert order(seed=3, epoch=0) != order(seed=3, epoch=1)
    assert order(seed=3, epoch=0) != order(seed=4, epoch=0)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_no_shuffle_keeps_order():
    batches = list(iterate_batches(_seqs([2, 3, 4, 5, 6]), 2))
    assert [b.index.tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_bucketing_reduces_padding():
    g = torch.Generator().manual_seed(0)
    seqs = _seqs(torch.randint(1, 200, (256,), generator=g).tolist(), dim=1)

    def padding(**kw):
        return sum((~b.mask).sum().item() for b in iterate_batches(seqs, 16, shuffle=True, **kw))

    assert padding(bucket_by_length=True) < 0.2 * padding()
    sorted_batches = list(iterate_batches(seqs, 16, bucket_by_length=True))
    maxima = [b.lengths.max().item() for b in sorted_batches]
    assert maxima == sorted(maxima)


def test_drop_last():
    seqs = _seqs([2] * 10)
    assert [len(b) for b in iterate_batches(seqs, 4)] == [4, 4, 2]
    assert [len(b) for b in iterate_batches(seqs, 4, drop_last=True)] == [4, 4]
    bucketed = list(iterate_batches(seqs, 4, drop_last=True, shuffle=True, bucket_by_length=True))
    assert [len(b) for b in bucketed] == [4, 4]


def test_device_placement():
    batch = next(iterate_batches(_seqs([2, 3]), 2, device="cpu"))
    assert all(t.device.type == "cpu" for t in (batch.x, batch.mask, batch.lengths, batch.index))
    moved = batch.to(torch.device("cpu"))
    assert isinstance(moved, Batch) and torch.equal(moved.x, batch.x)


def test_batch_loader():
    loader = BatchLoader(_seqs([3] * 10), 3, shuffle=True, seed=0)
    assert len(loader) == 4
    first = [b.index.tolist() for b in loader]
    assert first == [b.index.tolist() for b in loader]
    loader.set_epoch(1)
    assert first != [b.index.tolist() for b in loader]
    assert len(BatchLoader(_seqs([3] * 10), 3, drop_last=True)) == 3
    with pytest.raises(TypeError, match="set_epoch"):
        BatchLoader(_seqs([3]), 1, epoch=2)


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_bad_batch_size(size):
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(_seqs([2]), size))
