"""Raw speech waveforms as sequences of frames (the VRNN and SRNN papers' speech experiments).

A folder of WAV files becomes a :class:`~pyro_seqvae.data.sequences.Splits` of ``[T, F]``
sequences, following the VRNN paper (sec. 5.1) and the SRNN paper (sec. 6.1):

1. every ``*.wav``/``*.wave`` file under the folder (recursively) is read with
   :mod:`soundfile`, mixed down to mono (mean of the channels) as float64;
2. resampled to ``sample_rate`` (16 kHz) with a polyphase filter
   (:func:`scipy.signal.resample_poly`) when its rate differs;
3. cut into non-overlapping frames of ``frame_size`` (200) samples, ``x_t in R^200``; the
   samples after the last whole frame are dropped;
4. the frames are chunked into sequences of ``seq_len`` frames (40 frames = 0.5 s at 16 kHz);
   the incomplete last chunk of a file is dropped and its frame count recorded in
   ``info["dropped_frames"]``; a file shorter than one sequence is recorded in
   ``info["skipped"]`` (never dropped silently);
5. files are split deterministically by ``zlib.crc32`` of their path relative to the folder;
6. every split is normalised by the *training* split's global mean and standard deviation,
   ``x <- (x - mean) / std``; the two numbers are stored in ``info["normalisation"]`` so that
   a checkpoint can carry them and :func:`frames_to_wav` can undo the normalisation.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from pyro_seqvae.atomic import atomic_write
from pyro_seqvae.data.sequences import SPLIT_NAMES, Splits
from pyro_seqvae.data.splitting import assign_splits, check_fractions
from pyro_seqvae.errors import ConfigError, DataError
from pyro_seqvae.layers import check_positive_int

__all__ = [
    "WAV_SUFFIXES",
    "load_wav_folder",
    "read_wav",
    "wav_to_frames",
    "frames_to_wav",
    "resample",
]

logger = logging.getLogger(__name__)

#: File suffixes read by :func:`load_wav_folder` (case-insensitive).
WAV_SUFFIXES = (".wav", ".wave")

#: Version of the recipe above, recorded in ``info`` so caches and checkpoints can tell.
RECIPE_VERSION = 1


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono signal with a polyphase filter (:func:`scipy.signal.resample_poly`).

    :param numpy.ndarray samples: ``[N]`` samples at ``orig_rate``.
    :param int orig_rate: the input's sample rate in Hz.
    :param int new_rate: the output's sample rate in Hz.
    :returns: ``[ceil(N * new_rate / orig_rate)]`` samples at ``new_rate`` (float64).
    :rtype: numpy.ndarray
    """
    samples = np.asarray(samples, dtype=np.float64)
    if orig_rate == new_rate:
        return samples
    try:
        from scipy.signal import resample_poly
    except ImportError as e:  # pragma: no cover - scipy is a dependency
        raise ConfigError(
            f"resampling from {orig_rate} Hz to {new_rate} Hz needs scipy; install it "
            "(pip install scipy) or resample the files beforehand") from e
    g = math.gcd(int(orig_rate), int(new_rate))
    return resample_poly(samples, new_rate // g, orig_rate // g)


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: cannot read audio (expected a WAV file): {e}") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: the file has no samples")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: samples: expected finite values, found NaN or infinity")
    return data.mean(axis=1), int(rate)


def read_wav(path: str | os.PathLike, *, sample_rate: int = 16000) -> np.ndarray:
    """Read an audio file as mono float64 samples at ``sample_rate``.

    :param path-like path: a WAV file (any format :mod:`soundfile` reads).
    :param int sample_rate: the target rate in Hz; other rates are resampled (:func:`resample`).
    :returns: ``[N]`` samples, channels averaged.
    :rtype: numpy.ndarray
    :raises DataError: if the file is missing, unreadable, or empty.
    """
    check_positive_int("sample_rate", sample_rate)
    samples, rate = _read_mono(Path(path))
    return resample(samples, rate, sample_rate)


def _to_frames(samples: np.ndarray, frame_size: int) -> np.ndarray:
    n = samples.shape[0] // frame_size
    return samples[: n * frame_size].reshape(n, frame_size)


def wav_to_frames(path: str | os.PathLike, *, sample_rate: int = 16000, frame_size: int = 200,
                  mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Read a WAV file as normalised frames ``x_t = (s_{tF}, ..., s_{tF+F-1})``.

    :param path-like path: the file.
    :param int sample_rate: rate to resample to (Hz).
    :param int frame_size: ``F``, samples per frame; the samples after the last whole frame
        are dropped.
    :param float mean: subtracted from every sample (the training set's mean).
    :param float std: every sample is divided by it after subtracting ``mean``.
    :returns: ``[T, F]`` float32 with ``T = floor(N / F)`` (possibly 0).
    :rtype: torch.Tensor
    :raises DataError: if the file cannot be read.
    """
    check_positive_int("frame_size", frame_size)
    mean, std = _check_stats(mean, std)
    frames = _to_frames(read_wav(path, sample_rate=sample_rate), frame_size)
    return torch.from_numpy((frames - mean) / std).to(torch.float32)


def frames_to_wav(frames, path: str | os.PathLike, *, sample_rate: int = 16000,
                  mean: float = 0.0, std: float = 1.0, subtype: str = "FLOAT") -> Path:
    """Write frames back as a mono WAV file, undoing the normalisation: ``s = x * std + mean``.

    The file is written atomically (a reader never sees a half-written file).

    :param frames: ``[T, F]`` frames, or ``[N, T, F]`` sequences written one after another;
        a tensor or an array.
    :param path-like path: destination (``.wav``).
    :param int sample_rate: the rate written in the header (Hz).
    :param float mean: the normalisation's mean (``info["normalisation"]["mean"]``).
    :param float std: the normalisation's standard deviation.
    :param str subtype: a :mod:`soundfile` WAV subtype; ``"FLOAT"`` (32-bit float, lossless for
        float32 frames, the default) or ``"PCM_16"`` (values clipped to ``[-1, 1]``).
    :returns: the destination path.
    :rtype: pathlib.Path
    :raises DataError: if ``frames`` is not 2-D or 3-D, or not finite.
    """
    import soundfile as sf

    check_positive_int("sample_rate", sample_rate)
    mean, std = _check_stats(mean, std)
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim not in (2, 3) or frames.size == 0:
        raise DataError(f"{path}: frames: expected a non-empty [T, F] or [N, T, F] array, got "
                        f"shape {list(frames.shape)}")
    if not np.isfinite(frames).all():
        raise DataError(f"{path}: frames: expected finite values, found NaN or infinity")
    samples = (frames.reshape(-1) * std + mean).astype(np.float32)
    if subtype.upper().startswith("PCM"):
        samples = np.clip(samples, -1.0, 1.0)
    if not sf.check_format("WAV", subtype):
        raise ConfigError(f"subtype {subtype!r} is not a WAV subtype; try 'FLOAT' or 'PCM_16'")
    return atomic_write(path, lambda f: sf.write(f, samples, sample_rate, format="WAV",
                                                 subtype=subtype))


def _check_stats(mean, std) -> tuple[float, float]:
    mean, std = float(mean), float(std)
    if not math.isfinite(mean) or not math.isfinite(std) or std <= 0:
        raise ConfigError(f"normalisation needs a finite mean and a positive std, got "
                          f"mean={mean!r}, std={std!r}")
    return mean, std


def _pooled_stats(moments) -> tuple[float, float]:
    """Mean and (population) standard deviation of the union of groups ``(n, mean, M2)``."""
    n = sum(m[0] for m in moments)
    mean = sum(m[0] * m[1] for m in moments) / n
    m2 = sum(m[2] + m[0] * (m[1] - mean) ** 2 for m in moments)
    return float(mean), float(math.sqrt(m2 / n))




def load_wav_folder(
    path: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    frame_size: int = 200,
    seq_len: int = 40,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    normalisation: dict | None = None,
    skip_errors: bool = False,
) -> Splits:
    """Read a folder of WAV files as sequences of ``seq_len`` frames of ``frame_size`` samples.

    See the module docstring for the recipe. The split is by file, so that no recording
    contributes to two splits.

    :param path-like path: the folder (searched recursively for ``*.wav``/``*.wave``).
    :param int sample_rate: rate in Hz every file is resampled to (16000).
    :param int frame_size: ``F``, samples per frame (200).
    :param int seq_len: ``T``, frames per sequence (40, i.e. 0.5 s at 16 kHz with ``F = 200``).
    :param float valid_fraction: fraction of files for the valid split.
    :param float test_fraction: fraction of files for the test split.
    :param dict normalisation: ``{"mean": m, "std": s}`` to use instead of the training split's
        statistics (e.g. the ones stored with a checkpoint).
    :param bool skip_errors: skip unreadable files, recording ``{relative path: reason}`` in
        ``info["skipped"]``, instead of raising.
    :returns: splits of ``[seq_len, frame_size]`` float32 sequences. ``info`` holds
        ``"normalisation"`` (``{"mean": float, "std": float}``), ``"sample_rate"``,
        ``"frame_size"``, ``"seq_len"``, ``"names"`` (``{split: ["file#chunk", ...]}``),
        ``"files"`` (``{split: [file, ...]}``), ``"skipped"`` (``{file: reason}``),
        ``"dropped_frames"`` (``{file: frames in the incomplete last chunk}``) and
        ``"source_rates"`` (``{file: rate in Hz}``).
    :rtype: Splits
    :raises DataError: if the folder is missing, holds no WAV files, a file cannot be read
        (naming it; unless ``skip_errors``), or fewer than 3 files are long enough for one sequence.
    :raises ConfigError: for bad sizes or fractions.
    """
    check_positive_int("sample_rate", sample_rate)
    check_positive_int("frame_size", frame_size)
    check_positive_int("seq_len", seq_len)
    check_fractions(valid_fraction, test_fraction)
    if normalisation is not None:
        if not isinstance(normalisation, dict) or not {"mean", "std"} <= set(normalisation):
            raise ConfigError(f"normalisation must be a dict with 'mean' and 'std', got "
                              f"{normalisation!r}")
        _check_stats(normalisation["mean"], normalisation["std"])
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in WAV_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root}: no WAV files ({', '.join('*' + s for s in WAV_SUFFIXES)}) found")

    chunks, skipped, dropped, rates, moments = {}, {}, {}, {}, {}
    needed = frame_size * seq_len
    for file in files:
        name = file.relative_to(root).as_posix()
        try:
            samples, rates[name] = _read_mono(file)
        except DataError as e:
            if not skip_errors:
                raise
            skipped[name] = str(e)
            continue
        samples = resample(samples, rates[name], sample_rate)
        frames = _to_frames(samples, frame_size)
        n_chunks = frames.shape[0] // seq_len
        if n_chunks == 0:
            skipped[name] = (f"shorter than one sequence: {samples.shape[0]} samples at "
                             f"{sample_rate} Hz, need {needed} ({seq_len} frames of {frame_size})")
            continue
        if frames.shape[0] % seq_len:
            dropped[name] = int(frames.shape[0] % seq_len)
        kept = frames[: n_chunks * seq_len]
        # (count, mean, sum of squared deviations) in float64, combined exactly below
        moments[name] = (kept.size, kept.mean(), ((kept - kept.mean()) ** 2).sum())
        chunks[name] = kept.reshape(n_chunks, seq_len, frame_size).astype(np.float32)
    if skipped:
        logger.warning("%s: skipped %d of %d WAV files: %s", root, len(skipped), len(files),
                       "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    split_of = assign_splits(list(chunks), valid_fraction, test_fraction, where=str(root),
                             what=f"WAV files (each at least {needed} samples after resampling)")

    if normalisation is None:
        mean, std = _pooled_stats([m for n, m in moments.items() if split_of[n] == "train"])
        if not std > 0 or not math.isfinite(std):
            raise DataError(f"{root}: training split: expected varying samples to normalise, "
                            f"got a standard deviation of {std!r} (silent audio?)")
    else:
        mean, std = float(normalisation["mean"]), float(normalisation["std"])

    sequences = {s: [] for s in SPLIT_NAMES}
    names = {s: [] for s in SPLIT_NAMES}
    split_files = {s: [] for s in SPLIT_NAMES}
    for name in sorted(chunks):
        split = split_of[name]
        split_files[split].append(name)
        for i, chunk in enumerate(chunks[name]):
            normalised = (chunk.astype(np.float64) - mean) / std
            sequences[split].append(torch.from_numpy(normalised).to(torch.float32))
            names[split].append(f"{name}#{i}")
    info = {
        "recipe_version": RECIPE_VERSION,
        "sample_rate": sample_rate,
        "frame_size": frame_size,
        "seq_len": seq_len,
        "normalisation": {"mean": mean, "std": std},
        "names": names,
        "files": split_files,
        "skipped": skipped,
        "dropped_frames": dropped,
        "source_rates": rates,
    }
    return Splits.from_lists(sequences, source=str(root), info=info)
