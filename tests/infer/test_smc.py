"""Sequential Monte Carlo, FIVO and NASMC (pyro_seqvae.infer.smc, infer.smc_objectives).

Exact checks where the randomness can be aligned (SMC with one particle is the single-sample
ELBO, SMC without resampling is the library's importance sampling, padding changes nothing,
systematic resampling's counts), statistical checks against a Kalman filter on a linear-Gaussian
state-space model written on the models' step protocol. Statistical tests use fixed seeds; their
tolerances and false-alarm rates are stated where they are made.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import LATENT_PAIRS, build_pair, pair_id, tiny_batch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import ClippedAdam
from test_cli import run_cli, write_benchmark_pickle

from pyro_seqvae.data import Splits
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides.base import Proposal, SequenceGuide
from pyro_seqvae.infer.elbo import make_elbo
from pyro_seqvae.infer.evaluation import evaluate_split
from pyro_seqvae.infer.importance import log_importance_weights
from pyro_seqvae.infer.smc import (
    effective_sample_size,
    estimate_smc_log_likelihood,
    resample_indices,
    run_smc,
)
from pyro_seqvae.infer.smc_objectives import FIVO, NASMC
from pyro_seqvae.models.base import Carry, LatentSequenceModel
from pyro_seqvae.training import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- a linear-Gaussian state-space model on the step protocol, and its Kalman filter ----------
class LinearGaussianSSM(LatentSequenceModel):
    """``z_t = A z_{t-1} + N(0, q^2 I)``, ``z_0 = 0``; ``x_t = C z_t + N(0, r^2 I)``."""

    def __init__(self, q=0.5, r=0.4):
        super().__init__(x_dim=2, z_dim=2, name="LinearGaussianSSM")
        self.register_buffer("A", torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=torch.float64))
        self.register_buffer("C", torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64))
        self.q, self.r = q, r
        # the model base expects one parameter, of the dtype its inputs must have
        self.dummy = torch.nn.Linear(1, 1).double()

    pre_dim = 0
    context_dim = 2

    def precompute(self, x, mask):
        return x.new_zeros(x.shape[:-1] + (0,))

    def initial_carry(self, x):
        return Carry(z=x.new_zeros(x.shape[0], 2))

    def context(self, carry, pre_t):
        return carry.z

    def prior_loc(self, carry, pre_t):
        return carry.z @ self.A.T

    def prior(self, carry, pre_t, loc=None):
        loc = self.prior_loc(carry, pre_t) if loc is None else loc
        return dist.Normal(loc, self.q).to_event(1)

    def emission_dist(self, pre, records):
        return dist.Normal(records @ self.C.T, self.r).to_event(1)


class OverdispersedPriorGuide(SequenceGuide):
    """The proposal ``q(z_t | z_{t-1}) = N(A z_{t-1}, (1.3 q)^2 I)``: the bootstrap filter,
    widened so that ``log q`` differs from ``log p``."""

    def __init__(self, model):
        super().__init__(model, name="OverdispersedPriorGuide")
        self.dummy = torch.nn.Linear(1, 1)

    def summarise(self, x, mask, pre):
        return x.new_zeros(x.shape[:-1] + (0,))

    def proposal(self, carry, summary_t, pre_t):
        loc = self.model.prior_loc(carry, pre_t)
        return Proposal(dist.Normal(loc, 1.3 * self.model.q).to_event(1))


def kalman_log_likelihood(model, x):
    """Exact ``log p(x_{1:T})`` of :class:`LinearGaussianSSM` for one sequence ``[T, 2]``."""
    A, C = model.A, model.C
    Q, R = model.q ** 2 * torch.eye(2, dtype=x.dtype), model.r ** 2 * torch.eye(2, dtype=x.dtype)
    m, P = x.new_zeros(2), x.new_zeros(2, 2)
    total = 0.0
    for x_t in x:
        m, P = A @ m, A @ P @ A.T + Q
        S = C @ P @ C.T + R
        total += float(dist.MultivariateNormal(C @ m, S).log_prob(x_t))
        gain = P @ C.T @ torch.linalg.inv(S)
        m, P = m + gain @ (x_t - C @ m), (torch.eye(2, dtype=x.dtype) - gain @ C) @ P
    return total


def lgssm_data(T, copies, seed=0, r=0.4):
    """One sequence drawn from the model, repeated ``copies`` times: ``(model, guide, x, mask,
    exact log p(x))``. Each copy is an independent SMC run."""
    model = LinearGaussianSSM(r=r)
    guide = OverdispersedPriorGuide(model)
    g = torch.Generator().manual_seed(seed)
    z, xs = torch.zeros(2, dtype=torch.float64), []
    for _ in range(T):
        z = model.A @ z + model.q * torch.randn(2, generator=g, dtype=torch.float64)
        xs.append(model.C @ z + model.r * torch.randn(2, generator=g, dtype=torch.float64))
    seq = torch.stack(xs)
    x = seq.expand(copies, T, 2).contiguous()
    mask = torch.ones(copies, T, dtype=torch.bool)
    return model, guide, x, mask, kalman_log_likelihood(model, seq)


def test_kalman_filter_matches_a_dense_gaussian():
    # the test's own reference, checked once against the joint Gaussian of x_{1:3}
    model, _, x, _, exact = lgssm_data(3, 1)
    A, C, q, r = model.A, model.C, model.q, model.r
    blocks = [[None] * 3 for _ in range(3)]
    powers = [torch.linalg.matrix_power(A, k) for k in range(3)]
    for s in range(3):
        for t in range(3):
            cov = sum(powers[s - j] @ powers[t - j].T for j in range(min(s, t) + 1)) * q ** 2
            blocks[s][t] = C @ cov @ C.T + (r ** 2 * torch.eye(2, dtype=x.dtype) if s == t else 0)
    joint = torch.cat([torch.cat(row, 1) for row in blocks], 0)
    dense = dist.MultivariateNormal(x.new_zeros(6), joint).log_prob(x[0].reshape(6))
    assert abs(float(dense) - exact) < 1e-9


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_smc_estimate_of_p_x_is_unbiased(scheme):
    """Mean of Z-hat / p(x) over 20000 independent runs (K = 16, T = 10, observation noise 1)
    is 1 within four of its standard errors (false alarm about 1e-4 under a normal
    approximation, more for the ratio's heavy right tail; measured here over seeds 0-2 of the
    data and K = 8: within 1.6 standard errors), and E[log Z-hat] <= log p(x) (Jensen)."""
    model, guide, x, mask, exact = lgssm_data(10, 20000, r=1.0)
    pyro.set_rng_seed(1)
    result = run_smc(model, guide, x, mask, num_particles=16, resampling=scheme)
    assert result.num_resamplings.float().mean() > 1  # resampling is exercised
    ratio = (result.log_z - exact).exp()
    stderr = float(ratio.std() / math.sqrt(len(ratio)))
    assert abs(float(ratio.mean()) - 1.0) < 4 * stderr, (float(ratio.mean()), stderr)
    assert stderr < 0.025  # the check has power: a 10 % bias would fail
    assert float(result.log_z.mean()) < exact


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_smc_beats_importance_sampling_on_50_steps(scheme):
    """At equal K = 32 on a 50-step sequence, SMC's log Z is closer to the Kalman filter's
    log p(x) than the library's importance sampling (its Pyro-traced estimator, with the same
    guide): mean absolute error over 100 runs, at most half of IS's. The gap is wide (here
    about 5 nats against 25: IS degenerates on long sequences), so the check does not hinge on
    the seed."""
    model, guide, x, mask, exact = lgssm_data(50, 100)
    pyro.set_rng_seed(2)
    smc = run_smc(model, guide, x, mask, num_particles=32, resampling=scheme).log_z
    log_w = log_importance_weights(model, guide, x, mask, 32)
    is_log_z = torch.logsumexp(log_w, 0) - math.log(32)
    smc_error, is_error = (smc - exact).abs().mean(), (is_log_z - exact).abs().mean()
    assert smc_error < 0.5 * is_error, (float(smc_error), float(is_error))


# ---- exact identities on the library's models ---------------------------------------------------
def double_pair(pair, seed=1):
    pyro.set_rng_seed(seed)
    model, guide = build_pair(*pair)
    model.double()
    guide.double()
    x, mask = tiny_batch(B=3, T=6, lengths=[6, 4, 2])
    return model, guide, x.double(), mask


@pytest.mark.parametrize("pair", LATENT_PAIRS, ids=pair_id)
def test_fivo_with_one_particle_is_the_single_sample_elbo(pair):
    model, guide, x, mask = double_pair(pair)
    for beta in (1.0, 0.4):
        pyro.set_rng_seed(3)
        fivo = make_elbo("fivo", num_particles=1).loss(model, guide, x, mask, beta)
        pyro.set_rng_seed(3)
        elbo = Trace_ELBO().loss(model, guide, x, mask, beta)
        assert fivo == pytest.approx(elbo, rel=1e-12, abs=1e-9)


def test_fivo_refuses_to_train_binary_latents_and_nasmc_trains_them():
    model, guide, x, mask = double_pair(("tsbn", "filter", False))
    with pytest.raises(ConfigError, match="train them with nasmc, not fivo"):
        make_elbo("fivo", num_particles=4).loss_and_grads(model, guide, x, mask)
    assert all(p.grad is None for p in model.parameters())  # refused before any gradient
    make_elbo("nasmc", num_particles=4).loss_and_grads(model, guide, x, mask)
    grads = [p.grad for p in (*model.parameters(), *guide.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("pair", LATENT_PAIRS, ids=pair_id)
def test_smc_without_resampling_is_importance_sampling(pair):
    model, guide, x, mask = double_pair(pair)
    pyro.set_rng_seed(3)
    log_z = run_smc(model, guide, x, mask, num_particles=5, resampling="never").log_z
    pyro.set_rng_seed(3)
    log_w = log_importance_weights(model, guide, x, mask, 5)
    torch.testing.assert_close(log_z, torch.logsumexp(log_w, 0) - math.log(5),
                               atol=1e-9, rtol=0)


def test_fivo_without_resampling_is_iwae():
    # pyro's RenyiELBO(alpha=0) sums the batch inside the logsumexp: compare on one sequence
    model, guide, x, mask = double_pair(("srnn", "smooth", True))
    x, mask = x[:1], mask[:1]
    pyro.set_rng_seed(4)
    fivo = FIVO(6, resampling="never").loss(model, guide, x, mask)
    pyro.set_rng_seed(4)
    iwae = RenyiELBO(alpha=0.0, num_particles=6, vectorize_particles=True,
                     max_plate_nesting=1).loss(model, guide, x, mask)
    assert fivo == pytest.approx(iwae, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("pair", [("vrnn", "filter", True), ("srnn", "smooth", True),
                                  ("dmm", "smooth", False)], ids=pair_id)
def test_padding_changes_nothing(pair):
    """A batch padded with three more (non-zero) steps gives the same log Z, resamplings, ESS
    trace and gradients, with resampling forced at every step (threshold 1)."""
    model, guide, x, mask = double_pair(pair)
    x, mask = x[:2], mask[:2]  # lengths 6 and 4
    padded = torch.cat([x, torch.ones(2, 3, x.shape[-1], dtype=x.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    padded[1, 4:] = 1.0  # the shorter sequence's padding is not zeros either
    results = []
    for xs, ms in ((x, mask), (padded, padded_mask)):
        pyro.set_rng_seed(5)
        result = run_smc(model, guide, xs, ms, num_particles=4, threshold=1.0)
        params = list(model.parameters()) + list(guide.parameters())
        grads = torch.autograd.grad(result.log_z.sum(), params, allow_unused=True)
        results.append((result, grads))
    (a, grads_a), (b, grads_b) = results
    assert a.num_resamplings.tolist() == [5, 3]  # every step but the last of each sequence
    torch.testing.assert_close(a.log_z, b.log_z, atol=1e-10, rtol=0)
    assert a.num_resamplings.tolist() == b.num_resamplings.tolist()
    torch.testing.assert_close(a.ess, b.ess[:6], atol=1e-10, rtol=0, equal_nan=True)
    assert torch.isnan(b.ess[6:]).all() and torch.isnan(a.ess[4:, 1]).all()
    for ga, gb in zip(grads_a, grads_b):
        if ga is None:
            assert gb is None
        else:
            torch.testing.assert_close(ga, gb, atol=1e-9, rtol=0)


# ---- resampling --------------------------------------------------------------------------------
def test_systematic_resampling_counts_are_floor_or_ceil_of_k_w():
    K, B = 8, 500
    log_w = torch.randn(K, B, dtype=torch.float64) * 2
    expected = torch.softmax(log_w, 0) * K
    ancestors = resample_indices(log_w, "systematic")
    counts = torch.zeros(K, B, dtype=torch.float64).scatter_add_(
        0, ancestors, torch.ones(K, B, dtype=torch.float64))
    assert ((counts >= expected.floor() - 1e-9) & (counts <= expected.ceil() + 1e-9)).all()


def test_multinomial_resampling_is_unbiased():
    """Mean counts over 20000 columns equal K w_k within 5 standard errors (binomial)."""
    K, B = 6, 20000
    w = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05, 0.0], dtype=torch.float64)
    ancestors = resample_indices(w.log().unsqueeze(1).expand(K, B), "multinomial")
    counts = torch.zeros(K, B, dtype=torch.float64).scatter_add_(
        0, ancestors, torch.ones(K, B, dtype=torch.float64)).mean(1)
    stderr = (K * w * (1 - w) / B).sqrt()
    assert ((counts - K * w).abs() <= 5 * stderr + 1e-12).all(), counts
    assert counts[-1] == 0


def test_effective_sample_size():
    log_w = torch.tensor([[0.0, 0.0], [0.0, -1e9], [0.0, -1e9]])
    torch.testing.assert_close(effective_sample_size(log_w), torch.tensor([3.0, 1.0]))


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fivo", "nasmc"])
@pytest.mark.parametrize("pair", [("vrnn", "filter", True), ("dmm", "smooth", True)],
                         ids=pair_id)
def test_svi_step_trains_every_parameter_with_finite_gradients(kind, pair):
    pyro.set_rng_seed(0)
    model, guide = build_pair(*pair)
    x, mask = tiny_batch(B=3, T=6, lengths=[6, 4, 2])
    loss = SVI(model, guide, ClippedAdam({"lr": 1e-2}), make_elbo(kind, num_particles=4))
    before = {f"{m._pyro_name}.{n}": p.detach().clone()
              for m in (model, guide) for n, p in m.named_parameters()}
    value = loss.step(x, mask, 0.5)
    assert math.isfinite(value)
    after = {f"{m._pyro_name}.{n}": p.detach()
             for m in (model, guide) for n, p in m.named_parameters()}
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"{kind}: ClippedAdam left {unchanged} unchanged"
    assert all(torch.isfinite(p).all() for p in after.values())


def test_fivo_gradients_are_finite_with_resampling_at_every_step():
    model, guide, x, mask = double_pair(("srnn", "filter", True))
    FIVO(4, threshold=1.0).loss_and_grads(model, guide, x, mask)
    for module in (model, guide):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_nasmc_splits_its_gradients_between_model_and_proposal():
    """The guide's own parameters get exactly the inclusive-KL surrogate's gradient; the model's
    get exactly the gradient of log Z-hat with the proposal held fixed."""
    model, guide, x, mask = double_pair(("vrnn", "filter", True))
    pyro.set_rng_seed(6)
    NASMC(4, threshold=1.0).loss_and_grads(model, guide, x, mask)
    pyro.set_rng_seed(6)
    result = run_smc(model, guide, x, mask, num_particles=4, threshold=1.0, nasmc=True)
    model_params, guide_params = list(model.parameters()), list(guide.parameters())
    want_model = torch.autograd.grad(-result.log_z.sum(), model_params, retain_graph=True)
    want_guide = torch.autograd.grad(-result.proposal_objective.sum(), guide_params)
    for p, g in zip(model_params + guide_params, want_model + want_guide):
        torch.testing.assert_close(p.grad, g, atol=1e-10, rtol=0)


def tiny_splits():
    g = torch.Generator().manual_seed(0)
    lengths = {"train": [5, 7, 9, 6], "valid": [5, 8], "test": [6, 7]}
    return Splits.from_lists({name: [(torch.rand(T, 88, generator=g) < 0.1).float()
                                     for T in lens] for name, lens in lengths.items()},
                             source="synthetic")


@pytest.mark.parametrize("kind", ["fivo", "nasmc"])
def test_trainer_resumes_an_smc_run_exactly(kind, tmp_path):
    splits = tiny_splits()
    config = TrainConfig(data="synthetic", model="vrnn", guide="filter", residual=True,
                         model_kwargs={"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
                         guide_kwargs={"hidden_dim": 7, "summary_dim": 5}, epochs=2,
                         batch_size=2, beta_increment=0.25, elbo=kind, num_particles=3)

    def trainer(cfg, out):
        pyro.clear_param_store()
        pyro.set_rng_seed(cfg.seed)
        model, guide = cfg.build(88)
        return Trainer(model, guide, cfg, out_dir=out, progress=False)

    straight = trainer(config, tmp_path / "a")
    straight.fit(splits)
    trainer(config.replace(epochs=1), tmp_path / "b").fit(splits)
    resumed = trainer(config, tmp_path / "b")
    history = resumed.fit(splits, resume=tmp_path / "b" / "checkpoint_last.pt")
    assert len(history) == 2 and all(math.isfinite(r["valid_elbo_per_step"]) for r in history)
    for a, b in ((straight.model, resumed.model), (straight.guide, resumed.guide)):
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)


# ---- evaluation and the CLI --------------------------------------------------------------------
def test_smc_evaluation_of_the_rnn_is_its_exact_likelihood():
    pyro.set_rng_seed(0)
    model, guide = build_pair("rnn", "none")
    split = tiny_splits().test
    result = evaluate_split(model, guide, split, particles=3, estimator="smc", smc_repeats=2)
    assert result["smc_log_likelihood_per_step"] == pytest.approx(
        result["is_log_likelihood_per_step"], abs=1e-5)
    assert result["smc_stderr_per_step"] == pytest.approx(0.0, abs=1e-6)


def test_smc_estimate_splits_batches_to_bound_memory():
    """With ``max_rows = K`` every sequence is its own run: the same as running them one by one."""
    model, guide, x, mask, exact = lgssm_data(10, 3)
    mask[2, 7:] = False
    pyro.set_rng_seed(0)
    estimate = estimate_smc_log_likelihood(model, guide, [(x, mask)], num_particles=16,
                                           max_rows=16)
    pyro.set_rng_seed(0)
    one_by_one = [run_smc(model, guide, x[i:i + 1], mask[i:i + 1], num_particles=16)
                  for i in range(3)]
    expected = torch.cat([r.log_z for r in one_by_one]).numpy()
    assert estimate.log_likelihood.tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert estimate.lengths.tolist() == [10, 10, 7]
    assert [len(trace) for trace in estimate.ess] == [10, 10, 7]
    assert estimate.num_resamplings.tolist() == [int(r.num_resamplings) for r in one_by_one]
    assert estimate.per_step()["smc_log_likelihood_per_step"] == pytest.approx(
        expected.sum() / 27)


def test_bad_smc_options_are_config_errors():
    model, guide, x, mask = double_pair(("srnn", "filter", False))
    with pytest.raises(ConfigError, match="resampling"):
        run_smc(model, guide, x, mask, num_particles=2, resampling="stratified")
    with pytest.raises(ConfigError, match="threshold"):
        FIVO(2, threshold=1.5)
    with pytest.raises(ConfigError, match="particles"):
        make_elbo("fivo", num_particles=0)
    rnn, empty = build_pair("rnn", "none")
    with pytest.raises(ConfigError, match="latent"):
        run_smc(rnn, empty, x.float(), mask, num_particles=2)


def test_cli_trains_with_fivo_and_evaluates_with_smc(tmp_path):
    data = write_benchmark_pickle(tmp_path / "tiny.pickle")
    run = tmp_path / "run"
    tiny = ["--z-dim", "3", "--rnn-dim", "5", "--hidden-dim", "7", "--batch-size", "4",
            "--quiet", "--model", "vrnn", "--guide", "filter"]
    status, stdout, stderr = run_cli("train", "--data", data, *tiny, "--epochs", 1, "--elbo",
                                     "fivo", "--particles", 3, "--out", run)
    assert status == 0, stderr
    status, stdout, stderr = run_cli("evaluate", run, "--particles", 4, "--estimator", "smc",
                                     "--smc-repeats", 2, "--quiet")
    assert status == 0, stderr
    assert "SMC log-lik per step" in stdout
    import json

    result = json.loads((run / "eval_test_K4_smc.json").read_text())
    for key in ("is_log_likelihood_per_step", "smc_log_likelihood_per_step",
                "smc_stderr_per_step", "smc_resamplings_per_step"):
        assert math.isfinite(result[key]), key
    assert len(result["smc_runs_per_step"]) == 2
