"""``TrainConfig.validate``: Pyro's checks on the first update of a fit (the default), on every
update, or never, without touching the process-wide setting."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_trainer_resume import fresh_trainer, tiny_config, tiny_splits

from pyro_seqvae.data import Splits
from pyro_seqvae.errors import ConfigError, DataError


def record_validation(trainer):
    """Wrap ``trainer.svi.step`` to record whether validation was on at each update."""
    seen = []
    real_step = trainer.svi.step

    def step(*args, **kwargs):
        seen.append((pyro.infer.is_validation_enabled(), dist.is_validation_enabled(),
                     pyro.poutine.is_validation_enabled()))
        return real_step(*args, **kwargs)

    trainer.svi.step = step
    return seen


@pytest.mark.parametrize("setting, expected", [
    ("first", [True] + [False] * 5),
    ("always", [True] * 6),
    ("never", [False] * 6),
])
@pytest.mark.parametrize("globally", [True, False])
def test_validation_follows_the_setting_and_leaves_the_global_flag(tmp_path, setting,
                                                                   expected, globally):
    pyro.enable_validation(globally)
    trainer = fresh_trainer(tiny_config(validate=setting), tmp_path)
    seen = record_validation(trainer)
    trainer.fit(tiny_splits())  # 3 epochs of 2 updates
    assert [s[0] for s in seen] == expected
    assert all(len(set(s)) == 1 for s in seen)  # infer, distributions and poutine agree
    assert pyro.infer.is_validation_enabled() is globally
    assert dist.is_validation_enabled() is globally


def test_first_means_the_first_update_of_each_fit(tmp_path):
    trainer = fresh_trainer(tiny_config(epochs=1, validate="first"), tmp_path)
    seen = record_validation(trainer)
    trainer.fit(tiny_splits())
    resumed = fresh_trainer(tiny_config(epochs=2, validate="first"), tmp_path)
    seen_resumed = record_validation(resumed)
    resumed.fit(tiny_splits(), resume=tmp_path / "checkpoint_last.pt")
    assert [s[0] for s in seen] == [True, False]
    assert [s[0] for s in seen_resumed] == [True, False]


def half_splits():
    """Rolls of 0.5s: outside the Bernoulli emission's support {0, 1}."""
    lengths = {"train": [5, 6], "valid": [5], "test": [5]}
    return Splits.from_lists({name: [torch.full((T, 88), 0.5) for T in lens]
                              for name, lens in lengths.items()}, source="halves")


@pytest.mark.parametrize("setting", ["first", "always", "never"])
def test_data_outside_the_support_is_refused_before_the_first_update(tmp_path, setting):
    """Issue 11: the data is checked against the emission when training starts, whatever the
    validation setting (``never`` used to train on it silently), in one line without a dump."""
    trainer = fresh_trainer(tiny_config(validate=setting), tmp_path)
    with pytest.raises(DataError) as info:
        trainer.fit(half_splits())
    message = str(info.value)
    assert message == ("halves: split 'train', sequence 0, step 0, feature 0 holds 0.5 "
                       "(968 values in this split); emission bernoulli needs 0 or 1 "
                       "(a binary piano roll)")
    assert trainer.step == 0
    assert not (tmp_path / "run.json").exists()


def test_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match=r"validate must be one of \['first', 'always', "
                                          r"'never'\], got 'sometimes'"):
        tiny_config(validate="sometimes")


def test_the_librarys_own_errors_pass_through_unchanged(tmp_path):
    trainer = fresh_trainer(tiny_config(), tmp_path)

    def step(*args, **kwargs):
        raise ConfigError("under JIT, beta must be a tensor")

    trainer.svi.step = step
    with pytest.raises(ConfigError, match="^under JIT, beta must be a tensor$"):
        trainer.fit(tiny_splits())
