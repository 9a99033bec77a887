import random

import pytest
import torch
from music21 import chord, note

from pyro_seqvae.data import (
    load_midi_folder,
    midi_to_roll,
    roll_to_midi,
    roll_to_pitches,
    roll_to_pretty_midi,
    roll_to_stream,
    score_to_roll,
)
from pyro_seqvae.errors import ConfigError, DataError


def test_midi_to_roll_beat_grid(write_midi):
    # tempo 60: one beat per second
    path = write_midi(
        "a.mid",
        [(60, 0.0, 2.0), (64, 1.0, 1.5), (67, 1.5, 2.0)],
        tempo=60.0,
        drums=[(36, 0.0, 3.0)],
    )
    assert roll_to_pitches(midi_to_roll(path)) == [(60,), (60, 64)]  # off-beat 67 dropped
    fine = midi_to_roll(path, steps_per_beat=2)
    assert roll_to_pitches(fine) == [(60,), (60,), (60, 64), (60, 67)]
    assert torch.equal(midi_to_roll(path, fs=2), fine)


def test_roundtrip_roll_midi_roll_is_exact(tmp_path, random_roll):
    roll = random_roll(40)
    roll[:3] = 0  # leading silence is kept
    path = roll_to_midi(roll, tmp_path / "out.mid")
    assert torch.equal(midi_to_roll(path), roll)
    assert torch.equal(midi_to_roll(path, steps_per_beat=2), roll.repeat_interleave(2, dim=0))
    roll_to_midi(roll, tmp_path / "fast.mid", step_seconds=0.3)
    assert torch.equal(midi_to_roll(tmp_path / "fast.mid"), roll)
    assert torch.equal(midi_to_roll(tmp_path / "fast.mid", fs=1 / 0.3), roll)


def test_held_notes_become_one_midi_note(random_roll):
    roll = torch.zeros(6, 88)
    roll[1:4, 39] = 1  # C4 held for 3 steps
    roll[5, 39] = 1  # re-attacked
    pm = roll_to_pretty_midi(roll, step_seconds=0.5)
    notes = pm.instruments[0].notes
    assert [(n.pitch, n.start, n.end) for n in notes] == [(60, 0.5, 2.0), (60, 2.5, 3.0)]


def test_writer_rejects_bad_rolls(tmp_path):
    with pytest.raises(DataError, match="roll: expected a binary piano roll"):
        roll_to_midi(torch.full((3, 88), 0.3), tmp_path / "x.mid")
    with pytest.raises(DataError, match=r"roll: expected a piano roll of shape \[T, 88\]"):
        roll_to_midi(torch.zeros(3, 64), tmp_path / "x.mid")
    with pytest.raises(DataError, match="binary"):
        roll_to_stream(torch.full((3, 88), 2.0))
    assert not (tmp_path / "x.mid").exists()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.mid: file not found"):
        midi_to_roll(tmp_path / "nope.mid")


def test_corrupt_midi(tmp_path, write_midi):
    junk = tmp_path / "junk.mid"
    junk.write_bytes(random.Random(0).randbytes(512))
    with pytest.raises(DataError, match=r"junk\.mid: not a readable MIDI file"):
        midi_to_roll(junk)
    good = write_midi("good.mid", [(60, 0.0, 1.0)] * 20)
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match=r"truncated\.mid: not a readable MIDI file"):
        midi_to_roll(truncated)


def test_empty_midi(write_midi):
    path = write_midi("empty.mid", [], drums=[(36, 0.0, 1.0)])
    with pytest.raises(DataError, match=r"empty\.mid: expected at least one non-drum note"):
        midi_to_roll(path)


def test_note_too_short_for_grid(write_midi):
    path = write_midi("short.mid", [(60, 0.1, 0.2)])
    with pytest.raises(DataError, match=r"short\.mid: no note covers a grid point"):
        midi_to_roll(path)


@pytest.mark.parametrize("pitch", [12, 115])
def test_pitch_out_of_range(write_midi, pitch):
    path = write_midi("wide.mid", [(60, 0.0, 1.0), (pitch, 1.0, 2.0)])
    with pytest.raises(DataError, match=rf"wide\.mid, .*note at 1.000 s: MIDI pitch {pitch}"):
        midi_to_roll(path)


def test_bad_grid_arguments(write_midi):
    path = write_midi("a.mid", [(60, 0.0, 1.0)])
    with pytest.raises(ConfigError, match="at most one"):
        midi_to_roll(path, steps_per_beat=2, fs=4)
    with pytest.raises(ConfigError, match="steps_per_beat"):
        midi_to_roll(path, steps_per_beat=0)
    with pytest.raises(ConfigError, match="fs"):
        midi_to_roll(path, fs=-1)


def _folder(tmp_path, write_midi, count=10):
    root = tmp_path / "songs"
    for i in range(count):
        sub = root / ("nested" if i % 2 else "")
        suffix = ".MID" if i == 3 else ".midi" if i == 4 else ".mid"
        write_midi(f"song{i}{suffix}", [(60 + i, 0.0, 1.0 + i)], folder=sub)
    (root / "notes.txt").write_text("not midi")
    return root


def test_load_midi_folder(tmp_path, write_midi):
    root = _folder(tmp_path, write_midi)
    splits = load_midi_folder(root)
    assert [len(s) for s in splits] == [6, 2, 2]
    names = splits.info["names"]
    all_names = names["train"] + names["valid"] + names["test"]
    assert len(set(all_names)) == 10 and "nested/song1.mid" in all_names
    assert "nested/song3.MID" in all_names and "song4.midi" in all_names
    for split in splits:
        for name, roll in zip(names[split.name], split.sequences):
            i = int(name.split("song")[1].split(".")[0])
            assert roll_to_pitches(roll) == [(60 + i,)] * (2 + 2 * i)  # tempo 120: 0.5 s steps
    again = load_midi_folder(root)
    assert again.info["names"] == names
    assert splits.info["steps_per_beat"] == 1 and splits.info["skipped"] == {}


def test_load_midi_folder_errors(tmp_path, write_midi):
    with pytest.raises(DataError, match=r"missing: folder not found"):
        load_midi_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty: no MIDI files"):
        load_midi_folder(tmp_path / "empty")
    root = _folder(tmp_path, write_midi)
    (root / "broken.mid").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match=r"broken\.mid: not a readable MIDI file"):
        load_midi_folder(root)
    splits = load_midi_folder(root, skip_errors=True)
    assert list(splits.info["skipped"]) == ["broken.mid"]
    assert sum(len(s) for s in splits) == 10
    with pytest.raises(ConfigError, match="valid_fraction"):
        load_midi_folder(root, valid_fraction=0.0)


def test_too_few_files(tmp_path, write_midi):
    write_midi("one.mid", [(60, 0.0, 1.0)], folder=tmp_path / "two")
    write_midi("two.mid", [(60, 0.0, 1.0)], folder=tmp_path / "two")
    with pytest.raises(DataError, match="two: need at least 3"):
        load_midi_folder(tmp_path / "two")


def test_roll_to_stream_notes():
    roll = torch.zeros(5, 88)
    roll[0:3, 60 - 21] = 1  # C4 held over three steps
    roll[1, 64 - 21] = 1  # E4 joins for one step
    roll[4, [67 - 21, 72 - 21]] = 1  # G4 + C5 chord after a rest
    part = roll_to_stream(roll, quarter_length=0.5)
    elements = list(part.flatten().notesAndRests)
    summary = [
        (float(e.offset), float(e.quarterLength), tuple(p.midi for p in e.pitches))
        for e in elements
    ]
    assert summary == [
        (0.0, 0.5, (60,)),
        (0.5, 0.5, (60, 64)),
        (1.0, 0.5, (60,)),
        (1.5, 0.5, ()),
        (2.0, 0.5, (67, 72)),
    ]
    assert isinstance(elements[0], note.Note) and elements[0].tie.type == "start"
    assert isinstance(elements[1], chord.Chord)
    assert elements[1].getTie(elements[1].pitches[0]).type == "continue"
    assert elements[1].getTie(elements[1].pitches[1]) is None
    assert elements[2].tie.type == "stop"
    assert isinstance(elements[3], note.Rest) and isinstance(elements[4], chord.Chord)


def test_roll_to_stream_roundtrip(random_roll):
    roll = random_roll(30, seed=3)
    roll[-1] = 0  # trailing rests are kept as rests
    assert torch.equal(score_to_roll(roll_to_stream(roll)), roll)
