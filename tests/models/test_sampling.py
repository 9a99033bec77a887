"""Ancestral sampling: binary rolls of the right shape, seeded reproducibility, prefixes."""

import pyro
import pytest
import torch
from common import GUIDE_KWARGS, build_model, tiny_batch
from pyro import poutine

from pyro_seqvae.errors import DataError
from pyro_seqvae.guides import default_guide_name, make_guide
from pyro_seqvae.models import MODELS

pytestmark = pytest.mark.usefixtures("single_thread")

models = pytest.mark.parametrize("model_name", list(MODELS))
N, STEPS, P = 3, 6, 2


def _prefix(device, batch=False):
    x, _ = tiny_batch(N if batch else 1, P, seed=7, p=0.3, device=device)
    x[..., 0, 5] = 1.0  # never an all-zero prefix, which sampling could reproduce by chance
    return x if batch else x[0]


@models
def test_samples_are_binary_rolls_of_the_right_shape(model_name, device):
    model = build_model(model_name, device)
    rolls = model.sample(N, STEPS)
    assert rolls.shape == (N, STEPS, 88)
    assert rolls.dtype == torch.float32 and rolls.device.type == device.type
    assert ((rolls == 0) | (rolls == 1)).all()
    # an untrained decoder puts logits near 0: both values occur
    assert 0 < rolls.mean() < 1
    assert not rolls.requires_grad


@models
def test_a_fixed_seed_reproduces_the_samples(model_name, device):
    model = build_model(model_name, device)
    pyro.set_rng_seed(11)
    first = model.sample(N, STEPS)
    pyro.set_rng_seed(11)
    again = model.sample(N, STEPS)
    pyro.set_rng_seed(12)
    other = model.sample(N, STEPS)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@models
@pytest.mark.parametrize("batched", [False, True], ids=["prefix_PD", "prefix_NPD"])
def test_a_prefix_is_kept_verbatim(model_name, batched, device):
    model = build_model(model_name, device)
    prefix = _prefix(device, batched)
    rolls = model.sample(N, STEPS, prefix=prefix)
    assert rolls.shape == (N, STEPS, 88)
    assert torch.equal(rolls[:, :P], prefix.expand(N, P, 88))
    assert ((rolls == 0) | (rolls == 1)).all()
    # the prefix may fill every step
    full = model.sample(N, P, prefix=prefix)
    assert torch.equal(full, prefix.expand(N, P, 88))


@models
def test_a_guide_infers_the_latents_of_the_prefix(model_name, device):
    model = build_model(model_name, device)
    name = default_guide_name(model)
    guide = make_guide(name, model, **GUIDE_KWARGS[name]).to(device)
    prefix = _prefix(device)
    with poutine.trace() as tracer:
        rolls = model.sample(N, STEPS, prefix=prefix, guide=guide)
    assert rolls.shape == (N, STEPS, 88)
    assert torch.equal(rolls[:, :P], prefix.expand(N, P, 88))
    assert ((rolls == 0) | (rolls == 1)).all()
    # the guide's z sites of exactly the prefix steps were sampled (none for the RNN)
    sampled = [n for n, s in tracer.trace.nodes.items()
               if s["type"] == "sample" and n.startswith("z_")]
    assert sampled == ([f"z_{t + 1}" for t in range(P)] if model.has_latents else [])
    for name in sampled:
        assert tracer.trace.nodes[name]["value"].shape == (N, model.z_dim)
    # without a guide no site is sampled: the prefix latents come from the prior
    with poutine.trace() as tracer:
        model.sample(N, STEPS, prefix=prefix)
    assert not [n for n in tracer.trace.nodes if n.startswith("z_")]


@models
@pytest.mark.parametrize(
    "shape", [(P, 87), (N + 1, P, 88), (1, N, P, 88), (88,)],
    ids=["wrong_D", "wrong_N", "4d", "1d"])
def test_bad_prefix_shapes_raise_data_error(model_name, shape, device):
    model = build_model(model_name, device)
    prefix = torch.zeros(shape, device=device)
    with pytest.raises(DataError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        model.sample(N, STEPS, prefix=prefix)


@models
def test_a_prefix_longer_than_num_steps_raises_data_error(model_name, device):
    model = build_model(model_name, device)
    with pytest.raises(DataError, match="num_steps=1"):
        model.sample(N, 1, prefix=_prefix(device))
