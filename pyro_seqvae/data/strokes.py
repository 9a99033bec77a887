"""Pen strokes (online handwriting) as sequences of ``x_t = (dx, dy, pen)``.

File format
-----------
A point is three numbers ``[dx, dy, pen]``:

- ``dx``, ``dy``: the pen's offset from the previous point (the first point's offset is from
  the origin), in any unit; absolute positions are the cumulative sums;
- ``pen``: exactly ``0`` or ``1``; ``pen = 1`` means the pen is lifted *after* this point, so
  the point ends a stroke and no line joins it to the next point (Graves 2013, sec. 4).

A sequence (one drawing or line of handwriting) is ``T >= 1`` points, a ``[T, 3]`` array.
:func:`load_strokes` reads any of:

- a **JSON lines** file (``.jsonl``, ``.ndjson`` or ``.json``): one JSON object per line,
  ``{"strokes": [[dx, dy, pen], ...]}``, with an optional ``"id"`` (string or integer) that
  names the sequence; blank lines are ignored. Example::

      {"id": "a01-000u-01", "strokes": [[0.0, 0.0, 0], [1.5, -0.5, 0], [2.0, 0.25, 1]]}
      {"strokes": [[3.0, 1.0, 0], [0.5, 0.5, 1]]}

- a **NumPy** ``.npy`` file holding one numeric ``[T, 3]`` array (one sequence), or an ``.npz``
  archive whose every array is one ``[T, 3]`` sequence (pickled object arrays are refused);
- a **folder** holding any number of the files above (searched recursively).

Sequences are named ``"<relative file>:<line>"`` (JSON lines, unless an ``"id"`` is given),
``"<relative file>"`` (``.npy``) or ``"<relative file>:<array name>"`` (``.npz``). The split is
deterministic by ``zlib.crc32`` of the name (:func:`~pyro_seqvae.data.splitting.assign_splits`).

Normalisation: ``dx`` and ``dy`` are divided by one standard deviation ``s`` computed over the
offsets (both coordinates together, so the aspect ratio is kept) of the *training* split; the
offsets are not centred (``mean = 0``) and the pen bit is untouched. ``info["normalisation"]``
stores ``{"mean": 0.0, "std": s}``; pass them to :func:`render_strokes` to undo it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from pyro_seqvae.atomic import atomic_write, atomic_write_text
from pyro_seqvae.data.sequences import SPLIT_NAMES, Splits
from pyro_seqvae.data.splitting import assign_splits
from pyro_seqvae.errors import ConfigError, DataError

__all__ = [
    "STROKE_SUFFIXES",
    "load_strokes",
    "read_stroke_file",
    "validate_strokes",
    "write_strokes_jsonl",
    "strokes_to_polylines",
    "render_strokes",
]

logger = logging.getLogger(__name__)

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
#: File suffixes read by :func:`load_strokes` (case-insensitive).
STROKE_SUFFIXES = _JSONL_SUFFIXES + (".npy", ".npz")


def validate_strokes(array, *, where: str) -> torch.Tensor:
    """Check one sequence of points and return it as a ``[T, 3]`` float32 tensor.

    :param array: a ``[T, 3]`` array-like of ``(dx, dy, pen)``.
    :param str where: the file (and line or array) for error messages.
    :returns: ``[T, 3]`` float32.
    :rtype: torch.Tensor
    :raises DataError: if it is empty, not ``[T, 3]``, not numeric, not finite, or a pen value
        is not 0 or 1 (naming the first bad point).
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{where}: strokes: expected numbers [dx, dy, pen], got dtype "
                        f"{array.dtype}")
    if array.ndim != 2 or array.shape[-1] != 3:
        raise DataError(f"{where}: strokes: expected shape [T, 3] of [dx, dy, pen], got shape "
                        f"{list(array.shape)}")
    if array.shape[0] == 0:
        raise DataError(f"{where}: strokes: expected at least one point, got none")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: point {i}: expected finite numbers, got {array[i].tolist()}")
    bad = ~np.isin(array[:, 2], (0.0, 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: point {i}: pen must be 0 or 1, got {array[i, 2]!r}")
    return torch.from_numpy(array).to(torch.float32)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_jsonl(path: Path, rel: str) -> dict[str, torch.Tensor]:
    out = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text: {e}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: expected a JSON object {{\"strokes\": [[dx, dy, pen], "
                            f"...]}}, got invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or "strokes" not in record:
            raise DataError(f"{where}: expected an object with a field 'strokes', got "
                            f"{type(record).__name__}"
                            + (f" with fields {sorted(record)}" if isinstance(record, dict)
                               else ""))
        points = record["strokes"]
        if not isinstance(points, list) or not points:
            raise DataError(f"{where}: field 'strokes': expected a non-empty list of "
                            f"[dx, dy, pen], got {points!r:.60}")
        for i, point in enumerate(points):
            if not isinstance(point, list) or len(point) != 3:
                raise DataError(f"{where}: field 'strokes', point {i}: expected [dx, dy, pen] "
                                f"(3 numbers), got {point!r:.60}")
            if not all(_is_number(v) for v in point):
                raise DataError(f"{where}: field 'strokes', point {i}: expected numbers, got "
                                f"{point!r:.60}")
        name = f"{rel}:{lineno}"
        if "id" in record:
            if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
                raise DataError(f"{where}: field 'id': expected a string or an integer, got "
                                f"{record['id']!r:.60}")
            name = str(record["id"])
        if name in out:
            raise DataError(f"{where}: field 'id': {name!r} is used by an earlier line")
        out[name] = validate_strokes(points, where=f"{where}: field 'strokes'")
    return out


def read_stroke_file(path: str | os.PathLike, *, root: str | os.PathLike | None = None
                     ) -> dict[str, torch.Tensor]:
    """Read one stroke file (JSON lines, ``.npy`` or ``.npz``; see the module docstring).

    :param path-like path: the file.
    :param path-like root: names are relative to this folder (default: the file's folder).
    :returns: ``{name: [T, 3] float32}`` in file order.
    :rtype: dict
    :raises DataError: naming the file (and line or array) of the first invalid sequence.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rel = path.relative_to(root).as_posix() if root is not None else path.name
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path, rel)
    if suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: unknown stroke file type; expected one of "
                        f"{', '.join(STROKE_SUFFIXES)}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read as a NumPy {suffix} file of numeric [T, 3] "
                        f"arrays: {e}") from None
    if suffix == ".npy":
        return {rel: validate_strokes(loaded, where=str(path))}
    with loaded:
        if not loaded.files:
            raise DataError(f"{path}: expected at least one [T, 3] array, the archive is empty")
        out = {}
        for key in loaded.files:
            try:
                array = loaded[key]
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: array {key!r}: cannot read: {e}") from None
            out[f"{rel}:{key}"] = validate_strokes(array, where=f"{path}: array {key!r}")
    return out


def load_strokes(
    path: str | os.PathLike,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    normalisation: dict | None = None,
) -> Splits:
    """Read pen-stroke sequences (see the module docstring for the file format).

    :param path-like path: a JSON lines file, an ``.npz`` archive, or a folder of stroke files.
    :param float valid_fraction: fraction of sequences for the valid split.
    :param float test_fraction: fraction of sequences for the test split.
    :param dict normalisation: ``{"mean": 0.0, "std": s}`` to use instead of the training
        split's statistics (e.g. the ones stored with a checkpoint); ``mean`` must be 0.
    :returns: splits of ``[T_i, 3]`` float32 sequences with normalised offsets; ``info`` holds
        ``"normalisation"`` (``{"mean": 0.0, "std": float}``), ``"names"``
        (``{split: [name, ...]}``) and ``"files"`` (the files read).
    :rtype: Splits
    :raises DataError: if the path is missing, holds no stroke files or fewer than 3 sequences,
        or a sequence is invalid (naming the file and line or array).
    :raises ConfigError: for bad fractions or normalisation.
    """
    if normalisation is not None:
        if not isinstance(normalisation, dict) or not {"mean", "std"} <= set(normalisation):
            raise ConfigError(f"normalisation must be a dict with 'mean' and 'std', got "
                              f"{normalisation!r}")
        std = float(normalisation["std"])
        if float(normalisation["mean"]) != 0.0 or not (math.isfinite(std) and std > 0):
            raise ConfigError(f"stroke normalisation needs mean 0 and a positive std, got "
                              f"{normalisation!r}")
    source = Path(path).expanduser()
    if source.is_dir():
        root = source
        files = sorted(p for p in source.rglob("*")
                       if p.suffix.lower() in STROKE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{source}: no stroke files ({', '.join(STROKE_SUFFIXES)}) found")
    elif source.is_file():
        root, files = source.parent, [source]
    else:
        raise DataError(f"{source}: no such file or folder; expected a JSON lines file, an "
                        f".npz archive or a folder of stroke files")
    sequences: dict[str, torch.Tensor] = {}
    for file in files:
        for name, seq in read_stroke_file(file, root=root).items():
            if name in sequences:
                raise DataError(f"{file}: sequence name {name!r} is used twice in {source}")
            sequences[name] = seq
    split_of = assign_splits(list(sequences), valid_fraction, test_fraction, where=str(source),
                             what="stroke sequences")
    if normalisation is None:
        train = torch.cat([seq[:, :2].reshape(-1) for name, seq in sequences.items()
                           if split_of[name] == "train"]).double()
        std = float(train.std(correction=0)) if train.numel() > 1 else 0.0
        if not (math.isfinite(std) and std > 0):
            raise DataError(f"{source}: training split: expected varying offsets dx, dy to "
                            f"normalise, got a standard deviation of {std!r}")
    out = {s: [] for s in SPLIT_NAMES}
    names = {s: [] for s in SPLIT_NAMES}
    for name, seq in sequences.items():
        seq = seq.clone()
        seq[:, :2] /= std
        out[split_of[name]].append(seq)
        names[split_of[name]].append(name)
    info = {
        "normalisation": {"mean": 0.0, "std": std},
        "names": names,
        "files": [f.relative_to(root).as_posix() for f in files],
    }
    return Splits.from_lists(out, source=str(source), info=info)


def _as_points(strokes, *, mean: float, std: float, where: str) -> np.ndarray:
    if isinstance(strokes, torch.Tensor):
        strokes = strokes.detach().cpu().numpy()
    strokes = np.asarray(strokes, dtype=np.float64)
    if strokes.ndim != 2 or strokes.shape[1] != 3 or strokes.shape[0] == 0:
        raise DataError(f"{where}: strokes: expected a non-empty [T, 3] array of "
                        f"(dx, dy, pen), got shape {list(strokes.shape)}")
    if not np.isfinite(strokes).all():
        raise DataError(f"{where}: strokes: expected finite values, found NaN or infinity")
    if not (math.isfinite(std) and std > 0 and math.isfinite(mean)):
        raise ConfigError(f"normalisation needs a finite mean and a positive std, got "
                          f"mean={mean!r}, std={std!r}")
    out = strokes.copy()
    out[:, :2] = out[:, :2] * std + mean
    return out


def strokes_to_polylines(strokes, *, mean: float = 0.0, std: float = 1.0) -> list[np.ndarray]:
    """Absolute pen positions, one polyline per stroke.

    Positions are the cumulative sums of the de-normalised offsets ``d * std + mean``; a new
    stroke starts after every point whose pen value is above 0.5 (pen lifted).

    :param strokes: ``[T, 3]`` points ``(dx, dy, pen)``.
    :param float mean: the normalisation's mean.
    :param float std: the normalisation's standard deviation.
    :returns: a list of ``[K_i, 2]`` arrays of ``(x, y)``.
    :rtype: list
    """
    points = _as_points(strokes, mean=mean, std=std, where="strokes_to_polylines")
    xy = np.cumsum(points[:, :2], axis=0)
    ends = np.flatnonzero(points[:, 2] > 0.5) + 1
    return [part for part in np.split(xy, ends) if len(part)]


def render_strokes(strokes, path: str | os.PathLike, *, mean: float = 0.0, std: float = 1.0,
                   linewidth: float = 1.5, figsize=(6.0, 3.0), dpi: int = 100,
                   invert_y: bool = False) -> Path:
    """Draw pen strokes to a PNG file (matplotlib's Agg renderer, written atomically).

    :param strokes: ``[T, 3]`` points ``(dx, dy, pen)``, e.g. a model sample.
    :param path-like path: destination ``.png``.
    :param float mean: the normalisation's mean (``info["normalisation"]``).
    :param float std: the normalisation's standard deviation.
    :param float linewidth: line width in points.
    :param tuple figsize: figure size in inches.
    :param int dpi: resolution.
    :param bool invert_y: draw ``y`` downwards (for data recorded in screen coordinates).
    :returns: the destination path.
    :rtype: pathlib.Path
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    polylines = strokes_to_polylines(strokes, mean=mean, std=std)
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot()
    for line in polylines:
        if len(line) == 1:
            ax.plot(line[:, 0], line[:, 1], "k.", markersize=linewidth * 2)
        else:
            ax.plot(line[:, 0], line[:, 1], "k-", linewidth=linewidth,
                    solid_capstyle="round")
    ax.set_aspect("equal", adjustable="datalim")
    if invert_y:
        ax.invert_yaxis()
    ax.set_axis_off()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def write_strokes_jsonl(sequences, path: str | os.PathLike) -> Path:
    """Write sequences of points as a JSON lines file that :func:`load_strokes` reads back.

    :param sequences: an iterable of ``[T, 3]`` arrays or tensors (e.g. model samples with
        pen values 0 or 1).
    :param path-like path: destination ``.jsonl``, written atomically.
    :returns: the destination path.
    :rtype: pathlib.Path
    :raises DataError: if a sequence is invalid.
    """
    lines = []
    for i, seq in enumerate(sequences):
        points = validate_strokes(seq, where=f"{path}: sequence {i}").double().tolist()
        lines.append(json.dumps({"strokes": [[dx, dy, int(pen)] for dx, dy, pen in points]}))
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
