"""Importance-sampled log-likelihood per sequence, PSIS k-hat and evaluate_split.

Statistical tests follow STYLE.md rule 10: each fixes its seed, states its tolerance and the
false-alarm rate that tolerance implies, and the seed may be bumped at most once.
"""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_seqvae.infer.importance as importance
from pyro_seqvae.data import Split, iterate_batches
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides import make_guide
from pyro_seqvae.infer import (
    KHAT_THRESHOLD,
    chunked_log_weights,
    estimate_log_likelihood,
    log_importance_weights,
    pareto_khat,
)
from pyro_seqvae.infer.evaluation import elbo_per_step, evaluate_split
from pyro_seqvae.models import make_model

LENGTHS = [6, 4, 5]
STABLE_KEYS = {"elbo_per_step", "elbo_stderr_per_step", "is_log_likelihood_per_step",
               "is_stderr_per_step", "khat_max", "khat_over_0_7", "num_sequences", "num_steps",
               "particles", "seed", "split"}


def latent_pair(seed=0):
    """An untrained SRNN with the smoothing guide and Res_q: a poor proposal, so IS gains a lot."""
    pyro.set_rng_seed(seed)
    model = make_model("srnn", x_dim=88, z_dim=3, rnn_dim=5, hidden_dim=7)
    return model, make_guide("smooth", model, hidden_dim=7, summary_dim=5, residual=True)


def rnn_pair(seed=0):
    pyro.set_rng_seed(seed)
    model = make_model("rnn", x_dim=88, rnn_dim=5, hidden_dim=7)
    return model, make_guide("none", model)


def batch(lengths=LENGTHS, seed=0, repeat=1):
    """``(x, mask)``: binary rolls zero-padded to the longest, optionally repeated ``repeat``
    times along the batch (independent particles for every copy)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    lengths = torch.tensor(lengths)
    mask = torch.arange(T) < lengths[:, None]
    x = (torch.rand(len(lengths), T, 88, generator=g) < 0.15).float() * mask[..., None]
    return x.repeat(repeat, 1, 1), mask.repeat(repeat, 1)


def split(seed=1):
    g = torch.Generator().manual_seed(seed)
    return Split("test", [(torch.rand(T, 88, generator=g) < 0.15).float() for T in (6, 4, 5, 3)])


def mean_and_stderr(values):
    values = np.asarray(values, dtype=float)
    return values.mean(), values.std(ddof=1) / math.sqrt(len(values))


# ---- one particle is the ELBO ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_one_particle_log_weight_is_the_elbo_sample_with_the_same_seed(seed):
    # with K=1 both draw the guide's z in the same order from the same generator
    model, guide = latent_pair()
    x, mask = batch()
    pyro.set_rng_seed(seed)
    log_w = log_importance_weights(model, guide, x, mask, 1)
    pyro.set_rng_seed(seed)
    elbo = -Trace_ELBO(max_plate_nesting=1).loss(model, guide, x, mask)
    assert log_w.shape == (1, 3)
    assert float(log_w.sum()) == pytest.approx(elbo, rel=1e-5)


def test_one_particle_estimates_have_the_distribution_of_the_elbo():
    # 400 K=1 estimates against a 400-particle Trace_ELBO. Under equal distributions the
    # difference of the means is ~N(0, 2 s^2 / 400); |z| < 4 is violated with probability 6e-5.
    model, guide = latent_pair()
    x, mask = batch()
    n = 400
    pyro.set_rng_seed(0)
    estimates = estimate_log_likelihood(model, guide, [(x, mask)] * 1, num_particles=1)
    assert np.isnan(estimates.stderr).all()  # one particle has no spread to measure
    pyro.set_rng_seed(1)
    single = log_importance_weights(model, guide, x, mask, n).sum(-1).double()
    pyro.set_rng_seed(2)
    elbo = -Trace_ELBO(num_particles=n, vectorize_particles=True,
                       max_plate_nesting=1).loss(model, guide, x, mask)
    z = (single.mean().item() - elbo) / (single.std().item() * math.sqrt(2 / n))
    assert abs(z) < 4, z
    # and K=1 importance sampling reports its log weight as both figures
    np.testing.assert_allclose(estimates.log_likelihood, estimates.elbo)


# ---- more particles, a tighter bound -------------------------------------------------------------
@pytest.fixture(scope="module")
def by_particles():
    """Log-likelihood estimates of the 3-sequence batch for K = 1, 10, 100: 60 independent
    replicates each (the batch repeated 60 times), summed over the 3 sequences."""
    model, guide = latent_pair()
    R = 60
    x, mask = batch(repeat=R)
    results = {}
    for K in (1, 10, 100):
        pyro.set_rng_seed(1000 + K)
        est = estimate_log_likelihood(model, guide, [(x, mask)], num_particles=K)
        results[K] = (est.log_likelihood.reshape(R, 3).sum(1), est.elbo.reshape(R, 3).sum(1))
    return results


def test_estimate_grows_with_particles_on_average(by_particles):
    # E log p_K rises with K (Burda et al. 2016). Measured with these seeds: the K=1 -> 10 gap
    # is 6.1 standard errors, K=10 -> 100 is 5.4. Requiring z > 2: at gaps of that size a
    # false alarm (z <= 2) has probability about 3e-4.
    means = {}
    for K, (log_p, _) in by_particles.items():
        means[K] = mean_and_stderr(log_p)
    for low, high in ((1, 10), (10, 100)):
        gap = means[high][0] - means[low][0]
        z = gap / math.hypot(means[high][1], means[low][1])
        assert z > 2, (low, high, gap, z)


def test_estimate_stays_above_the_elbo_on_average(by_particles):
    # IS(K=100) against the mean log weight (the ELBO) of the K=1 replicates: measured gap
    # 9.1 standard errors; requiring z > 4 has a false-alarm rate below 1e-6 at that gap.
    log_p, _ = by_particles[100]
    _, elbo = by_particles[1]
    (m_is, s_is), (m_elbo, s_elbo) = mean_and_stderr(log_p), mean_and_stderr(elbo)
    z = (m_is - m_elbo) / math.hypot(s_is, s_elbo)
    assert z > 4, (m_is, m_elbo, z)
    # for each sequence, log mean exp >= mean: exact, not statistical
    log_p_100, elbo_100 = by_particles[100]
    assert (log_p_100 >= elbo_100 - 1e-6).all()


# ---- chunking ---------------------------------------------------------------------------------
def test_chunks_respect_the_row_bound_and_keep_the_shape(monkeypatch):
    model, guide = latent_pair()
    x, mask = batch()  # B=3, T=6: 18 rows per particle
    sizes = []
    real = importance.log_importance_weights

    def counting(model, guide, x, mask, num_particles):
        sizes.append(num_particles)
        return real(model, guide, x, mask, num_particles)

    monkeypatch.setattr(importance, "log_importance_weights", counting)
    log_w = chunked_log_weights(model, guide, x, mask, 23, max_rows=18 * 5, path="traced")
    assert sizes == [5, 5, 5, 5, 3]
    assert log_w.shape == (23, 3) and torch.isfinite(log_w).all()
    sizes.clear()
    assert chunked_log_weights(model, guide, x, mask, 3, max_rows=1, path="traced").shape == (3, 3)
    assert sizes == [1, 1, 1]  # fewer rows than one particle needs: one particle at a time


def test_chunked_and_single_draws_agree_in_distribution():
    # The two draws use the generator differently, so only their distributions can agree.
    # Per sequence, the mean log weights of 200 particles differ by ~N(0, s1^2/200 + s2^2/200);
    # |z| < 4 on each of 3 sequences: false-alarm rate about 2e-4.
    model, guide = latent_pair()
    x, mask = batch()
    n = 200
    pyro.set_rng_seed(3)
    chunked = chunked_log_weights(model, guide, x, mask, n, max_rows=18 * 50).double()
    pyro.set_rng_seed(4)
    single = chunked_log_weights(model, guide, x, mask, n).double()
    stderr = torch.sqrt(chunked.var(0) / n + single.var(0) / n)
    z = (chunked.mean(0) - single.mean(0)) / stderr
    assert (z.abs() < 4).all(), z


# ---- the RNN baseline -------------------------------------------------------------------------
def test_rnn_estimate_is_the_exact_log_likelihood():
    model, guide = rnn_pair()
    x, mask = batch()
    est = estimate_log_likelihood(model, guide, [(x, mask)], num_particles=7)
    exact = model.log_likelihood(x, mask).detach().double().numpy()
    np.testing.assert_allclose(est.log_likelihood, exact, rtol=1e-6)
    np.testing.assert_allclose(est.elbo, exact, rtol=1e-6)
    np.testing.assert_allclose(est.stderr, 0.0, atol=1e-12)
    assert np.isnan(est.khat).all()
    figures = est.per_step()
    assert figures["khat_max"] is None and figures["khat_over_0_7"] == 0
    assert figures["is_log_likelihood_per_step"] == pytest.approx(exact.sum() / sum(LENGTHS))


# ---- PSIS k-hat ---------------------------------------------------------------------------------
def test_khat_is_finite_with_enough_particles_and_counted():
    model, guide = latent_pair()
    x, mask = batch()
    pyro.set_rng_seed(5)
    est = estimate_log_likelihood(model, guide, [(x, mask)], num_particles=100)
    assert est.khat.shape == (3,) and np.isfinite(est.khat).all()
    figures = est.per_step()
    assert figures["khat_over_0_7"] == int((est.khat > KHAT_THRESHOLD).sum())
    assert figures["khat_max"] == pytest.approx(est.khat.max())


def test_pareto_khat_shapes_and_constant_weights():
    # log-normal weights with sigma 0.3 have a light tail: k-hat estimates of 200 draws stay
    # near 0 (below 0.4 for seeds 0-4), far from the 0.7 threshold
    torch.manual_seed(0)
    log_w = 0.3 * torch.randn(200, 4)
    log_w[:, 2] = 1.5  # all particles equal: no tail to fit
    khat = pareto_khat(log_w)
    assert khat.shape == (4,)
    assert np.isnan(khat[2]) and np.isfinite(khat[[0, 1, 3]]).all()
    assert (khat[[0, 1, 3]] < KHAT_THRESHOLD).all()  # light-tailed (normal) log weights


def test_invalid_particle_count():
    model, guide = latent_pair()
    with pytest.raises(ConfigError, match="particles"):
        estimate_log_likelihood(model, guide, [batch()], num_particles=0)


# ---- evaluate_split ---------------------------------------------------------------------------
def test_evaluate_split_reports_the_stable_keys_frame_weighted():
    model, guide = latent_pair()
    data = split()
    model.train()
    results = evaluate_split(model, guide, data, particles=20, batch_size=2, seed=7)
    assert set(results) >= STABLE_KEYS
    assert results["split"] == "test" and results["seed"] == 7 and results["particles"] == 20
    assert results["num_sequences"] == 4 and results["num_steps"] == data.num_steps == 18
    assert model.training and guide.training  # modes restored

    # the same draw by hand: per-step figures are sums over sequences over the total steps
    pyro.set_rng_seed(7)
    model.eval()
    guide.eval()
    est = estimate_log_likelihood(model, guide,
                                  iterate_batches(data, 2, bucket_by_length=True),
                                  num_particles=20)
    assert sorted(est.lengths) == [3, 4, 5, 6]
    steps = est.lengths.sum()
    assert results["is_log_likelihood_per_step"] == pytest.approx(est.log_likelihood.sum() / steps)
    assert results["elbo_per_step"] == pytest.approx(est.elbo.sum() / steps)
    assert results["is_stderr_per_step"] == pytest.approx(
        math.sqrt((est.stderr ** 2).sum()) / steps)
    assert results["is_log_likelihood_per_step"] >= results["elbo_per_step"]
    assert results["khat_over_0_7"] == int((est.khat > KHAT_THRESHOLD).sum())


def test_evaluate_split_is_reproducible_with_its_seed():
    model, guide = latent_pair()
    first = evaluate_split(model, guide, split(), particles=10, seed=3)
    pyro.set_rng_seed(12345)  # the global state does not matter
    again = evaluate_split(model, guide, split(), particles=10, seed=3)
    assert first == again


def test_elbo_per_step_divides_by_real_steps():
    # the validation figure of the trainer: sum over sequences / number of unpadded steps
    model, guide = latent_pair()
    data = split()
    batches = list(iterate_batches(data, 4, pad_to_multiple=8))
    assert batches[0].x.shape[1] == 8
    pyro.set_rng_seed(0)
    value = elbo_per_step(model, guide, batches)
    pyro.set_rng_seed(0)
    total = -Trace_ELBO(max_plate_nesting=1).loss(model, guide, batches[0].x, batches[0].mask)
    assert value == pytest.approx(total / data.num_steps)
