"""Reweighted wake-sleep's direct path (pyro_seqvae.infer.rws) against its traced path.

Exact checks, in float64 with the same random numbers: the densities ``log p(x, z^k)`` and
``log q(z^k | x)``, the loss and every gradient of both wake phases equal the traced path's for
every registry pair whose model carries ``z_{t-1}`` alone (TSBN, deep TSBN, SRNN, DMM), with
padding and ``beta != 1``. Pairs outside it (VRNN, STORN) fall back under ``auto`` and are a
one-line error under ``direct``.
"""

import pyro
import pytest
import torch
from common import LATENT_PAIRS, build_pair, pair_id
from test_direct_weights import double_pair

from pyro_seqvae.errors import ConfigError
from pyro_seqvae.infer import NASMC, ReweightedWakeSleep, make_elbo
from pyro_seqvae.infer.rws import direct_log_densities, supports_direct_rws

pytestmark = pytest.mark.usefixtures("single_thread")

DIRECT_PAIRS = [p for p in LATENT_PAIRS if p[0] in ("tsbn", "srnn", "dmm")]
TRACED_ONLY = [p for p in LATENT_PAIRS if p not in DIRECT_PAIRS]


def _loss_and_grads(objective, model, guide, x, mask, beta):
    params = list(model.parameters()) + [p for p in guide.parameters()
                                         if all(p is not q for q in model.parameters())]
    for p in params:
        p.grad = None
    pyro.set_rng_seed(5)
    with pyro.validation_enabled(False):
        loss = objective.loss_and_grads(model, guide, x, mask, beta)
    return loss, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def assert_same_as_traced(model, guide, x, mask, K=4, beta=0.7):
    direct, traced = ReweightedWakeSleep(K, path="direct"), ReweightedWakeSleep(K, path="pyro")
    pyro.set_rng_seed(5)
    log_p, log_q = direct.log_densities(model, guide, x, mask, beta)
    pyro.set_rng_seed(5)
    ref_p, ref_q = traced.log_densities(model, guide, x, mask, beta)
    assert log_p.shape == log_q.shape == (K, x.shape[0])
    torch.testing.assert_close(log_p, ref_p, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(log_q, ref_q, atol=1e-9, rtol=1e-12)
    loss, grads = _loss_and_grads(direct, model, guide, x, mask, beta)
    ref_loss, ref_grads = _loss_and_grads(traced, model, guide, x, mask, beta)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-10)
    assert any(float(g.abs().max()) > 0 for g in ref_grads)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, atol=1e-10 * max(1.0, float(ref.abs().max())),
                                   rtol=1e-9)


@pytest.mark.parametrize("pair", DIRECT_PAIRS, ids=pair_id)
def test_direct_rws_equals_the_traced_path(pair):
    model, guide, x, mask = double_pair(pair)
    assert supports_direct_rws(model, guide)
    assert_same_as_traced(model, guide, x, mask)


@pytest.mark.parametrize("variant", [
    dict(model_kwargs={"layers": 2, "z_dim": 6}),  # deep TSBN
    dict(guide_kwargs={"hidden_layers": 0}),  # the paper's linear recognition model
    dict(model_kwargs={"emission": "nade", "emission_kwargs": {"hidden_dim": 5}}),
], ids=["deep", "linear", "nade"])
@pytest.mark.parametrize("guide_name", ["filter", "smooth"])
def test_direct_rws_equals_the_traced_path_for_tsbn_variants(variant, guide_name):
    model, guide, x, mask = double_pair(("tsbn", guide_name, False), scale=1.5, **variant)
    assert_same_as_traced(model, guide, x, mask, K=3, beta=1.0)


def test_padding_leaves_the_direct_densities_unchanged():
    """Extra padded steps at the end change neither density of any particle."""
    model, guide, x, mask = double_pair(("tsbn", "filter", False), lengths=(4, 6, 2, 6))
    longer = torch.cat([x, torch.ones_like(x[:, :3])], dim=1)
    longer_mask = torch.cat([mask, torch.zeros_like(mask[:, :3])], dim=1)
    pyro.set_rng_seed(2)
    log_p, log_q = direct_log_densities(model, guide, x, mask, 3)
    pyro.set_rng_seed(2)
    padded_p, padded_q = direct_log_densities(model, guide, longer, longer_mask, 3)
    torch.testing.assert_close(padded_p, log_p, atol=1e-12, rtol=0)
    torch.testing.assert_close(padded_q, log_q, atol=1e-12, rtol=0)


@pytest.mark.parametrize("pair", TRACED_ONLY, ids=pair_id)
def test_pairs_with_a_recurrent_carry_fall_back_or_refuse(pair):
    model, guide = build_pair(*pair)
    assert not supports_direct_rws(model, guide)
    x = torch.bernoulli(torch.full((2, 3, model.x_dim), 0.3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    pyro.set_rng_seed(0)
    auto = ReweightedWakeSleep(2).log_densities(model, guide, x, mask)
    pyro.set_rng_seed(0)
    traced = ReweightedWakeSleep(2, path="pyro").log_densities(model, guide, x, mask)
    torch.testing.assert_close(auto, traced)
    with pytest.raises(ConfigError, match="direct RWS path needs .*VRNN|direct RWS path needs"):
        ReweightedWakeSleep(2, path="direct").log_densities(model, guide, x, mask)


def test_bad_path_is_a_config_error():
    with pytest.raises(ConfigError, match="RWS path must be one of"):
        ReweightedWakeSleep(2, path="fast")
    assert make_elbo("rws", num_particles=3, path="direct").path == "direct"
    assert make_elbo("rws", num_particles=3).path == "pyro"


@pytest.mark.parametrize("pair", [("tsbn", "filter", False), ("srnn", "smooth", True)],
                         ids=pair_id)
def test_nasmc_without_resampling_trains_the_model_as_rws_does(pair):
    """Without resampling, SMC's ``log Z-hat`` is ``L_K`` and NASMC's model gradient (the
    particles held fixed) is RWS's wake-theta gradient: the two implementations agree with the
    same random numbers (the guides' objectives differ: NASMC weighs each step by its filtering
    weights, RWS by the final ones)."""
    model, guide, x, mask = double_pair(pair)
    model_params = list(model.parameters())
    found = {}
    for name, objective in (("nasmc", NASMC(4, resampling="never")),
                            ("rws", ReweightedWakeSleep(4))):
        for p in list(model_params) + list(guide.parameters()):
            p.grad = None
        pyro.set_rng_seed(9)
        loss = objective.loss_and_grads(model, guide, x, mask, 0.6)
        found[name] = (loss, [p.grad.clone() for p in model_params])
    assert found["nasmc"][0] == pytest.approx(found["rws"][0], rel=1e-12)
    for g, ref in zip(found["nasmc"][1], found["rws"][1]):
        torch.testing.assert_close(g, ref, atol=1e-10 * max(1.0, float(ref.abs().max())),
                                   rtol=1e-9)
