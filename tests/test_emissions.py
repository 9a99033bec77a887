"""Emission distributions against hand computations with torch.distributions."""

import math

import pytest
import torch
import torch.distributions as td
from common import assert_close, build_pair
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.emissions import (
    EMISSIONS,
    BernoulliEmission,
    GaussianEmission,
    GMMEmission,
    make_emission,
)
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.layers import LOGVAR_MAX, LOGVAR_MIN


def test_bernoulli_log_prob_by_hand():
    emission = BernoulliEmission(3)
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.2]])
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    d = emission(logits)
    p = torch.sigmoid(logits)
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    assert_close(d.log_prob(x), by_hand)
    assert_close(d.log_prob(x)[0], math.log(1 / (1 + math.exp(-0.5))) + math.log(
        1 - 1 / (1 + math.exp(1.0))) + math.log(1 - 1 / (1 + math.exp(-2.0))))
    assert emission.param_dim == 3


def test_gaussian_log_prob_by_hand():
    emission = GaussianEmission(2)
    loc = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    logvar = torch.tensor([[0.0, 1.0], [-2.0, 0.3]])
    x = torch.tensor([[0.0, 0.0], [1.5, -0.4]])
    d = emission(torch.cat([loc, logvar], -1))
    var = logvar.exp()
    by_hand = (-0.5 * (x - loc) ** 2 / var - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert_close(d.log_prob(x), by_hand)
    assert_close(d.log_prob(x), td.Normal(loc, (0.5 * logvar).exp()).log_prob(x).sum(-1))
    assert emission.param_dim == 4


def test_gaussian_log_variance_is_clamped():
    emission = GaussianEmission(1)
    d = emission(torch.tensor([[0.0, 100.0], [0.0, -100.0]]))
    assert_close(d.base_dist.scale.squeeze(-1),
                 torch.tensor([math.exp(LOGVAR_MAX / 2), math.exp(LOGVAR_MIN / 2)]), rtol=1e-6)
    assert torch.isfinite(d.log_prob(torch.tensor([[1.0], [1.0]]))).all()


def test_gmm_log_prob_by_hand():
    M, D = 2, 3
    emission = GMMEmission(D, num_components=M)
    assert emission.param_dim == M * (1 + 2 * D)
    logits = torch.tensor([0.3, -0.5])
    loc = torch.tensor([[0.0, 1.0, -1.0], [2.0, -0.5, 0.5]])
    logvar = torch.tensor([[0.0, 0.5, -0.5], [1.0, -1.0, 0.2]])
    params = torch.cat([logits, loc.reshape(-1), logvar.reshape(-1)])
    x = torch.tensor([0.4, 0.2, -0.3])
    d = emission(params)
    weights = torch.softmax(logits, -1)
    comps = [td.Normal(loc[m], (0.5 * logvar[m]).exp()).log_prob(x).sum().exp() for m in range(M)]
    by_hand = torch.log(weights[0] * comps[0] + weights[1] * comps[1])
    assert_close(d.log_prob(x), by_hand)
    # the mixture weights are a softmax: shifting every logit changes nothing
    assert_close(emission(params + torch.cat([torch.full((M,), 4.0), torch.zeros(2 * M * D)]))
                 .log_prob(x), by_hand)


def test_gmm_with_one_component_equals_the_gaussian():
    D = 4
    g = torch.Generator().manual_seed(0)
    loc, logvar = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    x = torch.randn(5, D, generator=g)
    gauss = GaussianEmission(D)(torch.cat([loc, logvar], -1))
    gmm = GMMEmission(D, num_components=1)(torch.cat([torch.randn(5, 1, generator=g), loc,
                                                       logvar], -1))
    assert_close(gmm.log_prob(x), gauss.log_prob(x))


@pytest.mark.parametrize("name", sorted(EMISSIONS))
def test_event_dim_is_one_and_masking_zeroes_steps(name):
    D = 3
    emission = make_emission(name, D, **({"num_components": 2} if name == "gmm" else {}))
    assert type(emission) is EMISSIONS[name] and emission.name == name
    g = torch.Generator().manual_seed(1)
    params = torch.randn(2, 4, emission.param_dim, generator=g)
    d = emission(params)
    assert d.event_dim == 1
    assert d.batch_shape == (2, 4) and d.event_shape == (D,)
    x = d.sample()
    assert x.shape == (2, 4, D)
    if name == "bernoulli":
        assert ((x == 0) | (x == 1)).all()
    mask = torch.tensor([[True, True, False, True], [False, False, True, True]])
    full = d.log_prob(x)
    masked = d.mask(mask).log_prob(x)
    assert (masked[~mask] == 0).all()
    assert_close(masked[mask], full[mask])
    assert (full[~mask] != 0).all()  # the zeros come from the mask


def test_make_emission_checks_names_and_widths():
    with pytest.raises(ConfigError, match="unknown emission 'poisson'"):
        make_emission("poisson", 3)
    with pytest.raises(ConfigError, match="x_dim=4.*x_dim=3"):
        make_emission(GaussianEmission(4), 3)
    emission = BernoulliEmission(3)
    assert make_emission(emission, 3) is emission
    with pytest.raises(ConfigError, match="num_components"):
        GMMEmission(3, num_components=0)
    assert GMMEmission(3, num_components=5).config() == {"num_components": 5}


@pytest.mark.parametrize("emission", ["gauss", "gmm"])
@pytest.mark.parametrize("model_name", ["rnn", "srnn", "vrnn"])
def test_real_valued_emissions_plug_into_the_models(emission, model_name, single_thread):
    kwargs = {"emission": emission}
    if emission == "gmm":
        kwargs["emission_kwargs"] = {"num_components": 2}
    model, guide = build_pair(model_name, "none" if model_name == "rnn" else "filter",
                              model_kwargs=kwargs)
    assert model.config()["emission"] == emission
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 88, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    x[1, 3:] = 0.0
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, mask) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses)
    assert model.sample(2, 3).shape == (2, 3, 88)
