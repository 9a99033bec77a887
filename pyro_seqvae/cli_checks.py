"""Every option of a CLI command checked before any work: one line, at once.

The commands run in the order *parse -> check every option (this module) -> claim the run
folder -> load the data -> work*, so an impossible option never costs the minute of building
the chorales or the hours of a training run, and never leaves a folder behind. Each check names
the option, the value and what is expected; :func:`pyro_seqvae.cli.main` prints the
:class:`~pyro_seqvae.errors.SeqVAEError` as one line and exits with status 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import ConfigError

#: ``sample`` refuses to draw more than this many values (``--num x --steps x D``): 2**28
#: float32 values are 1 GiB, which a laptop holds; 100,000,000 steps of 4 piano rolls would
#: need 131 GiB for the output alone.
MAX_SAMPLE_VALUES = 2 ** 28

#: Seeds that torch, Pyro's ``set_rng_seed`` and NumPy all accept.
MAX_SEED = 2 ** 32 - 1

#: The emissions whose mixture size ``--num-components`` sets.
MIXTURE_EMISSIONS = ("gmm", "stroke")


def _positive(option: str, value, *, allow_zero: bool = False):
    low = 0 if allow_zero else 1
    if value is not None and value < low:
        raise ConfigError(f"{option} must be {'>= 0' if allow_zero else 'a positive integer'}, "
                          f"got {value}")


def check_device(name: str) -> None:
    """Refuse a device the library cannot run on here: only ``cpu`` and an available
    ``cuda[:N]`` (``mps``, ``meta``, ``xla`` ... are not supported)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"--device {name!r} is not a torch device ({exc}); expected cpu or "
                          f"cuda[:N]") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise ConfigError(f"--device {name}: pyro-seqvae runs on cpu or cuda[:N], not on "
                          f"{device.type}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {name}: this machine has {count} CUDA device"
                          f"{'s' if count != 1 else ''} (cuda:0 .. cuda:{count - 1})")


def check_common(args) -> None:
    """``--seed``, ``--device`` and ``--threads`` of every command."""
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be in [0, {MAX_SEED}], got {args.seed}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {args.threads}")
    check_device(args.device)


def check_data_source(data, kind, *, limit=None, data_options=None) -> str:
    """``--data``, ``--kind``, ``--limit`` (and WAV options) together; returns the reader.

    :raises ConfigError: a contradictory ``--kind``, ``--limit`` on other data than ``jsb`` or
        below 3, ``--frame-size``/``--seq-len`` on other data than WAV.
    :raises DataError: a path that does not exist.
    """
    from .data import resolve_kind

    try:
        resolved = resolve_kind(data, kind or "auto")
    except ConfigError as exc:
        raise ConfigError(f"--data/--kind: {exc}") from None
    if limit is not None:
        if resolved != "jsb":
            raise ConfigError(f"--limit applies to --data jsb only, not to {resolved} data "
                              f"({data})")
        if limit < 3:
            raise ConfigError(f"--limit must be at least 3 (one chorale each for train, valid "
                              f"and test), got {limit}")
    if data_options and resolved not in ("wav", "strokes"):
        names = ", ".join("--" + k.replace("_", "-") for k in sorted(data_options))
        verb = "applies" if len(data_options) == 1 else "apply"
        raise ConfigError(f"{names} {verb} to WAV data only, but {data} is {resolved} data")
    return resolved


def _trial_x_dim(emission: str, kind: str, config) -> int:
    if emission == "stroke":
        return 3
    if kind == "wav":
        return config.data_options.get("frame_size", 200)
    return 88


def check_train_args(args, config) -> None:
    """Every option of ``train``, with the :class:`~pyro_seqvae.training.TrainConfig` the
    command built from them, before the run folder is claimed or any data is read.

    Beyond :meth:`TrainConfig.__post_init__`'s ranges: the data source and reader, that the
    emission can model the kind of data, options that do not apply (``--num-components``
    without a mixture, ``--transpose`` on continuous data, ``--jit`` with another ``--elbo``),
    ``--eval-particles``, the KL schedule, and the model and guide themselves, built once on a
    stand-in width: unknown names, unknown or out-of-range sizes and impossible pairs.
    """
    check_common(args)
    emission = config.emission
    from .emissions import EMISSIONS

    if emission not in EMISSIONS:
        raise ConfigError(f"--emission {emission!r} is unknown; expected one of "
                          f"{sorted(EMISSIONS)}")
    if args.num_components is not None and emission not in MIXTURE_EMISSIONS:
        raise ConfigError(f"--num-components sets the mixture of --emission gmm or stroke; "
                          f"--emission {emission} has no mixture")
    if args.jit and args.elbo not in (None, "trace", "jit"):
        raise ConfigError(f"--jit is shorthand for --elbo jit and cannot be combined with "
                          f"--elbo {args.elbo}; drop one of them")
    _positive("--eval-particles", args.eval_particles, allow_zero=True)
    _positive("--transpose", args.transpose, allow_zero=True)
    kind = check_data_source(config.data, args.kind, limit=args.limit,
                             data_options=config.data_options)
    continuous = kind in ("wav", "strokes")
    if args.transpose and continuous:
        raise ConfigError(f"--transpose shifts the pitches of piano rolls; {config.data} is "
                          f"{kind} data")
    if continuous and emission == "bernoulli":
        fits = "gauss or gmm" if kind == "wav" else "stroke"
        raise ConfigError(f"--emission bernoulli models binary piano rolls, but {config.data} "
                          f"holds continuous {kind} data; use --emission {fits}")
    if emission == "stroke" and kind != "strokes":
        raise ConfigError(f"--emission stroke models pen strokes (dx, dy, pen), but "
                          f"{config.data} is {kind} data")
    for option, value in (("--beta-start", config.beta_start),
                          ("--beta-increment", config.beta_increment)):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{option} must be a finite number, got {value}")
    try:
        config.kl_schedule(1)
    except ConfigError as exc:
        raise ConfigError(f"--beta-start/--beta-increment: {exc}") from None
    config.build(_trial_x_dim(emission, kind, config))  # names, sizes and pairs; no data read


def check_can_write(folder: Path, what: str) -> None:
    """Refuse an output folder that cannot be created or written to, without creating anything.

    :param Path folder: the folder that will be created (if missing) and written into.
    :param str what: the option and its value, for the message (``--out results/x.json``).
    """
    probe = Path(folder)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what}: not writable ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: not writable (no write permission in {probe})")


def check_evaluate_args(args) -> None:
    """Every option of ``evaluate``, before the checkpoint, the data or the particles."""
    from .training.checkpoint import find_checkpoint

    check_common(args)
    _positive("--particles", args.particles)
    _positive("--batch-size", args.batch_size)
    _positive("--max-rows", args.max_rows)
    if args.data is not None:
        check_data_source(args.data, args.kind, limit=args.limit)
    elif args.limit is not None and args.limit < 3:
        raise ConfigError(f"--limit must be at least 3 (one chorale each for train, valid and "
                          f"test), got {args.limit}")
    checkpoint = find_checkpoint(args.run)
    out = Path(args.out) if args.out else (
        checkpoint.parent / f"eval_{args.split}_K{args.particles}.json")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of the results file, "
                          f"e.g. {out / f'eval_{args.split}_K{args.particles}.json'}")
    check_can_write(out.parent, f"--out {out}" if args.out else f"run folder {out.parent}")


def check_sample_args(args) -> None:
    """Every option of ``sample`` that can be judged before the checkpoint is read."""
    from .training.checkpoint import find_checkpoint

    check_common(args)
    _positive("--steps", args.steps)
    _positive("--num", args.num)
    if not args.step_seconds > 0 or not math.isfinite(args.step_seconds):
        raise ConfigError(f"--step-seconds must be a positive number, got {args.step_seconds}")
    find_checkpoint(args.run)
    if args.out is None:  # the default folder inside the run is checked once it is named
        return
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not writable (a file is in the way of the folder)")
    check_can_write(out, f"--out {out}")


def check_sample_size(num: int, steps: int, x_dim: int) -> None:
    """Refuse ``num x steps x x_dim`` values beyond :data:`MAX_SAMPLE_VALUES`."""
    values = num * steps * x_dim
    if values > MAX_SAMPLE_VALUES:
        raise ConfigError(
            f"--num {num} x --steps {steps} x {x_dim} features = {values:.3g} values "
            f"({values * 4 / 2 ** 30:.3g} GiB as float32), over the limit of "
            f"{MAX_SAMPLE_VALUES:.3g} ({MAX_SAMPLE_VALUES * 4 / 2 ** 30:.3g} GiB); ask for "
            f"fewer --steps or --num")


def remove_empty_folders(folders) -> None:
    """Remove the folders a failed command created, deepest first, where they are still empty."""
    for folder in sorted({Path(f) for f in folders}, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (a run's files), or already gone


__all__ = ["MAX_SAMPLE_VALUES", "check_can_write", "check_common",
           "check_data_source", "check_device", "check_evaluate_args", "check_sample_args",
           "check_sample_size", "check_train_args", "remove_empty_folders"]
