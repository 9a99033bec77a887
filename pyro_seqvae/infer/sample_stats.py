"""Statistics of sampled piano rolls against the data: do the samples look like chorales?

A sequence model can have a good ELBO and still sample noise (issue 12: free-running SRNN
samples that collapse into 45 simultaneous notes per step). :func:`piano_roll_statistics`
summarises a set of binary rolls ``[T_i, D]``; :func:`compare_sample_statistics` puts the
figures of model samples next to those of a reference split (the test split) and adds the
distances between their pitch and pitch-class histograms.

JSON keys of :func:`piano_roll_statistics` (all rates are per step or per sequence):

- ``num_sequences``, ``num_steps``: the rolls measured;
- ``notes_per_step_mean``, ``notes_per_step_std``, ``notes_per_step_max``;
- ``notes_per_step_hist``: share of steps with ``k`` notes, ``k = 0, 1, ...`` (trailing zeros
  trimmed);
- ``dense_threshold`` and ``share_sequences_dense``: the share of sequences that have at least
  one step with more than ``dense_threshold`` (12) notes;
- ``share_steps_dense``: the share of steps with more than ``dense_threshold`` notes;
- ``note_duration_mean``: the mean length in steps of a note, a maximal run of consecutive
  steps in which one key is on (a run cut by the end of a roll counts as it is);
- ``lowest_pitch``, ``highest_pitch``: the MIDI numbers of the lowest and highest key ever on
  (None for empty rolls);
- ``pitch_hist`` (``D`` shares of all sounding notes, column ``j`` is MIDI pitch
  ``lowest + j``), ``pitch_class_hist`` (12 shares, C = 0).

:func:`compare_sample_statistics` returns ``{"samples": ..., "reference": ...,
"pitch_tv": ..., "pitch_class_tv": ..., "notes_per_step_ratio": ...}``, where ``*_tv`` is the
total-variation distance ``1/2 sum |p - q|`` in ``[0, 1]`` between the histograms and
``notes_per_step_ratio`` is the samples' mean notes per step over the reference's.
"""

from __future__ import annotations

import torch

from ..data.pianoroll import LOWEST_PITCH
from ..errors import DataError

#: A step with more notes than this counts as a collapsed ("dense") step: ten fingers plus a
#: margin; the embedded chorales never exceed 6.
DENSE_THRESHOLD = 12


def _as_rolls(rolls) -> list[torch.Tensor]:
    if isinstance(rolls, torch.Tensor):
        if rolls.dim() == 2:
            rolls = rolls.unsqueeze(0)
        if rolls.dim() != 3:
            raise DataError(f"rolls must be [N, T, D] or a list of [T, D], got "
                            f"{tuple(rolls.shape)}")
        rolls = list(rolls)
    rolls = [torch.as_tensor(r) for r in rolls]
    if not rolls:
        raise DataError("rolls: expected at least one roll, got none")
    width = rolls[0].shape[-1]
    for i, r in enumerate(rolls):
        if r.dim() != 2 or r.shape[-1] != width or r.shape[0] == 0:
            raise DataError(f"rolls: roll {i} must be [T, {width}] with T >= 1, got "
                            f"{tuple(r.shape)}")
    return [(r > 0.5) for r in rolls]


def note_durations(roll: torch.Tensor) -> torch.Tensor:
    """Lengths of all notes of a binary roll: maximal runs of 1 in each column.

    :param torch.Tensor roll: ``[T, D]`` binary.
    :returns: ``[num_notes]`` long tensor of run lengths (order: by column, then by time).
    """
    on = (torch.as_tensor(roll) > 0.5).t().to(torch.int8)  # [D, T]
    padded = torch.nn.functional.pad(on, (1, 1))
    change = padded[:, 1:] - padded[:, :-1]  # +1 at onsets, -1 one past offsets
    starts = (change == 1).nonzero()
    ends = (change == -1).nonzero()
    return ends[:, 1] - starts[:, 1]


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """``1/2 sum |p - q|`` of two histograms (each normalised here; an all-zero one is uniform)."""
    p, q = p.double(), q.double()
    p = p / p.sum() if p.sum() > 0 else torch.full_like(p, 1.0 / p.numel())
    q = q / q.sum() if q.sum() > 0 else torch.full_like(q, 1.0 / q.numel())
    return float(0.5 * (p - q).abs().sum())


def piano_roll_statistics(rolls, *, lowest_pitch: int = LOWEST_PITCH,
                          dense_threshold: int = DENSE_THRESHOLD) -> dict:
    """Summary statistics of binary piano rolls (keys documented in the module docstring).

    :param rolls: ``[N, T, D]`` tensor or a list of ``[T_i, D]`` rolls (values > 0.5 are on).
    :param int lowest_pitch: MIDI number of column 0 (21, A0, for 88-key rolls).
    :param int dense_threshold: a step with more notes than this is "dense".
    :rtype: dict
    """
    rolls = _as_rolls(rolls)
    counts = torch.cat([r.sum(-1) for r in rolls]).long()  # notes per step, all steps
    width = rolls[0].shape[-1]
    hist = torch.bincount(counts, minlength=1).double() / counts.numel()
    last = int(hist.nonzero().max())
    pitch = torch.stack([r.sum(0) for r in rolls]).sum(0).double()  # [D]
    classes = torch.zeros(12, dtype=torch.float64)
    classes.index_add_(0, (torch.arange(width) + lowest_pitch) % 12, pitch)
    durations = torch.cat([note_durations(r) for r in rolls])
    used = pitch.nonzero().flatten()
    dense_seq = [bool((r.sum(-1) > dense_threshold).any()) for r in rolls]
    total = pitch.sum()
    return {
        "num_sequences": len(rolls),
        "num_steps": int(counts.numel()),
        "notes_per_step_mean": float(counts.double().mean()),
        "notes_per_step_std": float(counts.double().std(unbiased=False)),
        "notes_per_step_max": int(counts.max()),
        "notes_per_step_hist": [float(v) for v in hist[: last + 1]],
        "dense_threshold": int(dense_threshold),
        "share_sequences_dense": sum(dense_seq) / len(rolls),
        "share_steps_dense": float((counts > dense_threshold).double().mean()),
        "note_duration_mean": float(durations.double().mean()) if durations.numel() else 0.0,
        "lowest_pitch": int(used.min()) + lowest_pitch if used.numel() else None,
        "highest_pitch": int(used.max()) + lowest_pitch if used.numel() else None,
        "pitch_hist": [float(v) for v in (pitch / total if total > 0 else pitch)],
        "pitch_class_hist": [float(v) for v in (classes / total if total > 0 else classes)],
    }


def compare_sample_statistics(samples, reference, *, lowest_pitch: int = LOWEST_PITCH,
                              dense_threshold: int = DENSE_THRESHOLD) -> dict:
    """The statistics of ``samples`` and ``reference`` side by side, with histogram distances.

    :param samples: sampled rolls, ``[N, T, D]`` or a list of ``[T_i, D]``.
    :param reference: data rolls (e.g. the test split's sequences).
    :returns: ``{"samples", "reference", "pitch_tv", "pitch_class_tv",
        "notes_per_step_ratio"}`` (see the module docstring).
    :rtype: dict
    """
    kw = dict(lowest_pitch=lowest_pitch, dense_threshold=dense_threshold)
    s, r = piano_roll_statistics(samples, **kw), piano_roll_statistics(reference, **kw)
    ratio = (s["notes_per_step_mean"] / r["notes_per_step_mean"]
             if r["notes_per_step_mean"] > 0 else float("nan"))
    return {
        "samples": s,
        "reference": r,
        "pitch_tv": total_variation(torch.tensor(s["pitch_hist"]), torch.tensor(r["pitch_hist"])),
        "pitch_class_tv": total_variation(torch.tensor(s["pitch_class_hist"]),
                                          torch.tensor(r["pitch_class_hist"])),
        "notes_per_step_ratio": ratio,
    }


def sample_statistics(model, reference, *, num_samples: int = 16, num_steps: int = 128,
                      seed: int | None = 0, lowest_pitch: int = LOWEST_PITCH,
                      dense_threshold: int = DENSE_THRESHOLD) -> dict:
    """Draw ``num_samples`` free-running sequences of ``num_steps`` from ``model`` and compare.

    :param model: a :class:`~pyro_seqvae.models.SequenceModel` with a binary emission.
    :param reference: rolls to compare with (e.g. ``splits.test.sequences``).
    :param int seed: seeds Pyro's and torch's generators before sampling (None: leave them).
    :returns: :func:`compare_sample_statistics`'s dict plus ``num_samples``, ``num_steps``,
        ``seed``.
    """
    import pyro

    if seed is not None:
        pyro.set_rng_seed(seed)
    was_training = model.training
    model.eval()
    try:
        samples = model.sample(num_samples, num_steps).cpu()
    finally:
        model.train(was_training)
    out = compare_sample_statistics(samples, reference, lowest_pitch=lowest_pitch,
                                    dense_threshold=dense_threshold)
    out.update(num_samples=num_samples, num_steps=num_steps, seed=seed)
    return out


__all__ = ["DENSE_THRESHOLD", "compare_sample_statistics", "note_durations",
           "piano_roll_statistics", "sample_statistics", "total_variation"]
