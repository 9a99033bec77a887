"""``pyro-seqvae sample``: WAV files, a fresh default folder, ``--prefix``; ``evaluate``'s
sample statistics (issue 12)."""

import json
import shutil

import pytest
import soundfile
import torch
from test_cli import TINY, assert_one_line_error, run_cli, write_benchmark_pickle

from pyro_seqvae.data.midi import roll_to_midi


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = write_benchmark_pickle(tmp_path_factory.mktemp("data") / "tiny.pickle")
    folder = tmp_path_factory.mktemp("runs") / "srnn"
    status, _, stderr = run_cli("train", "--data", data, *TINY, "--epochs", 1, "--out", folder)
    assert status == 0, stderr
    return folder


def test_default_folder_is_new_and_inside_the_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    status, stdout, stderr = run_cli("sample", copy, "--steps", 6, "--num", 2, "--seed", 3,
                                     "--quiet")
    assert status == 0, stderr
    out = copy / "samples-seed3-N2-T6"
    assert str(out) in stdout
    assert torch.load(out / "samples.pt").shape == (2, 6, 88)
    audio, rate = soundfile.read(out / "sample_01.wav")
    assert rate == 22050 and audio.shape == (6 * 11025,)   # 6 steps of half a second
    # a second identical call would overwrite (or mix with) the first: refused in one line
    result = run_cli("sample", copy, "--steps", 6, "--num", 2, "--seed", 3, "--quiet")
    assert_one_line_error(*result, "sample", "not empty")
    status, _, _ = run_cli("sample", copy, "--steps", 6, "--num", 1, "--seed", 4, "--quiet",
                           "--no-wav")
    assert status == 0
    assert not list((copy / "samples-seed4-N1-T6").glob("*.wav"))


def test_prefix_continues_a_midi_opening(run, tmp_path):
    opening = torch.zeros(3, 88)
    opening[0, [39, 43, 46]] = 1.0
    opening[1:, [41, 45]] = 1.0
    path = roll_to_midi(opening, tmp_path / "opening.mid")
    out = tmp_path / "cont"
    status, stdout, stderr = run_cli("sample", run, "--steps", 7, "--num", 3, "--prefix", path,
                                     "--out", out, "--quiet")
    assert status == 0, stderr
    samples = torch.load(out / "samples.pt")
    assert samples.shape == (3, 7, 88)
    assert torch.equal(samples[:, :3], opening.expand(3, -1, -1))


def test_prefix_errors_are_one_line(run, tmp_path):
    result = run_cli("sample", run, "--prefix", tmp_path / "missing.mid", "--out", tmp_path / "a")
    assert_one_line_error(*result, "sample", "missing.mid")
    long = roll_to_midi(torch.ones(9, 88) * (torch.arange(88) == 40), tmp_path / "long.mid")
    result = run_cli("sample", run, "--prefix", long, "--steps", 4, "--out", tmp_path / "b")
    assert_one_line_error(*result, "sample", "prefix has 9 steps")


def test_evaluate_reports_sample_statistics(run, tmp_path):
    out = tmp_path / "eval.json"
    status, stdout, stderr = run_cli("evaluate", run, "--particles", 2, "--samples", 3,
                                     "--sample-steps", 5, "--out", out, "--quiet")
    assert status == 0, stderr
    stats = json.loads(out.read_text())["sample_stats"]
    assert stats["samples"]["num_sequences"] == 3 and stats["samples"]["num_steps"] == 15
    assert stats["reference"]["num_sequences"] == 3          # the tiny test split
    assert 0.0 <= stats["pitch_tv"] <= 1.0
    assert "notes per step" in stdout
    status, _, _ = run_cli("evaluate", run, "--particles", 2, "--samples", 0, "--out", out,
                           "--quiet")
    assert status == 0 and "sample_stats" not in json.loads(out.read_text())
