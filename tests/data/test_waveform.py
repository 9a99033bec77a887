"""Waveform data: WAV folder -> normalised frame sequences -> WAV, on synthesised audio."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from pyro_seqvae.data.sequences import Splits
from pyro_seqvae.data.waveform import (
    assign_splits,
    frames_to_wav,
    load_wav_folder,
    read_wav,
    resample,
    wav_to_frames,
)
from pyro_seqvae.errors import ConfigError, DataError


def chirp_and_noise(num_samples, rate, *, seed=0, f0=100.0, f1=2000.0, amplitude=0.4,
                    offset=0.0, noise=0.05):
    """A linear chirp from f0 to f1 Hz plus white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    duration = num_samples / rate
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / duration * t**2)
    return amplitude * np.sin(phase) + noise * rng.standard_normal(num_samples) + offset


def write(path, samples, rate, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


@pytest.fixture
def folder(tmp_path):
    """Eight 16 kHz files of 1.3 s (2 sequences of 0.5 s each, 24 frames left over)."""
    root = tmp_path / "wavs"
    for i in range(8):
        write(root / f"speaker{i % 2}" / f"utt{i}.wav",
              chirp_and_noise(20800, 16000, seed=i, f0=100 + 50 * i, offset=0.01 * i), 16000)
    return root


def test_wav_frames_wav_round_trip_at_16k(tmp_path):
    x = chirp_and_noise(16000 + 123, 16000)
    src = write(tmp_path / "a.wav", x, 16000)
    frames = wav_to_frames(src)
    assert frames.shape == (80, 200) and frames.dtype == torch.float32
    out = frames_to_wav(frames, tmp_path / "out" / "b.wav")
    back, rate = sf.read(str(out))
    assert rate == 16000 and back.shape == (16000,)
    np.testing.assert_allclose(back, x[:16000], atol=1e-6)
    # with a normalisation: frames_to_wav undoes it
    frames = wav_to_frames(src, mean=0.1, std=0.5)
    np.testing.assert_allclose(frames.numpy().reshape(-1), (x[:16000] - 0.1) / 0.5, atol=1e-5)
    back, _ = sf.read(str(frames_to_wav(frames, tmp_path / "c.wav", mean=0.1, std=0.5)))
    np.testing.assert_allclose(back, x[:16000], atol=1e-6)


def test_resampling_from_8k(tmp_path):
    n = 8000
    t = np.arange(n) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    src = write(tmp_path / "low.wav", tone, 8000)
    samples = read_wav(src)
    assert samples.shape == (2 * n,)
    # the resampled tone is the same tone at 16 kHz (away from the filter's edge effects)
    t16 = np.arange(2 * n) / 16000
    np.testing.assert_allclose(samples[400:-400], 0.5 * np.sin(2 * np.pi * 440 * t16)[400:-400],
                               atol=5e-3)
    frames = wav_to_frames(src, frame_size=200)
    assert frames.shape == (2 * n // 200, 200)
    assert resample(np.ones(441), 44100, 16000).shape == (160,)


def test_stereo_is_mixed_down(tmp_path):
    left = chirp_and_noise(4000, 16000, seed=1)
    right = chirp_and_noise(4000, 16000, seed=2)
    src = write(tmp_path / "st.wav", np.stack([left, right], 1), 16000)
    np.testing.assert_allclose(read_wav(src), (left + right) / 2, atol=1e-6)


def test_load_folder_shapes_and_info(folder):
    data = load_wav_folder(folder)
    assert isinstance(data, Splits)
    assert data.x_dim == 200
    for split in data:
        assert all(s.shape == (40, 200) for s in split.sequences)
    assert sum(len(split) for split in data) == 16  # 8 files x 2 sequences
    info = data.info
    assert set(info["normalisation"]) == {"mean", "std"}
    assert all(type(v) is float for v in info["normalisation"].values())
    assert info["sample_rate"] == 16000 and info["frame_size"] == 200 and info["seq_len"] == 40
    assert info["dropped_frames"] == {f"speaker{i % 2}/utt{i}.wav": 24 for i in range(8)}
    assert info["skipped"] == {}
    assert len(info["files"]["test"]) == 1 and len(info["files"]["valid"]) == 1
    assert sum(len(v) for v in info["names"].values()) == 16
    json.dumps(info)  # JSON-safe, so it can be stored with a checkpoint


def test_sequences_round_trip_to_the_source_samples(folder, tmp_path):
    data = load_wav_folder(folder)
    stats = data.info["normalisation"]
    for split in data:
        for seq, name in zip(split.sequences, data.info["names"][split.name]):
            file, chunk = name.split("#")
            chunk = int(chunk)
            original, _ = sf.read(str(folder / file))
            out = frames_to_wav(seq, tmp_path / "gen.wav", **stats)
            back, _ = sf.read(str(out))
            np.testing.assert_allclose(back, original[chunk * 8000 : (chunk + 1) * 8000],
                                       atol=1e-5)


def test_normalisation_uses_the_training_split_only(folder):
    data = load_wav_folder(folder)
    train_files = data.info["files"]["train"]
    samples = np.concatenate([sf.read(str(folder / f))[0][:16000] for f in train_files])
    stats = data.info["normalisation"]
    assert stats["mean"] == pytest.approx(samples.mean(), rel=1e-9, abs=1e-12)
    assert stats["std"] == pytest.approx(samples.std(), rel=1e-9)
    train = torch.cat(data.train.sequences).double()
    assert train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    everything = np.concatenate([sf.read(str(p))[0][:16000] for p in sorted(folder.rglob("*.wav"))])
    assert everything.mean() != pytest.approx(stats["mean"], rel=1e-3)


def test_given_normalisation_is_used(folder):
    data = load_wav_folder(folder, normalisation={"mean": 0.5, "std": 2.0})
    assert data.info["normalisation"] == {"mean": 0.5, "std": 2.0}
    name = data.info["names"]["train"][0]
    file, chunk = name.split("#")
    original, _ = sf.read(str(folder / file))
    np.testing.assert_allclose(data.train[0].numpy().reshape(-1),
                               (original[int(chunk) * 8000 : (int(chunk) + 1) * 8000] - 0.5) / 2,
                               atol=1e-6)
    with pytest.raises(ConfigError, match="normalisation"):
        load_wav_folder(folder, normalisation={"mean": 0.0, "std": 0.0})
    with pytest.raises(ConfigError, match="normalisation"):
        load_wav_folder(folder, normalisation={"mean": 0.0})


def test_split_is_deterministic_and_by_file(folder, tmp_path):
    a, b = load_wav_folder(folder), load_wav_folder(folder)
    assert a.info["files"] == b.info["files"]
    for sa, sb in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(sa.sequences, sb.sequences))
    # every chunk of a file lands in its file's split
    for split, names in a.info["names"].items():
        assert {n.split("#")[0] for n in names} == set(a.info["files"][split])
    # the same files under another folder give the same split
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert load_wav_folder(copy).info["files"] == a.info["files"]
    ranks = assign_splits([f"f{i}" for i in range(20)], 0.1, 0.2, where="x", what="files")
    assert sorted(ranks.values()).count("test") == 4 and list(ranks.values()).count("valid") == 2


def test_resampled_folder(tmp_path):
    root = tmp_path / "mixed"
    for i in range(3):
        write(root / f"lo{i}.wav", chirp_and_noise(4000, 8000, seed=i), 8000)  # 0.5 s
    write(root / "hi.wav", chirp_and_noise(8000, 16000, seed=9), 16000)
    data = load_wav_folder(root, valid_fraction=0.25, test_fraction=0.25)
    assert sum(len(s) for s in data) == 4
    assert data.info["source_rates"] == {"hi.wav": 16000, "lo0.wav": 8000, "lo1.wav": 8000,
                                         "lo2.wav": 8000}
    assert data.info["dropped_frames"] == {}


def test_short_files_are_recorded_not_dropped_silently(folder):
    write(folder / "short.wav", chirp_and_noise(7999, 16000), 16000)
    data = load_wav_folder(folder)
    assert "short.wav" in data.info["skipped"]
    assert "7999 samples" in data.info["skipped"]["short.wav"]
    assert all("short.wav" not in files for files in data.info["files"].values())


def test_frames_to_wav_batches_and_pcm(tmp_path):
    frames = torch.randn(2, 3, 10) * 0.1
    out = frames_to_wav(frames, tmp_path / "batch.wav", sample_rate=8000)
    back, rate = sf.read(str(out))
    assert rate == 8000
    np.testing.assert_allclose(back, frames.numpy().reshape(-1), atol=1e-7)
    out = frames_to_wav(frames * 100, tmp_path / "pcm.wav", subtype="PCM_16")
    back, _ = sf.read(str(out))
    assert sf.info(str(out)).subtype == "PCM_16" and np.abs(back).max() <= 1.0
    with pytest.raises(DataError, match="frames"):
        frames_to_wav(torch.zeros(10), tmp_path / "bad.wav")
    with pytest.raises(DataError, match="finite"):
        frames_to_wav(torch.full((2, 3), float("nan")), tmp_path / "bad.wav")
    with pytest.raises(ConfigError, match="subtype"):
        frames_to_wav(frames, tmp_path / "bad.wav", subtype="VORBIS")
    assert not (tmp_path / "bad.wav").exists()


def test_errors(tmp_path, folder):
    with pytest.raises(DataError, match="folder not found"):
        load_wav_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    with pytest.raises(DataError, match="no WAV files"):
        load_wav_folder(empty)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(DataError, match="broken.wav"):
        load_wav_folder(folder)
    skipping = load_wav_folder(folder, skip_errors=True)
    assert "cannot read audio" in skipping.info["skipped"]["broken.wav"]
    assert sum(len(s) for s in skipping) == 16
    few = tmp_path / "few"
    write(few / "a.wav", chirp_and_noise(8000, 16000), 16000)
    write(few / "b.wav", chirp_and_noise(8000, 16000), 16000)
    write(few / "c.wav", chirp_and_noise(100, 16000), 16000)
    with pytest.raises(DataError, match="at least 3 usable WAV files"):
        load_wav_folder(few)
    silent = tmp_path / "silent"
    for i in range(3):
        write(silent / f"{i}.wav", np.zeros(8000), 16000)
    with pytest.raises(DataError, match="standard deviation"):
        load_wav_folder(silent)
    with pytest.raises(DataError, match="file not found"):
        wav_to_frames(tmp_path / "missing.wav")
    with pytest.raises(ConfigError, match="seq_len"):
        load_wav_folder(folder, seq_len=0)
    with pytest.raises(ConfigError, match="valid_fraction"):
        load_wav_folder(folder, valid_fraction=1.5)
    with pytest.raises(ConfigError, match="below 1"):
        load_wav_folder(folder, valid_fraction=0.5, test_fraction=0.5)
