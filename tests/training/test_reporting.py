"""What a training run shows its user: the epoch line of ``Trainer.fit`` in a script,
``curves.png`` refreshed after every epoch and TensorBoard scalars (``training/reporting.py``)."""

import logging
import sys

import pyro
import pytest
import torch

import pyro_seqvae.training.reporting as reporting
from pyro_seqvae.data import Splits
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.training import TrainConfig, Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_splits(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = {"train": [5, 7, 9, 12, 6, 8], "valid": [5, 9], "test": [6, 8]}
    return Splits.from_lists(
        {name: [(torch.rand(T, 88, generator=g) < 0.1).float() for T in lens]
         for name, lens in lengths.items()}, source="synthetic")


def tiny_trainer(out_dir=None, epochs=3, **kwargs):
    config = TrainConfig(data="synthetic", model="srnn", guide="smooth", residual=True,
                         model_kwargs={"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
                         guide_kwargs={"hidden_dim": 7, "summary_dim": 5},
                         epochs=epochs, batch_size=4, beta_increment=0.25, seed=0)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = config.build(88)
    return Trainer(model, guide, config, out_dir=out_dir, progress=False, **kwargs)


def test_curves_png_written_and_refreshed_every_epoch(tmp_path, monkeypatch, single_thread):
    snapshots = []
    original = reporting.refresh_curves

    def spy(run_dir, history=None):
        path = original(run_dir, history)
        snapshots.append((len(history), path.read_bytes()))
        return path

    monkeypatch.setattr(reporting, "refresh_curves", spy)
    history = tiny_trainer(tmp_path, epochs=3, verbose=False).fit(tiny_splits())
    assert [n for n, _ in snapshots] == [1, 2, 3]  # once per epoch, with the epochs so far
    assert all(png.startswith(PNG_SIGNATURE) for _, png in snapshots)
    assert len({png for _, png in snapshots}) == 3  # a new picture each epoch
    assert (tmp_path / "curves.png").read_bytes() == snapshots[-1][1]
    assert not list(tmp_path.glob(".curves.png.*"))  # atomic: no temporary file left behind
    assert len(history) == 3


def test_refresh_curves_draws_evaluations_and_skips_an_empty_run(tmp_path):
    assert reporting.refresh_curves(tmp_path) is None  # no metrics.jsonl: nothing drawn
    assert not (tmp_path / "curves.png").exists()
    records = [{"epoch": e, "train_objective_per_step": -12.0 + e, "beta": 0.2 * e,
                "valid_elbo_per_step": -11.5 + e, "seconds": 1.0} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(f"{r}\n".replace("'", '"')
                                                    for r in records))
    plain = reporting.refresh_curves(tmp_path).read_bytes()
    (tmp_path / "eval_test_K5.json").write_text(
        '{"split": "test", "particles": 5, "elbo_per_step": -10.2, '
        '"is_log_likelihood_per_step": -10.0, "khat_max": Infinity}')
    (tmp_path / "eval_broken_K1.json").write_text("{not json")  # skipped, not fatal
    assert [r["particles"] for r in reporting.read_evaluations(tmp_path)] == [5]
    with_eval = reporting.refresh_curves(tmp_path).read_bytes()
    assert with_eval.startswith(PNG_SIGNATURE) and with_eval != plain


def test_fit_prints_one_line_per_epoch_without_logging_configuration(capsys, single_thread):
    history = tiny_trainer(epochs=2).fit(tiny_splits())
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for line, record in zip(lines, history):
        # the same signed figure as metrics.jsonl: an ELBO per step, negative, higher is better
        assert record["train_objective_per_step"] < 0
        assert line.startswith(f"epoch {record['epoch']}/2: train objective "
                               f"{record['train_objective_per_step']:.4f}, valid ELBO "
                               f"{record['valid_elbo_per_step']:.4f} nats/step, higher is better")


def test_fit_is_silent_with_verbose_false(capsys, single_thread):
    tiny_trainer(epochs=1, verbose=False).fit(tiny_splits())
    assert capsys.readouterr().err == ""


def test_fit_logs_instead_of_printing_when_logging_is_configured(capsys, caplog, single_thread):
    caplog.set_level(logging.INFO, logger="pyro_seqvae")
    tiny_trainer(epochs=2).fit(tiny_splits())
    assert capsys.readouterr().err == ""
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/2", "epoch 2/2"]


def test_tensorboard_event_file_holds_the_epoch_scalars(tmp_path, single_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = tiny_trainer(tmp_path, epochs=2, verbose=False, tensorboard=True).fit(
        tiny_splits())
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    valid = acc.Scalars("valid/elbo_per_step")
    assert [e.step for e in valid] == [1, 2]
    assert [e.value for e in valid] == pytest.approx([r["valid_elbo_per_step"] for r in history],
                                                     rel=1e-6)
    assert [e.value for e in acc.Scalars("train/beta")] == pytest.approx(
        [r["beta"] for r in history], rel=1e-6)


def test_tensorboard_missing_package_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"needs the tensorboard package: pip install "
                                          r"'pyro-seqvae\[tensorboard\]'") as info:
        tiny_trainer(tmp_path, tensorboard=True)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="needs a run folder"):
        tiny_trainer(None, tensorboard=True)
