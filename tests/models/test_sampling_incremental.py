"""Step-by-step sampling (O(T)) draws exactly what the old prefix recomputation (O(T^2)) drew.

The references are the sampling loops as they were before ``precompute_step`` (the latent
models' loop is the one ``benchmarks/sampling_speed.py`` times): at every step they recomputed
the model's features over the whole prefix ``x[:, :t + 1]``.
With the same seed the new loops must give bit-identical rolls, for every model, with and
without a prefix, with the prefix's latents from the prior or from a guide, for the Bernoulli
and the NADE emissions.
"""

import sys
from pathlib import Path

import pyro
import pytest
import torch
from common import GUIDE_KWARGS, build_model, tiny_batch

from pyro_seqvae.guides import default_guide_name, make_guide
from pyro_seqvae.layers import SequenceRNN
from pyro_seqvae.models import MODELS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sampling_speed import old_latent_sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

N, STEPS, P = 3, 12, 4
NADE = {"emission": "nade", "emission_kwargs": {"hidden_dim": 6}}


@torch.no_grad()
def old_rnn_sample(model, num_sequences, num_steps, prefix=None):
    """``RNN.sample`` before the step-by-step state: ``p(x_t | x_<t)`` recomputed over the whole
    prefix at every step. The old loop sampled all ``t + 1`` frames and kept the last, spending
    random numbers on ``t`` discarded frames; this copy samples the last frame's distribution
    only, which is the same distribution and the draws of the new loop."""
    x, P = model._prepare_prefix(num_sequences, num_steps, prefix)
    for t in range(P, num_steps):
        logits = model.decoder(model.rnn(torch.cat([x.new_zeros(num_sequences, 1, model.x_dim),
                                                    x[:, :t]], dim=1)))
        x[:, t] = model.emission(logits[:, t : t + 1]).sample()[:, 0]
    return x


def _prefix(device):
    x, _ = tiny_batch(1, P, seed=7, p=0.3, device=device)
    x[..., 0, 5] = 1.0
    return x[0]


def _both(model, prefix=None, guide=None, seed=3):
    old = old_rnn_sample if not model.has_latents else old_latent_sample
    kwargs = {} if guide is None else {"guide": guide}
    pyro.set_rng_seed(seed)
    before = old(model, N, STEPS, prefix, **kwargs)
    pyro.set_rng_seed(seed)
    after = model.sample(N, STEPS, prefix=prefix, **kwargs)
    return before, after


@pytest.mark.parametrize("emission", ["bernoulli", "nade"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_step_by_step_sampling_equals_the_prefix_recomputation(model_name, emission, device):
    model = build_model(model_name, device, **(NADE if emission == "nade" else {}))
    for prefix in (None, _prefix(device)):
        before, after = _both(model, prefix)
        assert torch.equal(before, after)
        assert 0 < after.mean() < 1  # a real roll, not all zeros or ones
    if model.has_latents:  # the prefix's latents inferred by a guide
        name = default_guide_name(model)
        guide = make_guide(name, model, **GUIDE_KWARGS[name]).to(device)
        before, after = _both(model, _prefix(device), guide)
        assert torch.equal(before, after)


@pytest.mark.parametrize("model_name", ["rnn", "srnn"])
def test_step_by_step_sampling_with_an_lstm(model_name, device):
    model = build_model(model_name, device, rnn_type="lstm")
    before, after = _both(model, _prefix(device))
    assert torch.equal(before, after)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_rnn_steps_reproduce_the_fused_call(kind):
    rnn = SequenceRNN(5, 4, kind)
    inputs = torch.randn(2, 7, 5)
    fused = rnn(inputs)
    state, steps = None, []
    for t in range(7):
        out, state = rnn.step(inputs[:, t], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), fused, rtol=1e-6, atol=1e-6)
