"""DirectELBO (pyro_seqvae.infer.direct_elbo) against Pyro's Trace_ELBO and TraceMeanField_ELBO.

Exact checks: with the same random numbers, the direct ELBO's loss and the gradient of every
parameter of the model and the guide equal Pyro's, in float64 (the gradients to 1e-10 of their
largest entry: the direct path sums the same terms in another order), for every Gaussian-latent
model/guide pair of the registries, with KL annealing (beta), padding, particles and the
variants whose networks the direct path factors differently (LSTM, two hidden layers, NADE).
"""

import pyro
import pytest
import torch
from common import LATENT_PAIRS, build_pair, pair_id, tiny_batch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam
from test_direct_weights import double_pair as direct_weights_pair

from pyro_seqvae.errors import ConfigError
from pyro_seqvae.infer.direct_elbo import DirectELBO, supports_direct_elbo
from pyro_seqvae.infer.elbo import make_elbo

pytestmark = pytest.mark.usefixtures("single_thread")

GAUSSIAN_PAIRS = [p for p in LATENT_PAIRS if p[0] != "tsbn"]


def double_pair(pair, model_kwargs=None, guide_kwargs=None, lengths=(4, 6, 2, 6)):
    """:func:`test_direct_weights.double_pair` (float64, weights x3 so that clamps and soft
    bounds are reached, padding) with an empty param store."""
    pyro.clear_param_store()
    return direct_weights_pair(pair, model_kwargs, guide_kwargs, lengths=lengths)


def loss_and_grads(elbo, model, guide, x, mask, beta, seed=5):
    params = list(model.parameters()) + list(guide.parameters())
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, x, mask, beta)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    return loss, grads


def assert_same(pyro_elbo, direct_elbo, model, guide, x, mask, beta=0.3):
    expected, expected_grads = loss_and_grads(pyro_elbo, model, guide, x, mask, beta)
    got, got_grads = loss_and_grads(direct_elbo, model, guide, x, mask, beta)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-9)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in guide.named_parameters()]
    for name, g, e in zip(names, got_grads, expected_grads):
        # the same sums in another order: equal to float64 rounding of the largest entry
        error, size = float((g - e).abs().max()), float(e.abs().max())
        assert error <= 1e-10 * size + 1e-10, f"{name}: {error} against {size}"
    assert any(float(g.abs().sum()) > 0 for g in got_grads)


@pytest.mark.parametrize("analytic_kl", [False, True], ids=["trace", "meanfield"])
@pytest.mark.parametrize("pair", GAUSSIAN_PAIRS, ids=pair_id)
def test_direct_elbo_equals_pyro(pair, analytic_kl):
    model, guide, x, mask = double_pair(pair)
    assert supports_direct_elbo(model, guide)
    pyro_elbo = (TraceMeanField_ELBO if analytic_kl else Trace_ELBO)(max_plate_nesting=1)
    assert_same(pyro_elbo, DirectELBO(analytic_kl=analytic_kl), model, guide, x, mask)


@pytest.mark.parametrize("pair, model_kwargs, guide_kwargs", [
    (("vrnn", "smooth", True), {"rnn_type": "lstm"}, None),
    (("storn", "filter", False), {"rnn_type": "lstm", "hidden_layers": 2}, None),
    (("srnn", "filter", True), {"emission": "nade", "emission_kwargs": {"hidden_dim": 4}},
     {"hidden_layers": 2}),
    (("vrnn", "filter", True), {"hidden_layers": 2}, None),
    (("vrnn", "smooth", False), {"emission": "gauss"}, None),
    (("srnn", "smooth", True), {"emission": "gmm", "emission_kwargs": {"num_components": 3}},
     None),
], ids=["vrnn-lstm", "storn-lstm-deep", "srnn-nade", "vrnn-deep", "vrnn-gauss", "srnn-gmm"])
def test_direct_elbo_equals_pyro_for_variants(pair, model_kwargs, guide_kwargs):
    model, guide, x, mask = double_pair(pair, model_kwargs, guide_kwargs)
    if model.emission.name != "bernoulli" and model.emission.name != "nade":
        x = x + 0.3 * torch.randn_like(x)
    assert_same(TraceMeanField_ELBO(max_plate_nesting=1), DirectELBO(analytic_kl=True),
                model, guide, x, mask, beta=torch.tensor(0.7, dtype=torch.float64))


@pytest.mark.parametrize("pair", [("srnn", "smooth", True), ("vrnn", "filter", False)],
                         ids=pair_id)
def test_direct_elbo_particles_equal_pyro_vectorised_particles(pair):
    model, guide, x, mask = double_pair(pair)
    pyro_elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    assert_same(pyro_elbo, DirectELBO(num_particles=3), model, guide, x, mask)


def test_padding_does_not_change_the_direct_elbo():
    """Extra padded steps (any content) leave the loss and the gradients unchanged."""
    model, guide, x, mask = double_pair(("srnn", "smooth", True), lengths=(3, 5))
    elbo = DirectELBO(analytic_kl=True)
    loss, grads = loss_and_grads(elbo, model, guide, x, mask, 1.0)
    pad = torch.bernoulli(torch.full((2, 4, 88), 0.5, dtype=torch.float64))
    x2 = torch.cat([x, pad], dim=1)
    mask2 = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    loss2, grads2 = loss_and_grads(elbo, model, guide, x2, mask2, 1.0)
    assert loss2 == pytest.approx(loss, rel=1e-12)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g2, g, atol=1e-10, rtol=1e-10)


def test_svi_with_direct_elbo_lowers_the_loss():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_pair("srnn", "smooth", True)
    x, mask = tiny_batch(B=4, T=6, lengths=[6, 5, 6, 3])
    svi = SVI(model, guide, Adam({"lr": 1e-2}), DirectELBO(analytic_kl=True))
    first = sum(svi.evaluate_loss(x, mask) for _ in range(10)) / 10
    for _ in range(60):
        svi.step(x, mask)
    last = sum(svi.evaluate_loss(x, mask) for _ in range(10)) / 10
    assert last < first - 0.1 * abs(first)


def test_direct_elbo_refuses_pairs_off_the_protocol():
    model, guide = build_pair("tsbn", "filter", False)
    x, mask = tiny_batch(B=2, T=3)
    with pytest.raises(ConfigError, match="DirectELBO needs"):
        DirectELBO().loss(model, guide, x, mask)


@pytest.mark.parametrize("kind, analytic", [("trace", False), ("meanfield", True)])
def test_make_elbo_paths(kind, analytic):
    elbo = make_elbo(kind, path="direct")
    assert isinstance(elbo, DirectELBO) and elbo.analytic_kl is analytic
    assert not isinstance(make_elbo(kind, path="pyro"), DirectELBO)
    with pytest.raises(ConfigError, match="path"):
        make_elbo("iwae", path="direct")
    with pytest.raises(ConfigError, match="path"):
        make_elbo(kind, path="fast")


@pytest.mark.parametrize("pair", [("srnn", "smooth", True), ("vrnn", "filter", True)],
                         ids=pair_id)
def test_differentiable_loss_has_the_gradients_of_loss_and_grads(pair):
    """``differentiable_loss`` (autograd's per-step weight gradients) and ``loss_and_grads``
    (weight gradients formed after backward) give the same loss and gradients."""
    model, guide, x, mask = double_pair(pair)
    elbo = DirectELBO(analytic_kl=True)
    params = list(model.parameters()) + list(guide.parameters())
    expected, expected_grads = loss_and_grads(elbo, model, guide, x, mask, 0.5)
    for p in params:
        p.grad = None
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(model, guide, x, mask, 0.5)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    for p, e in zip(params, expected_grads):
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        assert float((got - e).abs().max()) <= 1e-10 * float(e.abs().max()) + 1e-10
