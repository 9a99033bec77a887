"""The networks' hidden units: the SRNN paper's clamped leaky ReLU by default, guides that take
their model's setting, and checkpoints that rebuild the networks they were trained with."""

import pytest
import torch
from common import GUIDE_KWARGS, build_model, build_pair, tiny_batch

import pyro_seqvae.cli as cli
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides import SmoothingGuide, make_guide
from pyro_seqvae.layers import MLP, PAPER_ACTIVATION, PAPER_CLIP
from pyro_seqvae.models import MODELS, SRNN, Carry
from pyro_seqvae.training import TrainConfig
from pyro_seqvae.training.checkpoint import save_checkpoint

PAPER_MODELS = ["rnn", "vrnn", "storn", "srnn"]


def _hidden_units(module):
    """The (activation, clamp bound) pairs after each hidden Linear of every MLP in ``module``."""
    units = []
    for mlp in (m for m in module.modules() if isinstance(m, MLP)):
        layers = list(mlp.layers)
        for i, layer in enumerate(layers):
            if isinstance(layer, torch.nn.Linear) and i + 1 < len(layers):
                act = layers[i + 1]
                clamp = layers[i + 2] if i + 2 < len(layers) and hasattr(layers[i + 2], "bound") \
                    else None
                units.append((type(act).__name__, getattr(act, "negative_slope", None),
                              clamp.bound if clamp is not None else None))
    return units


@pytest.mark.parametrize("model_name", PAPER_MODELS)
def test_paper_models_default_to_the_clamped_leaky_relu(model_name):
    model = build_model(model_name)
    assert (model.activation, model.clip) == (PAPER_ACTIVATION, PAPER_CLIP) == ("leaky_relu", 3.0)
    units = _hidden_units(model)
    assert units and set(units) == {("LeakyReLU", 1 / 3, 3.0)}
    assert model.config()["activation"] == "leaky_relu" and model.config()["clip"] == 3.0


def test_dmm_keeps_the_relu_of_pyros_example():
    model = build_model("dmm")
    assert (model.activation, model.clip) == ("relu", None)
    assert {u[0] for u in _hidden_units(model)} == {"ReLU"}
    assert all(u[2] is None for u in _hidden_units(model))


@pytest.mark.parametrize("guide_name", ["filter", "smooth"])
@pytest.mark.parametrize("model_name", ["vrnn", "srnn", "dmm"])
def test_guides_take_their_models_setting(model_name, guide_name):
    model, guide = build_pair(model_name, guide_name)
    assert (guide.activation, guide.clip) == (model.activation, model.clip)
    assert {u[0] for u in _hidden_units(guide)} == {u[0] for u in _hidden_units(model)}
    assert guide.config()["activation"] == model.activation  # resolved, not the sentinel
    assert guide.config()["clip"] == model.clip


def test_a_guide_can_be_told_otherwise():
    model = build_model("srnn", activation="tanh", clip=None)
    inherited = make_guide("smooth", model, **GUIDE_KWARGS["smooth"])
    assert (inherited.activation, inherited.clip) == ("tanh", None)
    own = SmoothingGuide(model, activation="relu", clip=2.0, **GUIDE_KWARGS["smooth"],
                         name="Own")
    assert (own.activation, own.clip) == ("relu", 2.0)
    assert set(_hidden_units(own)) == {("ReLU", None, 2.0)}


@pytest.mark.parametrize("kwargs, match", [
    ({"activation": "swish"}, "activation must be one of"),
    ({"clip": -1.0}, "clip must be None or a positive number, got -1.0"),
    ({"clip": "3"}, "clip must be None or a positive number, got '3'"),
])
def test_bad_settings_are_config_errors_naming_the_argument(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_model("srnn", **kwargs)
    with pytest.raises(ConfigError, match=match):
        make_guide("filter", build_model("srnn"), **kwargs)


def test_the_clamp_bounds_the_prior_mean_for_any_previous_latent():
    """With the clamp, ``|NN1_p(z_{t-1}, d_t)| <= sum_j |W2_ij| * 3 + |b2_i|`` whatever
    ``z_{t-1}``: the latent chain cannot run away. The same weights unclamped grow with z."""
    torch.manual_seed(0)
    clamped = SRNN(x_dim=4, z_dim=6, rnn_dim=5, hidden_dim=8)
    free = SRNN(x_dim=4, z_dim=6, rnn_dim=5, hidden_dim=8, clip=None, name="Free")
    free.load_state_dict({k.replace("layers.3", "layers.2"): v
                          for k, v in clamped.state_dict().items()})
    last = clamped.prior_net.loc_net.layers[-1]
    bound = last.weight.abs().sum(-1) * 3.0 + last.bias.abs()
    z = 1e4 * torch.randn(64, 6)
    d = torch.randn(64, 5)
    with torch.no_grad():
        loc_clamped = clamped.prior_loc(Carry(z=z), d)
        loc_free = free.prior_loc(Carry(z=z), d)
        small = clamped.prior_loc(Carry(z=z * 1e-6), d), free.prior_loc(Carry(z=z * 1e-6), d)
    assert (loc_clamped.abs() <= bound + 1e-5).all()
    assert loc_free.abs().max() > 1e3
    # near the origin, where the clamp is not reached, the two networks agree
    torch.testing.assert_close(*small)


def test_checkpoints_rebuild_the_networks_they_were_trained_with(tmp_path):
    """A run trained under other defaults (here ReLU, no clamp, as before the paper's settings
    became the default) reloads exactly: its config names no activation, its stored
    ``model.config()`` does."""
    model, guide = build_pair("srnn", "smooth", residual=True,
                              model_kwargs={"activation": "relu", "clip": None})
    config = TrainConfig(model="srnn", guide="smooth", residual=True,
                         model_kwargs={"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
                         guide_kwargs=GUIDE_KWARGS["smooth"])
    save_checkpoint(tmp_path / "checkpoint_best.pt", model=model, guide=guide, optim=None,
                    config=config, epoch=1, step=1, best_valid=-1.0)
    # the config alone would now build the clamped leaky ReLU, with other layer indices
    assert config.build(88)[0].activation == "leaky_relu"
    loaded, loaded_guide, *_ = cli._load_run(tmp_path, "cpu")
    assert (loaded.activation, loaded.clip) == ("relu", None)
    assert (loaded_guide.activation, loaded_guide.clip) == ("relu", None)
    x, mask = tiny_batch(3, 6, (6, 4, 2))
    torch.manual_seed(1)
    with torch.no_grad():
        expected = guide.summarise(x, mask, model.precompute(x, mask))
        got = loaded_guide.summarise(x, mask, loaded.precompute(x, mask))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        z = torch.randn(3, 3)
        pre_t = model.precompute(x, mask)[:, 0]
        torch.testing.assert_close(loaded.prior_loc(Carry(z=z), pre_t),
                                   model.prior_loc(Carry(z=z), pre_t), rtol=0, atol=0)


def test_a_stored_config_from_another_version_is_a_config_error(tmp_path):
    model, guide = build_pair("srnn", "filter")
    config = TrainConfig(model="srnn", guide="filter")
    path = save_checkpoint(tmp_path / "checkpoint_last.pt", model=model, guide=guide,
                           optim=None, config=config, epoch=0, step=0, best_valid=None)
    payload = torch.load(path, weights_only=True)  # plain data only
    payload["model_config"]["gate_width"] = 4
    torch.save(payload, path)
    with pytest.raises(ConfigError, match=r"checkpoint_last\.pt: model_config does not fit"):
        cli._load_run(tmp_path, "cpu")


def test_every_registered_model_rebuilds_from_its_own_config():
    for name in MODELS:
        model = build_model(name)
        guide_name = "filter" if model.has_latents else "none"
        config = TrainConfig(model=name, guide=guide_name)
        guide = make_guide(guide_name, model, **GUIDE_KWARGS[guide_name])
        rebuilt, rebuilt_guide = config.build(88, model_config=model.config(),
                                              guide_config=guide.config())
        assert rebuilt.config() == model.config() and rebuilt_guide.config() == guide.config()
        rebuilt.load_state_dict(model.state_dict())  # same layers, same names
        rebuilt_guide.load_state_dict(guide.state_dict())
