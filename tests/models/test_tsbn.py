"""TSBN: binary latents, score-function gradients checked against exact enumeration, baselines,
importance sampling against the exact likelihood, sampling and the deep (layered) variant."""

import itertools
import math

import pyro
import pytest
import torch
from common import assert_close, per_sequence_elbo, sample_site_values, tiny_batch, trace_pair
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.errors import ConfigError, IncompatibleGuideError
from pyro_seqvae.guides import FilteringGuide, SmoothingGuide, make_guide
from pyro_seqvae.infer import DownstreamCostELBO
from pyro_seqvae.infer.importance import log_importance_weights
from pyro_seqvae.models import SRNN, TSBN
from pyro_seqvae.models.tsbn import LayeredBernoulli
from pyro_seqvae.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

H, D, T, B = 3, 4, 3, 2


def _tiny(layers=1, guide_cls=FilteringGuide, **guide_kwargs):
    """A TSBN with H=3, D=4 and weights large enough for a posterior far from the prior."""
    model = TSBN(x_dim=D, z_dim=H * layers, layers=layers)
    guide = guide_cls(model, hidden_layers=0, **guide_kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(model.parameters()) + list(guide.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.tensor([[[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1]],
                      [[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 1]]], dtype=torch.float)
    mask = torch.ones(B, T, dtype=torch.bool)
    return model, guide, x, mask


def _all_configurations(width):
    """Every binary latent path ``[2^(T*width), T, width]``."""
    values = torch.tensor(list(itertools.product([0.0, 1.0], repeat=T * width)))
    return values.reshape(-1, T, width)


def _enumerated_log_probs(model, guide, x, mask):
    """``log p(x, z)`` and ``log q(z | x)`` for every latent path, ``[N, B]`` each."""
    z = _all_configurations(model.z_dim)
    N = z.shape[0]
    data = {f"z_{t + 1}": z[:, t].unsqueeze(1).expand(N, B, model.z_dim) for t in range(T)}

    def particles(fn):
        def wrapped(*args):
            with pyro.plate("particles", N, dim=-2):
                return fn(*args)
        return wrapped

    guide_trace = poutine.trace(poutine.condition(particles(guide), data=data)).get_trace(x, mask)
    model_trace = poutine.trace(poutine.condition(particles(model), data=data)).get_trace(x, mask)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_q = sum(guide_trace.nodes[n]["log_prob"] for n in data)
    log_p = sum(model_trace.nodes[n]["log_prob"] for n in list(data) + ["x"])
    return log_p, log_q


def _params(model, guide):
    """The ELBO's parameters (a neural baseline's own are trained on another loss)."""
    return list(model.parameters()) + [p for n, p in guide.named_parameters()
                                       if not n.startswith("baseline_net")]


def _exact_elbo_gradient(model, guide, x, mask):
    log_p, log_q = _enumerated_log_probs(model, guide, x, mask)
    # q is normalised over the 512 paths of each sequence: an exact check of the enumeration
    assert_close(log_q.exp().sum(0), torch.ones(B), atol=1e-5)
    elbo = (log_q.exp() * (log_p - log_q)).sum()
    return elbo, torch.autograd.grad(elbo, _params(model, guide))


def _estimates(model, guide, x, mask, elbo, repeats):
    """``repeats`` independent gradient estimates of the ELBO (not the loss), flattened."""
    out = []
    for _ in range(repeats):
        for p in _params(model, guide):
            p.grad = None
        elbo.loss_and_grads(model, guide, x, mask)
        out.append(torch.cat([-p.grad.reshape(-1) for p in _params(model, guide)]))
    return torch.stack(out)


def _max_z_score(estimates, exact):
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(estimates.shape[0])
    return float(((mean - exact) / stderr.clamp(min=1e-8)).abs().max())


# Each estimate averages 400 vectorised particles; 25 estimates give a mean and its standard
# error per gradient element (92 elements). Tolerance: 4.5 standard errors per element; the
# ratio is t-distributed with 24 degrees of freedom (two-sided p about 1.4e-4), so the
# false-alarm rate over 92 elements is about 1e-2 (fixed seed: the test is deterministic).
# Measured at this seed: max z-scores 2.8 (trace), 2.6 (decaying), 3.3 (neural).
PARTICLES, REPEATS, Z_TOL = 400, 25, 4.5


@pytest.mark.parametrize("estimator", ["trace", "downstream", "downstream-decaying",
                                       "downstream-neural", "downstream-kl",
                                       "downstream-kl-decaying"])
def test_score_function_gradient_matches_the_enumerated_elbo_gradient(estimator):
    parts = estimator.split("-")
    analytic = "kl" in parts  # DownstreamCostELBO(analytic_kl=True)
    baseline = ([p for p in parts[1:] if p != "kl"] or ["none"])[0]
    model, guide, x, mask = _tiny(baseline=baseline)
    assert sum(p.numel() for p in _params(model, guide)) >= 50
    exact_elbo, exact = _exact_elbo_gradient(model, guide, x, mask)
    exact = torch.cat([g.reshape(-1) for g in exact])
    common = dict(num_particles=PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    elbo = Trace_ELBO(**common) if estimator == "trace" else \
        DownstreamCostELBO(analytic_kl=analytic, **common)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):  # Pyro's checks would triple the time of 25 x 400 draws
        estimates = _estimates(model, guide, x, mask, elbo, REPEATS)
    assert _max_z_score(estimates, exact) < Z_TOL
    # the average is close in norm too, not merely noisy
    assert float((estimates.mean(0) - exact).norm() / exact.norm()) < 0.1
    # and the ELBO value itself
    assert_close(-elbo.loss(model, guide, x, mask), exact_elbo, atol=0.5)


def test_nvil_signal_is_unbiased_up_to_its_scale():
    """NVIL's normalised learning signal (:mod:`pyro_seqvae.guides.nvil`: centred by running
    means per steps left and by the neural baseline, divided by ``max(1, sqrt(v))``), with its
    statistics frozen at ``v = 9`` and arbitrary means: the model's expected gradient is the
    enumerated ELBO gradient and the guide's is that gradient divided by 3, by the same
    criterion as above."""
    model, guide, x, mask = _tiny(baseline="nvil")
    normaliser = guide.signal_normaliser
    with torch.no_grad():
        normaliser.mean[:T] = torch.tensor([-2.0, 5.0, 1.0])
        normaliser.seen[:T] = True
        normaliser.var.fill_(9.0)
        normaliser.var_seen.fill_(True)
    normaliser.eval()  # frozen: eval mode does not update the statistics
    _, exact = _exact_elbo_gradient(model, guide, x, mask)
    exact = torch.cat([g.reshape(-1) for g in exact])
    elbo = DownstreamCostELBO(num_particles=PARTICLES, vectorize_particles=True,
                              max_plate_nesting=1)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):
        estimates = _estimates(model, guide, x, mask, elbo, REPEATS)
    n_model = sum(p.numel() for p in model.parameters())
    assert float(estimates[:, n_model:].abs().max()) > 0.1  # the guide's part is not empty
    estimates[:, n_model:] *= 3.0
    assert _max_z_score(estimates, exact) < Z_TOL
    assert float((estimates.mean(0) - exact).norm() / exact.norm()) < 0.1
    assert torch.equal(normaliser.var, torch.tensor(9.0))


@pytest.mark.parametrize("baseline", ["none", "decaying", "neural"])
def test_downstream_cost_elbo_gives_trace_graph_elbos_gradients(baseline):
    """Same seed, same samples: the linear-time estimator equals Pyro's provenance-tracking
    TraceGraph_ELBO, baselines (and their running state over two updates) and padding included,
    when it too counts the whole observation site as downstream of every latent."""
    grads = []
    common = dict(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    for elbo in (TraceGraph_ELBO(**common),
                 DownstreamCostELBO(per_step_observations=False, **common)):
        pyro.clear_param_store()
        model, guide, x, mask = _tiny(baseline=baseline)
        mask[1, 2] = False
        params = list(model.parameters()) + list(guide.parameters())
        pyro.set_rng_seed(3)
        for _ in range(2):
            for p in params:
                p.grad = None
            loss = elbo.loss_and_grads(model, guide, x, mask)
        grads.append((loss, torch.cat([p.grad.reshape(-1) for p in params])))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert_close(loss_b, loss_a, atol=1e-4)
    assert_close(grad_b, grad_a, atol=1e-4 * float(grad_a.abs().max()))
    assert float(grad_a.abs().max()) > 1.0


def test_the_check_rejects_the_gradient_without_its_score_function_term():
    """The same criterion fails a biased estimator: the pathwise part alone, which treats the
    sampled latents as constants (what a reparameterised-only ELBO would compute)."""
    model, guide, x, mask = _tiny()
    _, exact = _exact_elbo_gradient(model, guide, x, mask)
    exact = torch.cat([g.reshape(-1) for g in exact])
    pyro.set_rng_seed(0)
    out = []
    for _ in range(REPEATS):
        log_p, log_q = _pathwise_log_weights(model, guide, x, mask, PARTICLES)
        grads = torch.autograd.grad((log_p - log_q).mean(0).sum(), _params(model, guide))
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    assert _max_z_score(torch.stack(out), exact) > 4 * Z_TOL


def _pathwise_log_weights(model, guide, x, mask, K):
    def particles(fn):
        def wrapped(*args):
            with pyro.plate("particles", K, dim=-2):
                return fn(*args)
        return wrapped
    guide_trace = poutine.trace(particles(guide)).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(
        x, mask)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    names = [f"z_{t + 1}" for t in range(T)]
    log_q = sum(guide_trace.nodes[n]["log_prob"] for n in names)
    log_p = sum(model_trace.nodes[n]["log_prob"] for n in names + ["x"])
    return log_p, log_q


def test_importance_sampling_lies_between_the_elbo_and_the_exact_likelihood():
    model, guide, x, mask = _tiny()
    with torch.no_grad():
        for p in guide.parameters():  # q uniform over the 512 paths: it covers the posterior,
            p.zero_()                 # so the importance weights have a finite, small variance
        log_p, log_q = _enumerated_log_probs(model, guide, x, mask)
        exact_log_px = torch.logsumexp(log_p, 0)                 # [B], by enumeration
        exact_elbo = (log_q.exp() * (log_p - log_q)).sum(0)      # [B]
        assert (exact_elbo < exact_log_px - 1.0).all()           # a real gap to close
        # the relative variance of the weights, sum_z p(z|x)^2 / q(z) - 1, bounds the error of IS
        posterior = (log_p - exact_log_px).exp()
        relative_variance = (posterior ** 2 / log_q.exp()).sum(0) - 1
        pyro.set_rng_seed(0)
        N = 40000
        log_w = log_importance_weights(model, guide, x, mask, N)   # [N, B]

        def importance_estimate(K):  # the mean of N / K independent K-particle estimates
            groups = log_w.reshape(-1, K, B)
            return (torch.logsumexp(groups, 1) - math.log(K)).mean(0)

        # K=1 is the ELBO: standard error of 40000 draws below 0.02 nats here
        assert_close(importance_estimate(1), exact_elbo, atol=0.1)
        # IS rises with K towards log p(x) and, on average, stays below it (Jensen)
        assert (importance_estimate(10) > exact_elbo + 0.3).all()
        assert (importance_estimate(10) < exact_log_px).all()
        assert (importance_estimate(1000) > importance_estimate(10)).all()
        # with all N particles: bias about relative_variance / 2N, standard deviation about
        # sqrt(relative_variance / N); the tolerance is 4 of those plus the bias
        tolerance = 4 * (relative_variance / N).sqrt() + relative_variance / (2 * N)
        assert (relative_variance < 200).all()  # the tolerance below stays under 0.3 nats
        error = (importance_estimate(N) - exact_log_px).abs()
        assert (error < tolerance).all(), (error, tolerance)


def svi_losses(svi, x, mask, updates=20):
    """The losses of ``updates`` SVI steps, Pyro's checks on the first only (as the Trainer)."""
    losses = [svi.step(x, mask)]
    with pyro.validation_enabled(False):
        losses += [svi.step(x, mask) for _ in range(updates - 1)]
    return torch.tensor(losses)


def test_loss_falls_with_the_neural_baseline_and_every_parameter_trains():
    model = TSBN(x_dim=88, z_dim=4)
    guide = FilteringGuide(model, hidden_layers=0, baseline="neural")
    x, mask = tiny_batch(4, 8, (8, 5, 3, 7), seed=1)
    before = {n: p.detach().clone() for n, p in guide.named_parameters()}
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}),
              DownstreamCostELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1))
    losses = svi_losses(svi, x, mask)
    assert torch.isfinite(losses).all()
    assert losses[-4:].mean() < losses[:4].mean() - 50.0
    assert not [n for n, p in guide.named_parameters() if torch.equal(p.detach(), before[n])]
    assert any(n.startswith("baseline_net") for n in before)


def test_decaying_average_survives_a_change_of_batch_size():
    model = TSBN(x_dim=88, z_dim=4)
    guide = FilteringGuide(model, baseline="decaying", hidden_dim=5, summary_dim=5)
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), DownstreamCostELBO(max_plate_nesting=1))
    for B_ in (4, 3, 4):
        x, mask = tiny_batch(B_, 6, seed=B_)
        assert math.isfinite(svi.step(x, mask))
    average = pyro.get_param_store()["__baseline_avg_downstream_cost_z_1"]
    assert average.shape == (4,) and (average != 0).all()


@pytest.mark.parametrize("layers", [1, 2])
def test_sampling_returns_binary_rolls(layers):
    model = TSBN(x_dim=88, z_dim=6, layers=layers)
    rolls = model.sample(3, 12)
    assert rolls.shape == (3, 12, 88)
    assert ((rolls == 0) | (rolls == 1)).all() and rolls.sum() > 0
    x, _ = tiny_batch(3, 4, seed=2)
    guide = SmoothingGuide(model, hidden_dim=5, summary_dim=5)
    continued = model.sample(3, 10, prefix=x, guide=guide)
    assert torch.equal(continued[:, :4], x)
    assert ((continued == 0) | (continued == 1)).all()


def test_deep_tsbn_layer_distribution_is_normalised_and_samples_match_it():
    torch.manual_seed(0)
    Hl = 2
    top_down = torch.nn.ModuleList([torch.nn.Linear(Hl, Hl, bias=False)])
    with torch.no_grad():
        top_down[0].weight.mul_(4)
    logits = torch.randn(Hl * 2)
    d = LayeredBernoulli(logits, top_down, Hl)
    values = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2 * Hl)))
    with torch.no_grad():
        probs = d.log_prob(values).exp()
        assert_close(probs.sum(), 1.0, atol=1e-6)
        # the bottom layer's marginal differs from what the bottom logits alone would give
        marginal = (probs.unsqueeze(-1) * values).sum(0)
        samples = d.sample((20000,))
    # 20,000 draws: standard error of a frequency below 0.0036; tolerance 0.02 (5.5 sigma)
    assert_close(samples.mean(0), marginal, atol=0.02)
    assert (marginal[:Hl] - torch.sigmoid(logits[:Hl])).abs().max() > 0.05
    expanded = d.expand(torch.Size([5]))
    assert expanded.batch_shape == (5,) and expanded.sample().shape == (5, 2 * Hl)


@pytest.mark.parametrize("guide_cls", [FilteringGuide, SmoothingGuide])
def test_deep_tsbn_padding_invariance_and_particles(guide_cls):
    model = TSBN(x_dim=88, z_dim=6, layers=2)
    guide = guide_cls(model, hidden_dim=5, summary_dim=5)
    x, mask = tiny_batch(3, 6, (6, 2, 4), seed=3)
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(model, guide, x, mask)
        z = sample_site_values(guide_trace)
        batch = per_sequence_elbo(model, guide, x, mask, data=z)
        for b, L in enumerate(mask.sum(-1).tolist()):
            data = {f"z_{t + 1}": z[f"z_{t + 1}"][b : b + 1] for t in range(L)}
            single = per_sequence_elbo(model, guide, x[b : b + 1, :L], mask[b : b + 1, :L],
                                       data=data)
            assert_close(single, batch[b : b + 1], atol=1e-4)
    loss = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss(
        model, guide, x, mask)
    assert math.isfinite(loss)


def test_tsbn_configuration_errors():
    with pytest.raises(ConfigError, match="z_dim must be a multiple of layers=2"):
        TSBN(z_dim=5, layers=2)
    with pytest.raises(IncompatibleGuideError, match="FilteringGuide.*SRNN.*reparameterised"):
        FilteringGuide(SRNN(x_dim=88, z_dim=3, rnn_dim=5, hidden_dim=7), baseline="neural")
    with pytest.raises(ConfigError, match="baseline must be one of"):
        make_guide("filter", TSBN(z_dim=3), baseline="average")
    with pytest.raises(ConfigError, match="elbo='meanfield' needs reparameterised latents"):
        TrainConfig(model="tsbn", guide="filter", elbo="meanfield").build(88)
    with pytest.raises(ConfigError, match="baseline='neural' needs elbo"):
        TrainConfig(model="tsbn", baseline="neural", elbo="iwae")
    config = TrainConfig(model="tsbn", guide="filter", baseline="neural",
                         model_kwargs={"z_dim": 4, "layers": 2},
                         guide_kwargs={"hidden_layers": 0})
    assert config.elbo == "downstream"  # Trace_ELBO would ignore the baseline
    model, guide = config.build(88)
    assert guide.config()["baseline"] == "neural" and guide.config()["hidden_layers"] == 0
    rebuilt, rebuilt_guide = config.build(88, model_config=model.config(),
                                          guide_config=guide.config())
    rebuilt.load_state_dict(model.state_dict())
    rebuilt_guide.load_state_dict(guide.state_dict())
    assert rebuilt.layers == 2 and rebuilt_guide.baseline == "neural"
    with pytest.raises(ConfigError, match="baseline='nvil' needs elbo 'trace' or 'downstream'"):
        TrainConfig(model="tsbn", baseline="nvil", elbo="tracegraph")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"discount must be in \(0, 1\]"):
            TrainConfig(model="tsbn", discount=bad)
    with pytest.raises(ConfigError, match="discount=0.9 needs elbo 'downstream'"):
        TrainConfig(model="tsbn", baseline="decaying", elbo="tracegraph", discount=0.9)
    assert TrainConfig(model="tsbn", discount=0.9).elbo == "downstream"
    assert TrainConfig(model="tsbn", baseline="nvil").elbo == "downstream"


def test_linear_filtering_guide_is_the_papers_recognition_model():
    """``q(z_t | .) = Bernoulli(sigmoid(U1 z_{t-1} + U2 x_t + U3 x_{t-1} + d))``, by hand."""
    model, guide, x, mask = _tiny()
    assert guide.summary_net is None
    (linear,) = [m for m in guide.head.modules() if isinstance(m, torch.nn.Linear)]
    U3, U2, U1 = linear.weight.split([D, D, H], dim=1)  # input order [x_{t-1}, x_t, z_{t-1}]
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(x, mask)
        z_prev = torch.zeros(B, H)
        x_prev = torch.zeros(B, D)
        for t in range(T):
            logits = z_prev @ U1.T + x[:, t] @ U2.T + x_prev @ U3.T + linear.bias
            site = trace.nodes[f"z_{t + 1}"]
            expected = torch.distributions.Bernoulli(logits=logits).log_prob(site["value"]).sum(-1)
            assert_close(site["fn"].log_prob(site["value"]), expected, atol=1e-5)
            z_prev, x_prev = site["value"], x[:, t]


def test_command_line_trains_evaluates_and_samples_a_deep_tsbn(tmp_path):
    import json

    from test_cli import run_cli, write_benchmark_pickle

    from pyro_seqvae.training import LAST, load_checkpoint

    data = write_benchmark_pickle(tmp_path / "tiny.pickle")
    run = tmp_path / "tsbn"
    status, stdout, stderr = run_cli("train", "--data", data, "--model", "tsbn", "--z-dim", 4,
                                     "--layers", 2, "--baseline", "neural", "--batch-size", 4,
                                     "--epochs", 1, "--quiet", "--out", run)
    assert status == 0, stderr
    assert "trained TSBN + FilteringGuide for 1 epochs" in stdout
    payload = load_checkpoint(run / LAST)
    assert payload["config"]["elbo"] == "downstream" and payload["config"]["baseline"] == "neural"
    assert payload["model_config"]["layers"] == 2 and payload["model_config"]["z_dim"] == 4
    assert payload["guide_config"]["hidden_layers"] == 0  # the paper's recognition model
    status, _, stderr = run_cli("evaluate", run, "--particles", 4, "--quiet")
    assert status == 0, stderr
    assert math.isfinite(json.loads((run / "eval_test_K4.json").read_text())[
        "is_log_likelihood_per_step"])
    status, _, stderr = run_cli("sample", run, "--steps", 6, "--num", 2, "--quiet",
                                "--out", tmp_path / "samples")
    assert status == 0, stderr
    rolls = torch.load(tmp_path / "samples" / "samples.pt")
    assert rolls.shape == (2, 6, 88)
    assert ((rolls == 0) | (rolls == 1)).all()
    status, _, stderr = run_cli("train", "--data", data, "--model", "srnn", "--layers", 2,
                                "--epochs", 1, "--quiet", "--out", tmp_path / "srnn")
    assert status == 1 and "--layers applies to tsbn only" in stderr


@pytest.mark.parametrize("baseline", ["decaying", "nvil"])
def test_resume_continues_the_baselines_state_exactly(tmp_path, baseline):
    """A run of 1 epoch resumed to 2 ends with the weights of an uninterrupted 2-epoch run:
    the checkpoint holds Pyro's decaying averages (param store) and NVIL's running statistics
    (guide buffers). Without them the resumed run restarts its baseline from zero."""
    from pyro_seqvae.data import Splits
    from pyro_seqvae.training import LAST, Trainer, load_checkpoint

    g = torch.Generator().manual_seed(0)
    splits = Splits.from_lists(
        {name: [(torch.rand(T, 88, generator=g) < 0.1).float() for T in lens]
         for name, lens in {"train": [5, 7, 9, 6], "valid": [5], "test": [6]}.items()},
        source="synthetic")

    def run(epochs, out, resume=None):
        pyro.clear_param_store()
        config = TrainConfig(data="synthetic", model="tsbn", model_kwargs={"z_dim": 4},
                             baseline=baseline, epochs=epochs, batch_size=2, beta_start=1.0,
                             seed=0, lr=1e-2)
        pyro.set_rng_seed(config.seed)
        model, guide = config.build(88)
        trainer = Trainer(model, guide, config, out_dir=out, progress=False)
        trainer.fit(splits, resume=resume)
        state = {**{f"m.{k}": v.clone() for k, v in model.state_dict().items()},
                 **{f"g.{k}": v.clone() for k, v in guide.state_dict().items()}}
        store = pyro.get_param_store()
        averages = {k: store[k].detach().clone() for k in store.keys() if "baseline_avg" in k}
        return state, averages

    full, full_averages = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    saved = load_checkpoint(tmp_path / "b" / LAST)["extra"].get("baseline_averages", {})
    assert bool(saved) == (baseline == "decaying")
    resumed, resumed_averages = run(2, tmp_path / "b", resume=tmp_path / "b" / LAST)
    assert resumed.keys() == full.keys()
    for key in full:
        assert_close(resumed[key], full[key], atol=1e-6)
    assert resumed_averages.keys() == full_averages.keys()
    assert len(full_averages) == (9 if baseline == "decaying" else 0)  # z_1 .. z_9
    for key in full_averages:
        assert_close(resumed_averages[key], full_averages[key], atol=1e-6)


@pytest.mark.parametrize("discount", [1.0, 0.5])
def test_analytic_kl_and_discounted_signal_by_hand(discount):
    """``DownstreamCostELBO(analytic_kl=True, discount=d)`` on the same samples equals the
    surrogate written out: ``sum_t [log p(x_t | .) - KL_t] + sum_t log q(z_t | .) * sum_{s >= t}
    d^(s-t) [log p(x_s | .) - KL_s 1(s > t)]``, for every parameter (padding included)."""
    from pyro.distributions.kl import kl_divergence

    model, guide, x, mask = _tiny()
    mask[1, 2] = False
    params = list(model.parameters()) + list(guide.parameters())
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, mask)
    guide_trace.compute_score_parts()
    names = [f"z_{t + 1}" for t in range(T)]
    obs_site = model_trace.nodes["x"]
    obs = obs_site["fn"].base_dist.log_prob(x)                                  # [B, T]
    kl = torch.stack([kl_divergence(guide_trace.nodes[n]["fn"], model_trace.nodes[n]["fn"])
                      for n in names], -1)                                       # [B, T]
    score = torch.stack([guide_trace.nodes[n]["score_parts"].score_function for n in names], -1)
    surrogate = (obs - kl).sum()
    for t in range(T):
        cost = sum(discount ** (s - t) * (obs[:, s] - (kl[:, s] if s > t else 0.0))
                   for s in range(t, T))
        surrogate = surrogate + (score[:, t] * cost.detach()).sum()
    expected = torch.autograd.grad(-surrogate, params, allow_unused=True)

    pyro.set_rng_seed(5)
    elbo = DownstreamCostELBO(analytic_kl=True, discount=discount)
    for p in params:
        p.grad = None
    loss = elbo.loss_and_grads(model, guide, x, mask)
    assert loss == pytest.approx(-float((obs - kl).sum().detach()), abs=1e-4)
    for p, g in zip(params, expected):
        assert_close(p.grad, torch.zeros_like(p) if g is None else g, atol=1e-5)
    assert float(torch.cat([p.grad.reshape(-1) for p in params]).abs().max()) > 0.5
