"""The model reuses the guide's deterministic states only when that is exact."""

import pyro
import pytest
import torch
from common import tiny_batch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_seqvae.guides import FilteringGuide, SmoothingGuide
from pyro_seqvae.models import SRNN, VRNN


def _build(model_cls, guide_cls, residual=False):
    model = model_cls(88, z_dim=3, rnn_dim=5, hidden_dim=7)
    return model, guide_cls(model, hidden_dim=7, summary_dim=5, residual=residual)


def _loss_and_grads(model, guide, x, mask, reuse):
    model.reuse_guide_states = reuse
    for p in list(model.parameters()) + list(guide.parameters()):
        p.grad = None
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss_and_grads(model, guide, x, mask, 0.5)
    grads = {n: p.grad.clone() for n, p in
             list(model.named_parameters()) + list(guide.named_parameters())
             if p.grad is not None}
    return loss, grads


@pytest.mark.parametrize("model_cls,guide_cls,residual", [
    (VRNN, FilteringGuide, False), (VRNN, SmoothingGuide, True), (SRNN, SmoothingGuide, True),
    (SRNN, FilteringGuide, False)])
def test_reuse_changes_neither_loss_nor_gradients(model_cls, guide_cls, residual):
    model, guide = _build(model_cls, guide_cls, residual)
    x, mask = tiny_batch(3, 6, [6, 4, 2], seed=1)
    loss_on, grads_on = _loss_and_grads(model, guide, x, mask, True)
    loss_off, grads_off = _loss_and_grads(model, guide, x, mask, False)
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert grads_on.keys() == grads_off.keys()
    for name in grads_on:
        assert torch.allclose(grads_on[name], grads_off[name], rtol=1e-5, atol=1e-7), name


def _count_calls(monkeypatch, model):
    calls = {"advance": 0, "precompute": 0}
    for name in calls:
        original = getattr(model, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, name, counted)
    return calls


def test_replayed_model_skips_the_recurrence_the_guide_ran(monkeypatch):
    model, guide = _build(VRNN, FilteringGuide)
    x, mask = tiny_batch(2, 5, [5, 3], seed=0)
    calls = _count_calls(monkeypatch, model)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    after_guide = dict(calls)
    poutine.replay(model, trace=guide_trace)(x, mask)
    assert after_guide == {"advance": 5, "precompute": 1}
    assert calls == after_guide  # the model computed neither precompute nor any h_t again


def test_no_reuse_for_other_samples_inputs_or_changed_weights(monkeypatch):
    model, guide = _build(VRNN, FilteringGuide)
    x, mask = tiny_batch(2, 5, [5, 3], seed=0)
    calls = _count_calls(monkeypatch, model)
    # the model on its own samples the prior: only the z-independent precompute is reused
    poutine.trace(guide).get_trace(x, mask)
    model(x, mask)
    assert calls["advance"] == 10 and calls["precompute"] == 1
    # an equal but distinct x misses
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    poutine.replay(model, trace=guide_trace)(x.clone(), mask)
    assert calls["advance"] == 20 and calls["precompute"] == 3
    # a weight changed in place since the guide ran misses
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    with torch.no_grad():
        model.cell.cell.weight_hh.add_(0.1)
    poutine.replay(model, trace=guide_trace)(x, mask)
    assert calls["advance"] == 30 and calls["precompute"] == 5


def test_res_q_prior_mean_is_computed_once_per_step(monkeypatch):
    model, guide = _build(SRNN, SmoothingGuide, residual=True)
    x, mask = tiny_batch(2, 5, [5, 3], seed=0)
    calls = {"loc_net": 0}
    original = model.prior_net.loc_net.forward

    def counted(*args, **kwargs):
        calls["loc_net"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model.prior_net.loc_net, "forward", counted)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    assert calls["loc_net"] == 5  # Res_q: NN1_p on the guide's own z_{t-1}
    poutine.replay(model, trace=guide_trace)(x, mask)
    assert calls["loc_net"] == 5  # the model's prior mean is that very tensor
    model.reuse_guide_states = False
    poutine.replay(model, trace=poutine.trace(guide).get_trace(x, mask))(x, mask)
    assert calls["loc_net"] == 15
