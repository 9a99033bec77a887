"""TrainConfig.valid_estimator: SMC's log Z-hat as the validation figure of SMC-trained runs.

The SMC figure draws from its own seeded random numbers, so a run validated by it is the same
run as one validated by the ELBO alone (same parameters at the end); it selects
``checkpoint_best.pt`` and drives ``patience``; it cannot change when a run is resumed.
"""

import pyro
import pytest
import torch
from common import build_pair, tiny_batch
from test_trainer_resume import assert_states_equal, fresh_trainer, states, tiny_config, tiny_splits

from pyro_seqvae.data.batching import Batch
from pyro_seqvae.errors import CheckpointError, ConfigError
from pyro_seqvae.infer import run_smc, smc_per_step
from pyro_seqvae.training import BEST, LAST, load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

#: At this seed the two figures peak at different epochs (ELBO: 2, SMC: 4).
SMC_RUN = dict(elbo="nasmc", num_particles=3, valid_estimator="smc", epochs=4, seed=2)


def test_smc_per_step_is_seeded_and_leaves_the_callers_random_stream():
    pyro.set_rng_seed(0)
    model, guide = build_pair("tsbn", "filter")
    x, mask = tiny_batch(B=4, T=6, lengths=[4, 6, 2, 6])
    batches = [Batch(x[:2], mask[:2], mask[:2].sum(-1), torch.arange(2)),
               Batch(x[2:], mask[2:], mask[2:].sum(-1), torch.arange(2))]
    pyro.set_rng_seed(4)
    with torch.no_grad():
        expected = sum(float(run_smc(model, guide, b.x, b.mask, num_particles=5).log_z
                             .double().sum()) for b in batches) / int(mask.sum())
    pyro.set_rng_seed(123)
    before = torch.rand(3)
    pyro.set_rng_seed(123)
    figure = smc_per_step(model, guide, batches, num_particles=5, seed=4)
    assert figure == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(torch.rand(3), before)  # the caller's stream is where it was
    assert smc_per_step(model, guide, batches, num_particles=5, seed=4) == figure


@pytest.mark.parametrize("changes, match", [
    ({"valid_estimator": "iwae"}, "valid_estimator must be one of"),
    ({"valid_estimator": "smc", "num_particles": 1}, "needs at least 2"),
])
def test_bad_valid_estimator_settings_are_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**changes)


def test_smc_validation_needs_latents():
    config = tiny_config(model="rnn", guide="none", residual=False, valid_estimator="smc",
                         num_particles=2, model_kwargs={"rnn_dim": 5}, guide_kwargs={})
    with pytest.raises(ConfigError, match="runs SMC over latent variables; RNN has none"):
        config.build(88)


def test_smc_validation_selects_the_checkpoint_without_changing_the_run(tmp_path):
    splits = tiny_splits()
    runs = {}
    for estimator in ("elbo", "smc"):
        trainer = fresh_trainer(tiny_config(**{**SMC_RUN, "valid_estimator": estimator}),
                                tmp_path / estimator)
        runs[estimator] = (trainer, trainer.fit(splits))
    elbo_run, smc_run = runs["elbo"][0], runs["smc"][0]
    for ours, theirs in zip(states(smc_run), states(elbo_run)):
        assert_states_equal(ours, theirs)
    history = runs["smc"][1]
    assert all("valid_smc_per_step" in r for r in history)
    assert [r["valid_elbo_per_step"] for r in history] == pytest.approx(
        [r["valid_elbo_per_step"] for r in runs["elbo"][1]], abs=1e-6)
    best = max(history, key=lambda r: r["valid_smc_per_step"])
    assert smc_run.best_valid == best["valid_smc_per_step"]
    assert load_checkpoint(tmp_path / "smc" / BEST)["epoch"] == best["epoch"] == 4
    assert load_checkpoint(tmp_path / "elbo" / BEST)["epoch"] == 2
    assert max(history, key=lambda r: r["valid_elbo_per_step"])["epoch"] == 2


def test_the_validation_figure_cannot_change_on_resume(tmp_path):
    splits = tiny_splits()
    first = fresh_trainer(tiny_config(**{**SMC_RUN, "epochs": 1}), tmp_path / "run")
    first.fit(splits)
    second = fresh_trainer(tiny_config(**{**SMC_RUN, "valid_estimator": "elbo"}),
                           tmp_path / "run")
    with pytest.raises(CheckpointError, match="valid_estimator"):
        second.fit(splits, resume=tmp_path / "run" / LAST)



def test_cli_validates_an_nasmc_run_by_smc(tmp_path):
    from test_cli import TINY, assert_one_line_error, run_cli, write_benchmark_pickle

    data = write_benchmark_pickle(tmp_path / "tiny.pickle")
    common = ["train", "--data", data, *TINY, "--model", "tsbn", "--epochs", 2]
    result = run_cli(*common, "--valid-estimator", "smc", "--out", tmp_path / "bad")
    assert_one_line_error(*result, "train", "needs at least 2")
    status, stdout, stderr = run_cli(*common, "--elbo", "nasmc", "--particles", 3,
                                     "--valid-estimator", "smc", "--out", tmp_path / "run")
    assert status == 0, stderr
    assert "best validation SMC estimate" in stdout
    assert load_checkpoint(tmp_path / "run" / LAST)["config"]["valid_estimator"] == "smc"
