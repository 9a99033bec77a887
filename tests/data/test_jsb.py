import logging

import music21
import pytest
import torch
from music21 import chord, harmony, meter, note, stream, tie

import pyro_seqvae.data.jsb as jsb
from pyro_seqvae.data import build_jsb, roll_to_pitches, score_to_roll
from pyro_seqvae.errors import DataError


def _measure(number, elements, *, padding=0.0, time_signature=None):
    m = stream.Measure(number=number)
    if time_signature:
        m.insert(0, meter.TimeSignature(time_signature))
    m.paddingLeft = padding
    for e in elements:
        m.append(e)
    return m


def _tied(name, quarter_length, kind):
    n = note.Note(name, quarterLength=quarter_length)
    n.tie = tie.Tie(kind)
    return n


def _fragment():
    """Two parts in 4/4 with a one-beat pickup, a held half note, a tie, rests and a chord."""
    soprano = stream.Part(
        [
            _measure(0, [note.Note("G4")], padding=3.0, time_signature="4/4"),
            _measure(1, [note.Note("C5", quarterLength=2), note.Rest(), _tied("E5", 1, "start")]),
            _measure(
                2,
                [
                    _tied("E5", 1, "stop"),
                    note.Note("D5", quarterLength=0.5),
                    note.Note("C5", quarterLength=0.5),  # off-beat eighth: not sampled
                    note.Note("B4", quarterLength=2),
                ],
            ),
        ]
    )
    bass = stream.Part(
        [
            _measure(0, [note.Note("G3")], padding=3.0, time_signature="4/4"),
            _measure(1, [chord.Chord(["C3", "G3"], quarterLength=4)]),
            _measure(2, [note.Note("G2", quarterLength=2), note.Rest(quarterLength=2)]),
        ]
    )
    score = stream.Score([soprano, bass])
    soprano.measure(1).insert(0, harmony.ChordSymbol("C"))  # annotation, must not sound
    return score


def test_score_to_roll_fragment_by_hand():
    # MIDI: G2=43 C3=48 G3=55 G4=67 B4=71 C5=72 D5=74 E5=76
    expected = [
        (55, 67),  # pickup beat
        (48, 55, 72),  # C5 half note starts
        (48, 55, 72),  # C5 held
        (48, 55),  # soprano rest
        (48, 55, 76),  # E5 tied over the bar line
        (43, 76),
        (43, 74),  # D5 eighth on the beat; the C5 eighth after it is dropped
        (71,),  # bass rest
        (71,),
    ]
    roll = score_to_roll(_fragment())
    assert roll.shape == (9, 88) and roll.dtype == torch.float32
    assert roll_to_pitches(roll) == expected


def test_sub_beat_pickup_is_dropped():
    part = stream.Part(
        [
            _measure(0, [note.Note("B4", quarterLength=0.5)], padding=3.5, time_signature="4/4"),
            _measure(1, [note.Note("C5", quarterLength=2), note.Note("D5", quarterLength=2)]),
        ]
    )
    assert roll_to_pitches(score_to_roll(part)) == [(72,), (72,), (74,), (74,)]


def test_dotted_pickup_aligns_to_the_downbeat():
    part = stream.Part(
        [
            _measure(0, [note.Note("B4", quarterLength=1.5)], padding=1.5, time_signature="3/4"),
            _measure(1, [note.Note("C5", quarterLength=3)]),
        ]
    )
    # grid at offsets 0.5, 1.5, 2.5, 3.5 (downbeat of measure 1 is 1.5)
    assert roll_to_pitches(score_to_roll(part)) == [(71,), (72,), (72,), (72,)]


def test_stream_without_measures_starts_at_first_onset():
    s = stream.Stream()
    s.insert(2.0, note.Note("C4", quarterLength=1.5))
    s.insert(3.5, note.Note("D4", quarterLength=1.0))
    assert roll_to_pitches(score_to_roll(s)) == [(60,), (60,), (62,)]  # steps at 2, 3, 4


def test_score_to_roll_errors():
    with pytest.raises(DataError, match="bwv0: expected notes or rests"):
        score_to_roll(stream.Stream(), where="bwv0")
    s = stream.Stream([note.Note(110)])
    with pytest.raises(DataError, match="bwv0, offset 0.0: MIDI pitch 110 is outside"):
        score_to_roll(s, where="bwv0")


def test_split_rule_is_stable():
    assert jsb.split_of("bach/bwv269") == "valid"
    assert {jsb.split_of(f"bach/bwv{i}") for i in range(40)} == {"train", "valid", "test"}


def test_build_skips_and_reports(monkeypatch, caplog):
    good = stream.Stream([note.Note("C4"), note.Note("E4")])
    scores = {
        "bad/range": stream.Stream([note.Note(110), note.Note(60)]),
        "bad/short": stream.Stream([note.Note("C4")]),
        "good/one": good,
    }

    def fake_parse(name):
        if name == "bad/parse":
            raise music21.exceptions21.Music21Exception("cannot parse")
        return scores[name]

    monkeypatch.setattr(music21.corpus, "parse", fake_parse)
    with caplog.at_level(logging.WARNING, logger="pyro_seqvae.data.jsb"):
        payload = jsb._build(["bad/parse", "bad/range", "bad/short", "good/one"], progress=False)
    skipped = payload["info"]["skipped"]
    assert set(skipped) == {"bad/parse", "bad/range", "bad/short"}
    assert "parse failed: Music21Exception" in skipped["bad/parse"]
    assert "MIDI pitch 110" in skipped["bad/range"]
    assert "1 steps, fewer than 2" in skipped["bad/short"]
    assert "skipped 3 of 4 chorales" in caplog.text
    split = jsb.split_of("good/one")
    assert payload["info"]["names"][split] == ["good/one"]
    assert roll_to_pitches(payload["sequences"][split][0]) == [(60,), (64,)]


@pytest.fixture(scope="module")
def small_jsb(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jsb-cache")
    return build_jsb(limit=12, cache_dir=cache, progress=False), cache


def test_small_jsb_splits(small_jsb):
    splits, _ = small_jsb
    assert [len(s) for s in splits] == [8, 2, 2]
    assert splits.source == "jsb" and splits.x_dim == 88
    names = splits.info["names"]
    all_names = [n for split in ("train", "valid", "test") for n in names[split]]
    assert len(all_names) == len(set(all_names)) == 12  # disjoint
    for split in splits:
        assert len(names[split.name]) == len(split)
        assert all(jsb.split_of(n) == split.name for n in names[split.name])
        for seq in split.sequences:
            assert seq.shape[0] >= 2 and ((seq == 0) | (seq == 1)).all()
    assert splits.info["recipe_version"] == jsb.RECIPE_VERSION
    assert splits.info["steps_per_beat"] == 1 and splits.info["skipped"] == {}
    assert splits.info["limit"] == 12


def test_small_jsb_traceable_to_source(small_jsb):
    splits, _ = small_jsb
    name = splits.info["names"]["test"][0]
    assert torch.equal(splits.test[0], score_to_roll(music21.corpus.parse(name)))


def test_jsb_cache_reused_and_versioned(small_jsb, monkeypatch):
    splits, cache = small_jsb

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt despite a valid cache")

    monkeypatch.setattr(jsb, "_build", no_build)
    again = build_jsb(limit=12, cache_dir=cache, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again.train.sequences, splits.train.sequences))

    calls = []

    def fake_build(names, progress):
        calls.append(names)
        seqs = {s: [torch.zeros(3, 88)] for s in ("train", "valid", "test")}
        return {"sequences": seqs, "info": {"recipe_version": 999}}

    monkeypatch.setattr(jsb, "_build", fake_build)
    monkeypatch.setattr(jsb, "RECIPE_VERSION", 999)
    rebuilt = build_jsb(limit=12, cache_dir=cache, progress=False)
    assert len(calls) == 1 and rebuilt.info["recipe_version"] == 999
    assert (cache / "jsb-v999-limit12.pt").is_file()


def test_build_jsb_rejects_tiny_limit(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        build_jsb(limit=2, cache_dir=tmp_path)


@pytest.mark.slow
def test_full_jsb(tmp_path):
    splits = build_jsb(cache_dir=tmp_path, progress=False)
    total = sum(len(s) for s in splits) + len(splits.info["skipped"])
    assert total == len(jsb.chorale_names()) == 350
    assert len(splits.train) > len(splits.valid) and len(splits.train) > len(splits.test)
