"""TrainConfig: validation that names the field, the automatic KL increment, JSON round trip."""

import math

import pytest

from pyro_seqvae.errors import ConfigError, IncompatibleGuideError
from pyro_seqvae.infer import LinearKLSchedule
from pyro_seqvae.training import TrainConfig, resolve_device
from pyro_seqvae.training.config import PAPER_BETA_INCREMENT

TINY = {"model_kwargs": {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
        "guide_kwargs": {"hidden_dim": 7, "summary_dim": 5}}


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 2.0), ("epochs", True), ("batch_size", -1),
    ("num_particles", 0), ("lr", 0.0), ("lr", -1e-3), ("lr_decay", 0.0), ("lr_decay", 1.5),
    ("clip_norm", 0.0), ("elbo", "nope"), ("patience", 0), ("transpose", -1),
])
def test_invalid_value_is_a_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_jit_pads_to_multiples_of_8_by_default():
    assert TrainConfig(elbo="jit").pad_to_multiple == 8
    assert TrainConfig(elbo="jit", pad_to_multiple=32).pad_to_multiple == 32
    assert TrainConfig().pad_to_multiple is None


def test_defaults_are_the_papers_learning_rate_and_checks_on_the_first_update():
    config = TrainConfig()
    assert config.lr == 1e-3 and config.validate == "first"
    # a config stored before the field existed still loads, with the default
    stored = config.to_dict()
    del stored["validate"]
    assert TrainConfig.from_dict(stored).validate == "first"


def test_round_trip_through_a_dict():
    config = TrainConfig(model="vrnn", guide="filter", epochs=2, patience=3, **TINY)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.replace(epochs=5).epochs == 5 and config.epochs == 2


def test_from_dict_rejects_unknown_fields():
    data = dict(TrainConfig().to_dict(), learning_rate=0.1, zeta=1)
    with pytest.raises(ConfigError, match=r"\['learning_rate', 'zeta'\]"):
        TrainConfig.from_dict(data)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().epochs = 3


@pytest.mark.parametrize("epochs, updates, start", [(10, 100, 0.2), (2, 3, 0.2), (1, 1, 0.5),
                                                    (1000, 500, 0.2)])
def test_automatic_increment_reaches_one_by_mid_run(epochs, updates, start):
    schedule = TrainConfig(epochs=epochs, beta_start=start).kl_schedule(updates)
    total = epochs * updates
    assert isinstance(schedule, LinearKLSchedule)
    assert schedule.start == start
    assert schedule.increment == pytest.approx(
        max(PAPER_BETA_INCREMENT, (1 - start) / (0.5 * total)))
    if schedule.increment > PAPER_BETA_INCREMENT:  # raised: beta is 1 by the middle of the run
        assert schedule(math.ceil(total / 2)) == pytest.approx(1.0)
        assert schedule(total) == 1.0


def test_long_runs_keep_the_paper_increment():
    assert TrainConfig(epochs=1000).kl_schedule(500).increment == PAPER_BETA_INCREMENT


def test_explicit_increment_is_kept():
    schedule = TrainConfig(beta_start=0.5, beta_increment=0.01).kl_schedule(7)
    assert (schedule.start, schedule.increment) == (0.5, 0.01)


@pytest.mark.parametrize("changes", [{"beta_start": 0.0}, {"beta_start": 1.5},
                                     {"beta_increment": -0.1}])
def test_invalid_schedule_is_a_config_error(changes):
    with pytest.raises(ConfigError, match="beta"):
        TrainConfig(**changes).kl_schedule(10)


def test_build_makes_the_named_pair():
    model, guide = TrainConfig(model="srnn", guide="smooth", residual=True, **TINY).build(88)
    assert type(model).__name__ == "SRNN" and type(guide).__name__ == "SmoothingGuide"
    assert guide.residual and model.x_dim == 88


def test_build_default_guide():
    model, guide = TrainConfig(model="rnn", model_kwargs={"rnn_dim": 5, "hidden_dim": 7}).build(4)
    assert type(guide).__name__ == "EmptyGuide" and model.x_dim == 4


@pytest.mark.parametrize("changes, error, match", [
    ({"model": "transformer"}, ConfigError, "transformer"),
    ({"guide": "psychic"}, ConfigError, "psychic"),
    ({"model": "storn", "guide": "smooth", "residual": True}, IncompatibleGuideError, "STORN"),
    ({"model": "rnn", "guide": "smooth"}, IncompatibleGuideError, "RNN"),
    ({"model": "rnn", "guide": "none", "residual": True}, ConfigError, "residual"),
])
def test_impossible_builds_raise_clear_errors(changes, error, match):
    kwargs = dict(TINY)
    if changes.get("model") == "rnn":
        kwargs["model_kwargs"] = {"rnn_dim": 5, "hidden_dim": 7}
    with pytest.raises(error, match=match):
        TrainConfig(**{**kwargs, **changes}).build(88)


def test_device_errors_are_config_errors():
    with pytest.raises(ConfigError, match="device"):
        resolve_device("toaster")
    assert resolve_device("cpu").type == "cpu"


def test_cuda_without_cuda_is_a_config_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
