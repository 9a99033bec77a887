"""Generic properties that every compatible (model, guide) pair of the registries must show
(STYLE.md rule 10): matching markov ``z_t`` sites, padding invariance, exact KL scaling by
``beta``, vectorised particles, a decreasing SVI loss, and parameters that all train under
their own root names."""

from collections import Counter

import pyro
import pytest
import torch
from common import (
    ALL_PAIRS,
    LATENT_PAIRS,
    assert_close,
    build_pair,
    elbo_parts,
    latent_site_names,
    pair_id,
    per_sequence_elbo,
    sample_site_values,
    tiny_batch,
    trace_pair,
    z_names,
)
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import ClippedAdam
from torch.distributions import kl_divergence

from pyro_seqvae.guides import GUIDES
from pyro_seqvae.models import MODELS

pytestmark = pytest.mark.usefixtures("single_thread")

B, T = 4, 6
LENGTHS = (6, 3, 5, 1)

pairs = pytest.mark.parametrize("pair", ALL_PAIRS, ids=pair_id)
latent_pairs = pytest.mark.parametrize("pair", LATENT_PAIRS, ids=pair_id)
# TraceMeanField_ELBO refuses guides that are not fully reparameterised (TSBN's binary latents)
reparam_pairs = pytest.mark.parametrize(
    "pair", [p for p in LATENT_PAIRS if MODELS[p[0]].latent_family == "gaussian"], ids=pair_id)


def _batch(device, seed=0):
    return tiny_batch(B, T, LENGTHS, seed=seed, device=device)


def test_all_pairs_cover_the_registries():
    ids = {pair_id(p) for p in ALL_PAIRS}
    assert len(ids) == len(ALL_PAIRS) == 17
    assert {p[0] for p in ALL_PAIRS} == set(MODELS)
    assert {p[1] for p in ALL_PAIRS} == set(GUIDES)
    # the pairings DESIGN.md names explicitly
    assert {"rnn-none", "vrnn-filter", "vrnn-smooth", "srnn-smooth-res", "dmm-smooth",
            "tsbn-filter", "tsbn-smooth"} <= ids
    assert not {"rnn-filter", "rnn-smooth", "storn-filter-res", "storn-smooth-res",
                "vrnn-none", "dmm-none", "tsbn-filter-res", "tsbn-smooth-res", "tsbn-none"} & ids


# ---- sites and markov information ---------------------------------------------------------------
@pairs
def test_model_and_guide_sample_the_same_markov_z_sites(pair, device):
    model, guide = build_pair(*pair, device=device)
    x, mask = _batch(device)
    model_trace, guide_trace = trace_pair(model, guide, x, mask)
    model_sites, guide_sites = latent_site_names(model_trace), latent_site_names(guide_trace)
    expected = z_names(T) if model.has_latents else []
    assert guide_sites == expected
    assert model_sites == expected
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["x"]["fn"].event_dim == 2  # [T, D]
    assert model_trace.nodes["x"]["log_prob"].shape == (B,)
    assert "x" not in guide_trace.nodes

    for trace in (model_trace, guide_trace):
        for t, name in enumerate(expected):
            site = trace.nodes[name]
            # pyro.markov(history=1) records the sites of the previous step as visible ones
            want = Counter({f"z_{t}": 1}) if t else Counter()
            assert site["infer"]["_markov_scope"] == want, name
            assert site["infer"]["_markov_depth"] == 1
            frames = [(f.name, f.dim, f.size) for f in site["cond_indep_stack"]]
            assert frames == [("sequences", -1, B)]
            assert site["value"].shape == (B, model.z_dim)
            assert site["log_prob"].shape == (B,)
            # masked beyond each sequence's length: no log-density there
            assert (site["log_prob"][~mask[:, t]] == 0).all()
            assert (site["log_prob"][mask[:, t]] != 0).all()


# ---- vectorised particles -----------------------------------------------------------------------
@pairs
def test_vectorised_particles(pair, device):
    K = 3
    model, guide = build_pair(*pair, device=device)
    x, mask = _batch(device)

    def particles(fn):
        def wrapped(*args):
            with pyro.plate("particles", K, dim=-2):
                return fn(*args)
        return wrapped

    model_trace, guide_trace = trace_pair(particles(model), particles(guide), x, mask)
    log_px, log_pz, log_qz = elbo_parts(model_trace, guide_trace)
    assert log_px.shape == (K, B)
    elbo = log_px + log_pz - log_qz
    assert torch.isfinite(elbo).all()
    for name in z_names(T) if model.has_latents else []:
        assert guide_trace.nodes[name]["value"].shape == (K, B, model.z_dim)
        assert model_trace.nodes[name]["log_prob"].shape == (K, B)

    # each particle row is exactly the unvectorised ELBO on that particle's latents
    for k in range(K):
        data = {n: v[k] for n, v in sample_site_values(guide_trace).items()}
        assert_close(per_sequence_elbo(model, guide, x, mask, data=data), elbo[k], atol=1e-4)

    loss = Trace_ELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1).loss(
        model, guide, x, mask)
    assert torch.isfinite(torch.tensor(loss))


# ---- padding invariance -------------------------------------------------------------------------
@pairs
def test_padded_batch_elbo_equals_sum_of_single_sequences(pair, device):
    model, guide = build_pair(*pair, device=device)
    x, mask = _batch(device)
    lengths = mask.sum(-1).tolist()
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(model, guide, x, mask)
        log_px, log_pz, log_qz = elbo_parts(model_trace, guide_trace)
        batch_elbo = log_px + log_pz - log_qz
        z = sample_site_values(guide_trace)

        singles = []
        for b, L in enumerate(lengths):
            data = {f"z_{t + 1}": z[f"z_{t + 1}"][b : b + 1] for t in range(L) if z}
            singles.append(per_sequence_elbo(model, guide, x[b : b + 1, :L],
                                             mask[b : b + 1, :L], data=data))
        singles = torch.cat(singles)
        assert_close(singles, batch_elbo, atol=1e-4)
        assert_close(singles.sum(), batch_elbo.sum(), atol=1e-4)

        # more padding (a longer T, garbage in the padding) leaves every sequence's value alone
        extra = 3
        mask_long = torch.cat([mask, mask.new_zeros(B, extra)], dim=1)
        x_long = torch.cat([x, x.new_zeros(B, extra, x.shape[-1])], dim=1)
        x_long = torch.where(mask_long.unsqueeze(-1), x_long, torch.ones_like(x_long))
        longer = per_sequence_elbo(model, guide, x_long, mask_long, data=z)
        assert_close(longer, batch_elbo, atol=1e-4)


# ---- beta scales exactly the KL -----------------------------------------------------------------
@latent_pairs
def test_beta_scales_exactly_the_kl(pair, device):
    model, guide = build_pair(*pair, device=device)
    x, mask = _batch(device)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        model_trace, guide_trace = trace_pair(model, guide, x, mask)
        log_px, log_pz, log_qz = (p.sum() for p in elbo_parts(model_trace, guide_trace))
        z = sample_site_values(guide_trace)
        kl_part = log_pz - log_qz
        assert abs(float(kl_part)) > 1e-3  # the check below would be vacuous otherwise
        for beta in (0.2, 0.5, 1.0):
            expected = log_px + beta * kl_part
            # traces made with this beta on the same latents
            model_trace, guide_trace = trace_pair(model, guide, x, mask, beta, data=z)
            assert_close(model_trace.log_prob_sum() - guide_trace.log_prob_sum(), expected,
                         atol=1e-3, rtol=1e-6)
            # and the real objective: the same seed draws the same latents
            pyro.set_rng_seed(3)
            loss = Trace_ELBO().loss(model, guide, x, mask, beta)
            assert_close(-loss, expected, atol=1e-3, rtol=1e-6)
            # a tensor beta (the JIT-safe form) gives the same
            pyro.set_rng_seed(3)
            loss_t = Trace_ELBO().loss(model, guide, x, mask, torch.tensor(beta, device=device))
            assert_close(loss_t, loss, atol=1e-3, rtol=1e-6)


@reparam_pairs
def test_beta_scales_the_analytic_kl_of_trace_mean_field(pair, device):
    model, guide = build_pair(*pair, device=device)
    x, mask = _batch(device)
    with torch.no_grad():
        pyro.set_rng_seed(5)
        model_trace, guide_trace = trace_pair(model, guide, x, mask)
        log_px = model_trace.nodes["x"]["log_prob"].sum()
        kl = sum(kl_divergence(guide_trace.nodes[n]["fn"], model_trace.nodes[n]["fn"]).sum()
                 for n in z_names(T))
        assert kl > 0
        losses = {}
        for beta in (0.2, 0.5, 1.0):
            pyro.set_rng_seed(5)
            losses[beta] = TraceMeanField_ELBO().loss(model, guide, x, mask, beta)
            assert_close(-losses[beta], log_px - beta * kl, atol=1e-3, rtol=1e-6)
        slope_low = (losses[0.5] - losses[0.2]) / 0.3
        slope_high = (losses[1.0] - losses[0.5]) / 0.5
        assert_close(slope_low, slope_high, atol=1e-2, rtol=1e-5)
        assert_close(slope_high, kl, atol=1e-2, rtol=1e-5)


# ---- training -----------------------------------------------------------------------------------
@pairs
def test_svi_loss_is_finite_and_decreases(pair, device):
    model, guide = build_pair(*pair, device=device)
    x, mask = tiny_batch(4, 8, (8, 5, 3, 7), seed=1, device=device)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), elbo)
    losses = torch.tensor([svi.step(x, mask) for _ in range(15)])
    assert torch.isfinite(losses).all()
    # the decoder first learns the sparsity of the rolls: the mean drops by 140-360 nats over
    # these steps for every pair and seeds 0-2, far beyond the particle noise (a few nats)
    assert losses[-4:].mean() < losses[:4].mean() - 50.0


@pairs
def test_every_parameter_trains_under_its_own_root_name(pair, device):
    model, guide = build_pair(*pair, device=device)
    x, mask = _batch(device)
    params = {**{f"model.{n}": p for n, p in model.named_parameters()},
              **{f"guide.{n}": p for n, p in guide.named_parameters()}}
    before = {n: p.detach().clone() for n, p in params.items()}
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        svi.step(x, mask)
    unchanged = [n for n, p in params.items() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters that did not train: {unchanged}"

    model_root, guide_root = type(model).__name__, type(guide).__name__
    store = set(pyro.get_param_store().keys())
    expected = ({f"{model_root}.{n}" for n, _ in model.named_parameters()}
                | {f"{guide_root}.{n}" for n, _ in guide.named_parameters()})
    assert store == expected
    # the guide refers to its model without owning it: none of the model's tensors in its state
    model_tensors = {p.data_ptr() for p in model.parameters()}
    assert not model_tensors & {t.data_ptr() for t in guide.state_dict().values()}
    assert len(guide.state_dict()) == len(list(guide.named_parameters()))
    assert guide.model is model
    if model.has_latents:
        assert len(list(guide.parameters())) > 0
