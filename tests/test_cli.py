"""The command line, in-process: train, resume, evaluate and sample on a tiny pickle, and every
user error ending in one line on stderr with a non-zero status and no traceback."""

import contextlib
import io
import json
import math
import pickle
import random
import shutil

import pytest
import torch

import pyro_seqvae.cli as cli
import pyro_seqvae.training.trainer as trainer_module
from pyro_seqvae.data import Splits
from pyro_seqvae.training import LAST, TrainConfig, load_checkpoint

TINY = ["--z-dim", "3", "--rnn-dim", "5", "--hidden-dim", "7", "--batch-size", "4", "--quiet"]
STABLE_KEYS = {"elbo_per_step", "is_log_likelihood_per_step", "is_stderr_per_step", "khat_max",
               "khat_over_0_7", "num_sequences", "num_steps", "particles", "seed", "split"}


def write_benchmark_pickle(path, sizes=(8, 3, 3), seed=0):
    """A file in the Boulanger-Lewandowski format: split -> sequences -> steps -> pitches."""
    rng = random.Random(seed)

    def sequence():
        return [tuple(sorted(rng.sample(range(21, 109), rng.randint(0, 4))))
                for _ in range(rng.randint(5, 12))]

    data = {name: [sequence() for _ in range(n)]
            for name, n in zip(("train", "valid", "test"), sizes)}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def run_cli(*argv):
    """``(status, stdout, stderr)`` of ``cli.main(argv)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def assert_one_line_error(status, stdout, stderr, command, match=None):
    lines = stderr.strip().splitlines()
    assert status == 1, (status, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"pyro-seqvae {command}: error: "), lines[0]
    assert "Traceback" not in stderr
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_benchmark_pickle(tmp_path_factory.mktemp("data") / "tiny.pickle")


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    """A 2-epoch SRNN run made by ``pyro-seqvae train``: ``(run folder, status, stdout)``."""
    run = tmp_path_factory.mktemp("runs") / "srnn"
    status, stdout, _ = run_cli("train", "--data", data_file, *TINY, "--epochs", 2, "--out", run)
    return run, status, stdout


# ---- the happy path ------------------------------------------------------------------------------
def test_train_writes_a_run(trained):
    run, status, stdout = trained
    assert status == 0
    assert "trained SRNN + SmoothingGuide (Res_q) for 2 epochs" in stdout
    assert {p.name for p in run.iterdir()} == {"checkpoint_best.pt", "checkpoint_last.pt",
                                               "curves.png", "metrics.jsonl", "run.json"}
    payload = load_checkpoint(run / LAST)
    assert payload["epoch"] == 2
    assert payload["config"]["residual"] is True
    assert payload["config"]["model_kwargs"] == {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7}
    assert payload["config"]["guide_kwargs"] == {"hidden_dim": 7, "summary_dim": 5}
    # the paper's defaults, recorded resolved in the checkpoint, and the config's own defaults
    assert payload["model_config"]["activation"] == "leaky_relu"
    assert payload["model_config"]["clip"] == 3.0
    assert payload["guide_config"]["activation"] == "leaky_relu"
    assert payload["config"]["lr"] == TrainConfig().lr
    assert payload["config"]["validate"] == "first"


def test_train_network_and_validation_options(data_file, tmp_path):
    run = tmp_path / "run"
    status, _, stderr = run_cli("train", "--data", data_file, *TINY, "--epochs", 1, "--out", run,
                                "--activation", "tanh", "--clip", 0, "--validate", "always")
    assert status == 0, stderr
    payload = load_checkpoint(run / LAST)
    assert payload["config"]["validate"] == "always"
    for stored in (payload["model_config"], payload["guide_config"]):
        assert (stored["activation"], stored["clip"]) == ("tanh", None)
    # evaluate rebuilds the tanh networks from the checkpoint, not from today's defaults
    status, _, stderr = run_cli("evaluate", run, "--particles", 2, "--quiet")
    assert status == 0, stderr


@pytest.mark.parametrize("path", ["pyro", "direct"])
def test_train_elbo_path(data_file, tmp_path, path):
    run = tmp_path / "run"
    status, _, stderr = run_cli("train", "--data", data_file, *TINY, "--epochs", 1, "--out", run,
                                "--elbo-path", path)
    assert status == 0, stderr
    assert load_checkpoint(run / LAST)["config"]["elbo_path"] == path


def test_evaluate_prints_and_writes_the_stable_keys(trained, tmp_path):
    run = trained[0]
    status, stdout, stderr = run_cli("evaluate", run, "--particles", 5, "--quiet")
    assert status == 0, stderr
    path = run / "eval_test_K5.json"
    results = json.loads(path.read_text())
    assert set(results) >= STABLE_KEYS | {"environment", "checkpoint", "model", "guide"}
    assert results["particles"] == 5 and results["split"] == "test"
    assert results["num_sequences"] == 3
    assert math.isfinite(results["is_log_likelihood_per_step"])
    assert "IS log-lik per step" in stdout and str(path) in stdout

    out = tmp_path / "valid.json"
    status, _, _ = run_cli("evaluate", run / LAST, "--split", "valid", "--particles", 3,
                           "--seed", 4, "--quiet", "--out", out)
    assert status == 0
    assert json.loads(out.read_text())["split"] == "valid"


def test_sample_writes_midi_files_and_a_picture(trained, tmp_path):
    out = tmp_path / "samples"
    status, stdout, stderr = run_cli("sample", trained[0], "--steps", 8, "--num", 2,
                                     "--out", out, "--quiet")
    assert status == 0, stderr
    assert sorted(p.name for p in out.glob("*.mid")) == ["sample_00.mid", "sample_01.mid"]
    assert (out / "samples.png").stat().st_size > 0
    assert "wrote 2 MIDI and WAV files" in stdout
    assert sorted(p.name for p in out.glob("*.wav")) == ["sample_00.wav", "sample_01.wav"]


def test_train_resume_continues_the_run(trained, data_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    status, stdout, stderr = run_cli("train", "--data", data_file, *TINY, "--epochs", 3,
                                     "--out", run, "--resume")
    assert status == 0, stderr
    assert "for 3 epochs" in stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert load_checkpoint(run / LAST)["epoch"] == 3


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "train" in capsys.readouterr().out


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# ---- user errors: one line, status 1 -------------------------------------------------------------
@pytest.mark.parametrize("extra, match", [
    (["--model", "transformer"], "transformer"),
    (["--guide", "psychic"], "psychic"),
    (["--model", "storn", "--residual"], "STORN"),
    (["--model", "rnn", "--guide", "smooth"], "RNN"),
    (["--clip", "-1"], "--clip must be >= 0"),
    (["--model", "dmm", "--activation", "tanh"], "the DMM keeps the ReLU"),
    (["--elbo", "iwae", "--particles", "2", "--elbo-path", "direct"], "applies to the objectives"),
    (["--model", "tsbn", "--elbo-path", "direct"], "cannot train TSBN"),
    (["--model", "vrnn", "--elbo", "rws", "--particles", "2", "--elbo-path", "direct"],
     "cannot train VRNN"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0"),
], ids=["unknown-model", "unknown-guide", "storn-residual", "rnn-smooth", "negative-clip",
        "dmm-activation", "direct-iwae", "direct-tsbn", "direct-rws-vrnn", "negative-wd"])
def test_train_refuses_impossible_models(data_file, tmp_path, extra, match):
    result = run_cli("train", "--data", data_file, *TINY, "--epochs", 1,
                     "--out", tmp_path / "run", *extra)
    assert_one_line_error(*result, "train", match)


def test_train_with_a_missing_data_file(tmp_path):
    missing = tmp_path / "missing.pickle"
    result = run_cli("train", "--data", missing, *TINY, "--out", tmp_path / "run")
    assert_one_line_error(*result, "train", str(missing))


def test_train_into_an_unwritable_folder(data_file, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = run_cli("train", "--data", data_file, *TINY, "--out", blocker / "out")
    assert_one_line_error(*result, "train", "not writable")


def test_resume_without_a_checkpoint(data_file, tmp_path):
    result = run_cli("train", "--data", data_file, *TINY, "--out", tmp_path / "empty", "--resume")
    assert_one_line_error(*result, "train", "--resume")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cuda_when_there_is_none(command, data_file, trained, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if command == "train":
        argv = ["train", "--data", data_file, *TINY, "--out", tmp_path / "run"]
    else:
        argv = ["evaluate", trained[0], "--particles", 2, "--quiet"]
    assert_one_line_error(*run_cli(*argv, "--device", "cuda"), command, "CUDA")


def test_evaluate_a_missing_run(tmp_path):
    result = run_cli("evaluate", tmp_path / "nowhere", "--quiet")
    assert_one_line_error(*result, "evaluate", "nowhere")


def test_evaluate_an_empty_run_folder(tmp_path):
    assert_one_line_error(*run_cli("evaluate", tmp_path, "--quiet"), "evaluate", "no checkpoint")


def test_evaluate_a_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "checkpoint_last.pt"
    bad.write_bytes(random.Random(0).randbytes(4096))
    result = run_cli("evaluate", bad, "--quiet")
    assert_one_line_error(*result, "evaluate", "corrupt")


def test_evaluate_data_of_the_wrong_width(trained, monkeypatch, tmp_path):
    narrow = Splits.from_lists({name: [torch.zeros(5, 10)] for name in ("train", "valid", "test")},
                               source="narrow")
    monkeypatch.setattr(TrainConfig, "load_data", lambda *args, **kwargs: narrow)
    path = tmp_path / "narrow.pickle"  # the options are checked (the path exists) before loading
    path.write_bytes(b"")
    result = run_cli("evaluate", trained[0], "--data", path, "--particles", 2, "--quiet")
    assert_one_line_error(*result, "evaluate", f"width 88 but {path} has width 10")


def test_evaluate_into_an_unwritable_file(trained, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = run_cli("evaluate", trained[0], "--particles", 2, "--quiet",
                     "--out", blocker / "results.json")
    assert_one_line_error(*result, "evaluate", "not writable")


def test_sample_into_an_unwritable_folder(trained, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = run_cli("sample", trained[0], "--steps", 4, "--num", 1, "--out", blocker / "s")
    assert_one_line_error(*result, "sample", "not writable")


@pytest.mark.parametrize("validate", ["first", "always"])
def test_divergence_is_one_line_and_keeps_the_checkpoint(data_file, tmp_path, monkeypatch,
                                                         validate):
    class PoisonedSVI(trainer_module.SVI):
        """Makes the model's weights NaN before the third update (the first of epoch 2)."""

        calls = 0

        def step(self, *args, **kwargs):
            PoisonedSVI.calls += 1
            if PoisonedSVI.calls == 3:
                with torch.no_grad():
                    for p in self.model.parameters():
                        p.fill_(math.nan)
            return super().step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "SVI", PoisonedSVI)
    run = tmp_path / "run"
    result = run_cli("train", "--data", data_file, *TINY, "--epochs", 3, "--out", run,
                     "--validate", validate)
    assert_one_line_error(*result, "train", str(run / LAST))
    payload = load_checkpoint(run / LAST)
    assert payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model_state"].values())


def test_threads_option_sets_torch_threads_and_rejects_zero(trained):
    before = torch.get_num_threads()
    try:
        code, _, _ = run_cli("evaluate", trained[0], "--particles", 2, "--quiet", "--threads", 1)
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert_one_line_error(*run_cli("evaluate", trained[0], "--quiet", "--threads", 0),
                          "evaluate", "--threads must be a positive integer")
