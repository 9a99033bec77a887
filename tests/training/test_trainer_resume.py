"""Trainer: exact resume, atomic and complete checkpoints, the NaN guard, early stopping and the
param-store claim (STYLE.md rule 8 and "Traps")."""

import json
import math

import pyro
import pytest
import torch

import pyro_seqvae.training.trainer as trainer_module
from pyro_seqvae.data import Splits, iterate_batches
from pyro_seqvae.errors import CheckpointError, DivergenceError
from pyro_seqvae.training import BEST, LAST, TrainConfig, Trainer, load_checkpoint
from pyro_seqvae.training.checkpoint import save_checkpoint

LENGTHS = {"train": [5, 7, 9, 12, 6, 8, 10, 11], "valid": [5, 9, 12], "test": [6, 8, 10]}


def tiny_splits(seed=0, lengths=None):
    """Binary 88-wide rolls of 5-12 steps: 8 train, 3 valid, 3 test sequences."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or LENGTHS
    return Splits.from_lists(
        {name: [(torch.rand(T, 88, generator=g) < 0.1).float() for T in lens]
         for name, lens in lengths.items()}, source="synthetic")


def tiny_config(**changes):
    """SRNN + smoothing guide + Res_q at toy sizes; two updates per epoch.

    ``beta_increment`` is explicit: the automatic one depends on ``epochs``, so a 1-epoch run
    extended to 3 epochs would otherwise anneal differently from a 3-epoch run.
    """
    base = dict(data="synthetic", model="srnn", guide="smooth", residual=True,
                model_kwargs={"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
                guide_kwargs={"hidden_dim": 7, "summary_dim": 5},
                epochs=3, batch_size=4, beta_increment=0.25, seed=0)
    return TrainConfig(**{**base, **changes})


def fresh_trainer(config, out_dir, x_dim=88):
    """What the CLI does in a new process: empty param store, seed, build, Trainer."""
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    model, guide = config.build(x_dim)
    return Trainer(model, guide, config, out_dir=out_dir, progress=False)


def states(trainer):
    return ({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            {k: v.detach().clone() for k, v in trainer.guide.state_dict().items()})


def assert_states_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0,
                                   msg=lambda m, key=key: f"{key}: {m}")


def read_metrics(folder):
    with open(folder / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def splits():
    return tiny_splits()


@pytest.fixture(scope="module")
def full_run(splits, tmp_path_factory):
    """An uninterrupted 3-epoch run: ``(folder, history, model_state, guide_state)``."""
    folder = tmp_path_factory.mktemp("run_a")
    trainer = fresh_trainer(tiny_config(), folder)
    history = trainer.fit(splits)
    model_state, guide_state = states(trainer)
    pyro.clear_param_store()
    return folder, history, model_state, guide_state


# ---- resume ----------------------------------------------------------------------------------
def test_resume_extends_a_shorter_run_to_the_same_parameters(splits, full_run, tmp_path):
    folder_a, history_a, model_a, guide_a = full_run
    fresh_trainer(tiny_config(epochs=1), tmp_path).fit(splits)
    assert len(read_metrics(tmp_path)) == 1

    resumed = fresh_trainer(tiny_config(epochs=3), tmp_path)  # resume ignores a new `epochs`
    history = resumed.fit(splits, resume=tmp_path / LAST)

    model_b, guide_b = states(resumed)
    assert_states_equal(model_b, model_a)
    assert_states_equal(guide_b, guide_a)
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for mine, theirs in zip(records, history_a):
        assert mine["step"] == theirs["step"]
        assert mine["valid_elbo_per_step"] == pytest.approx(theirs["valid_elbo_per_step"],
                                                            abs=1e-6)
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 3


def test_resume_after_an_interruption_gives_the_same_parameters(splits, full_run, tmp_path,
                                                                monkeypatch):
    _, _, model_a, guide_a = full_run
    trainer = fresh_trainer(tiny_config(), tmp_path)
    real_train_epoch = Trainer.train_epoch

    def interrupted(self, split):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(self, split)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(splits)
    monkeypatch.setattr(Trainer, "train_epoch", real_train_epoch)
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 1

    resumed = fresh_trainer(tiny_config(), tmp_path)
    resumed.fit(splits, resume=tmp_path)  # a run folder works too (best, else last)
    model_b, guide_b = states(resumed)
    assert_states_equal(model_b, model_a)
    assert_states_equal(guide_b, guide_a)
    assert len(read_metrics(tmp_path)) == 3


def test_resume_with_other_settings_is_refused(splits, full_run, tmp_path):
    folder_a = full_run[0]
    # lr, clip_norm, epochs, patience ... may change on resume (test_run_integrity.py)
    trainer = fresh_trainer(tiny_config(batch_size=2), tmp_path)
    with pytest.raises(CheckpointError, match="batch_size"):
        trainer.fit(splits, resume=folder_a / LAST)


def older_checkpoint(full_run, tmp_path, *missing):
    """The full run's last checkpoint as a release without the settings ``missing`` wrote it."""
    payload = torch.load(full_run[0] / LAST, weights_only=True)
    for key in missing:
        del payload["config"][key]
    path = tmp_path / "older.pt"
    torch.save(payload, path)
    return path


def test_a_setting_added_since_the_checkpoint_counts_as_its_default(splits, full_run, tmp_path):
    older = older_checkpoint(full_run, tmp_path, "discount", "input_flip")
    trainer = fresh_trainer(tiny_config(epochs=4), tmp_path / "run")
    history = trainer.fit(splits, resume=older)
    assert [r["epoch"] for r in history] == [4]


def test_a_setting_added_since_the_checkpoint_must_keep_its_default(splits, full_run, tmp_path):
    older = older_checkpoint(full_run, tmp_path, "input_flip")
    trainer = fresh_trainer(tiny_config(input_flip=0.1), tmp_path / "run")
    with pytest.raises(CheckpointError, match="input_flip"):
        trainer.fit(splits, resume=older)


def test_resume_from_a_missing_checkpoint_is_a_checkpoint_error(splits, tmp_path):
    trainer = fresh_trainer(tiny_config(), tmp_path / "run")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        trainer.fit(splits, resume=tmp_path / "nowhere" / LAST)


# ---- checkpoints and run files --------------------------------------------------------------
def test_run_folder_holds_only_the_final_files(full_run):
    folder = full_run[0]
    names = sorted(p.name for p in folder.iterdir())
    # no temporary files
    assert names == sorted([BEST, LAST, "curves.png", "metrics.jsonl", "run.json"])


def test_checkpoint_holds_everything_needed_to_resume(full_run):
    folder, history, model_state, guide_state = full_run
    payload = load_checkpoint(folder / LAST)
    for key in ("model_state", "guide_state", "optim_state", "rng_state", "epoch", "step",
                "config", "model_config", "guide_config", "best_valid"):
        assert key in payload, key
    assert payload["epoch"] == 3 and payload["step"] == 6
    assert payload["config"] == tiny_config().to_dict()
    assert_states_equal(payload["model_state"], model_state)
    assert_states_equal(payload["guide_state"], guide_state)
    assert set(payload["rng_state"]) >= {"torch", "numpy", "random"}
    # ClippedAdam keeps one optimizer per parameter, keyed by its param-store name
    assert payload["optim_state"] and all(name.startswith(("SRNN", "SmoothingGuide"))
                                          for name in payload["optim_state"])


def test_best_checkpoint_is_the_epoch_with_the_best_validation_elbo(full_run):
    folder = full_run[0]
    records = read_metrics(folder)
    assert len(records) == 3
    best = max(records, key=lambda r: r["valid_elbo_per_step"])
    payload = load_checkpoint(folder / BEST)
    assert payload["epoch"] == best["epoch"]
    assert payload["best_valid"] == pytest.approx(best["valid_elbo_per_step"], abs=1e-9)
    assert load_checkpoint(folder)["path"].endswith(BEST)  # a folder resolves to the best


def test_run_json_records_config_seed_versions_and_device(full_run):
    run = json.loads((full_run[0] / "run.json").read_text())
    assert run["config"] == tiny_config().to_dict()
    assert run["config"]["seed"] == 0
    env = run["environment"]
    assert env["device"] == "cpu"
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["pyro-ppl"] == pyro.__version__
    assert run["data"]["x_dim"] == 88
    assert run["data"]["sizes"] == {"train": 8, "valid": 3, "test": 3}
    assert run["model_config"]["x_dim"] == 88


def test_saved_state_is_a_copy_not_an_alias(tmp_path):
    config = tiny_config()
    model, guide = config.build(88)
    path = save_checkpoint(tmp_path / "c.pt", model=model, guide=guide, optim=None,
                           config=config, epoch=0, step=0, best_valid=-math.inf)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert_states_equal(load_checkpoint(path)["model_state"], before)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ---- divergence ------------------------------------------------------------------------------
@pytest.mark.parametrize("how, validate", [("loss", "first"), ("weights", "always"),
                                           ("weights", "first"), ("weights", "never")])
def test_a_nan_keeps_the_last_good_checkpoint(splits, tmp_path, how, validate):
    # with validation on, NaN weights fail a distribution's argument check (a ValueError);
    # with it off (by default after the first update) they give a NaN loss, for which Pyro
    # also warns (an error under pytest)
    trainer = fresh_trainer(tiny_config(validate=validate), tmp_path)
    real_step = trainer.svi.step
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and how.startswith("weights"):  # first update of epoch 2
            with torch.no_grad():
                next(trainer.model.decoder.parameters()).fill_(math.nan)
        loss = real_step(*args, **kwargs)
        return math.nan if len(calls) == 3 and how == "loss" else loss

    trainer.svi.step = step
    with pytest.raises(DivergenceError) as info:
        trainer.fit(splits)
    message = str(info.value)
    assert str(tmp_path / LAST) in message
    assert "epoch 2, update 3" in message and "nan" in message
    payload = load_checkpoint(tmp_path / LAST)
    assert payload["epoch"] == 1
    for state in (payload["model_state"], payload["guide_state"]):
        assert all(torch.isfinite(v).all() for v in state.values())
    assert len(read_metrics(tmp_path)) == 1


# ---- early stopping --------------------------------------------------------------------------
def scripted_validation(monkeypatch, values):
    """Replace the validation ELBO by a script (the trainer's stopping rule is what is tested)."""
    values = iter(values)
    monkeypatch.setattr(trainer_module, "elbo_per_step", lambda *args, **kwargs: next(values))


SMALL = {"train": [5, 6], "valid": [5], "test": [5]}


def test_early_stopping_after_patience_epochs_without_gain(monkeypatch, tmp_path):
    scripted_validation(monkeypatch, [-5.0, -4.0, -4.5, -4.2, -3.0, -2.0])
    trainer = fresh_trainer(tiny_config(epochs=6, patience=2, batch_size=2), tmp_path)
    history = trainer.fit(tiny_splits(lengths=SMALL))
    # epoch 2 is the best; epochs 3 and 4 bring no gain -> stop after epoch 4
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert len(read_metrics(tmp_path)) == 4
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 2
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 4


def test_early_stopping_counts_epochs_from_before_a_resume(monkeypatch, tmp_path):
    scripted_validation(monkeypatch, [-5.0, -4.0, -4.5, -4.2, -3.0, -2.0])
    small = tiny_splits(lengths=SMALL)
    fresh_trainer(tiny_config(epochs=3, patience=2, batch_size=2), tmp_path).fit(small)
    resumed = fresh_trainer(tiny_config(epochs=6, patience=2, batch_size=2), tmp_path)
    history = resumed.fit(small, resume=tmp_path / LAST)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # as without the interruption


# ---- the param store --------------------------------------------------------------------------
def test_a_new_model_of_the_same_name_keeps_its_own_weights(splits):
    config = tiny_config(lr=1e-6)
    batch = next(iter(iterate_batches(splits.train, 4)))

    pyro.set_rng_seed(1)
    model_a, guide_a = config.build(88)
    pyro.infer.Trace_ELBO(max_plate_nesting=1).loss(model_a, guide_a, batch.x, batch.mask)
    assert any(name.startswith("SRNN") for name in pyro.get_param_store().keys())

    pyro.set_rng_seed(2)
    model_b, guide_b = config.build(88)  # same class and root names, other weights
    initial_b = {k: v.clone() for k, v in model_b.state_dict().items()}
    weights_a = {k: v.detach().clone() for k, v in model_a.state_dict().items()}
    trainer = Trainer(model_b, guide_b, config)
    trainer.svi.step(batch.x, batch.mask, 1.0)

    distinct = [k for k in initial_b if not torch.allclose(initial_b[k], weights_a[k])]
    assert len(distinct) > len(initial_b) // 2
    for key, value in model_b.state_dict().items():
        torch.testing.assert_close(value, initial_b[key], atol=1e-4, rtol=0)  # moved by ~lr
        if key in distinct:
            assert not torch.allclose(value, weights_a[key]), key
    own = {id(p) for p in list(model_b.parameters()) + list(guide_b.parameters())}
    store = pyro.get_param_store()
    assert all(id(store._params[name]) in own for name in store.keys())
