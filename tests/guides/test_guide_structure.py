"""The guides implement the equations of DESIGN.md: the VRNN encoder, filtering vs smoothing
summaries, and the residual mean Res_q."""

import pyro
import pytest
import torch
from common import assert_close, build_pair, tiny_batch
from pyro import poutine

from pyro_seqvae.layers import broadcast_cat
from pyro_seqvae.models import Carry

pytestmark = pytest.mark.usefixtures("single_thread")

LATENT_MODELS = ["vrnn", "storn", "srnn", "dmm"]


def _normal(site):
    """The ``Normal`` inside a site's ``Normal(...).to_event(1).mask(...)``."""
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def test_vrnn_filtering_guide_is_the_papers_encoder():
    model, guide = build_pair("vrnn", "filter")
    hidden, rnn = model.hidden_dim, model.rnn_dim
    # phi_enc(phi_x(x_t), h_{t-1}): no summary network, the head reads [phi_x(x_t), h_{t-1}]
    assert guide.summary_net is None
    for net in (guide.head.loc_net, guide.head.logvar_net):
        assert net.layers[0].in_features == hidden + rnn
    assert {n.split(".")[0] for n, _ in guide.named_parameters()} == {"head"}

    x, mask = tiny_batch(2, 4, (4, 3), seed=2)
    pre = model.precompute(x, mask)
    assert_close(guide.summarise(x, mask, pre), model.phi_x(x))

    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, mask)
        phi_x = model.phi_x(x)
        h = x.new_zeros(2, rnn)
        for t in range(4):
            q = _normal(guide_trace.nodes[f"z_{t + 1}"])
            inputs = torch.cat([phi_x[:, t], h], dim=-1)
            assert_close(q.loc, guide.head.loc_net(inputs))
            assert_close(q.scale, guide.head.scale(inputs))
            # the model's prior at step t reads the same h_{t-1}, advanced with the guide's z
            p = _normal(model_trace.nodes[f"z_{t + 1}"])
            assert_close(p.loc, model.prior_net.loc_net(h))
            z = guide_trace.nodes[f"z_{t + 1}"]["value"]
            h = model.cell.cell(torch.cat([phi_x[:, t], model.phi_z(z)], dim=-1), h)


def _perturbed(x, step):
    x2 = x.clone()
    x2[:, step, :10] = 1.0 - x2[:, step, :10]
    return x2


@pytest.mark.parametrize("model_name", LATENT_MODELS)
@pytest.mark.parametrize("guide_name", ["filter", "smooth"])
def test_smoothing_summaries_see_the_future_and_filtering_ones_do_not(model_name, guide_name):
    model, guide = build_pair(model_name, guide_name)
    x, mask = tiny_batch(2, 6, seed=4)
    s = 4
    x2 = _perturbed(x, s)
    with torch.no_grad():
        a = guide.summarise(x, mask, model.precompute(x, mask))
        a2 = guide.summarise(x2, mask, model.precompute(x2, mask))
    earlier = (a2[:, :s] - a[:, :s]).abs().amax(-1)
    assert (a2[:, s] != a[:, s]).any(-1).all()  # step s itself always sees x_s
    if guide_name == "smooth":
        assert (earlier > 1e-6).all()  # every earlier step of every sequence changed
    else:
        assert (earlier == 0).all()


@pytest.mark.parametrize("model_name", LATENT_MODELS)
def test_smoothing_runs_backwards_within_each_length(model_name):
    model, guide = build_pair(model_name, "smooth")
    lengths = (6, 4, 1)
    x, mask = tiny_batch(3, 6, lengths, seed=5)
    garbage = torch.where(mask.unsqueeze(-1), x, torch.ones_like(x))
    with torch.no_grad():
        a = guide.summarise(x, mask, model.precompute(x, mask))
        a_garbage = guide.summarise(garbage, mask, model.precompute(garbage, mask))
        for b, L in enumerate(lengths):
            xb, mb = x[b : b + 1, :L], mask[b : b + 1, :L]
            alone = guide.summarise(xb, mb, model.precompute(xb, mb))[0]
            assert_close(a[b, :L], alone)
            assert_close(a_garbage[b, :L], alone)
            # a_{L+1} = 0: the last real step is one GRU step from a zero state
            feats = model.guide_features(xb, model.precompute(xb, mb))
            assert_close(a[b, L - 1], guide.backward_rnn(feats[:, L - 1 :])[0, 0])


@pytest.mark.parametrize("model_name", ["srnn", "dmm", "vrnn"])
@pytest.mark.parametrize("guide_name", ["filter", "smooth"])
def test_residual_mean_adds_the_priors_mean_network(model_name, guide_name):
    """Res_q: mu_q = NN1_p(z_{t-1}, d_t) + NN1_q(context, a_t), on the guide's own z_{t-1}."""
    model, guide = build_pair(model_name, guide_name, residual=True)
    x, mask = tiny_batch(2, 4, (4, 2), seed=6)
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        pre = model.precompute(x, mask)
        a = guide.summarise(x, mask, pre)
        carry = model.initial_carry(x)
        for t in range(4):
            q = _normal(guide_trace.nodes[f"z_{t + 1}"])
            inputs = broadcast_cat([a[:, t], model.context(carry, pre[:, t])])
            head_loc = guide.head.loc_net(inputs)
            prior_loc = model.prior_loc(carry, pre[:, t])
            assert (prior_loc.abs() > 1e-6).any()
            assert_close(q.loc, head_loc + prior_loc)
            carry = model.advance(carry, pre[:, t], guide_trace.nodes[f"z_{t + 1}"]["value"])
        assert isinstance(carry, Carry)


def test_guides_reuse_the_models_deterministic_states_under_its_names():
    """d_t is shared: one set of model parameters, registered under the model's names.

    Each root registers its own parameters once per call (layers.register_params); SVI collects
    the parameters of the model and the guide trace together, so the model's GRU and NN1_p that
    the guide evaluates are trained through both.
    """
    model, guide = build_pair("srnn", "smooth", residual=True)
    x, mask = tiny_batch(2, 4)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    guide_params = {n for n, s in guide_trace.nodes.items() if s["type"] == "param"}
    assert "SmoothingGuide.backward_rnn.rnn.weight_ih_l0" in guide_params
    assert all(n.startswith("SmoothingGuide.") for n in guide_params)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, mask)
    model_params = {n for n, s in model_trace.nodes.items() if s["type"] == "param"}
    assert "SRNN.rnn.rnn.weight_ih_l0" in model_params
    assert "SRNN.prior_net.loc_net.layers.0.weight" in model_params  # NN1_p for Res_q
    store = pyro.get_param_store()
    assert store.get_param("SRNN.rnn.rnn.weight_ih_l0") is model.rnn.rnn.weight_ih_l0
