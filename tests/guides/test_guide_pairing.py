"""Issue 11, item 9: a guide runs only with the model it was built for, checked at call time.

Before the fix, an SRNN's guide paired in ``SVI`` with a VRNN, a second SRNN or a DMM returned
a loss, and a different ``z_dim`` failed deep in torch.
"""

import math

import pyro
import pytest
import torch
from common import build_model
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.errors import IncompatibleGuideError
from pyro_seqvae.guides import FilteringGuide, SmoothingGuide
from pyro_seqvae.infer.importance import log_importance_weights


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 6, 88, generator=g) < 0.1).float()
    return x, torch.ones(2, 6, dtype=torch.bool)


def srnn_and_guide(name="SRNN"):
    model = build_model("srnn", name=name)
    return model, SmoothingGuide(model, residual=True, hidden_dim=7, summary_dim=5,
                                 name=f"{name}_guide")


@pytest.mark.parametrize("other", ["second-srnn", "vrnn", "dmm", "dmm-z4"])
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO,
                                  lambda: RenyiELBO(alpha=0, num_particles=2,
                                                    vectorize_particles=True,
                                                    max_plate_nesting=1)],
                         ids=["trace", "meanfield", "iwae"])
def test_svi_with_another_models_guide_is_refused_by_name(batch, other, elbo):
    model_a, guide_a = srnn_and_guide("SRNN_a")
    model_b = {"second-srnn": lambda: build_model("srnn", name="SRNN_b"),
               "vrnn": lambda: build_model("vrnn"),
               "dmm": lambda: build_model("dmm"),
               "dmm-z4": lambda: build_model("dmm", z_dim=4)}[other]()
    svi = SVI(model_b, guide_a, ClippedAdam({"lr": 1e-3}), elbo())
    before = {k: v.detach().clone() for k, v in model_b.state_dict().items()}
    with pytest.raises(IncompatibleGuideError) as info:
        svi.step(*batch)
    message = str(info.value)
    assert message.startswith("SmoothingGuide was built for SRNN 'SRNN_a' (z_dim=3)")
    assert f"but is run with {type(model_b).__name__} '{model_b._pyro_name}'" in message
    assert len(message.splitlines()) == 1
    assert all(torch.equal(before[k], v) for k, v in model_b.state_dict().items())


def test_the_guides_own_model_still_trains(batch):
    model, guide = srnn_and_guide()
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), Trace_ELBO())
    assert all(math.isfinite(svi.step(*batch)) for _ in range(2))


def test_importance_weights_with_another_models_guide(batch):
    _, guide_a = srnn_and_guide("SRNN_a")
    model_b = build_model("srnn", name="SRNN_b")
    with pytest.raises(IncompatibleGuideError, match="built for SRNN 'SRNN_a'"):
        log_importance_weights(model_b, guide_a, *batch, num_particles=3)


def test_a_foreign_guide_of_the_wrong_width_is_named_before_torch_fails(batch):
    """A hand-written guide carries no mark, but its z_1 is still checked against z_dim."""
    model = build_model("srnn")  # z_dim 3

    def guide(x, mask, beta=1.0):
        with pyro.plate("sequences", x.shape[0], dim=-1):
            for t in pyro.markov(range(x.shape[1])):
                pyro.sample(f"z_{t + 1}", pyro.distributions.Normal(
                    x.new_zeros(x.shape[0], 5), 1.0).to_event(1))

    with pytest.raises(IncompatibleGuideError,
                       match=r"latent z_1 has width 5 but SRNN 'SRNN' \(z_dim=3\).* expects "
                             r"z_dim=3"):
        Trace_ELBO().loss(model, guide, *batch)


def test_a_model_run_on_its_own_is_not_affected(batch):
    """Only a replay on a guide's trace is checked: running another model after a guide is fine."""
    _, guide_a = srnn_and_guide("SRNN_a")
    model_b = build_model("srnn", name="SRNN_b")
    guide_a(*batch)
    trace = poutine.trace(model_b).get_trace(*batch)
    assert "z_1" in trace.nodes


def test_sampling_a_prefix_with_another_models_guide(batch):
    _, guide_a = srnn_and_guide("SRNN_a")
    model_b = build_model("srnn", name="SRNN_b")
    with pytest.raises(IncompatibleGuideError, match="built for SRNN 'SRNN_a'"):
        model_b.sample(2, 8, prefix=batch[0][:, :3], guide=guide_a)


def test_filtering_guide_of_a_vrnn_with_a_storn(batch):
    vrnn = build_model("vrnn")
    guide = FilteringGuide(vrnn, hidden_dim=7, summary_dim=5)
    storn = build_model("storn")
    with pytest.raises(IncompatibleGuideError, match="FilteringGuide was built for VRNN .* "
                                                     "but is run with STORN"):
        Trace_ELBO().loss(storn, guide, *batch)
