"""TrainConfig.elbo_path: the Trainer computes trace/meanfield with DirectELBO, and RWS with its
direct densities, where it can.

The direct path is the same objective with the same random numbers, so a run trained on it
ends at the parameters of the same run on Pyro's traces (to float32 rounding); pairs it does not
cover (trace/meanfield: binary latents; rws: the VRNN's z-dependent recurrence) fall back to
Pyro's traces under ``auto`` and are refused under ``direct``.
"""

import pytest
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from test_trainer_resume import (
    assert_states_equal,
    fresh_trainer,
    states,
    tiny_config,
    tiny_splits,
)

from pyro_seqvae.errors import ConfigError
from pyro_seqvae.infer import ReweightedWakeSleep
from pyro_seqvae.infer.direct_elbo import DirectELBO
from pyro_seqvae.training import LAST

pytestmark = pytest.mark.usefixtures("single_thread")

SIZES = {"srnn": {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
         "vrnn": {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
         "dmm": {"z_dim": 3, "transition_dim": 5, "emission_dim": 5}}


@pytest.mark.parametrize("model, guide, residual", [("srnn", "smooth", True),
                                                    ("vrnn", "filter", False),
                                                    ("dmm", "smooth", False)])
def test_direct_and_pyro_paths_train_to_the_same_parameters(tmp_path, model, guide, residual):
    splits = tiny_splits()
    ends = {}
    for path in ("pyro", "direct"):
        config = tiny_config(model=model, guide=guide, residual=residual, epochs=2,
                             elbo_path=path, input_flip=0.05,
                             model_kwargs=SIZES[model])
        trainer = fresh_trainer(config, tmp_path / path)
        history = trainer.fit(splits)
        assert isinstance(trainer.elbo, DirectELBO) == (path == "direct")
        ends[path] = (states(trainer), [r["valid_elbo_per_step"] for r in history])
    assert_states_equal(ends["direct"][0][0], ends["pyro"][0][0])
    assert_states_equal(ends["direct"][0][1], ends["pyro"][0][1])
    assert ends["direct"][1] == pytest.approx(ends["pyro"][1], abs=1e-5)


def test_auto_is_the_default_and_falls_back_for_binary_latents(tmp_path):
    srnn = fresh_trainer(tiny_config(), tmp_path / "srnn")
    assert srnn.config.elbo_path == "auto" and isinstance(srnn.elbo, DirectELBO)
    tsbn = fresh_trainer(tiny_config(model="tsbn", guide="filter", residual=False,
                                     model_kwargs={"z_dim": 3}, guide_kwargs={}, epochs=1),
                         tmp_path / "tsbn")
    assert isinstance(tsbn.elbo.fallback, Trace_ELBO)
    history = tsbn.fit(tiny_splits())
    assert len(history) == 1
    meanfield = fresh_trainer(tiny_config(elbo_path="auto"), tmp_path / "mf")
    assert isinstance(meanfield.elbo.fallback, TraceMeanField_ELBO)
    assert meanfield.elbo.analytic_kl


def test_other_objectives_keep_pyros_path(tmp_path):
    trainer = fresh_trainer(tiny_config(elbo="iwae", num_particles=2), tmp_path)
    assert not isinstance(trainer.elbo, DirectELBO)


@pytest.mark.parametrize("changes, match", [
    ({"elbo_path": "fast"}, "elbo_path must be one of"),
    ({"elbo_path": "direct", "elbo": "iwae"}, "applies to the objectives"),
])
def test_bad_elbo_path_settings_are_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**changes)


def test_direct_path_refuses_binary_latents_before_training(tmp_path):
    config = tiny_config(model="tsbn", guide="filter", residual=False, elbo="trace",
                         elbo_path="direct", model_kwargs={"z_dim": 3}, guide_kwargs={},
                         epochs=1)
    with pytest.raises(ConfigError, match="cannot train TSBN with FilteringGuide"):
        fresh_trainer(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_may_continue_on_the_other_path(tmp_path):
    splits = tiny_splits()
    first = fresh_trainer(tiny_config(epochs=1, elbo_path="pyro"), tmp_path / "a")
    first.fit(splits)
    second = fresh_trainer(tiny_config(epochs=2, elbo_path="direct"), tmp_path / "b")
    history = second.fit(splits, resume=tmp_path / "a" / LAST)
    assert [r["epoch"] for r in history] == [2]


def test_rws_on_the_direct_path_trains_a_tsbn_to_the_same_parameters(tmp_path):
    """Without feedback corruption (the direct path draws it once for the guide and the model,
    the traced path once for each) the two paths are the same run."""
    splits = tiny_splits()
    ends = {}
    for path in ("pyro", "direct"):
        config = tiny_config(model="tsbn", guide="filter", residual=False, elbo="rws",
                             num_particles=3, elbo_path=path, input_flip=0.0, epochs=2,
                             model_kwargs={"z_dim": 4}, guide_kwargs={"hidden_layers": 0})
        trainer = fresh_trainer(config, tmp_path / path)
        assert isinstance(trainer.elbo, ReweightedWakeSleep) and trainer.elbo.path == path
        history = trainer.fit(splits)
        ends[path] = (states(trainer), [r["train_objective_per_step"] for r in history])
    assert_states_equal(ends["direct"][0][0], ends["pyro"][0][0])
    assert_states_equal(ends["direct"][0][1], ends["pyro"][0][1])
    assert ends["direct"][1] == pytest.approx(ends["pyro"][1], abs=1e-5)


def test_direct_rws_refuses_a_recurrent_carry_before_training(tmp_path):
    vrnn = dict(model="vrnn", guide="filter", residual=False, elbo="rws", num_particles=2,
                model_kwargs=SIZES["vrnn"], guide_kwargs={"hidden_dim": 7}, epochs=1)
    with pytest.raises(ConfigError, match="cannot train VRNN with FilteringGuide"):
        fresh_trainer(tiny_config(elbo_path="direct", **vrnn), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    auto = fresh_trainer(tiny_config(elbo_path="auto", **vrnn), tmp_path / "auto")
    assert auto.elbo.path == "auto"
    assert len(auto.fit(tiny_splits())) == 1
