"""Fixtures that build small MIDI files and rolls in ``tmp_path``; no network."""

import pretty_midi
import pytest
import torch


@pytest.fixture
def write_midi(tmp_path):
    """``write_midi(name, notes, tempo=120, drums=())`` writes a MIDI file and returns its path.

    ``notes`` and ``drums`` are ``(pitch, start_seconds, end_seconds)`` triples.
    """

    def write(name, notes, *, tempo=120.0, drums=(), folder=None):
        pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
        piano = pretty_midi.Instrument(program=0)
        for pitch, start, end in notes:
            piano.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=start, end=end))
        pm.instruments.append(piano)
        if drums:
            kit = pretty_midi.Instrument(program=0, is_drum=True)
            for pitch, start, end in drums:
                kit.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=start, end=end))
            pm.instruments.append(kit)
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pm.write(str(path))
        return path

    return write


@pytest.fixture
def random_roll():
    """``random_roll(T, seed)``: a sparse binary ``[T, 88]`` roll whose last step is non-empty."""

    def make(num_steps, seed=0):
        g = torch.Generator().manual_seed(seed)
        roll = (torch.rand(num_steps, 88, generator=g) < 0.05).float()
        roll[-1, 40] = 1.0
        return roll

    return make
