"""The ``pyro-seqvae`` command line: ``train``, ``evaluate`` and ``sample``.

Every user error (a :class:`~pyro_seqvae.errors.SeqVAEError`) ends the command with one line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, SeqVAEError
from .infer.importance import DEFAULT_MAX_ROWS

logger = logging.getLogger("pyro_seqvae")


# ---- argument parsing ----------------------------------------------------------------------------
def _add_common(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a small, busy CPU one "
                        "thread can be several times faster)")


def _add_data(p, default="jsb"):
    p.add_argument("--data", default=default,
                   help="'jsb' (embedded Bach chorales), a benchmark .pickle file, or a folder of "
                        "MIDI files" + (f" (default: {default})" if default else
                                        " (default: the data the run was trained on)"))
    p.add_argument("--kind", default=None,
                   choices=["auto", "jsb", "pickle", "midi", "wav", "strokes"],
                   help="reader of --data (default: auto, detected from the path)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only this many chorales of 'jsb' (quick trials)")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder for built data sets (default: $PYRO_SEQVAE_CACHE or "
                        "$XDG_CACHE_HOME/pyro-seqvae)")


def build_parser() -> argparse.ArgumentParser:
    from .emissions import EMISSIONS
    from .guides import GUIDES
    from .guides.baselines import BASELINES
    from .infer.elbo import ELBOS
    from .layers import ACTIVATIONS
    from .models import MODELS
    from .training.config import VALIDATE, TrainConfig

    defaults = TrainConfig()

    parser = argparse.ArgumentParser(
        prog="pyro-seqvae", description="Sequential VAEs (VRNN, STORN, SRNN, DMM) in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model with SVI",
                       description="Train a model with SVI. With no options: SRNN with the "
                                   "smoothing guide and Res_q on the embedded chorales.")
    _add_data(t)
    t.add_argument("--model", default="srnn", help=f"one of {sorted(MODELS)} (default: srnn)")
    t.add_argument("--guide", default=None,
                   help=f"one of {sorted(GUIDES)} (default: smooth; none for rnn)")
    t.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="residual guide mean Res_q (default: on for srnn/vrnn/dmm)")
    t.add_argument("--emission", default=None,
                   help=f"one of {sorted(EMISSIONS)} (default: bernoulli; gauss with "
                        "--preset speech)")
    t.add_argument("--num-components", type=int, default=None,
                   help="mixture components of --emission gmm or stroke (default: 20)")
    t.add_argument("--preset", choices=["music", "speech"], default="music",
                   help="network sizes: music (SRNN paper A.2: GRU 300, z 100, one 500-unit "
                        "layer) or speech (A.1: GRU 1024, z 256, two 512-unit leaky-ReLU layers "
                        "clipped at 3, Gaussian output, 200-sample frames, 40-step sequences); "
                        "explicit options override it (default: music)")
    t.add_argument("--frame-size", type=int, default=None,
                   help="WAV data: samples per frame (default: 200)")
    t.add_argument("--seq-len", type=int, default=None,
                   help="WAV data: frames per sequence (default: 40, 0.5 s at 16 kHz)")
    t.add_argument("--z-dim", type=int, default=None, help="latent width (default: 100)")
    t.add_argument("--rnn-dim", type=int, default=None, help="recurrent width (default: 300)")
    t.add_argument("--hidden-dim", type=int, default=None,
                   help="hidden layer width of every network (default: 500)")
    t.add_argument("--rnn-type", choices=["gru", "lstm"], default=None,
                   help="recurrent cell (default: gru)")
    t.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    t.add_argument("--batch-size", type=int, default=16, help="sequences per update (default: 16)")
    t.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="hidden activation of every network (default: leaky_relu, slope 1/3, "
                        "SRNN paper appendix A; the DMM keeps ReLU)")
    t.add_argument("--clip", type=float, default=None,
                   help="clamp hidden activations to [-clip, clip]; 0 for no clamp (default: 3, "
                        "SRNN paper appendix A)")
    t.add_argument("--lr", type=float, default=defaults.lr,
                   help=f"Adam learning rate (default: {defaults.lr:g})")
    t.add_argument("--lr-decay", type=float, default=1.0,
                   help="learning-rate factor per update (default: 1, no decay)")
    t.add_argument("--clip-norm", type=float, default=10.0, help="gradient clipping (default: 10)")
    t.add_argument("--beta-start", type=float, default=0.2,
                   help="KL weight at the first update (default: 0.2, SRNN paper)")
    t.add_argument("--beta-increment", type=float, default=None,
                   help="KL weight added per update (default: 3e-4 as in the SRNN paper, raised "
                        "so that beta reaches 1 by mid-run)")
    t.add_argument("--validate", choices=list(VALIDATE), default=defaults.validate,
                   help="Pyro's distribution and trace checks: on the first update only, on "
                        f"every update, or never (default: {defaults.validate}; a NaN loss is "
                        "caught either way)")
    t.add_argument("--elbo", choices=list(ELBOS), default="trace",
                   help="objective: trace (Trace_ELBO), jit (JitTrace_ELBO), meanfield "
                        "(analytic KL), iwae (RenyiELBO alpha=0), downstream or tracegraph "
                        "(score-function gradients with downstream costs and baselines, for "
                        "binary latents) (default: trace)")
    t.add_argument("--baseline", choices=list(BASELINES), default="none",
                   help="score-function baseline of binary latents (tsbn): a decaying average "
                        "or a neural baseline (NVIL); uses --elbo downstream (default: none)")
    t.add_argument("--layers", type=int, default=None,
                   help="tsbn: stacked latent layers, z-dim split evenly (default: 1)")
    t.add_argument("--guide-hidden-layers", type=int, default=None,
                   help="hidden layers of the guide's networks, 0: linear (default: 1; tsbn: 0, "
                        "the paper's recognition model)")
    t.add_argument("--jit", action="store_true", help="shorthand for --elbo jit")
    t.add_argument("--particles", type=int, default=1,
                   help="samples per update (the K of --elbo iwae) (default: 1)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation ELBO")
    t.add_argument("--transpose", type=int, default=0,
                   help="augment by random transposition of up to this many semitones")
    t.add_argument("--out", default=None,
                   help="run folder (default: runs/<model>-<guide>[-res]-seed<seed>)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    t.add_argument("--eval-particles", type=int, default=0,
                   help="after training, evaluate the test split with this many particles")
    _add_common(t)

    e = sub.add_parser("evaluate", help="ELBO and importance-sampled log-likelihood of a split")
    e.add_argument("run", help="run folder or checkpoint file")
    _add_data(e, default=None)
    e.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="split to evaluate (default: test)")
    e.add_argument("--particles", type=int, default=500,
                   help="importance samples per sequence (default: 500)")
    e.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default: 16)")
    e.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                   help="memory bound: particle-steps per vectorised draw "
                        f"(default: {DEFAULT_MAX_ROWS})")
    e.add_argument("--out", default=None,
                   help="results JSON (default: <run>/eval_<split>_K<particles>.json)")
    _add_common(e)

    s = sub.add_parser("sample", help="generate sequences as MIDI files and a piano-roll PNG")
    s.add_argument("run", help="run folder or checkpoint file")
    s.add_argument("--steps", type=int, default=128, help="steps per sequence (default: 128)")
    s.add_argument("--num", type=int, default=4, help="number of sequences (default: 4)")
    s.add_argument("--out", default="samples", help="output folder (default: samples)")
    s.add_argument("--step-seconds", type=float, default=0.5,
                   help="duration of one step in the MIDI files (default: 0.5)")
    _add_common(s)
    return parser


# ---- commands --------------------------------------------------------------------------------
def _check_writable(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{folder}: output folder is not writable ({exc.strerror})") from exc


#: Network settings of the SRNN paper (appendix A), the defaults of ``train --preset``.
PRESETS = {
    "music": {},
    "speech": {"z_dim": 256, "rnn_dim": 1024, "hidden_dim": 512, "hidden_layers": 2,
               "activation": "leaky_relu", "clip": 3.0, "emission": "gauss"},
}


def cmd_train(args) -> int:
    from .training import LAST, TrainConfig, Trainer

    default_guide = {"rnn": "none", "tsbn": "filter"}.get(args.model.lower(), "smooth")
    guide = args.guide or default_guide
    residual = args.residual
    if residual is None:
        residual = args.model.lower() in ("srnn", "vrnn", "dmm") and guide not in ("none",)
    preset = dict(PRESETS[args.preset])
    emission = args.emission or preset.pop("emission", "bernoulli")
    preset.pop("emission", None)
    network = {k: preset.pop(k) for k in ("hidden_layers", "activation", "clip") if k in preset}
    if args.activation is not None:
        network["activation"] = args.activation
    if args.clip is not None:
        if args.clip < 0:
            raise ConfigError(f"--clip must be >= 0 (0: no clamp), got {args.clip:g}")
        network["clip"] = args.clip or None
    explicit = {k: v for k, v in (("z_dim", args.z_dim), ("rnn_dim", args.rnn_dim),
                                  ("hidden_dim", args.hidden_dim),
                                  ("rnn_type", args.rnn_type)) if v is not None}
    model_kwargs = {**preset, **network, **explicit}
    if args.model.lower() == "rnn":
        model_kwargs.pop("z_dim", None)
    if args.model.lower() == "dmm":  # the DMM has its own widths (transition, emission)
        if args.activation is not None or args.clip is not None:
            raise ConfigError("--activation/--clip: the DMM keeps the ReLU networks of Pyro's "
                              "example; they apply to rnn, vrnn, storn and srnn")
        model_kwargs = {k: v for k, v in explicit.items() if k == "z_dim"}
        if args.hidden_dim is not None:
            model_kwargs.update(transition_dim=args.hidden_dim, emission_dim=args.hidden_dim)
    if args.model.lower() == "tsbn":  # linear maps only: widths and layers of its own
        model_kwargs = {k: v for k, v in explicit.items() if k == "z_dim"}
        if args.layers is not None:
            model_kwargs["layers"] = args.layers
    elif args.layers is not None:
        raise ConfigError("--layers applies to tsbn only")
    guide_kwargs = {}
    if guide not in ("none", "empty"):
        guide_kwargs.update(network)
        if "hidden_dim" in model_kwargs and model_kwargs["hidden_dim"] != 500:
            guide_kwargs["hidden_dim"] = model_kwargs["hidden_dim"]
        if "rnn_dim" in model_kwargs and model_kwargs["rnn_dim"] != 300:
            guide_kwargs["summary_dim"] = model_kwargs["rnn_dim"]
        if args.model.lower() == "tsbn":
            guide_kwargs.update({k: v for k, v in explicit.items()
                                 if k == "hidden_dim" and v != 500})
            if "rnn_dim" in explicit:
                guide_kwargs["summary_dim"] = explicit["rnn_dim"]
            guide_kwargs["hidden_layers"] = 0
        if args.guide_hidden_layers is not None:
            if args.guide_hidden_layers < 0:
                raise ConfigError(f"--guide-hidden-layers must be >= 0, got "
                                  f"{args.guide_hidden_layers}")
            guide_kwargs["hidden_layers"] = args.guide_hidden_layers
    data_options = {k: v for k, v in (("frame_size", args.frame_size),
                                      ("seq_len", args.seq_len)) if v is not None}
    emission_kwargs = ({"num_components": args.num_components}
                       if args.num_components is not None else {})
    config = TrainConfig(
        data=args.data, model=args.model.lower(), guide=guide, residual=residual,
        data_kind=args.kind or "auto", data_options=data_options, emission=emission,
        emission_kwargs=emission_kwargs, model_kwargs=model_kwargs, guide_kwargs=guide_kwargs,
        epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
        clip_norm=args.clip_norm, beta_start=args.beta_start,
        beta_increment=args.beta_increment, elbo="jit" if args.jit else args.elbo,
        baseline=args.baseline,
        num_particles=args.particles, validate=args.validate, seed=args.seed, device=args.device,
        patience=args.patience, transpose=args.transpose, limit=args.limit)
    out = Path(args.out or f"runs/{config.model}-{guide}{'-res' if residual else ''}"
                           f"-seed{config.seed}")
    if args.resume and not (out / LAST).is_file():
        raise ConfigError(f"--resume: no {LAST} in {out}")
    _check_writable(out)
    splits = config.load_data(cache_dir=args.cache_dir, progress=not args.quiet)
    import pyro

    pyro.set_rng_seed(config.seed)
    model, guide_module = config.build(splits.x_dim)
    trainer = Trainer(model, guide_module, config, out_dir=out,
                      progress=(not args.quiet) and sys.stderr.isatty())
    start = time.perf_counter()
    history = trainer.fit(splits, resume=out / LAST if args.resume else None)
    minutes = (time.perf_counter() - start) / 60
    last = history[-1] if history else {}
    print(f"trained {type(model).__name__} + {type(guide_module).__name__}"
          f"{' (Res_q)' if residual else ''} for {trainer.epoch} epochs in {minutes:.1f} min; "
          f"best validation ELBO {trainer.best_valid:.4f} nats/step"
          + (f" (last epoch {last.get('valid_elbo_per_step', float('nan')):.4f})"
             if last else ""))
    if args.eval_particles:
        results = _evaluate(model, guide_module, splits.test, particles=args.eval_particles,
                            batch_size=config.batch_size, seed=config.seed,
                            device=trainer.device, max_rows=DEFAULT_MAX_ROWS,
                            out=out / f"eval_test_K{args.eval_particles}.json",
                            extra={"run": str(out), "data": config.data},
                            progress=(not args.quiet) and sys.stderr.isatty())
        _print_results(results)
    print(f"results in {out}/: metrics.jsonl, run.json, checkpoint_best.pt, checkpoint_last.pt")
    print(f"next: pyro-seqvae evaluate {out}   |   pyro-seqvae sample {out}")
    return 0


def _load_run(run, device):
    import pyro

    from .errors import CheckpointError
    from .training import TrainConfig, load_checkpoint, resolve_device
    from .training.checkpoint import restore_modules

    device = resolve_device(device)
    payload = load_checkpoint(run, map_location=device)
    try:
        config = TrainConfig.from_dict(payload["config"])
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{payload['path']}: unusable config in checkpoint ({exc})") from exc
    pyro.clear_param_store()
    stored = payload.get("model_config"), payload.get("guide_config")
    if not isinstance(stored[0], dict) or "x_dim" not in stored[0] \
            or not isinstance(stored[1], dict):
        raise CheckpointError(f"{payload['path']}: no model_config/guide_config to rebuild the "
                              "networks from")
    try:
        model, guide = config.build(stored[0]["x_dim"], model_config=stored[0],
                                    guide_config=stored[1])
    except ConfigError as exc:
        raise ConfigError(f"{payload['path']}: {exc}") from exc
    restore_modules(payload, model, guide)
    model.to(device).eval()
    guide.to(device).eval()
    return model, guide, config, payload, device


def _evaluate(model, guide, split, *, particles, batch_size, seed, device, max_rows, out, extra,
              progress=False):
    from tqdm import tqdm

    from .infer.evaluation import evaluate_split
    from .training.runlog import environment, write_json

    start = time.perf_counter()
    with tqdm(total=len(split), disable=not progress, leave=False, unit="seq",
              desc=f"importance sampling, K={particles}") as bar:
        results = evaluate_split(model, guide, split, particles=particles,
                                 batch_size=batch_size, seed=seed, device=device,
                                 max_rows=max_rows, progress=bar.update)
    results = {**results, **extra, "seconds": time.perf_counter() - start,
               "environment": environment(device)}
    _check_writable(Path(out).parent)
    write_json(out, results)
    results["path"] = str(out)
    return results


def _print_results(r):
    if r["khat_max"] is not None:
        khat = f"{r['khat_max']:.2f}"
    elif r["khat_over_0_7"]:
        khat = "inf (too few particles to fit the tail; raise --particles)"
    else:
        khat = "n/a (exact likelihood)"
    print(f"{r['split']}: {r['num_sequences']} sequences, {r['num_steps']} steps, "
          f"K={r['particles']}\n"
          f"  ELBO per step          {r['elbo_per_step']:.4f}\n"
          f"  IS log-lik per step    {r['is_log_likelihood_per_step']:.4f} "
          f"(+- {r['is_stderr_per_step']:.4f})\n"
          f"  Pareto k-hat max {khat}; sequences with k-hat > 0.7: {r['khat_over_0_7']}\n"
          f"  written to {r['path']}")


def cmd_evaluate(args) -> int:
    from .errors import CheckpointError

    model, guide, config, payload, device = _load_run(args.run, args.device)
    source = args.data or config.data
    if args.data or args.kind or args.limit is not None:
        config = config.replace(data=source, data_kind=args.kind or config.data_kind,
                                limit=args.limit if args.data else (args.limit or config.limit))
    normalisation = payload.get("extra", {}).get("data", {}).get("normalisation")
    splits = config.load_data(cache_dir=args.cache_dir, progress=not args.quiet,
                              normalisation=normalisation)
    if splits.x_dim != model.x_dim:
        raise CheckpointError(f"{payload['path']}: the model expects data of width "
                              f"{model.x_dim} but {source} has width {splits.x_dim}")
    split = getattr(splits, args.split)
    run_dir = Path(payload["path"]).parent
    out = Path(args.out) if args.out else run_dir / f"eval_{args.split}_K{args.particles}.json"
    results = _evaluate(model, guide, split, particles=args.particles,
                        batch_size=args.batch_size, seed=args.seed, device=device,
                        max_rows=args.max_rows, out=out,
                        extra={"run": str(run_dir), "checkpoint": payload["path"],
                               "data": str(source), "model": config.model,
                               "guide": config.guide, "residual": config.residual},
                        progress=(not args.quiet) and sys.stderr.isatty())
    _print_results(results)
    return 0


def cmd_sample(args) -> int:
    import pyro
    import torch

    from .atomic import atomic_torch_save

    model, guide, config, payload, device = _load_run(args.run, args.device)
    out = Path(args.out)
    _check_writable(out)
    pyro.set_rng_seed(args.seed)
    samples = model.sample(args.num, args.steps).cpu()
    atomic_torch_save(samples, out / "samples.pt")
    norm = payload.get("extra", {}).get("data", {}).get("normalisation") or {}
    mean, std = norm.get("mean", 0.0), norm.get("std", 1.0)
    if config.emission == "bernoulli" and model.x_dim == 88:
        from .data.midi import roll_to_midi
        from .plotting import plot_piano_rolls

        paths = [roll_to_midi(roll, out / f"sample_{i:02d}.mid", step_seconds=args.step_seconds)
                 for i, roll in enumerate(samples)]
        plot_piano_rolls(list(samples), path=out / "samples.png", titles=[p.name for p in paths])
        written = f"{len(paths)} MIDI files and samples.png"
    elif config.emission == "stroke":
        from .data.strokes import render_strokes

        for i, seq in enumerate(samples):
            render_strokes(seq, out / f"sample_{i:02d}.png", mean=mean, std=std)
        written = f"{len(samples)} stroke drawings (PNG)"
    else:
        from .data.waveform import frames_to_wav

        rate = config.data_options.get("sample_rate", 16000)
        for i, seq in enumerate(samples):
            frames_to_wav(seq.to(torch.float32), out / f"sample_{i:02d}.wav", sample_rate=rate,
                          mean=mean, std=std)
        written = f"{len(samples)} WAV files"
    print(f"wrote {written} and samples.pt to {out}/")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample}
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be a positive integer, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return commands[args.command](args)
    except SeqVAEError as exc:
        print(f"pyro-seqvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyro-seqvae {args.command}: interrupted", file=sys.stderr)
        return 130




if __name__ == "__main__":
    sys.exit(main())
