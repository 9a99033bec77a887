"""Issue 11 item 10 and issue 13 item 7: every bad option is one line on stderr, at once.

A table of bad commands runs in-process; for each: exit status 1, exactly one line on stderr
(``pyro-seqvae <command>: error: ...`` with the expected words), no traceback, no data set
loaded and no evaluation or sampling started (both are replaced by tripwires), and no file or
folder left behind in the working directory or next to the run.
"""

import os
import subprocess
import sys

import pytest
import torch
from test_cli import TINY, assert_one_line_error, run_cli, write_benchmark_pickle

import pyro_seqvae.data as data_module
from pyro_seqvae.cli_checks import MAX_SAMPLE_VALUES
from pyro_seqvae.training import LAST, TrainConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs of the table: a tiny pickle, a stroke file, a WAV folder, a trained run and
    things in the way. The stroke and WAV files are empty: the options must be refused before
    anything is read."""
    root = tmp_path_factory.mktemp("inputs")
    pickle_path = write_benchmark_pickle(root / "tiny.pickle")
    (root / "strokes.jsonl").write_text("")
    (root / "wavs").mkdir()
    (root / "wavs" / "a.wav").write_bytes(b"")
    (root / "a-folder").mkdir()
    (root / "a-file").write_text("in the way")
    run = root / "run"
    status, _, stderr = run_cli("train", "--data", pickle_path, *TINY, "--epochs", 1,
                                "--out", run)
    assert status == 0, stderr
    return root


def snapshot(*roots):
    return {root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
            for root in roots}


@pytest.fixture
def tripwires(monkeypatch):
    """Fail loudly if a command reads data, evaluates or samples."""
    def tripped(*args, **kwargs):
        raise AssertionError("the command went on to work despite a bad option")

    monkeypatch.setattr(TrainConfig, "load_data", tripped)
    monkeypatch.setattr(data_module, "load_dataset", tripped)
    monkeypatch.setattr("pyro_seqvae.infer.evaluation.evaluate_split", tripped)
    from pyro_seqvae.models.base import LatentSequenceModel

    monkeypatch.setattr(LatentSequenceModel, "sample", tripped)


def train(*extra, data="{root}/tiny.pickle"):
    return ("train", "--data", data, *TINY, "--epochs", 1, *extra)


TRAIN = "train"
BAD = [
    # (id, argv with {root} for the inputs folder, words of the one-line message)
    ("seed-negative", train("--seed", -1), "--seed must be in [0, 4294967295], got -1"),
    ("limit-zero", train("--limit", 0, data="jsb"), "--limit must be at least 3"),
    ("limit-two", train("--limit", 2, data="jsb"), "--limit must be at least 3"),
    ("limit-on-a-pickle", train("--limit", 5), "--limit applies to --data jsb only"),
    ("num-components-bernoulli", train("--num-components", 3),
     "--num-components sets the mixture of --emission gmm or stroke; --emission bernoulli"),
    ("device-mps", train("--device", "mps"), "runs on cpu or cuda[:N], not on mps"),
    ("device-meta", train("--device", "meta"), "runs on cpu or cuda[:N], not on meta"),
    ("device-nonsense", train("--device", "gpu0"), "--device 'gpu0' is not a torch device"),
    ("jit-with-iwae", train("--jit", "--elbo", "iwae"),
     "--jit is shorthand for --elbo jit and cannot be combined with --elbo iwae"),
    ("transpose-on-wav", train("--transpose", 2, "--emission", "gauss", data="{root}/wavs"),
     "--transpose shifts the pitches of piano rolls"),
    ("transpose-on-strokes", train("--transpose", 2, "--emission", "stroke",
                                   data="{root}/strokes.jsonl"),
     "--transpose shifts the pitches of piano rolls"),
    ("transpose-negative", train("--transpose", -1), "transpose must be >= 0, got -1"),
    ("eval-particles-negative", train("--eval-particles", -1), "--eval-particles must be >= 0"),
    ("pickle-read-as-jsb", train("--kind", "jsb"),
     "kind 'jsb' reads the embedded chorales, but the data source is"),
    ("jsb-read-as-pickle", train("--kind", "pickle", data="jsb"),
     "the data source 'jsb' is the embedded chorale set"),
    ("pickle-read-as-midi", train("--kind", "midi"), "kind 'midi' reads a folder of files"),
    ("missing-data", train(data="{root}/missing.pickle"), "missing.pickle: file not found"),
    ("unknown-model", train("--model", "transformer", data="jsb"), "unknown model 'transformer'"),
    ("unknown-guide", train("--guide", "psychic", data="jsb"), "unknown guide 'psychic'"),
    ("unknown-emission", train("--emission", "poisson", data="jsb"),
     "--emission 'poisson' is unknown"),
    ("bernoulli-on-strokes", train("--validate", "never", data="{root}/strokes.jsonl"),
     "--emission bernoulli models binary piano rolls, but"),
    ("bernoulli-on-wav", train(data="{root}/wavs"), "use --emission gauss or gmm"),
    ("stroke-on-a-pickle", train("--emission", "stroke"), "--emission stroke models pen strokes"),
    ("wav-option-on-a-pickle", train("--frame-size", 100),
     "--frame-size applies to WAV data only"),
    ("beta-start-negative", train("--beta-start", -1), "beta start must be in (0, end=1.0]"),
    ("beta-increment-nan", train("--beta-increment", "nan"), "--beta-increment must be a finite"),
    ("lr-nan", train("--lr", "nan"), "lr must be positive, got nan"),
    ("epochs-zero", train("--epochs", 0), "epochs must be a positive integer, got 0"),
    ("particles-zero", train("--particles", 0), "num_particles must be a positive integer"),
    ("z-dim-zero", train("--z-dim", 0), "z_dim must be a positive integer, got 0"),
    ("storn-residual", train("--model", "storn", "--residual"), "STORN"),
    ("rnn-smooth", train("--model", "rnn", "--guide", "smooth"), "RNN"),
    ("input-flip-dmm", train("--model", "dmm", "--input-flip", 0.1),
     "--input-flip applies to rnn, srnn, vrnn, storn and tsbn"),
    ("input-dropout-one", train("--input-dropout", 1), "input_dropout must be in [0, 1), got 1.0"),
    ("components-zero", train("--emission", "gmm", "--num-components", 0, data="{root}/wavs"),
     "num_components must be a positive integer, got 0"),
    ("threads-zero", train("--threads", 0), "--threads must be a positive integer"),
    ("evaluate-batch-size-zero", ("evaluate", "{root}/run", "--batch-size", 0),
     "--batch-size must be a positive integer, got 0"),
    ("evaluate-particles-zero", ("evaluate", "{root}/run", "--particles", 0),
     "--particles must be a positive integer, got 0"),
    ("evaluate-max-rows-zero", ("evaluate", "{root}/run", "--max-rows", 0),
     "--max-rows must be a positive integer"),
    ("evaluate-out-is-a-folder", ("evaluate", "{root}/run", "--out", "{root}/a-folder"),
     "a-folder is a folder; give the path of the results file"),
    ("evaluate-out-under-a-file", ("evaluate", "{root}/run", "--out", "{root}/a-file/r.json"),
     "not writable (" ),
    ("evaluate-device-meta", ("evaluate", "{root}/run", "--device", "meta"), "not on meta"),
    ("evaluate-seed-negative", ("evaluate", "{root}/run", "--seed", -5), "--seed must be in"),
    ("evaluate-kind-contradiction", ("evaluate", "{root}/run", "--data", "{root}/tiny.pickle",
                                     "--kind", "jsb"), "kind 'jsb' reads the embedded chorales"),
    ("evaluate-limit-one", ("evaluate", "{root}/run", "--limit", 1),
     "--limit must be at least 3"),
    ("evaluate-missing-run", ("evaluate", "{root}/nowhere"), "no such checkpoint file"),
    ("evaluate-a-text-file", ("evaluate", "{root}/a-file"),
     "a-file: not a checkpoint (not a file written by torch.save)"),
    ("sample-huge", ("sample", "{root}/run", "--steps", 100000000, "--out", "{root}/samples"),
     "--num 4 x --steps 100000000 x 88 features = 3.52e+10 values (131 GiB as float32), over "
     "the limit"),
    ("sample-steps-zero", ("sample", "{root}/run", "--steps", 0), "--steps must be a positive"),
    ("sample-num-zero", ("sample", "{root}/run", "--num", 0), "--num must be a positive"),
    ("sample-out-is-a-file", ("sample", "{root}/run", "--out", "{root}/a-file"),
     "a file is in the way"),
    ("sample-device-mps", ("sample", "{root}/run", "--device", "mps"), "not on mps"),
    ("sample-step-seconds-zero", ("sample", "{root}/run", "--step-seconds", 0),
     "--step-seconds must be a positive number"),
]


@pytest.mark.parametrize("argv, words", [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_command_is_one_line_at_once_and_leaves_nothing(files, tmp_path, monkeypatch,
                                                            tripwires, argv, words):
    monkeypatch.chdir(tmp_path)  # where the default run and sample folders would go
    argv = [str(a).format(root=files) for a in argv]
    before = snapshot(files, tmp_path)
    status, stdout, stderr = run_cli(*argv, "--quiet")
    line = assert_one_line_error(status, stdout, stderr, argv[0], words)
    assert len(line) < 400, line  # a message, not a dump
    assert snapshot(files, tmp_path) == before


def test_the_table_covers_the_issues_list():
    ids = {c[0] for c in BAD}
    assert {"seed-negative", "limit-zero", "num-components-bernoulli", "device-mps",
            "device-meta", "evaluate-batch-size-zero", "evaluate-out-is-a-folder", "sample-huge",
            "jit-with-iwae", "transpose-on-wav", "eval-particles-negative",
            "evaluate-out-under-a-file", "unknown-model", "pickle-read-as-jsb"} <= ids
    assert MAX_SAMPLE_VALUES * 4 <= 2 ** 30  # the limit the message states


def test_as_a_process(tmp_path):
    argv, words = ("train", "--seed", "-1", "--data", "jsb"), "--seed must be in"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "pyro_seqvae.cli", *argv], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(done.returncode, done.stdout, done.stderr, argv[0], words)
    assert list(tmp_path.iterdir()) == []


# ---- failures after the checks: still one line, still nothing left behind ----------------------
def test_a_failure_while_loading_leaves_no_empty_run_folder(files, tmp_path):
    bad = tmp_path / "bad.pickle"
    bad.write_text("garbage")
    out = tmp_path / "new" / "deeper" / "run"
    result = run_cli("train", "--data", bad, *TINY, "--out", out)
    assert_one_line_error(*result, "train", "bad.pickle")
    assert not (tmp_path / "new").exists()


def test_data_outside_the_support_names_file_split_and_emission(files, tmp_path, monkeypatch):
    """Issue 11 item 10: no 12,000-character tensor dump, one line naming the source."""
    from pyro_seqvae.data import Splits

    halves = Splits.from_lists({name: [torch.full((6, 88), 0.5)] for name in
                                ("train", "valid", "test")}, source=str(files / "tiny.pickle"))
    monkeypatch.setattr(data_module, "load_dataset", lambda *args, **kwargs: halves)
    out = tmp_path / "run"
    result = run_cli("train", "--data", files / "tiny.pickle", *TINY, "--out", out,
                     "--validate", "never")
    line = assert_one_line_error(*result, "train", "tiny.pickle: split 'train', sequence 0, "
                                 "step 0, feature 0 holds 0.5 (528 values in this split); "
                                 "--emission bernoulli needs 0 or 1 (a binary piano roll)")
    assert len(line) < 300 and "tensor(" not in line
    assert not out.exists()


def test_a_weights_mismatch_names_the_parameter_and_both_shapes(files, tmp_path):
    # the stored (plain-data) payload, edited and written back as it was read
    payload = torch.load(files / "run" / LAST, weights_only=True)
    key = "prior_net.loc_net.layers.0.weight"
    stored = payload["model_state"][key]
    payload["model_state"][key] = torch.zeros(stored.shape[0], stored.shape[1] + 2)
    bad = tmp_path / "checkpoint_last.pt"
    torch.save(payload, bad)
    result = run_cli("evaluate", bad, "--particles", 2, "--quiet")
    assert_one_line_error(*result, "evaluate",
                          f"weights do not fit the model: SRNN parameter '{key}' has shape "
                          f"[{stored.shape[0]}, {stored.shape[1] + 2}] in the checkpoint but "
                          f"{list(stored.shape)} in the network built from its config")
    assert not (tmp_path / "eval_test_K2.json").exists()


def test_one_particle_is_not_called_an_exact_likelihood(files, tmp_path):
    status, stdout, stderr = run_cli("evaluate", files / "run", "--particles", 1, "--quiet",
                                     "--out", tmp_path / "r.json")
    assert status == 0, stderr
    assert "exact likelihood" not in stdout
    assert "one particle: no tail to fit" in stdout
    assert "no standard error from one particle" in stdout


def test_the_rnn_is_still_an_exact_likelihood(files, tmp_path):
    run = tmp_path / "rnn"
    status, _, stderr = run_cli("train", "--data", files / "tiny.pickle", "--model", "rnn",
                                "--rnn-dim", 5, "--hidden-dim", 7, "--batch-size", 4, "--quiet",
                                "--epochs", 1, "--out", run)
    assert status == 0, stderr
    status, stdout, stderr = run_cli("evaluate", run, "--particles", 1, "--quiet")
    assert status == 0, stderr
    assert "n/a (exact likelihood" in stdout
