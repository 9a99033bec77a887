"""The NADE emission and RNN-NADE: normalisation, sampling against ``log_prob``, a hand-computed
likelihood, masking and padding, every model x guide pair, checkpoints, particles and sampling."""

import itertools
import math

import pyro
import pytest
import torch
from common import (
    ALL_PAIRS,
    GUIDE_KWARGS,
    MODEL_KWARGS,
    assert_close,
    build_pair,
    pair_id,
    per_sequence_elbo,
    tiny_batch,
)
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from scipy.stats import chisquare

import pyro_seqvae.nade as nade_module
from pyro_seqvae.emissions import EMISSIONS, NADEEmission, make_emission
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides import make_guide
from pyro_seqvae.infer.importance import chunked_log_weights
from pyro_seqvae.layers import shift_right
from pyro_seqvae.models import RNN, make_model
from pyro_seqvae.nade import NADE, nade_logits

pytestmark = pytest.mark.usefixtures("single_thread")

ORDERS = ("low_to_high", "high_to_low", "random")
NADE_KWARGS = {"emission": "nade", "emission_kwargs": {"hidden_dim": 4}}


def all_binary_vectors(D):
    """The ``2^D`` binary vectors, ``[2^D, D]``."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))


def dense_everywhere(monkeypatch):
    """Force the dense (cumulative-sum) path of :func:`nade_logits` whatever the frames."""
    monkeypatch.setattr(nade_module, "_is_dense", lambda segments, D: True)


# ---- the distribution ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["segments", "dense"])
@pytest.mark.parametrize("order", ORDERS)
def test_probabilities_of_all_binary_vectors_sum_to_one(order, path, monkeypatch):
    if path == "dense":
        dense_everywhere(monkeypatch)
    D, H = 6, 5
    g = torch.Generator().manual_seed(1)
    emission = make_emission("nade", D, hidden_dim=H, order=order)
    with torch.no_grad():  # weights large enough that the keys depend strongly on each other
        emission.W.copy_(2 * torch.randn(H, D, generator=g))
        emission.V.copy_(2 * torch.randn(D, H, generator=g))
    features = 2 * torch.randn(3, 4, emission.param_dim, generator=g)  # random b(s_t), c(s_t)
    d = emission(features)
    assert d.batch_shape == (3, 4) and d.event_shape == (D,)
    log_p = d.log_prob(all_binary_vectors(D).reshape(64, 1, 1, D))  # [64, 3, 4]
    assert_close(log_p.exp().sum(0), torch.ones(3, 4), atol=1e-5)
    # and the vectors are not all equally likely: the test would catch a constant log_prob
    assert log_p.exp().max() > 5 / 64


def test_segment_and_dense_passes_agree():
    g = torch.Generator().manual_seed(2)
    D, H = 30, 7
    W, V = torch.randn(H, D, generator=g), torch.randn(D, H, generator=g)
    b, c = torch.randn(2, 5, D, generator=g), torch.randn(2, 5, H, generator=g)
    for p in (0.05, 0.3, 0.9):  # sparse chords, busy frames, almost every key on
        x = (torch.rand(5, D, generator=g) < p).float()
        x[0] = 0.0  # an empty frame
        assert_close(nade_logits(x, b, c, W, V), nade_module._dense_logits(x, b, c, W, V),
                     atol=1e-4)


@pytest.mark.parametrize("order", ORDERS)
def test_sampling_frequencies_match_log_prob(order):
    # 64 outcomes, 40,000 draws at a fixed seed; chi-square over the outcomes with expected count
    # >= 5 (the rest pooled into one cell). Under a correct sampler the p-value is uniform, so
    # the threshold 1e-3 gives a false-alarm rate of 0.1 % per order.
    D, H, N = 6, 5, 40_000
    g = torch.Generator().manual_seed(3)
    emission = make_emission("nade", D, hidden_dim=H, order=order)
    with torch.no_grad():
        emission.W.copy_(1.5 * torch.randn(H, D, generator=g))
        emission.V.copy_(1.5 * torch.randn(D, H, generator=g))
    d = emission(torch.randn(emission.param_dim, generator=g))
    torch.manual_seed(0)
    x = d.sample((N,))
    assert x.shape == (N, D) and set(x.unique().tolist()) <= {0.0, 1.0}
    codes = (x * 2 ** torch.arange(D - 1, -1, -1)).sum(-1).long()
    observed = torch.bincount(codes, minlength=64).double()
    expected = N * d.log_prob(all_binary_vectors(D)).exp().double().detach()
    assert_close(expected.sum(), N, atol=1e-2)
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    assert big.sum() >= 20  # enough cells for the test to have power
    p_value = chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue
    assert p_value > 1e-3, p_value


def test_sampling_keeps_batch_and_sample_shapes():
    emission = make_emission("nade", 5, hidden_dim=3)
    d = emission(torch.randn(4, 7, emission.param_dim))
    assert d.sample().shape == (4, 7, 5)
    assert d.sample((2,)).shape == (2, 4, 7, 5)
    assert d.mask(torch.ones(4, 7, dtype=torch.bool)).to_event(1).sample().shape == (4, 7, 5)
    assert d.support.check(d.sample()).all()
    assert not d.support.check(torch.full((5,), 0.5))


def test_mask_to_event_expand_and_particles():
    K, B, T, D = 3, 4, 6, 8
    emission = make_emission("nade", D, hidden_dim=5)
    params = torch.randn(K, B, T, emission.param_dim)
    x = (torch.rand(B, T, D) < 0.3).float()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    d = emission(params)
    assert d.batch_shape == (K, B, T) and d.event_shape == (D,)
    site = d.mask(mask).to_event(1)
    assert site.batch_shape == (K, B) and site.event_shape == (T, D)
    lp = site.log_prob(x)
    assert lp.shape == (K, B)
    assert_close(lp, (d.log_prob(x) * mask).sum(-1))
    # each particle row equals the distribution built from that row alone
    for k in range(K):
        assert_close(emission(params[k]).log_prob(x), d.log_prob(x)[k])
    # values at masked steps do not matter; zero padding is in the support
    x2 = torch.where(mask.unsqueeze(-1), x, torch.ones_like(x))
    assert_close(site.log_prob(x2), lp)
    assert torch.isfinite(site.log_prob(torch.zeros(B, T, D))).all()
    assert site.expand((2, K, B)).log_prob(x).shape == (2, K, B)
    assert d.expand((5, K, B, T)).log_prob(x).shape == (5, K, B, T)


def test_large_batches_are_scored_in_chunks_with_the_same_values(monkeypatch):
    emission = make_emission("nade", 12, hidden_dim=6)
    params = torch.randn(5, 3, 7, emission.param_dim)
    x = (torch.rand(3, 7, 12) < 0.3).float()
    whole = emission(params).log_prob(x)
    monkeypatch.setattr(nade_module, "MAX_CHUNK_ELEMENTS", 100)  # a few rows per chunk
    assert_close(emission(params).log_prob(x), whole, atol=1e-5)


def test_nade_validates_its_arguments():
    with pytest.raises(ValueError, match="expected W"):
        NADE(torch.zeros(4), torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="NADE order"):
        make_emission("nade", 4, order="sideways")
    with pytest.raises(ConfigError, match="NADE hidden_dim"):
        make_emission("nade", 4, hidden_dim=0)
    assert EMISSIONS["nade"] is NADEEmission
    assert make_emission("nade", 4, hidden_dim=3).param_dim == 7


# ---- RNN-NADE against a hand computation --------------------------------------------------------
def _hand_gru(x, gru):
    """``h_t`` of a one-layer GRU over ``u_t = x_{t-1}`` (PyTorch's equations), one sequence."""
    W_ir, W_iz, W_in = gru.weight_ih_l0.chunk(3)
    W_hr, W_hz, W_hn = gru.weight_hh_l0.chunk(3)
    b_ir, b_iz, b_in = gru.bias_ih_l0.chunk(3)
    b_hr, b_hz, b_hn = gru.bias_hh_l0.chunk(3)
    h = torch.zeros(gru.hidden_size)
    u = torch.zeros(x.shape[-1])
    out = []
    for t in range(x.shape[0]):
        r = torch.sigmoid(W_ir @ u + b_ir + W_hr @ h + b_hr)
        z = torch.sigmoid(W_iz @ u + b_iz + W_hz @ h + b_hz)
        n = torch.tanh(W_in @ u + b_in + r * (W_hn @ h + b_hn))
        h = (1 - z) * n + z * h
        out.append(h)
        u = x[t]
    return out


def test_rnn_nade_log_likelihood_equals_a_hand_computation():
    D, H, T = 4, 2, 3
    torch.manual_seed(4)
    model = RNN(x_dim=D, rnn_dim=3, hidden_dim=5, activation="relu", clip=None,
                emission="nade", emission_kwargs={"hidden_dim": H})
    with torch.no_grad():
        model.emission.W.copy_(torch.randn(H, D))
        model.emission.V.copy_(torch.randn(D, H))
    x = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]])
    mask = torch.ones(1, T, dtype=torch.bool)
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2
    W, V = model.emission.W, model.emission.V
    expected = 0.0
    with torch.no_grad():
        for t, h_t in enumerate(_hand_gru(x[0], model.rnn.rnn)):
            s = linears[1](torch.relu(linears[0](h_t)))  # the decoder: [b (D), c (H)]
            b, c = s[:D], s[D:]
            for k in range(D):  # NADE, key by key, with explicit sums over earlier keys
                a = c.clone()
                for j in range(k):
                    a = a + W[:, j] * x[0, t, j]
                p_on = torch.sigmoid(b[k] + (V[k] * torch.sigmoid(a)).sum())
                expected += math.log(p_on if x[0, t, k] == 1 else 1 - p_on)
        assert_close(model.log_likelihood(x, mask), torch.tensor([expected]), atol=1e-5)
        # and the Pyro model's single site scores the same value
        trace = pyro.poutine.trace(model).get_trace(x, mask)
        trace.compute_log_prob()
        assert_close(trace.nodes["x"]["log_prob"], torch.tensor([expected]), atol=1e-5)


# ---- padding, masking and training of every pair ------------------------------------------------
def test_rnn_nade_padding_does_not_change_the_loss():
    model = make_model("rnn", x_dim=88, **MODEL_KWARGS["rnn"], **NADE_KWARGS)
    x, mask = tiny_batch(4, 6, (6, 3, 5, 1), seed=5)
    with torch.no_grad():
        batch = model.log_likelihood(x, mask)
        singles = torch.cat([model.log_likelihood(x[b:b + 1, :L], mask[b:b + 1, :L])
                             for b, L in enumerate(mask.sum(-1).tolist())])
        assert_close(batch, singles, atol=1e-4)
        mask_long = torch.cat([mask, mask.new_zeros(4, 3)], dim=1)
        x_long = torch.cat([x, x.new_zeros(4, 3, 88)], dim=1)
        x_long = torch.where(mask_long.unsqueeze(-1), x_long, torch.ones_like(x_long))
        assert_close(model.log_likelihood(x_long, mask_long), batch, atol=1e-4)
        loss = Trace_ELBO().loss(model, make_guide("none", model), x_long, mask_long)
        assert loss == pytest.approx(-batch.sum().item(), abs=1e-3)


@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if p[0] in ("srnn", "vrnn")],
                         ids=pair_id)
def test_latent_model_with_nade_padding_does_not_change_the_elbo(pair):
    model, guide = build_pair(*pair, model_kwargs=NADE_KWARGS)
    x, mask = tiny_batch(4, 6, (6, 3, 5, 1), seed=6)
    with torch.no_grad():
        guide_trace = pyro.poutine.trace(guide).get_trace(x, mask)
        z = {n: s["value"] for n, s in guide_trace.nodes.items() if n.startswith("z_")}
        batch = per_sequence_elbo(model, guide, x, mask, data=z)
        singles = torch.cat([
            per_sequence_elbo(model, guide, x[b:b + 1, :L], mask[b:b + 1, :L],
                              data={f"z_{t + 1}": z[f"z_{t + 1}"][b:b + 1] for t in range(L)})
            for b, L in enumerate(mask.sum(-1).tolist())])
        assert_close(singles, batch, atol=1e-4)
        mask_long = torch.cat([mask, mask.new_zeros(4, 3)], dim=1)
        x_long = torch.cat([x, x.new_ones(4, 3, 88)], dim=1)
        x_long = torch.where(mask_long.unsqueeze(-1), x_long, torch.ones_like(x_long))
        assert_close(per_sequence_elbo(model, guide, x_long, mask_long, data=z), batch,
                     atol=1e-4)


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=pair_id)
def test_every_pair_trains_with_the_nade_emission(pair):
    model, guide = build_pair(*pair, model_kwargs=NADE_KWARGS)
    assert model.config()["emission"] == "nade"
    assert model.config()["emission_kwargs"] == {"hidden_dim": 4}
    x, mask = tiny_batch(3, 5, (5, 2, 4), seed=7)
    W, V = model.emission.W, model.emission.V
    W0, V0 = W.detach().clone(), V.detach().clone()
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss_and_grads(model, guide, x, mask)
    assert math.isfinite(loss)
    for p in (W, V):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    W.grad, V.grad = None, None
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), elbo)
    assert math.isfinite(svi.step(x, mask))
    assert not torch.equal(W.detach(), W0) and not torch.equal(V.detach(), V0)
    name = type(model).__name__
    assert {f"{name}.emission.W", f"{name}.emission.V"} <= set(pyro.get_param_store().keys())


# ---- checkpoints, importance sampling and sampling ----------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
def test_config_and_state_dict_rebuild_the_emission(order):
    kwargs = {"emission": "nade", "emission_kwargs": {"hidden_dim": 4, "order": order}}
    model = make_model("srnn", x_dim=88, **MODEL_KWARGS["srnn"], **kwargs)
    config = model.config()
    assert config["emission_kwargs"] == ({"hidden_dim": 4} if order == "low_to_high"
                                         else {"hidden_dim": 4, "order": order})
    state = model.state_dict()
    assert {"emission.W", "emission.V"} <= set(state)
    pyro.clear_param_store()
    torch.manual_seed(123)  # other initial weights
    rebuilt = make_model("srnn", **config)
    rebuilt.load_state_dict(state)
    x = (torch.rand(2, 4, 88) < 0.1).float()
    params = torch.randn(2, 4, 88 + 4)
    assert_close(rebuilt.emission(params).log_prob(x), model.emission(params).log_prob(x))


def test_checkpoint_round_trip_keeps_the_nade_weights(tmp_path):
    from pyro_seqvae.training import TrainConfig, load_checkpoint
    from pyro_seqvae.training.checkpoint import restore_modules, save_checkpoint

    config = TrainConfig(data="unused", model="rnn", guide="none", emission="nade",
                         emission_kwargs={"hidden_dim": 3}, model_kwargs=MODEL_KWARGS["rnn"])
    model, guide = config.build(88)
    with torch.no_grad():
        model.emission.W.add_(1.0)  # weights no fresh build would have
        model.emission.V.mul_(-2.0)
    path = save_checkpoint(tmp_path / "checkpoint.pt", model=model, guide=guide, optim=None,
                           config=config, epoch=1, step=1, best_valid=-1.0)
    payload = load_checkpoint(path)
    pyro.clear_param_store()
    rebuilt, rebuilt_guide = config.build(88, model_config=payload["model_config"],
                                          guide_config=payload["guide_config"])
    assert rebuilt.emission.hidden_dim == 3
    restore_modules(payload, rebuilt, rebuilt_guide)
    assert torch.equal(rebuilt.emission.W, model.emission.W)
    assert torch.equal(rebuilt.emission.V, model.emission.V)
    x, mask = tiny_batch(2, 5, seed=8)
    assert_close(rebuilt.log_likelihood(x, mask), model.log_likelihood(x, mask))


def test_importance_weights_with_nade():
    model, guide = build_pair("srnn", "smooth", True, model_kwargs=NADE_KWARGS)
    x, mask = tiny_batch(3, 5, (5, 2, 4), seed=9)
    log_w = chunked_log_weights(model, guide, x, mask, 7, max_rows=20)  # several chunks
    assert log_w.shape == (7, 3) and torch.isfinite(log_w).all()
    rnn, empty = build_pair("rnn", "none", model_kwargs=NADE_KWARGS)
    exact = chunked_log_weights(rnn, empty, x, mask, 4)
    assert_close(exact, rnn.log_likelihood(x, mask).detach().expand(4, 3), atol=1e-4)


@pytest.mark.parametrize("model_name", ["rnn", "srnn", "vrnn", "dmm"])
def test_sampling_with_a_prefix(model_name):
    model = make_model(model_name, x_dim=88, **MODEL_KWARGS[model_name], **NADE_KWARGS)
    prefix = (torch.rand(3, 88) < 0.1).float()
    guide = None
    if model.has_latents:
        guide = make_guide("smooth", model, **GUIDE_KWARGS["smooth"])
    out = model.sample(2, 7, prefix=prefix, guide=guide)
    assert out.shape == (2, 7, 88)
    assert torch.equal(out[:, :3], prefix.expand(2, 3, 88))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_rnn_nade_predictive_is_the_emission_of_the_decoder():
    model = make_model("rnn", x_dim=88, **MODEL_KWARGS["rnn"], **NADE_KWARGS)
    x, _ = tiny_batch(2, 4, seed=10)
    d = model.predictive(x)
    assert isinstance(d, NADE) and d.batch_shape == (2, 4) and d.event_shape == (88,)
    features = model.decoder(model.rnn(shift_right(x)))
    assert_close(d.b, features[..., :88]) and assert_close(d.c, features[..., 88:])


@pytest.mark.parametrize("model_name,guide_name", [("rnn", "none"), ("srnn", "smooth")])
def test_jit_elbo_scores_batches_with_more_notes_than_the_first(model_name, guide_name):
    # the compiled trace of the first batch (at most 2 keys on per frame) must score a later
    # batch with busier frames exactly as the eager ELBO does
    from pyro_seqvae.infer.elbo import make_elbo

    model, guide = build_pair(model_name, guide_name, model_kwargs=NADE_KWARGS)
    x1, mask = tiny_batch(2, 4, seed=11, p=0.01)
    x2, _ = tiny_batch(2, 4, seed=12, p=0.2)
    assert x2.sum(-1).max() > x1.sum(-1).max()
    jit, eager = make_elbo("jit"), make_elbo("trace")
    beta = torch.tensor(1.0)
    for x in (x1, x2):  # loss_and_grads runs the compiled trace (JitTrace_ELBO.loss does not)
        got = jit.loss_and_grads(model, guide, x, mask, beta)
        assert math.isfinite(got)
        if not model.has_latents:  # no sampling: the two must agree exactly
            assert got == pytest.approx(eager.loss(model, guide, x, mask, beta), abs=1e-2)
