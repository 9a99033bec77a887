"""Gaussian, mixture and pen-stroke emissions: shapes, likelihoods, masking and sampling."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_seqvae.emissions import (
    EMISSIONS,
    RHO_MAX,
    SCALE_MIN,
    BivariateMixturePen,
    GaussianEmission,
    GMMEmission,
    StrokeEmission,
    make_emission,
    output_scale,
)
from pyro_seqvae.errors import ConfigError


def test_registry_and_names():
    assert {"bernoulli", "gauss", "gmm", "stroke"} <= set(EMISSIONS)
    assert isinstance(make_emission("gauss", 4), GaussianEmission)
    assert isinstance(make_emission("gmm", 4, num_components=3), GMMEmission)
    stroke = make_emission("stroke", 3, num_components=5)
    assert isinstance(stroke, StrokeEmission) and stroke.param_dim == 31
    assert GaussianEmission(4).param_dim == 8
    assert GMMEmission(4, num_components=3).param_dim == 27


@pytest.mark.parametrize("name,kwargs", [
    ("gauss", {}), ("gauss", {"scale": "softplus"}),
    ("gmm", {"num_components": 2}), ("gmm", {"num_components": 2, "scale": "softplus"}),
    ("stroke", {"num_components": 2}),
])
def test_config_round_trip(name, kwargs):
    D = 3
    e = make_emission(name, D, **kwargs)
    rebuilt = make_emission(e.name, D, **e.config())
    assert rebuilt.config() == e.config() and rebuilt.param_dim == e.param_dim


def test_default_configs_unchanged():
    assert GaussianEmission(3).config() == {}
    assert GMMEmission(3, num_components=4).config() == {"num_components": 4}


def test_bad_arguments():
    with pytest.raises(ConfigError, match="x_dim must be 3"):
        StrokeEmission(2)
    with pytest.raises(ConfigError, match="scale"):
        GaussianEmission(3, scale="relu")
    with pytest.raises(ConfigError, match="num_components"):
        GMMEmission(3, num_components=0)
    with pytest.raises(ConfigError, match="scale"):
        output_scale(torch.zeros(2), "sigmoid")


def test_scales_have_a_floor():
    raw = torch.tensor([-1e4, -30.0, 0.0])
    assert (output_scale(raw, "exp") >= SCALE_MIN * (1 - 1e-6)).all()
    assert (output_scale(raw, "softplus") >= SCALE_MIN).all()
    assert torch.allclose(output_scale(torch.tensor([0.0]), "exp"), torch.ones(1))
    # softplus keeps a gradient below the floor, exp's clamp does not
    raw = torch.tensor([-50.0], requires_grad=True)
    output_scale(raw, "softplus").sum().backward()
    assert raw.grad.abs().item() > 0


def test_gaussian_log_prob_matches_torch():
    params = torch.randn(5, 8)
    x = torch.randn(5, 4)
    got = GaussianEmission(4)(params).log_prob(x)
    loc, logvar = params[:, :4], params[:, 4:]
    want = torch.distributions.Normal(loc, (0.5 * logvar).exp()).log_prob(x).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)
    got = GaussianEmission(4, scale="softplus")(params).log_prob(x)
    want = torch.distributions.Normal(loc, F.softplus(logvar) + SCALE_MIN).log_prob(x).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("scale", ["exp", "softplus"])
def test_gmm_log_prob_matches_manual_logsumexp(scale):
    M, D = 3, 2
    params = torch.randn(6, M * (1 + 2 * D))
    x = torch.randn(6, D)
    got = GMMEmission(D, num_components=M, scale=scale)(params).log_prob(x)
    logits = params[:, :M]
    loc = params[:, M : M + M * D].reshape(6, M, D)
    raw = params[:, M + M * D :].reshape(6, M, D)
    sigma = (0.5 * raw).exp() if scale == "exp" else F.softplus(raw) + SCALE_MIN
    comp = torch.distributions.Normal(loc, sigma).log_prob(x.unsqueeze(1)).sum(-1)
    want = torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1)
    assert torch.allclose(got, want, atol=1e-5)


def test_gmm_known_value():
    # two equally weighted unit Gaussians at -1 and +1, evaluated at 0 (D = 1)
    params = torch.tensor([[0.0, 0.0, -1.0, 1.0, 0.0, 0.0]])
    got = GMMEmission(1, num_components=2)(params).log_prob(torch.zeros(1, 1))
    want = math.log(math.exp(-0.5) / math.sqrt(2 * math.pi))
    assert got.item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("scale", ["exp", "softplus"])
def test_one_component_mixture_equals_gaussian(scale):
    D = 5
    gauss_params = torch.randn(4, 7, 2 * D)
    logit = torch.randn(4, 7, 1)
    x = torch.randn(4, 7, D)
    gmm = GMMEmission(D, num_components=1, scale=scale)(torch.cat([logit, gauss_params], -1))
    gauss = GaussianEmission(D, scale=scale)(gauss_params)
    assert torch.allclose(gmm.log_prob(x), gauss.log_prob(x), atol=1e-5)


def _stroke_manual(params, x, M):
    logits, loc, raw, rho_raw, pen = params.split([M, 2 * M, 2 * M, M, 1], -1)
    loc = loc.reshape(-1, M, 2)
    sx, sy = (0.5 * raw).exp().reshape(-1, M, 2).unbind(-1)
    rho = RHO_MAX * torch.tanh(rho_raw)
    cov = torch.stack([torch.stack([sx**2, rho * sx * sy], -1),
                       torch.stack([rho * sx * sy, sy**2], -1)], -2)
    comp = torch.distributions.MultivariateNormal(loc, covariance_matrix=cov)
    log_mix = torch.logsumexp(torch.log_softmax(logits, -1)
                              + comp.log_prob(x[:, None, :2]), -1)
    return log_mix + torch.distributions.Bernoulli(logits=pen[:, 0]).log_prob(x[:, 2])


def test_stroke_log_prob_matches_multivariate_normal_mixture():
    M = 4
    params = torch.randn(10, 6 * M + 1, dtype=torch.float64)
    x = torch.cat([torch.randn(10, 2, dtype=torch.float64),
                   torch.randint(0, 2, (10, 1)).double()], -1)
    d = StrokeEmission(num_components=M)(params)
    assert isinstance(d, BivariateMixturePen)
    assert d.batch_shape == (10,) and d.event_shape == (3,)
    assert torch.allclose(d.log_prob(x), _stroke_manual(params, x, M), atol=1e-8)


def test_stroke_known_value():
    # one standard bivariate Gaussian (rho = 0), pen probability 1/2, at the origin
    params = torch.zeros(1, 7)
    d = StrokeEmission(num_components=1)(params)
    got = d.log_prob(torch.tensor([[0.0, 0.0, 1.0]]))
    assert got.item() == pytest.approx(-math.log(2 * math.pi) + math.log(0.5), abs=1e-6)


def test_stroke_rejects_values_outside_support():
    d = StrokeEmission(num_components=2)(torch.randn(3, 13))
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([[0.0, 0.0, 0.5]] * 3))
    assert not d.support.check(torch.tensor([0.0, 1.0, 2.0]))
    assert d.support.check(torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("emission", [
    GaussianEmission(3), GMMEmission(3, num_components=2), StrokeEmission(num_components=2),
])
def test_mask_and_to_event_with_particles(emission):
    K, B, T, D = 2, 4, 6, 3
    params = torch.randn(K, B, T, emission.param_dim)
    x = emission(params[0]).sample()  # valid values (pen bits for the stroke emission)
    assert x.shape == (B, T, D)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    d = emission(params)
    assert d.batch_shape == (K, B, T) and d.event_shape == (D,)
    site = d.mask(mask).to_event(1)
    assert site.batch_shape == (K, B) and site.event_shape == (T, D)
    lp = site.log_prob(x)
    assert lp.shape == (K, B)
    assert torch.allclose(lp, (d.log_prob(x) * mask).sum(-1), atol=1e-5)
    # values at masked steps do not matter
    x2 = x.clone()
    x2[~mask] = torch.tensor([1.0, -2.0, 0.0])
    assert torch.allclose(site.log_prob(x2), lp)
    # padding with zeros (as pad_sequences does) is in the support
    assert torch.isfinite(site.log_prob(torch.zeros(B, T, D))).all()
    # a site expanded over a particle plate
    assert site.expand((3, K, B)).log_prob(x).shape == (3, K, B)


@pytest.mark.parametrize("emission", [
    GaussianEmission(3), GMMEmission(3, num_components=2), StrokeEmission(num_components=2),
])
def test_sample_shapes(emission):
    d = emission(torch.randn(4, 5, emission.param_dim))
    assert d.sample().shape == (4, 5, 3)
    assert d.sample((2,)).shape == (2, 4, 5, 3)
    assert d.mask(torch.ones(4, 5, dtype=torch.bool)).to_event(1).sample().shape == (4, 5, 3)


def test_stroke_sampler_moments():
    # one component with known means, scales, correlation and pen probability
    loc = torch.tensor([[1.0, -2.0]])
    scale = torch.tensor([[0.5, 2.0]])
    d = BivariateMixturePen(torch.zeros(1), loc, scale, torch.tensor([0.8]),
                            torch.tensor(math.log(0.3 / 0.7)))
    x = d.sample((40000,))
    assert x.shape == (40000, 3)
    assert set(x[:, 2].unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(x[:, :2].mean(0), loc[0], atol=0.05)
    assert torch.allclose(x[:, :2].std(0), scale[0], rtol=0.05)
    corr = torch.corrcoef(x[:, :2].T)[0, 1]
    assert corr.item() == pytest.approx(0.8, abs=0.02)
    assert x[:, 2].mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.allclose(d.mean, torch.tensor([1.0, -2.0, 0.3]), atol=1e-6)


def test_gmm_sampler_picks_components():
    # two far-apart components with weights 0.25 / 0.75
    params = torch.tensor([[math.log(0.25), math.log(0.75), -10.0, 10.0, -8.0, -8.0]])
    x = GMMEmission(1, num_components=2)(params).sample((20000,))
    assert (x[..., 0] > 0).float().mean().item() == pytest.approx(0.75, abs=0.02)


def test_stroke_log_prob_is_differentiable():
    params = torch.randn(3, 6 * 2 + 1, requires_grad=True)
    d = StrokeEmission(num_components=2)(params)
    x = d.sample()
    d.log_prob(x).sum().backward()
    assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0


def test_distribution_works_as_pyro_obs_site():
    x = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 1.0]]])
    mask = torch.tensor([[True, False]])
    params = torch.randn(1, 2, 13)

    def model():
        with pyro.plate("sequences", 1, dim=-1):
            d = StrokeEmission(num_components=2)(params)
            pyro.sample("x", d.mask(mask).to_event(1), obs=x)

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    lp = tr.nodes["x"]["log_prob"]
    want = StrokeEmission(num_components=2)(params).log_prob(x)[:, 0]
    assert torch.allclose(lp, want)
    assert isinstance(tr.nodes["x"]["fn"], dist.Independent)


def test_stroke_sampler_picks_components_per_batch_element():
    # batch of 2: element 0 prefers the component at (-10, 5), element 1 the one at (10, -5)
    logits = torch.tensor([[math.log(0.9), math.log(0.1)], [math.log(0.2), math.log(0.8)]])
    loc = torch.tensor([[-10.0, 5.0], [10.0, -5.0]]).expand(2, 2, 2)
    scale = torch.full((2, 2, 2), 0.01)
    d = BivariateMixturePen(logits, loc, scale, torch.zeros(2, 2), torch.zeros(2))
    x = d.sample((10000,))
    assert x.shape == (10000, 2, 3)
    right = x[..., 0] > 0
    assert torch.equal(right, x[..., 1] < 0)  # dx and dy come from the same component
    assert right[:, 0].float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert right[:, 1].float().mean().item() == pytest.approx(0.8, abs=0.02)
