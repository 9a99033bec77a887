"""NVIL's learning-signal normalisation: hand-computed updates, a fixed stream, padding."""

import pytest
import torch

from pyro_seqvae.guides.nvil import SignalNormaliser


def _signals(normaliser, costs, steps, baselines=None):
    return normaliser.learning_signals([torch.tensor(costs)], [torch.tensor(steps)],
                                       baselines)


def test_first_batches_by_hand():
    n = SignalNormaliser(max_steps=4, decay=0.9)
    # bins never seen start at this batch's own means: k=1 -> (4 + 6) / 2 = 5, k=2 -> 10;
    # centred [-1, 1, 0], mean square 2/3 -> scale max(1, sqrt(2/3)) = 1; the padded step
    # (k = 0) gets signal 0 and is left out
    (signal,), loss = _signals(n, [4.0, 6.0, 10.0, 99.0], [1, 1, 2, 0])
    assert signal.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])
    assert loss == 0.0
    assert n.mean.tolist() == pytest.approx([5.0, 10.0, 0.0, 0.0])
    assert n.seen.tolist() == [True, True, False, False]
    assert float(n.var) == pytest.approx(2 / 3)
    # the next batch is normalised with the statistics from before it, then they move
    (signal,), _ = _signals(n, [7.0], [1])
    assert signal.tolist() == pytest.approx([2.0])
    assert n.mean[0].item() == pytest.approx(0.9 * 5 + 0.1 * 7)
    assert float(n.var) == pytest.approx(0.9 * 2 / 3 + 0.1 * 4)
    # a large signal is divided by the running standard deviation; k above max_steps shares
    # the last bin; the baseline C is subtracted and fitted to l - c with the same scale
    n.var.fill_(16.0)
    base = torch.tensor([1.0, -2.0], requires_grad=True)
    (signal,), loss = _signals(n, [25.2, 30.0], [1, 9], [base])
    c4 = 30.0 + 2.0  # bin 4 is new: its batch mean of l - C
    assert signal.tolist() == pytest.approx([(25.2 - 1.0 - 5.2) / 4, (30.0 + 2.0 - c4) / 4])
    assert loss.detach().item() == pytest.approx(((25.2 - 5.2 - 1.0) ** 2 + 0.0) / 4)
    loss.backward()  # gradient -2 (l - c - C) / scale: NVIL's update of C
    assert base.grad.tolist() == pytest.approx([-2 * 19.0 / 4, 0.0])


def test_eval_mode_freezes_the_statistics():
    n = SignalNormaliser(max_steps=3)
    _signals(n, [1.0, 3.0], [1, 2])
    before = {k: v.clone() for k, v in n.state_dict().items()}
    n.eval()
    _signals(n, [100.0, 300.0], [1, 2])
    for key, value in n.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("noise", [25.0, 0.5])
def test_a_fixed_stream_is_centred_per_steps_left_and_scaled_to_unit_variance(noise):
    """Costs ``-8 k + noise N(0, 1)`` for ``k`` in 1..40 steps left (the level of a downstream
    cost grows with the steps it sums), 64 per batch, seed 0: after 100 batches the signals of
    the next 200 have mean within 0.03 of 0 and variance within 5 % of 1, or of ``noise^2`` for
    a small signal, which is not scaled up (NVIL divides by ``max(1, sigma)``); the running
    means are within 4 standard errors of the true levels."""
    g = torch.Generator().manual_seed(0)
    n = SignalNormaliser(max_steps=64, decay=0.9)
    out = []
    for batch in range(300):
        k = torch.randint(1, 41, (64,), generator=g)
        cost = -8.0 * k + noise * torch.randn(64, generator=g)
        (signal,), _ = n.learning_signals([cost], [k])
        if batch >= 100:
            out.append(signal)
    out = torch.cat(out)
    assert abs(float(out.mean())) < 0.03
    # a running mean of decay 0.9 over batches of about 64 / 40 draws per bin has a variance
    # of about noise^2 * 0.1 / 1.9 / 1.6, which the centred signal carries too
    lag = 0.1 / 1.9 / 1.6
    assert float(out.var()) == pytest.approx(min(1.0, noise ** 2 * (1 + lag)), rel=0.05)
    levels = -8.0 * torch.arange(1, 41)
    stderr = noise * lag ** 0.5
    assert float((n.mean[:40] - levels).abs().max()) < 4 * stderr
    assert float(n.var.sqrt()) == pytest.approx(noise, rel=0.1)


def test_particles_share_the_bins_of_their_sequence():
    n = SignalNormaliser(max_steps=4)
    cost = torch.tensor([[1.0, 10.0], [3.0, 20.0]])   # [K=2, B=2]
    (signal,), _ = n.learning_signals([cost], [torch.tensor([1, 2])])
    assert n.mean[:2].tolist() == pytest.approx([2.0, 15.0])
    assert signal.shape == (2, 2)
    assert float(n.var) == pytest.approx((1 + 25 + 1 + 25) / 4)
    expected = torch.tensor([[-1.0, -5.0], [1.0, 5.0]]) / 13 ** 0.5
    torch.testing.assert_close(signal, expected)
