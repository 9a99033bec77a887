"""Sample statistics of piano rolls (issue 12): exact values on hand-made rolls."""

import math

import pytest
import torch

from pyro_seqvae.errors import DataError
from pyro_seqvae.infer.sample_stats import (
    compare_sample_statistics,
    note_durations,
    piano_roll_statistics,
    total_variation,
)


def roll(T, on):
    """A [T, 88] roll with key j on at the steps listed in ``on[j]``."""
    r = torch.zeros(T, 88)
    for key, steps in on.items():
        r[list(steps), key] = 1.0
    return r


def test_note_durations_are_runs_per_key():
    r = roll(6, {0: [0, 1, 2], 5: [1, 3, 4, 5], 87: [5]})
    assert sorted(note_durations(r).tolist()) == [1, 1, 3, 3]
    assert note_durations(torch.zeros(4, 88)).numel() == 0


def test_statistics_of_hand_made_rolls():
    # roll a: 4 steps with 1, 2, 0 and 14 notes; roll b: 2 steps with 3 notes each
    a = roll(4, {3: [0, 1], 15: [1], **{k: [3] for k in range(30, 44)}})
    b = roll(2, {39: [0, 1], 43: [0, 1], 46: [0, 1]})
    s = piano_roll_statistics([a, b])
    assert s["num_sequences"] == 2 and s["num_steps"] == 6
    assert s["notes_per_step_mean"] == pytest.approx((1 + 2 + 0 + 14 + 3 + 3) / 6)
    assert s["notes_per_step_max"] == 14
    hist = [0.0] * 15
    hist[0], hist[1], hist[2], hist[3], hist[14] = 1 / 6, 1 / 6, 1 / 6, 2 / 6, 1 / 6
    assert s["notes_per_step_hist"] == pytest.approx(hist)
    assert s["share_sequences_dense"] == 0.5      # only roll a has a step of > 12 notes
    assert s["share_steps_dense"] == pytest.approx(1 / 6)
    # 19 notes: key 3 (2 steps), 15 (1), 14 keys of 1 step, keys 39, 43, 46 of 2 steps in b
    assert s["note_duration_mean"] == pytest.approx((2 + 1 + 14 * 1 + 3 * 2) / 19)
    assert s["lowest_pitch"] == 21 + 3 and s["highest_pitch"] == 21 + 46
    total = 2 + 1 + 14 + 6
    assert s["pitch_hist"][3] == pytest.approx(2 / total)
    assert s["pitch_hist"][39] == pytest.approx(3 / total)   # once in a, twice in b
    assert sum(s["pitch_hist"]) == pytest.approx(1.0)
    # pitch classes: key j is MIDI 21 + j; the Cs are keys 3, 15, 27, 39 (MIDI 24, 36, 48, 60)
    assert s["pitch_class_hist"][0] == pytest.approx((2 + 1 + 1 + 2) / total)
    assert sum(s["pitch_class_hist"]) == pytest.approx(1.0)


def test_an_empty_roll_has_no_pitch_range():
    s = piano_roll_statistics(torch.zeros(1, 5, 88))
    assert s["notes_per_step_mean"] == 0.0 and s["notes_per_step_hist"] == [1.0]
    assert s["lowest_pitch"] is None and s["note_duration_mean"] == 0.0


def test_total_variation_exact():
    assert total_variation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 1.0
    assert total_variation(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 1.0])) == \
        pytest.approx(0.25)


def test_compare_with_itself_and_with_a_shift():
    a = roll(4, {10: [0, 1, 2, 3], 14: [0, 1], 17: [2, 3]})
    same = compare_sample_statistics([a], [a])
    assert same["pitch_tv"] == 0.0 and same["pitch_class_tv"] == 0.0
    assert same["notes_per_step_ratio"] == 1.0
    octave = torch.roll(a, 12, dims=1)   # one octave up: same pitch classes, disjoint pitches
    moved = compare_sample_statistics([octave], [a])
    assert moved["pitch_tv"] == 1.0 and moved["pitch_class_tv"] == pytest.approx(0.0)
    empty = compare_sample_statistics([a], [torch.zeros(3, 88)])
    assert math.isnan(empty["notes_per_step_ratio"])


def test_bad_rolls_are_one_line_errors():
    with pytest.raises(DataError, match="roll 1"):
        piano_roll_statistics([torch.zeros(3, 88), torch.zeros(3, 87)])
    with pytest.raises(DataError, match="at least one"):
        piano_roll_statistics([])
