"""Short training runs on continuous data: the ELBO improves with Gauss, GMM and stroke outputs."""

import numpy as np
import pytest
import soundfile as sf
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.data.batching import pad_sequences
from pyro_seqvae.data.strokes import load_strokes, render_strokes, write_strokes_jsonl
from pyro_seqvae.data.waveform import frames_to_wav, load_wav_folder
from pyro_seqvae.guides import FilteringGuide
from pyro_seqvae.guides.base import EmptyGuide
from pyro_seqvae.models import RNN, SRNN, VRNN

FRAME = 200


# The networks are tiny: one intra-op thread (the ``single_thread`` fixture of conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Chirps plus noise in six WAV files, loaded as 8-frame sequences (normalised)."""
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    rate = 16000
    for i in range(6):
        n = 3 * 8 * FRAME
        t = np.arange(n) / rate
        f0, f1 = 150 + 40 * i, 1200 + 100 * i
        phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / t[-1] * t**2)
        x = 0.4 * np.sin(phase) + 0.05 * rng.standard_normal(n)
        sf.write(str(root / f"chirp{i}.wav"), x, rate, subtype="FLOAT")
    return load_wav_folder(root, seq_len=8, valid_fraction=0.2, test_fraction=0.2)


@pytest.fixture(scope="module")
def strokes(tmp_path_factory):
    """Variable-length loops, loaded through the JSON lines format."""
    rng = np.random.default_rng(1)
    seqs = []
    for i in range(12):
        points = 6 + i % 5
        angle = np.linspace(0, 2 * np.pi, points) + rng.uniform(0, 1)
        xy = 3 * np.stack([np.cos(angle), np.sin(angle)], 1)
        pen = np.zeros((points, 1))
        pen[-1] = 1
        seqs.append(np.concatenate([np.diff(xy, axis=0, prepend=0.0), pen], 1))
    path = write_strokes_jsonl(seqs, tmp_path_factory.mktemp("strokes") / "loops.jsonl")
    return load_strokes(path)


def train(model, guide, batch, steps=30, lr=3e-3):
    svi = SVI(model, guide, ClippedAdam({"lr": lr}), Trace_ELBO())
    losses = [svi.step(batch.x, batch.mask) for _ in range(steps)]
    assert all(np.isfinite(losses))
    return losses


def assert_improves(losses):
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first, f"ELBO did not improve: first {first:.1f}, last {last:.1f}"


def test_vrnn_gauss_on_waveform_frames(speech, tmp_path):
    batch = pad_sequences(speech.train.sequences)
    assert batch.x.shape == (len(speech.train), 8, FRAME)
    model = VRNN(x_dim=FRAME, emission="gauss", z_dim=4, rnn_dim=16, hidden_dim=32)
    guide = FilteringGuide(model, hidden_dim=32, summary_dim=16)
    assert_improves(train(model, guide, batch))
    generated = model.sample(2, 5)
    assert generated.shape == (2, 5, FRAME) and torch.isfinite(generated).all()
    out = frames_to_wav(generated, tmp_path / "vrnn.wav", **speech.info["normalisation"])
    assert sf.info(str(out)).frames == 2 * 5 * FRAME


def test_srnn_gmm_on_waveform_frames(speech):
    batch = pad_sequences(speech.train.sequences)
    model = SRNN(x_dim=FRAME, emission="gmm", emission_kwargs={"num_components": 3}, z_dim=4,
                 rnn_dim=16, hidden_dim=32)
    guide = FilteringGuide(model, hidden_dim=32, summary_dim=16)
    assert_improves(train(model, guide, batch))
    assert model.config()["emission_kwargs"] == {"num_components": 3}
    assert model.sample(2, 3).shape == (2, 3, FRAME)


def test_rnn_gmm_on_waveform_frames(speech):
    batch = pad_sequences(speech.train.sequences)
    model = RNN(x_dim=FRAME, emission="gmm", emission_kwargs={"num_components": 2},
                rnn_dim=16, hidden_dim=32)
    assert_improves(train(model, EmptyGuide(model), batch))


def test_vrnn_stroke_on_pen_strokes(strokes, tmp_path):
    batch = pad_sequences(strokes.train.sequences)
    assert not batch.mask.all()  # variable lengths: the padding is masked
    model = VRNN(x_dim=3, emission="stroke", emission_kwargs={"num_components": 3}, z_dim=4,
                 rnn_dim=16, hidden_dim=32)
    guide = FilteringGuide(model, hidden_dim=32, summary_dim=16)
    assert_improves(train(model, guide, batch, steps=30, lr=1e-2))
    assert model.config()["emission"] == "stroke"
    sample = model.sample(1, 20)[0]
    assert sample.shape == (20, 3)
    assert set(sample[:, 2].unique().tolist()) <= {0.0, 1.0}
    out = render_strokes(sample, tmp_path / "sample.png", **strokes.info["normalisation"])
    assert out.read_bytes()[:4] == b"\x89PNG"
