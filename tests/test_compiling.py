"""Regional torch.compile of the per-step networks (pyro_seqvae.compiling)."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.testing import assert_close

from pyro_seqvae.compiling import compile_networks
from pyro_seqvae.guides import FilteringGuide
from pyro_seqvae.layers import MLP, RecurrentCell
from pyro_seqvae.models import VRNN


def _pair(suffix=""):
    model = VRNN(5, z_dim=2, rnn_dim=4, hidden_dim=3, name="VRNN" + suffix)
    guide = FilteringGuide(model, hidden_dim=3, summary_dim=4, name="FilteringGuide" + suffix)
    return model, guide


def test_compile_networks_is_in_place_and_keeps_names():
    model, guide = _pair()
    keys = (list(model.state_dict()), list(guide.state_dict()))
    expected = len({id(m) for r in (model, guide) for m in r.modules()  # shared ones once
                    if isinstance(m, (MLP, RecurrentCell))})
    assert expected > 0
    assert compile_networks(model, guide) == expected
    assert compile_networks(model, guide) == 0  # already compiled: nothing done twice
    assert (list(model.state_dict()), list(guide.state_dict())) == keys


def _loss_and_grads(model, guide, x, mask):
    pyro.set_rng_seed(3)
    params = [p for m in (model, guide) for p in m.parameters()]
    loss = Trace_ELBO().differentiable_loss(model, guide, x, mask, 0.5)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


@pytest.mark.slow  # the first compile of each network takes about a minute on a CPU
# dynamo's tracing reads the .grad of a non-leaf tensor of its own and warns (torch 2.13)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_loss_and_gradients_equal_eager_at_two_shapes():
    pyro.clear_param_store()
    model, guide = _pair()
    cmodel, cguide = _pair("_compiled")
    cmodel.load_state_dict(model.state_dict())
    cguide.load_state_dict(guide.state_dict())
    compile_networks(cmodel, cguide)
    gen = torch.Generator().manual_seed(0)
    for B, T in ((3, 6), (2, 9)):  # batch size and length change: dynamic shapes
        x = torch.bernoulli(torch.full((B, T, 5), 0.3), generator=gen)
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, T - 2:] = False  # padding
        loss_e, grads_e = _loss_and_grads(model, guide, x, mask)
        loss_c, grads_c = _loss_and_grads(cmodel, cguide, x, mask)
        assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        for gc, ge in zip(grads_c, grads_e):
            assert_close(gc, ge, rtol=1e-4, atol=1e-5)
