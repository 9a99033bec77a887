"""What the command line tells its user: the resume command after Ctrl-C, "resuming from epoch
N", the evaluation summary (k-hat and the standard error), the thread default and the help."""

import contextlib
import io
import logging
import shlex

import pytest
import torch
from test_cli import TINY, run_cli, write_benchmark_pickle

import pyro_seqvae.cli as cli
import pyro_seqvae.infer.evaluation as evaluation
from pyro_seqvae.training import Trainer

VERBOSE_TINY = [a for a in TINY if a != "--quiet"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_benchmark_pickle(tmp_path_factory.mktemp("data") / "tiny.pickle")


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(data_file, tmp_path, monkeypatch,
                                                            caplog, single_thread):
    caplog.set_level(logging.INFO, logger="pyro_seqvae")
    original = Trainer.train_epoch

    def interrupted_in_epoch_2(self, split):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, split)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_2)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data_file), *VERBOSE_TINY, "--epochs", "3", "--out", str(run)]
    status, _, stderr = run_cli(*argv)
    assert status == 130
    assert f"the last checkpoint is {run / 'checkpoint_last.pt'} (epoch 1 of 3)" in stderr
    command = stderr.strip().splitlines()[-1].strip()
    assert command == shlex.join(["pyro-seqvae", *argv, "--resume"])

    monkeypatch.setattr(Trainer, "train_epoch", original)
    caplog.clear()
    status, stdout, stderr = run_cli(*shlex.split(command)[1:])
    assert status == 0, stderr
    assert "resuming from epoch 1" in caplog.text
    assert [m.split(":")[0] for m in caplog.messages if m.startswith("epoch ")] == \
        ["epoch 2/3", "epoch 3/3"]
    assert "for 3 epochs" in stdout


def test_interrupt_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path,
                                                                         monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pyro_seqvae.training.config.TrainConfig.load_data", interrupted)
    status, _, stderr = run_cli("train", "--out", tmp_path / "run", "--quiet")
    assert status == 130
    assert stderr.strip() == ("pyro-seqvae train: interrupted; no checkpoint was written yet, "
                              "nothing to resume")


def results(**changes):
    base = {"split": "test", "num_sequences": 65, "num_steps": 3315, "particles": 500,
            "elbo_per_step": -7.4512, "is_log_likelihood_per_step": -7.1334,
            "is_stderr_per_step": 0.0017, "khat_max": 0.5, "khat_over_0_7": 0,
            "path": "runs/x/eval_test_K500.json"}
    return {**base, **changes}


def printed(r):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli._print_results(r)
    return out.getvalue()


def test_evaluation_summary_withholds_a_meaningless_standard_error():
    text = printed(results(khat_max=3.9, khat_over_0_7=65))
    assert "+-" not in text and "0.0017" not in text
    assert "k-hat > 0.7 on all 65 sequences" in text and "not meaningful" in text
    assert "k-hat max 3.90; sequences with k-hat > 0.7: 65 of 65" in text

    some = printed(results(khat_max=0.9, khat_over_0_7=3))
    assert "(+- 0.0017, an understatement: k-hat > 0.7 on 3 of 65 sequences)" in some
    assert "-7.1334 (+- 0.0017)\n" in printed(results())
    assert "k-hat max inf (too few particles" in printed(
        results(khat_max=float("inf"), khat_over_0_7=65))
    exact = printed(results(khat_max=None, is_stderr_per_step=0.0))
    assert "k-hat max n/a (exact likelihood" in exact and "(exact)" in exact


def test_khat_warning_is_not_glued_to_the_progress_bar(monkeypatch, tmp_path):
    warn = logging.getLogger("pyro_seqvae.infer.importance")

    def fake_evaluate_split(model, guide, split, progress, **kwargs):
        for _ in range(len(split)):
            progress(1)  # the bar is drawn at 3/3, without a newline
        warn.warning("Pareto k-hat > 0.7 for 3 of 3 sequences")
        return {"elbo_per_step": -1.0}

    monkeypatch.setattr(evaluation, "evaluate_split", fake_evaluate_split)
    err = io.StringIO()
    root = logging.getLogger()
    with contextlib.redirect_stderr(err):
        handler = logging.StreamHandler(err)  # what logging.basicConfig installs in the CLI
        root.addHandler(handler)
        try:
            cli._evaluate(None, None, [0, 1, 2], particles=5, batch_size=2, seed=0,
                          device="cpu", max_rows=10, out=tmp_path / "r.json", extra={},
                          progress=True)
        finally:
            root.removeHandler(handler)
    lines = [line for line in err.getvalue().split("\n") if "k-hat" in line]
    assert len(lines) == 1
    assert lines[0].split("\r")[-1] == "Pareto k-hat > 0.7 for 3 of 3 sequences"
    assert "3/3" in err.getvalue()  # the bar was there


def test_threads_default_to_one_on_cpu(monkeypatch):
    threads = torch.get_num_threads()
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    try:
        run_cli("evaluate", "no-such-run", "--quiet")
        run_cli("evaluate", "no-such-run", "--quiet", "--threads", "3")
        run_cli("evaluate", "no-such-run", "--quiet", "--device", "cuda")
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    assert calls == [1, 3]  # nothing set for cuda: torch's choice


@pytest.mark.parametrize("command, expected", [
    ("train", ["WAV files", "pen-stroke file", "at least 3", "beta = min(1, beta + this)",
               "default: 1 on CPU", "--tensorboard"]),
    ("evaluate", ["checkpoint_best.pt, else checkpoint_last.pt"]),
    ("sample", ["checkpoint_best.pt, else checkpoint_last.pt"]),
])
def test_help_states_what_users_asked_about(command, expected, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for phrase in expected:
        assert phrase in text, phrase
