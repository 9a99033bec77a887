import numpy as np
import pytest
import torch

from pyro_seqvae.data import pitches_to_roll, roll_to_pitches, validate_roll
from pyro_seqvae.errors import DataError


def test_pitches_to_roll_and_back():
    steps = [(21, 60), (), [108], (60.0, np.int64(64))]
    roll = pitches_to_roll(steps, where="f")
    assert roll.shape == (4, 88) and roll.dtype == torch.float32
    assert roll[0, 0] == 1 and roll[0, 39] == 1 and roll[1].sum() == 0 and roll[2, 87] == 1
    assert roll.sum() == 5
    assert roll_to_pitches(roll) == [(21, 60), (), (108,), (60, 64)]


@pytest.mark.parametrize("pitch", [20, 109, -1])
def test_pitch_out_of_range(pitch):
    with pytest.raises(DataError, match=rf"song.pkl, step 1: MIDI pitch {pitch} is outside"):
        pitches_to_roll([(60,), (pitch,)], where="song.pkl")


@pytest.mark.parametrize("pitch", [60.5, "60", None, True])
def test_pitch_not_integral(pitch):
    with pytest.raises(DataError, match="song.pkl, step 0: expected an integer MIDI pitch"):
        pitches_to_roll([(pitch,)], where="song.pkl")


def test_step_not_iterable():
    with pytest.raises(DataError, match="step 0: expected an iterable"):
        pitches_to_roll([60], where="f")


def test_validate_roll():
    roll = torch.zeros(3, 88)
    assert validate_roll(roll, where="r") is roll
    with pytest.raises(
        DataError, match=r"x: expected a piano roll of shape \[T, 88\], got \[3, 87\]"
    ):
        validate_roll(torch.zeros(3, 87), where="x")
    with pytest.raises(DataError, match=r"shape \[T, 88\]"):
        validate_roll(torch.zeros(88), where="x")
    with pytest.raises(DataError, match="x: expected a binary piano roll.*0.5"):
        validate_roll(torch.full((2, 88), 0.5), where="x")
    with pytest.raises(DataError, match="x: piano roll contains NaN"):
        validate_roll(torch.full((2, 88), float("nan")), where="x")
    with pytest.raises(DataError, match="x: expected a torch.Tensor"):
        validate_roll(np.zeros((2, 88)), where="x")
    validate_roll(torch.full((2, 88), 0.5), where="x", binary=False)
