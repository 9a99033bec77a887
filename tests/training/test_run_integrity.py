"""Fault injection against training runs (issue 11, items 1-7): NaN and diverging runs, run
folders that belong to one run, resume that validates before it writes and continues the same
schedule, a crash mid-write of ``metrics.jsonl``, checkpoints that cannot run code, and a full
or read-only disk. Each case checks the files before and after, the exit status and the message.
"""

import errno
import hashlib
import json
import math
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pyro
import pytest
import torch
from test_cli import assert_one_line_error, run_cli, write_benchmark_pickle

import pyro_seqvae.atomic as atomic_module
import pyro_seqvae.training.runlog as runlog_module
from pyro_seqvae.errors import CheckpointError, DivergenceError, RunFolderError
from pyro_seqvae.training import BEST, LAST, TrainConfig, Trainer, load_checkpoint
from pyro_seqvae.training.checkpoint import save_checkpoint
from pyro_seqvae.training.run_folder import LOCK, RunLock
from pyro_seqvae.training.runlog import MetricsLog

#: Tiny networks; batch 16 > 8 training sequences: one update per epoch (the issue's setting).
NET = ["--z-dim", "4", "--rnn-dim", "8", "--hidden-dim", "8", "--threads", "1", "--quiet"]
ONE_UPDATE = [*NET, "--batch-size", "16"]
TWO_UPDATES = [*NET, "--batch-size", "4"]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder):
    """``{name: sha256}`` of every file in ``folder`` (hidden ones too)."""
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


def finite(payload):
    return all(bool(torch.isfinite(v).all()) for key in ("model_state", "guide_state")
               for v in payload[key].values() if v.is_floating_point())


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_benchmark_pickle(tmp_path_factory.mktemp("data") / "tiny.pickle")


@pytest.fixture
def run2(data, tmp_path):
    """A finished 2-epoch run (two updates per epoch) in ``tmp_path / 'run'``."""
    run = tmp_path / "run"
    status, _, stderr = run_cli("train", "--data", data, *TWO_UPDATES, "--epochs", 2,
                                "--out", run)
    assert status == 0, stderr
    return run


# ---- 1. NaN weights never reach a checkpoint -----------------------------------------------------
def test_lr_inf_stops_and_every_message_about_checkpoints_is_true(data, tmp_path):
    # the loss of the only update per epoch is computed before the update, so it is finite;
    # the update itself makes the weights NaN
    run = tmp_path / "run"
    result = run_cli("train", "--data", data, *ONE_UPDATE, "--epochs", 3, "--lr", "inf",
                     "--out", run)
    line = assert_one_line_error(*result, "train", "diverged")
    assert "NaN or inf" in line and "epoch 1, update 1" in line
    assert f"the last good checkpoint is kept at {run / LAST} (epoch 0)" in line
    assert BEST not in line and not (run / BEST).exists()
    payload = load_checkpoint(run / LAST)
    assert payload["epoch"] == 0 and finite(payload)
    assert not (run / "metrics.jsonl").exists()
    # the checkpoint that the message names is usable
    status, _, stderr = run_cli("evaluate", run / LAST, "--particles", 2, "--quiet")
    assert status == 0, stderr


def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    config = TrainConfig(model="srnn", guide="smooth", model_kwargs={"z_dim": 3, "rnn_dim": 5,
                                                                     "hidden_dim": 7})
    model, guide = config.build(88)
    path = save_checkpoint(tmp_path / LAST, model=model, guide=guide, optim=None,
                           config=config, epoch=1, step=1, best_valid=-1.0)
    before = digest(path)
    with torch.no_grad():
        next(guide.parameters())[0].fill_(math.inf)
    with pytest.raises(CheckpointError, match=r"non-finite .* guide_state\."):
        save_checkpoint(path, model=model, guide=guide, optim=None, config=config, epoch=2,
                        step=2, best_valid=-1.0)
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left


def test_trainer_never_replaces_a_finite_checkpoint(data, run2):
    """Weights that turn NaN after the guards (here: by hand) still cannot be saved."""
    before = snapshot(run2)
    pyro.clear_param_store()
    config = TrainConfig.from_dict(load_checkpoint(run2 / LAST)["config"])
    splits = config.load_data(progress=False)
    model, guide = config.build(splits.x_dim)
    trainer = Trainer(model, guide, config, out_dir=run2, progress=False)
    trainer.resume(run2 / LAST)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(CheckpointError, match="refusing to write"):
        trainer.save(LAST)
    assert snapshot(run2) == before


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_evaluate_and_sample_refuse_a_non_finite_checkpoint(run2, tmp_path, command):
    payload = torch.load(run2 / LAST, weights_only=True)
    key = next(iter(payload["model_state"]))
    payload["model_state"][key] = torch.full_like(payload["model_state"][key], math.nan)
    bad = tmp_path / "nan.pt"
    torch.save(payload, bad)
    extra = ["--particles", "2"] if command == "evaluate" else ["--out", tmp_path / "s"]
    result = run_cli(command, bad, "--quiet", *extra)
    assert_one_line_error(*result, command, f"non-finite weights (NaN or inf) in model_state.{key}")
    assert not (tmp_path / "s").exists()


# ---- 2. divergence without a NaN ---------------------------------------------------------------
def test_a_blow_up_stops_keeps_both_checkpoints_and_the_advice_works(data, run2):
    before = snapshot(run2)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--epochs", 4, "--lr", "1e3",
                     "--out", run2, "--resume")
    line = assert_one_line_error(*result, "train", "training diverged")
    assert "at epoch 3" in line
    assert f"the last good checkpoint is kept at {run2 / LAST} (epoch 2)" in line
    assert f"the best at {run2 / BEST}" in line
    for name in (LAST, BEST):
        assert digest(run2 / name) == before[name]
    assert [r["epoch"] for r in records(run2)] == [1, 2]

    # the message ends with the exact command to continue; run it
    command = shlex.split(line.split("rate run: ", 1)[1])
    assert command[:2] == ["pyro-seqvae", "train"] and command[-4:] == [
        "--out", str(run2), "--resume", "--lr", "0.001"][-4:]
    status, stdout, stderr = run_cli(*command[1:])
    assert status == 0, stderr
    assert "for 4 epochs" in stdout
    lines = records(run2)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert [r["lr"] for r in lines] == [1e-3, 1e-3, 1e-3, 1e-3]
    assert [r["session"] for r in lines] == [1, 1, 3, 3]
    run = json.loads((run2 / "run.json").read_text())
    assert [s["kind"] for s in run["sessions"]] == ["new", "resume", "resume"]
    assert run["sessions"][1]["changes"] == {"epochs": [2, 4], "lr": [1e-3, 1e3]}
    assert run["sessions"][2]["changes"] == {"epochs": [2, 4]}  # from the epoch-2 checkpoint


def test_the_divergence_rule_on_a_training_loss(monkeypatch, tmp_path):
    """A batch loss per step 10x beyond the first update's stops the run at that update."""
    from test_trainer_resume import fresh_trainer, tiny_config, tiny_splits

    trainer = fresh_trainer(tiny_config(), tmp_path)
    real_step = trainer.svi.step
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        loss = real_step(*args, **kwargs)
        return loss * (30.0 if len(calls) == 4 else 1.0)  # second update of epoch 2

    trainer.svi.step = step
    with pytest.raises(DivergenceError, match=r"loss per step reached .* epoch 2, update 4"):
        trainer.fit(tiny_splits())
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 1
    reference = load_checkpoint(tmp_path / LAST)["extra"]["divergence_reference"]
    # the first update's loss per step: under 88 log 2 (every key a coin flip), since the
    # output bias starts at the data's key log-odds (issue 12), but far from 0
    assert 10 < reference < 88 * math.log(2)


def test_init_from_warm_starts_a_new_run(data, run2, tmp_path):
    new = tmp_path / "warm"
    status, _, stderr = run_cli("train", "--data", data, *TWO_UPDATES, "--epochs", 1,
                                "--out", new, "--init-from", run2 / LAST, "--lr", "1e-4")
    assert status == 0, stderr
    run = json.loads((new / "run.json").read_text())
    assert run["sessions"][0]["kind"] == "init_from"
    assert run["sessions"][0]["init_from"] == str(run2 / LAST)
    source, warm = load_checkpoint(run2 / LAST), load_checkpoint(new / LAST)
    assert warm["epoch"] == 1 and warm["step"] == 2
    moved = [k for k in source["model_state"]
             if not torch.equal(source["model_state"][k], warm["model_state"][k])]
    assert moved  # trained on from the source's weights, not from a fresh initialisation
    for key, value in source["model_state"].items():
        torch.testing.assert_close(warm["model_state"][key], value, atol=5e-4, rtol=0)


# ---- 3. a run folder belongs to one run ---------------------------------------------------------
def test_a_finished_run_is_not_overwritten_or_mixed(data, run2):
    before = snapshot(run2)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--epochs", 1, "--out", run2,
                     "--seed", 5)
    assert_one_line_error(*result, "train", "already holds a run")
    assert "--resume" in result[2] and "--overwrite" in result[2]
    assert snapshot(run2) == before


def test_overwrite_removes_the_old_run_first(data, run2):
    (run2 / "eval_test_K5.json").write_text("{}")
    status, _, stderr = run_cli("train", "--data", data, *TWO_UPDATES, "--epochs", 1,
                                "--out", run2, "--overwrite", "--seed", 5)
    assert status == 0, stderr
    assert sorted(p.name for p in run2.iterdir()) == sorted(
        [BEST, LAST, "metrics.jsonl", "curves.png", "run.json"])
    assert [r["epoch"] for r in records(run2)] == [1]
    assert json.loads((run2 / "run.json").read_text())["config"]["seed"] == 5


def test_overwrite_never_deletes_files_that_a_run_does_not_write(data, run2):
    (run2 / "notes.txt").write_text("mine")
    before = snapshot(run2)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--epochs", 1, "--out", run2,
                     "--overwrite")
    assert_one_line_error(*result, "train", "notes.txt")
    assert snapshot(run2) == before


def test_the_api_refuses_a_folder_with_a_run_too(run2):
    before = snapshot(run2)
    config = TrainConfig.from_dict(load_checkpoint(run2 / LAST)["config"])
    splits = config.load_data(progress=False)
    model, guide = config.build(splits.x_dim)
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer(model, guide, config, out_dir=run2, progress=False).fit(splits)
    assert snapshot(run2) == before


def test_a_command_that_fails_before_training_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    result = run_cli("train", "--data", tmp_path / "missing.pickle", *NET, "--out", out)
    assert_one_line_error(*result, "train", "missing.pickle")
    assert not out.exists()


def test_init_from_weights_that_do_not_fit_writes_nothing(data, run2, tmp_path):
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--z-dim", 5, "--epochs", 1,
                     "--out", tmp_path / "warm", "--init-from", run2)
    assert_one_line_error(*result, "train", "weights do not fit the model")
    assert not (tmp_path / "warm").exists()


def test_default_run_folders_do_not_collide(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = write_benchmark_pickle(tmp_path / "other.pickle", seed=1)
    argv = ["train", *[a for a in TWO_UPDATES if a != "--quiet"], "--epochs", 1]  # prints it
    outs = []
    for source in (data, other, data):
        status, stdout, stderr = run_cli(*argv, "--data", source)
        assert status == 0, stderr
        outs.append(stdout.splitlines()[0].removeprefix("run folder: "))
    assert outs == ["runs/srnn-smooth-res-tiny-z4-r8-h8-seed0",
                    "runs/srnn-smooth-res-other-z4-r8-h8-seed0",
                    "runs/srnn-smooth-res-tiny-z4-r8-h8-seed0-2"]
    assert load_checkpoint(tmp_path / outs[0])["config"]["data"] == str(data)
    assert load_checkpoint(tmp_path / outs[1])["config"]["data"] == str(other)


HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, str(os.getpid()).encode())
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_a_second_training_into_a_locked_folder_is_refused(data, run2):
    before = snapshot(run2)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run2 / LOCK)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in (["--resume", "--epochs", 3], ["--overwrite"]):
            result = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2, *extra)
            assert_one_line_error(*result, "train", f"{run2}: another training (PID "
                                                    f"{holder.pid}) is writing")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert {k: v for k, v in snapshot(run2).items() if k != LOCK} == before
    # released: the run can be continued, and the lock file goes with the run
    status, _, stderr = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2,
                                "--resume", "--epochs", 3)
    assert status == 0, stderr
    assert not (run2 / LOCK).exists()


def test_the_lock_is_held_during_fit(run2, monkeypatch):
    """While fit writes, a lock attempt from another open file description fails."""
    import fcntl
    import os

    seen = []
    real = Trainer._loop

    def loop(self, splits):
        fd = os.open(run2 / LOCK, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(os.read(fd, 32).decode().strip())
        finally:
            os.close(fd)
        return real(self, splits)

    monkeypatch.setattr(Trainer, "_loop", loop)
    config = TrainConfig.from_dict(load_checkpoint(run2 / LAST)["config"]).replace(epochs=3)
    splits = config.load_data(progress=False)
    pyro.clear_param_store()
    model, guide = config.build(splits.x_dim)
    Trainer(model, guide, config, out_dir=run2, progress=False).fit(splits, resume=run2 / LAST)
    assert seen == [str(os.getpid())]
    assert not (run2 / LOCK).exists()
    with RunLock(run2):  # free again
        pass


# ---- 4. a rejected resume writes nothing --------------------------------------------------------
@pytest.mark.parametrize("extra, match", [
    (["--seed", "3"], "seed: 0 there, 3 now"),
    (["--batch-size", "2"], "batch_size"),
    (["--model", "vrnn"], "model"),
], ids=["seed", "batch-size", "model"])
def test_a_rejected_resume_leaves_the_run_folder_as_it_was(data, run2, extra, match):
    before = snapshot(run2)
    argv = [a for a in ("train", "--data", data, *TWO_UPDATES, "--out", run2, "--resume",
                        "--epochs", 3)]
    result = run_cli(*argv, *extra)
    assert_one_line_error(*result, "train", match)
    assert snapshot(run2) == before


def test_an_unreadable_run_record_refuses_the_resume_before_writing(data, run2):
    (run2 / "run.json").write_text("{ truncated")
    (run2 / "metrics.jsonl").write_text((run2 / "metrics.jsonl").read_text() + '{"epoch": 9}\n')
    before = snapshot(run2)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2, "--resume",
                     "--epochs", 3)
    assert_one_line_error(*result, "train", f"{run2 / 'run.json'}: unreadable run record")
    assert snapshot(run2) == before  # not even the stale metrics line was trimmed


# ---- 5. extending a run continues the same run --------------------------------------------------
def test_resume_with_more_epochs_continues_the_same_schedule(data, tmp_path):
    short, straight = tmp_path / "short", tmp_path / "straight"
    base = ["train", "--data", data, *TWO_UPDATES]
    assert run_cli(*base, "--epochs", 3, "--out", short)[0] == 0
    stored = load_checkpoint(short / LAST)["extra"]["kl_schedule"]
    # the default increment: beta reaches 1 by the middle of the 3-epoch run (3 updates)
    assert stored == {"beta_start": 0.2, "beta_increment": pytest.approx(0.8 / 3)}
    assert json.loads((short / "run.json").read_text())["kl_schedule"] == stored
    assert run_cli(*base, "--epochs", 6, "--out", short, "--resume")[0] == 0
    assert load_checkpoint(short / LAST)["extra"]["kl_schedule"] == stored
    # the same run straight through: 6 epochs with the schedule of the first session
    assert run_cli(*base, "--epochs", 6, "--out", straight, "--beta-increment",
                   repr(stored["beta_increment"]))[0] == 0
    a, b = load_checkpoint(short / LAST), load_checkpoint(straight / LAST)
    assert a["epoch"] == b["epoch"] == 6 and a["step"] == b["step"] == 12
    for key in ("model_state", "guide_state"):
        for name, value in b[key].items():
            torch.testing.assert_close(a[key][name], value, rtol=0, atol=1e-6)
    assert [r["beta"] for r in records(short)] == [r["beta"] for r in records(straight)]


# ---- 6. a partial last line of metrics.jsonl ----------------------------------------------------
def test_a_partial_last_metrics_line_is_trimmed_on_resume(data, run2, caplog):
    with open(run2 / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 3, "step": 6, "train_obj')  # a crash in the middle of a write
    assert [r["epoch"] for r in MetricsLog(run2 / "metrics.jsonl").read()] == [1, 2]
    assert "partial last line 3" in caplog.text
    status, _, stderr = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2,
                                "--resume", "--epochs", 3)
    assert status == 0, stderr
    assert [r["epoch"] for r in records(run2)] == [1, 2, 3]


def test_a_corrupt_metrics_line_names_the_file_and_line(data, run2):
    path = run2 / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("not json\n" + "".join(lines[1:]))
    before = snapshot(run2)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2, "--resume",
                     "--epochs", 3)
    assert_one_line_error(*result, "train", f"{path}, line 1: not a JSON object")
    assert snapshot(run2) == before
    with pytest.raises(RunFolderError, match="line 1"):
        MetricsLog(path).read()


# ---- 7. loading a checkpoint never runs code ---------------------------------------------------
class RunsCode:
    """Unpickling this object creates ``marker`` (what an attacker's shell command would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("command", ["evaluate", "sample", "train"])
def test_a_checkpoint_that_would_run_code_is_refused(data, run2, tmp_path, command):
    marker = tmp_path / "marker"
    payload = torch.load(run2 / LAST, weights_only=True)
    payload["extra"] = {"x": RunsCode(marker)}
    torch.save(payload, run2 / LAST)
    before = snapshot(run2)
    argv = {"evaluate": ["evaluate", run2 / LAST, "--particles", 2, "--quiet"],
            "sample": ["sample", run2 / LAST, "--out", tmp_path / "s", "--quiet"],
            "train": ["train", "--data", data, *TWO_UPDATES, "--out", run2, "--resume",
                      "--epochs", 3]}[command]
    assert_one_line_error(*run_cli(*argv), command, "refused")
    assert not marker.exists()
    assert snapshot(run2) == before


def test_an_old_checkpoint_needing_unsafe_loading_is_refused_with_the_reason(run2, tmp_path):
    payload = torch.load(run2 / LAST, weights_only=True)
    payload["rng_state"]["numpy"] = ("MT19937", np.zeros(624, np.uint32), 0, 0, 0.0)  # format 1
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    line = assert_one_line_error(*run_cli("evaluate", old, "--quiet"), "evaluate", "refused")
    assert "weights_only=False" in line and "not loaded" in line


def test_checkpoints_are_plain_data_and_restore_every_rng(run2):
    raw = torch.load(run2 / LAST, weights_only=True)  # would raise on any Python object
    assert raw["format_version"] == 2
    payload = load_checkpoint(run2 / LAST)
    pyro.util.set_rng_state(payload["rng_state"])
    first = (torch.rand(3), np.random.rand(3), __import__("random").random())
    pyro.set_rng_seed(123)
    pyro.util.set_rng_state(load_checkpoint(run2 / LAST)["rng_state"])
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


# ---- a full disk, a read-only folder ----------------------------------------------------------
def failing_save_on_epoch(monkeypatch, epoch_to_fail, code):
    """``torch.save`` writes part of the file, then fails like a full or read-only disk."""
    real = atomic_module.torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == epoch_to_fail:
            f.write(b"PK\x03\x04partial")
            raise OSError(code, __import__("os").strerror(code))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(atomic_module.torch, "save", save)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
def test_a_failed_checkpoint_write_keeps_the_previous_one(data, run2, monkeypatch, code):
    before = snapshot(run2)
    failing_save_on_epoch(monkeypatch, 3, code)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2, "--resume",
                     "--epochs", 3)
    line = assert_one_line_error(*result, "train", __import__("os").strerror(code))
    assert f"{run2 / LAST}: could not write the checkpoint of epoch 3" in line
    assert "the previous checkpoint_last.pt (epoch 2) is unchanged" in line
    assert digest(run2 / LAST) == before[LAST]
    assert not [p for p in run2.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run2 / LAST)["epoch"] == 2


def test_a_failed_metrics_write_is_one_line(data, run2, monkeypatch):
    before = snapshot(run2)

    def read_only(path, mode="r", *args, **kwargs):
        if "a" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runlog_module, "open", read_only, raising=False)
    result = run_cli("train", "--data", data, *TWO_UPDATES, "--out", run2, "--resume",
                     "--epochs", 3)
    assert_one_line_error(*result, "train", "could not append the metrics of epoch 3")
    for name in (LAST, BEST):
        assert digest(run2 / name) == before[name]
