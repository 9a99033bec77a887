"""User-facing errors of the models: unknown names, bad hyperparameters, bad input batches."""

import re

import pytest
from common import GUIDE_KWARGS, MODEL_KWARGS, build_model, build_pair, tiny_batch

from pyro_seqvae.errors import ConfigError, DataError, SeqVAEError
from pyro_seqvae.guides import make_guide
from pyro_seqvae.models import MODELS, make_model, model_name

models = pytest.mark.parametrize("model_name", list(MODELS))


def test_make_model_builds_each_registered_class_and_rejects_unknown_names():
    for name, cls in MODELS.items():
        model = make_model(name.upper(), **MODEL_KWARGS[name])
        assert type(model) is cls and model_name(model) == name
    with pytest.raises(ConfigError, match="'lstm_vae'"):
        make_model("lstm_vae")
    with pytest.raises(ConfigError, match="unknown guide 'amortised'"):
        make_guide("amortised", build_model("srnn"))


@models
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4"], ids=repr)
def test_non_positive_sizes_raise_config_error_naming_the_argument(model_name, value):
    cls = MODELS[model_name]
    for arg in list(MODEL_KWARGS[model_name]) + ["x_dim"]:
        kwargs = {**MODEL_KWARGS[model_name], arg: value}
        with pytest.raises(ConfigError, match=rf"^{arg} must be a positive integer, got "):
            cls(**kwargs)


@pytest.mark.parametrize("model_name", ["rnn", "vrnn", "storn", "srnn"])
def test_unknown_rnn_type_raises_config_error(model_name):
    with pytest.raises(ConfigError, match="rnn_type.*'transformer'"):
        build_model(model_name, rnn_type="transformer")


@pytest.mark.parametrize("guide_name", ["filter", "smooth"])
@pytest.mark.parametrize("arg", ["hidden_dim", "summary_dim"])
def test_guide_sizes_raise_config_error_naming_the_argument(guide_name, arg):
    model = build_model("srnn")
    with pytest.raises(ConfigError, match=rf"^{arg} must be a positive integer, got 0"):
        make_guide(guide_name, model, **{**GUIDE_KWARGS[guide_name], arg: 0})


def test_unknown_emission_raises_config_error():
    with pytest.raises(ConfigError, match="unknown emission 'poisson'"):
        build_model("vrnn", emission="poisson")


def _bad_inputs():
    x, mask = tiny_batch(2, 5, (5, 3))
    return {
        "x_2d": (x[0], mask, r"\(5, 88\)"),
        "x_4d": (x.unsqueeze(0), mask, r"\(1, 2, 5, 88\)"),
        "x_int": (x.long(), mask, r"\(2, 5, 88\)"),
        "x_list": (x.tolist(), mask, "list"),
        "wrong_D": (x[..., :80], mask, "D=80.*x_dim=88"),
        "no_steps": (x[:, :0], mask[:, :0], "no time steps"),
        "mask_shape": (x, mask[:, :4], r"\[B, T\]=\(2, 5\), got \(2, 4\)"),
        "mask_3d": (x, mask.unsqueeze(-1), r"got \(2, 5, 1\)"),
        "mask_float": (x, mask.float(), "bool.*torch.float32"),
        "mask_none": (x, None, "NoneType"),
    }


BAD = _bad_inputs()


@models
@pytest.mark.parametrize("case", list(BAD))
def test_bad_batches_raise_data_error_naming_the_shape(model_name, case):
    x, mask, pattern = BAD[case]
    model, guide = build_pair(model_name, "none" if model_name == "rnn" else "smooth")
    callables = [model] if model_name == "rnn" else [model, guide]
    if model_name == "rnn":
        callables.append(model.log_likelihood)
    for fn in callables:
        with pytest.raises(DataError, match=pattern) as info:
            fn(x, mask)
        assert type(model).__name__ in str(info.value)
        assert isinstance(info.value, SeqVAEError) and isinstance(info.value, ValueError)


def test_sample_rejects_bad_sizes():
    model = build_model("srnn")
    with pytest.raises(ConfigError, match="num_sequences"):
        model.sample(0, 3)
    with pytest.raises(ConfigError, match="num_steps"):
        model.sample(2, -1)


def test_error_messages_are_single_line():
    model = build_model("dmm")
    x, mask = tiny_batch(2, 3)
    with pytest.raises(DataError) as info:
        model(x, mask.int())
    assert not re.search(r"\n", str(info.value))
