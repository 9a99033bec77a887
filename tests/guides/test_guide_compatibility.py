"""Impossible (model, guide) pairings raise IncompatibleGuideError naming both classes."""

import pytest
from common import GUIDE_KWARGS, build_model

from pyro_seqvae.errors import IncompatibleGuideError, SeqVAEError
from pyro_seqvae.guides import GUIDES, EmptyGuide, FilteringGuide, SmoothingGuide, make_guide

IMPOSSIBLE = [
    ("rnn", "filter", False, "no latent sites"),
    ("rnn", "smooth", False, "no latent sites"),
    ("rnn", "filter", True, "no latent sites"),
    ("storn", "filter", True, "prior-mean network|no learned mean"),
    ("storn", "smooth", True, "prior-mean network|no learned mean"),
    ("vrnn", "none", False, "latent sites"),
    ("storn", "none", False, "latent sites"),
    ("srnn", "none", False, "latent sites"),
    ("dmm", "none", False, "latent sites"),
    ("tsbn", "none", False, "latent sites"),
    ("tsbn", "filter", True, "Res_q shifts the mean of a Gaussian guide"),
    ("tsbn", "smooth", True, "Res_q shifts the mean of a Gaussian guide"),
]


@pytest.mark.parametrize("model_name,guide_name,residual,reason", IMPOSSIBLE,
                         ids=[f"{m}-{g}" + ("-res" if r else "") for m, g, r, _ in IMPOSSIBLE])
def test_impossible_pairings_raise(model_name, guide_name, residual, reason):
    model = build_model(model_name)
    kwargs = dict(GUIDE_KWARGS[guide_name])
    if guide_name != "none":
        kwargs["residual"] = residual
    with pytest.raises(IncompatibleGuideError, match=reason) as info:
        make_guide(guide_name, model, **kwargs)
    message = str(info.value)
    assert type(model).__name__ in message
    assert GUIDES[guide_name].__name__ in message
    assert isinstance(info.value, SeqVAEError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize("cls", [FilteringGuide, SmoothingGuide, EmptyGuide],
                         ids=lambda c: c.__name__)
def test_a_guide_needs_a_pyro_seqvae_model(cls):
    with pytest.raises(IncompatibleGuideError, match=cls.__name__):
        cls(object())


def test_storn_has_no_prior_mean_network_to_call():
    model = build_model("storn")
    assert not model.has_learned_prior_loc
    with pytest.raises(IncompatibleGuideError, match="STORN"):
        model.prior_loc(None, None)


def test_guide_aliases():
    model = build_model("srnn")
    assert type(make_guide("Smoothing", model, **GUIDE_KWARGS["smooth"])) is SmoothingGuide
    assert type(make_guide("filtering", model, **GUIDE_KWARGS["filter"])) is FilteringGuide
    assert type(make_guide("empty", build_model("rnn"))) is EmptyGuide
