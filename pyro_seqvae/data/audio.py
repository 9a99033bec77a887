"""Piano rolls to audio: WAV files to listen to samples.

:func:`roll_to_audio` renders a binary ``[T, 88]`` roll through :mod:`pretty_midi`: with a
General MIDI soundfont through FluidSynth where both are available (``pyfluidsynth`` installed
and a ``.sf2`` file found, see :func:`find_soundfont`), else with pretty_midi's own additive
synthesis (``PrettyMIDI.synthesize``: sine waves, no extra dependency). :func:`roll_to_wav`
writes the result atomically with :mod:`soundfile`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import ConfigError

#: Where a General MIDI soundfont is looked for when ``$PYRO_SEQVAE_SOUNDFONT`` is not set.
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)

#: Peak amplitude of the written audio (the synthesis is normalised to it).
PEAK = 0.9


def find_soundfont() -> Path | None:
    """A General MIDI soundfont usable with FluidSynth, or None.

    ``$PYRO_SEQVAE_SOUNDFONT`` if set (it must exist), else the first of
    :data:`SOUNDFONT_PATHS` that exists, and only if :mod:`fluidsynth` (pyfluidsynth) imports.
    """
    env = os.environ.get("PYRO_SEQVAE_SOUNDFONT")
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"PYRO_SEQVAE_SOUNDFONT={env}: no such soundfont file")
        candidates = [Path(env)]
    else:
        candidates = [Path(p) for p in SOUNDFONT_PATHS if Path(p).is_file()]
    if not candidates:
        return None
    try:
        import fluidsynth  # noqa: F401
    except Exception:  # pyfluidsynth missing or its C library absent
        return None
    return candidates[0]


def roll_to_audio(roll, *, step_seconds: float = 0.5, sample_rate: int = 22050,
                  soundfont: str | os.PathLike | None | bool = None) -> np.ndarray:
    """Render a binary ``[T, 88]`` roll as mono float32 audio in ``[-PEAK, PEAK]``.

    :param roll: the roll (see :func:`~pyro_seqvae.data.midi.roll_to_pretty_midi`).
    :param float step_seconds: duration of one step.
    :param int sample_rate: samples per second.
    :param soundfont: a ``.sf2`` path; None: :func:`find_soundfont`; False: never FluidSynth.
    :returns: ``[num_samples]`` float32 array (silence for an empty roll).
    """
    from .midi import roll_to_pretty_midi

    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    pm = roll_to_pretty_midi(roll, step_seconds=step_seconds)
    font = find_soundfont() if soundfont is None else (soundfont or None)
    if font is not None:
        audio = pm.fluidsynth(fs=sample_rate, sf2_path=str(font))
    else:
        audio = pm.synthesize(fs=sample_rate)
    length = int(round(roll.shape[0] * step_seconds * sample_rate))
    audio = np.asarray(audio, dtype=np.float64)[:length]
    if audio.shape[0] < length:
        audio = np.pad(audio, (0, length - audio.shape[0]))
    peak = np.abs(audio).max() if audio.size else 0.0
    if peak > 0:
        audio = audio * (PEAK / peak)
    return audio.astype(np.float32)


def roll_to_wav(roll, path, *, step_seconds: float = 0.5, sample_rate: int = 22050,
                soundfont=None) -> Path:
    """Write :func:`roll_to_audio` to a 16-bit PCM WAV file, atomically.

    :returns: the destination path.
    """
    import soundfile

    audio = roll_to_audio(roll, step_seconds=step_seconds, sample_rate=sample_rate,
                          soundfont=soundfont)
    return atomic_write(path, lambda f: soundfile.write(f, audio, sample_rate, format="WAV",
                                                        subtype="PCM_16"))





def audio_player(roll, *, step_seconds: float = 0.5, sample_rate: int = 22050, soundfont=None):
    """A notebook player of a roll: :func:`roll_to_audio` as :class:`IPython.display.Audio`.

    :returns: ``IPython.display.Audio`` (displayed as an HTML5 player when it is a cell's value).
    """
    from IPython.display import Audio

    audio = roll_to_audio(roll, step_seconds=step_seconds, sample_rate=sample_rate,
                          soundfont=soundfont)
    return Audio(audio, rate=sample_rate, normalize=False)
__all__ = ["PEAK", "SOUNDFONT_PATHS", "audio_player", "find_soundfont", "roll_to_audio",
           "roll_to_wav"]
