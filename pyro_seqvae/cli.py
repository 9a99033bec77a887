"""The ``pyro-seqvae`` command line: ``train``, ``evaluate`` and ``sample``.

Every user error (a :class:`~pyro_seqvae.errors.SeqVAEError`) ends the command with one line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path

from .cli_checks import (
    check_evaluate_args,
    check_sample_args,
    check_sample_size,
    check_train_args,
    remove_empty_folders,
)
from .errors import ConfigError, SeqVAEError
from .infer.importance import DEFAULT_MAX_ROWS
from .models.feedback_noise import DEFAULT_INPUT_FLIP_MODELS

logger = logging.getLogger("pyro_seqvae")


# ---- argument parsing ----------------------------------------------------------------------------
def _add_common(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on CPU, torch's choice with --device "
                        "cuda; the paper-size networks train several times faster on one "
                        "thread than on two on a busy 2-core machine; try more on an idle "
                        "many-core machine)")


def _add_data(p, default="jsb"):
    p.add_argument("--data", default=default,
                   help="'jsb' (embedded Bach chorales), a benchmark .pickle file, a folder of "
                        "MIDI files, a folder of WAV files (with --emission gauss/gmm or --preset "
                        "speech), or a pen-stroke file (.jsonl, .npy, .npz; with --emission "
                        "stroke)" + (f" (default: {default})" if default else
                                        " (default: the data the run was trained on)"))
    p.add_argument("--kind", default=None,
                   choices=["auto", "jsb", "pickle", "midi", "wav", "strokes"],
                   help="reader of --data (default: auto, detected from the path)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only this many chorales of 'jsb', at least 3 (one per split), "
                        "for quick trials (default: all)")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder for built data sets (default: $PYRO_SEQVAE_CACHE or "
                        "$XDG_CACHE_HOME/pyro-seqvae)")


def build_parser() -> argparse.ArgumentParser:
    from .emissions import EMISSIONS
    from .guides import GUIDES
    from .guides.baselines import BASELINES
    from .infer.elbo import ELBO_PATHS, ELBOS
    from .layers import ACTIVATIONS
    from .models import MODELS
    from .training.config import VALID_ESTIMATORS, VALIDATE, TrainConfig

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
    t.add_argument("--nade-hidden", type=int, default=None,
                   help="hidden width H of --emission nade (default: 150)")
    t.add_argument("--nade-order", choices=["low_to_high", "high_to_low", "random"],
                   default=None, help="key order of --emission nade (default: low_to_high, "
                                      "the lowest pitch first)")
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
    t.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 penalty: weight_decay * p added to each parameter's gradient, whose "
                        "loss sums the batch's sequences and steps (default: 0)")
    t.add_argument("--clip-norm", type=float, default=10.0, help="gradient clipping (default: 10)")
    t.add_argument("--beta-start", type=float, default=0.2,
                   help="KL weight at the first update (default: 0.2, SRNN paper)")
    t.add_argument("--beta-increment", type=float, default=None,
                   help="KL annealing: after each update, beta = min(1, beta + this). "
                        "Default: 3e-4 (SRNN paper), or larger when the run is too short for "
                        "beta to reach 1 by its middle epoch")
    t.add_argument("--validate", choices=list(VALIDATE), default=defaults.validate,
                   help="Pyro's distribution and trace checks: on the first update only, on "
                        f"every update, or never (default: {defaults.validate}; a NaN loss is "
                        "caught either way)")
    t.add_argument("--elbo", choices=list(ELBOS), default=None,
                   help="objective: meanfield (TraceMeanField_ELBO: the analytic KL per step "
                        "given the previous sample, as in the SRNN paper), trace (Trace_ELBO), "
                        "jit (JitTrace_ELBO), iwae (RenyiELBO alpha=0), fivo (the SMC bound), "
                        "nasmc (neural adaptive SMC), downstream or tracegraph (score-function "
                        "gradients with downstream costs and baselines, for binary latents), "
                        "rws (reweighted wake-sleep: model on the IWAE bound, guide on the "
                        "inclusive KL; needs --particles >= 2) "
                        "(default: meanfield; trace for tsbn)")
    t.add_argument("--elbo-path", choices=list(ELBO_PATHS), default=defaults.elbo_path,
                   help="how --elbo trace, meanfield and rws are computed: auto (on the "
                        "step protocol without Pyro traces, the same loss and gradients, "
                        "faster, where the pair allows it: trace and meanfield for the "
                        "library's models with Gaussian latents, rws for TSBN, SRNN and DMM; "
                        "any other pair on Pyro's traces), direct (refuse other pairs) or "
                        f"pyro (always Pyro's traces) (default: {defaults.elbo_path})")
    t.add_argument("--baseline", choices=list(BASELINES), default="none",
                   help="score-function baseline of binary latents (tsbn): a decaying average, "
                        "a neural baseline (NVIL's network), or nvil (the network on a centred, "
                        "variance-normalised signal); uses --elbo downstream (default: none)")
    t.add_argument("--discount", type=float, default=1.0,
                   help="binary latents, --elbo downstream: weight per step of the future terms "
                        "in a latent's learning signal; below 1 biased but far less noisy "
                        "(default: 1)")
    t.add_argument("--layers", type=int, default=None,
                   help="tsbn: stacked latent layers, z-dim split evenly (default: 1)")
    t.add_argument("--guide-hidden-layers", type=int, default=None,
                   help="hidden layers of the guide's networks, 0: linear (default: 1; tsbn: 0, "
                        "the paper's recognition model)")
    t.add_argument("--jit", action="store_true", help="shorthand for --elbo jit")
    t.add_argument("--particles", type=int, default=1,
                   help="samples per update (the K of --elbo iwae, fivo, nasmc, rws) (default: 1)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation figure "
                        "(--valid-estimator's)")
    t.add_argument("--valid-estimator", choices=list(VALID_ESTIMATORS), default="elbo",
                   help="validation figure that picks checkpoint_best.pt and drives --patience: "
                        "elbo, or smc (SMC's log Z-hat per step with --particles particles, "
                        "the figure nasmc and fivo optimise; the ELBO is recorded too) "
                        "(default: elbo)")
    t.add_argument("--transpose", type=int, default=0,
                   help="augment by random transposition of up to this many semitones")
    t.add_argument("--init-output-bias", action=argparse.BooleanOptionalAction, default=True,
                   help="start a Bernoulli decoder's output bias at the data's key log-odds; "
                        "without it samples collapse into half the keyboard (default: on)")
    t.add_argument("--input-dropout", type=float, default=None,
                   help="rnn, srnn, vrnn, storn, tsbn: in training steps drop each fed-back note "
                        "(u_t = x_{t-1}; VRNN/STORN: x_t into the recurrence) with this "
                        "probability (default: 0)")
    t.add_argument("--input-flip", type=float, default=None,
                   help="in training steps flip each fed-back key (u_t = x_{t-1}; VRNN/STORN: "
                        "x_t into the recurrence) with this probability, so that sampled chords "
                        f"do not derail the model (default: {defaults.input_flip:g}; 0: off)")
    t.add_argument("--out", default=None,
                   help="run folder; refused if it already holds files, unless --resume or "
                        "--overwrite (default: runs/<model>-<guide>[-res]-<data>[-limit<N>]"
                        "[-<sizes>]-seed<seed>, with -2, -3 ... if taken)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (repeat its "
                        "options; --epochs, --lr, --lr-decay, --clip-norm, --patience and "
                        "--validate may change, and each change is recorded in run.json)")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds an old run, removing the old "
                        "run's files first")
    t.add_argument("--init-from", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="warm start: a new run that starts from the weights of another run's "
                        "checkpoint (same networks; fresh optimizer, schedule and epochs)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also log to <out>/tensorboard/ (needs: pip install "
                        "'pyro-seqvae[tensorboard]'); <out>/curves.png is written either way")
    t.add_argument("--eval-particles", type=int, default=0,
                   help="after training, evaluate the test split with this many particles")
    _add_common(t)

    run_help = ("run folder (its checkpoint_best.pt, else checkpoint_last.pt) or a checkpoint "
                "file")
    e = sub.add_parser("evaluate", help="ELBO and importance-sampled log-likelihood of a split")
    e.add_argument("run", help=run_help)
    _add_data(e, default=None)
    e.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="split to evaluate (default: test)")
    e.add_argument("--particles", type=int, default=500,
                   help="importance samples per sequence (default: 500)")
    e.add_argument("--estimator", choices=["is", "smc"], default="is",
                   help="is: importance sampling; smc: importance sampling and sequential Monte "
                        "Carlo side by side in the same JSON (default: is)")
    e.add_argument("--smc-repeats", type=int, default=1,
                   help="independent SMC runs, for a standard error (default: 1)")
    e.add_argument("--resampling", choices=["systematic", "multinomial"], default="systematic",
                   help="SMC resampling scheme (default: systematic)")
    e.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default: 16)")
    e.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                   help="memory bound: particle-steps held at once "
                        f"(default: {DEFAULT_MAX_ROWS})")
    e.add_argument("--out", default=None,
                   help="results JSON (default: <run>/eval_<split>_K<particles>.json)")
    e.add_argument("--samples", type=int, default=16,
                   help="piano-roll models: draw this many free-running samples and compare "
                        "their statistics with the split's (JSON key sample_stats; 0: skip) "
                        "(default: 16)")
    e.add_argument("--sample-steps", type=int, default=128,
                   help="steps per sample of --samples (default: 128)")
    _add_common(e)

    s = sub.add_parser("sample",
                       help="generate sequences as MIDI and WAV files and a piano-roll PNG")
    s.add_argument("run", help=run_help)
    s.add_argument("--steps", type=int, default=128, help="steps per sequence (default: 128)")
    s.add_argument("--num", type=int, default=4, help="number of sequences (default: 4)")
    s.add_argument("--out", default=None,
                   help="output folder, new or empty (default: a new folder "
                        "RUN/samples-seed<seed>-N<num>-T<steps>[-<prefix name>])")
    s.add_argument("--step-seconds", type=float, default=0.5,
                   help="duration of one step in the MIDI and WAV files (default: 0.5)")
    s.add_argument("--prefix", default=None,
                   help="a MIDI file whose opening every sample continues (read at the run's "
                        "steps per beat; the guide infers its latents)")
    s.add_argument("--no-wav", dest="wav", action="store_false",
                   help="do not write a WAV file per sample (piano rolls only)")
    _add_common(s)
    return parser


# ---- commands --------------------------------------------------------------------------------
#: Folders this command created; ``main`` removes those still empty when the command fails.
_CREATED: list = []


def _check_writable(folder: Path):
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        _CREATED.extend(missing)
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


def _claim_run_folder(args, config) -> Path:
    """The run folder of ``train``: ``--out``, or a default name that no other run holds."""
    from .training.run_folder import default_run_folder

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or "
                          "replace it")
    if args.init_from and args.resume:
        raise ConfigError("--init-from and --resume exclude each other: a resumed run keeps its "
                          "own weights")
    if args.out:
        return Path(args.out)
    if args.resume:
        raise ConfigError("--resume needs --out RUN: the run folder to continue")
    out = default_run_folder(config)
    if not args.quiet:
        print(f"run folder: {out}")
    return out


def _continue_command(argv, out, lr=None) -> str:
    """``pyro-seqvae train`` with the same options, continuing ``out`` (with learning rate ``lr``
    when given)."""
    import shlex

    argv = list(argv if argv is not None else sys.argv[1:])
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in ("--out", "--init-from") or (name == "--lr" and lr is not None):
            skip = "=" not in token
            continue
        if name in ("--resume", "--overwrite"):
            continue
        kept.append(token)
    tail = ["--lr", f"{lr:g}"] if lr is not None else []
    return shlex.join(["pyro-seqvae", *kept, "--out", str(out), "--resume", *tail])


def cmd_train(args) -> int:
    """Train in this process, or as one rank of a ``torchrun`` group (``WORLD_SIZE`` > 1)."""
    from .training.distributed import from_environment

    parallel = from_environment(args.device)
    try:
        return _train(args, parallel)
    finally:
        parallel.close()


def _train(args, parallel) -> int:
    from contextlib import ExitStack

    from .errors import DivergenceError, RunFolderError
    from .training import BEST, LAST, TrainConfig, Trainer
    from .training.run_folder import RunLock, prepare_new_run

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
    for option in ("input_dropout", "input_flip"):
        if getattr(args, option) is not None and \
                args.model.lower() not in DEFAULT_INPUT_FLIP_MODELS:
            raise ConfigError(f"--{option.replace('_', '-')} applies to rnn, srnn, vrnn, "
                              f"storn and tsbn (the models that read their notes back), not "
                              f"{args.model.lower()}")
    if args.input_dropout is not None:
        model_kwargs["input_dropout"] = args.input_dropout
    feedback = {} if args.input_flip is None else {"input_flip": args.input_flip}
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
    if args.nade_hidden is not None or args.nade_order is not None:
        if emission != "nade":
            raise ConfigError("--nade-hidden/--nade-order apply to --emission nade only")
        emission_kwargs.update({k: v for k, v in (("hidden_dim", args.nade_hidden),
                                                  ("order", args.nade_order)) if v is not None})
    config = TrainConfig(
        data=args.data, model=args.model.lower(), guide=guide, residual=residual,
        data_kind=args.kind or "auto", data_options=data_options, emission=emission,
        emission_kwargs=emission_kwargs, model_kwargs=model_kwargs, guide_kwargs=guide_kwargs,
        epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
        weight_decay=args.weight_decay,
        clip_norm=args.clip_norm, beta_start=args.beta_start,
        beta_increment=args.beta_increment, elbo="jit" if args.jit else args.elbo,
        elbo_path=args.elbo_path, valid_estimator=args.valid_estimator,
        baseline=args.baseline, discount=args.discount,
        num_particles=args.particles, validate=args.validate, seed=args.seed, device=args.device,
        patience=args.patience, transpose=args.transpose, limit=args.limit,
        init_output_bias=args.init_output_bias, **feedback)
    check_train_args(args, config)
    if args.tensorboard:
        from .training.reporting import tensorboard_writer_class

        tensorboard_writer_class()  # a missing package is reported before any folder is made
    with ExitStack() as stack:
        def claim():  # on rank 0 only, which alone writes; its error reaches every rank
            out = _claim_run_folder(args, config)
            _check_writable(out)  # records the folders it makes: removed again on failure
            stack.enter_context(RunLock(out))
            if args.resume and not (out / LAST).is_file():
                raise ConfigError(f"--resume: no {LAST} in {out}")
            if not args.resume and not args.overwrite:
                prepare_new_run(out)  # refuses a folder that holds files; deletes nothing
            return out

        out = parallel.run_on_main(claim)
        args.run_dir = out  # for the interrupt message
        splits = config.load_data(cache_dir=args.cache_dir,
                                  progress=not args.quiet and parallel.is_main)
        import pyro

        pyro.set_rng_seed(config.seed)
        model, guide_module = config.build(splits.x_dim)
        trainer = Trainer(model, guide_module, config, out_dir=out, overwrite=args.overwrite,
                          progress=(not args.quiet) and sys.stderr.isatty(),
                          verbose=not args.quiet, tensorboard=args.tensorboard,
                          parallel=parallel)
        trainer.command = ["pyro-seqvae", *getattr(args, "argv", sys.argv[1:])]
        start = time.perf_counter()
        try:
            history = trainer.fit(splits, resume=out / LAST if args.resume else None,
                                  init_from=args.init_from)
        except DivergenceError as exc:
            if getattr(exc, "checkpoint", None) is None:
                raise
            command = _continue_command(getattr(args, "argv", None), out, exc.suggested_lr)
            raise DivergenceError(f"{exc.summary}; to continue from it with a smaller learning "
                                  f"rate run: {command}") from exc
        except SeqVAEError:
            raise
        except OSError as exc:  # a full disk, a folder made read-only mid-run ...
            raise RunFolderError(f"{exc.filename or out}: {exc.strerror or exc}") from exc
    if not parallel.is_main:  # rank 0 alone reports and evaluates
        return 0
    minutes = (time.perf_counter() - start) / 60
    last = history[-1] if history else {}
    print(f"trained {type(model).__name__} + {type(guide_module).__name__}"
          f"{' (Res_q)' if residual else ''} for {trainer.epoch} epochs in {minutes:.1f} min; "
          f"best validation {trainer.valid_label} {trainer.best_valid:.4f} nats/step"
          + (f" (last epoch {last.get(trainer.valid_key, float('nan')):.4f})"
             if last else ""))
    if args.eval_particles:
        results = _evaluate(model, guide_module, splits.test, particles=args.eval_particles,
                            batch_size=config.batch_size, seed=config.seed,
                            device=trainer.device, max_rows=DEFAULT_MAX_ROWS,
                            out=out / f"eval_test_K{args.eval_particles}.json",
                            extra={"run": str(out), "data": config.data},
                            progress=(not args.quiet) and sys.stderr.isatty())
        _print_results(results, exact=not model.has_latents)
        _refresh_curves(out)
    written = [name for name in ("metrics.jsonl", "curves.png", "run.json", BEST, LAST)
               if (out / name).is_file()]
    print(f"results in {out}/: {', '.join(written)}")
    print(f"next: pyro-seqvae evaluate {out}   |   pyro-seqvae sample {out}")
    return 0


def _load_run(run, device):
    import pyro

    from .errors import CheckpointError
    from .training import TrainConfig, load_checkpoint, resolve_device
    from .training.checkpoint import restore_modules
    from .training.state_check import check_state_fits

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
    check_state_fits(payload, model, guide)
    restore_modules(payload, model, guide)
    model.to(device).eval()
    guide.to(device).eval()
    return model, guide, config, payload, device


def _evaluate(model, guide, split, *, particles, batch_size, seed, device, max_rows, out, extra,
              progress=False, estimator="is", smc_repeats=1, resampling="systematic"):
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .infer.evaluation import evaluate_split
    from .training.runlog import environment, write_json

    start = time.perf_counter()
    runs = 1 + (smc_repeats if estimator == "smc" else 0)
    # warnings logged while the bar is open (k-hat) go above it, on lines of their own
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    with redirect, tqdm(total=runs * len(split), disable=not progress, leave=False, unit="seq",
                        desc=f"{'IS + SMC' if runs > 1 else 'importance sampling'}, "
                             f"K={particles}") as bar:
        results = evaluate_split(model, guide, split, particles=particles,
                                 batch_size=batch_size, seed=seed, device=device,
                                 max_rows=max_rows, progress=bar.update, estimator=estimator,
                                 smc_repeats=smc_repeats, resampling=resampling)
    results = {**results, **extra, "seconds": time.perf_counter() - start,
               "environment": environment(device)}
    _check_writable(Path(out).parent)
    write_json(out, results)
    results["path"] = str(out)
    return results


def _refresh_curves(run_dir):
    from .training.reporting import refresh_curves

    try:
        refresh_curves(run_dir)
    except Exception as exc:  # the results are written; a figure must not turn that into failure
        logger.warning("could not redraw %s/curves.png (%s)", run_dir, exc)


def _print_results(r, *, exact=None):
    """Print evaluation results (nats per step, higher is better).

    ``exact``: the model has no latents (default: judged from the results, no k-hat and a zero
    standard error)."""
    khat_max, bad, n = r["khat_max"], r["khat_over_0_7"], r["num_sequences"]
    if exact is None:
        exact = khat_max is None and r["is_stderr_per_step"] == 0
    if khat_max is None:
        khat = ("n/a (exact likelihood, no importance weights)" if exact
                else "n/a (one particle: no tail to fit; raise --particles)")
    elif math.isinf(khat_max):
        khat = "inf (too few particles to fit the tail; raise --particles)"
    else:
        khat = f"{khat_max:.2f}"
    if exact:
        stderr = "(exact)"
    elif not math.isfinite(r["is_stderr_per_step"]):
        stderr = "(no standard error from one particle)"
    elif bad == n:
        stderr = (f"(no standard error: k-hat > 0.7 on all {n} sequences, so the Monte-Carlo "
                  "error bar is not meaningful)")
    elif bad:
        stderr = (f"(+- {r['is_stderr_per_step']:.4f}, an understatement: k-hat > 0.7 on "
                  f"{bad} of {n} sequences)")
    else:
        stderr = f"(+- {r['is_stderr_per_step']:.4f})"
    print((f"checkpoint {r['checkpoint']}\n" if r.get("checkpoint") else "")
          + f"{r['split']}: {n} sequences, {r['num_steps']} steps, K={r['particles']}; "
          f"nats per step, higher is better\n"
          f"  ELBO per step          {r['elbo_per_step']:.4f}\n"
          f"  IS log-lik per step    {r['is_log_likelihood_per_step']:.4f} {stderr}\n"
          f"  Pareto k-hat max {khat}; sequences with k-hat > 0.7: {bad} of {n}\n"
          + (f"  SMC log-lik per step   {r['smc_log_likelihood_per_step']:.4f}"
             + (f" (+- {r['smc_stderr_per_step']:.4f} over {len(r['smc_runs_per_step'])} runs)"
                if r.get("smc_stderr_per_step") is not None else "")
             + f"; {r['smc_resamplings_per_step']:.3f} resamplings per step\n"
             if "smc_log_likelihood_per_step" in r else "")
          + f"  written to {r['path']}")


def cmd_evaluate(args) -> int:
    from .data.fingerprint import changed_splits, split_fingerprint
    from .errors import CheckpointError

    check_evaluate_args(args)
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
    data_record = payload.get("extra", {}).get("data", {})
    changed = changed_splits(data_record.get("fingerprints"), splits, [args.split])
    if args.data is None or str(args.data) == str(data_record.get("source", config.data)):
        for line in changed:
            print(f"pyro-seqvae evaluate: warning: {source}: {line}; the results are not "
                  f"comparable with the run's", file=sys.stderr)
    run_dir = Path(payload["path"]).parent
    suffix = "_smc" if args.estimator == "smc" else ""
    out = (Path(args.out) if args.out
           else run_dir / f"eval_{args.split}_K{args.particles}{suffix}.json")
    stats = _sample_stats(args, model, config, split)
    results = _evaluate(model, guide, split, particles=args.particles,
                        batch_size=args.batch_size, seed=args.seed, device=device,
                        max_rows=args.max_rows, out=out, estimator=args.estimator,
                        smc_repeats=args.smc_repeats, resampling=args.resampling,
                        extra={"run": str(run_dir), "checkpoint": payload["path"],
                               "data": str(source), "model": config.model,
                               "guide": config.guide, "residual": config.residual,
                               "data_sha256": split_fingerprint(split),
                               "data_matches_run": (None if not data_record.get("fingerprints")
                                                    else not changed),
                               **({"sample_stats": stats} if stats else {})},
                        progress=(not args.quiet) and sys.stderr.isatty())
    _print_results(results, exact=not model.has_latents)
    if (run_dir / "metrics.jsonl").is_file() and out.parent == run_dir:
        _refresh_curves(run_dir)
    if stats:
        s, r = stats["samples"], stats["reference"]
        print(f"  samples (N={stats['num_samples']}, T={stats['num_steps']}) against the "
              f"{args.split} split:\n"
              f"    notes per step        {s['notes_per_step_mean']:.2f} "
              f"(data {r['notes_per_step_mean']:.2f})\n"
              f"    sequences with a step of >{s['dense_threshold']} notes "
              f"{s['share_sequences_dense']:.3f} (data {r['share_sequences_dense']:.3f})\n"
              f"    note duration         {s['note_duration_mean']:.2f} "
              f"(data {r['note_duration_mean']:.2f})\n"
              f"    pitch TV {stats['pitch_tv']:.3f}, pitch-class TV {stats['pitch_class_tv']:.3f}")
    return 0


#: Emissions of binary piano rolls: samples are written as MIDI and compared with the data.
PIANO_ROLL_EMISSIONS = ("bernoulli", "nade")


def _sample_stats(args, model, config, split):
    """``evaluate --samples``: sample statistics against ``split`` (piano rolls), or None."""
    if args.samples < 0 or args.sample_steps < 1:
        raise ConfigError(f"--samples must be >= 0 and --sample-steps >= 1, got "
                          f"{args.samples} and {args.sample_steps}")
    if args.samples == 0 or config.emission not in PIANO_ROLL_EMISSIONS or model.x_dim != 88:
        return None
    from .infer.sample_stats import sample_statistics

    return sample_statistics(model, split.sequences, num_samples=args.samples,
                             num_steps=args.sample_steps, seed=args.seed)


def _read_prefix(path, config, model):
    """The opening of ``sample --prefix``: a MIDI file read on the run's grid, ``[P, D]``."""
    from .errors import DataError

    if model.x_dim != 88 or config.emission not in PIANO_ROLL_EMISSIONS:
        raise ConfigError(f"--prefix {path}: a MIDI opening needs a piano-roll model (88 "
                          f"binary keys: bernoulli or nade), this run has x_dim={model.x_dim}, "
                          f"emission={config.emission}")
    from .data.midi import midi_to_roll

    options = config.data_options
    grid = ({"fs": options["fs"]} if options.get("fs") else
            {"steps_per_beat": options.get("steps_per_beat", 1)})
    roll = midi_to_roll(path, **grid)
    if roll.shape[0] == 0:
        raise DataError(f"--prefix {path}: no steps")
    return roll


def cmd_sample(args) -> int:
    import pyro
    import torch

    from .atomic import atomic_torch_save

    check_sample_args(args)
    model, guide, config, payload, device = _load_run(args.run, args.device)
    check_sample_size(args.num, args.steps, model.x_dim)
    prefix = _read_prefix(args.prefix, config, model) if args.prefix else None
    if args.out is None:
        name = f"samples-seed{args.seed}-N{args.num}-T{args.steps}"
        out = Path(payload["path"]).parent / (name + (f"-{Path(args.prefix).stem}"
                                                      if args.prefix else ""))
    else:
        out = Path(args.out)
    if out.is_dir() and any(out.iterdir()):  # never mix with (or overwrite) earlier samples
        raise ConfigError(f"{out}: output folder is not empty; remove it or pass another --out")
    _check_writable(out)
    pyro.set_rng_seed(args.seed)
    samples = model.sample(args.num, args.steps, prefix=prefix,
                           guide=guide if model.has_latents else None).cpu()
    atomic_torch_save(samples, out / "samples.pt")
    norm = payload.get("extra", {}).get("data", {}).get("normalisation") or {}
    mean, std = norm.get("mean", 0.0), norm.get("std", 1.0)
    if config.emission in PIANO_ROLL_EMISSIONS and model.x_dim == 88:
        from .data.midi import roll_to_midi
        from .plotting import plot_piano_rolls

        paths = [roll_to_midi(roll, out / f"sample_{i:02d}.mid", step_seconds=args.step_seconds)
                 for i, roll in enumerate(samples)]
        plot_piano_rolls(list(samples), path=out / "samples.png", titles=[p.name for p in paths])
        written = f"{len(paths)} MIDI files and samples.png"
        if args.wav:
            from .data.audio import roll_to_wav

            for i, roll in enumerate(samples):
                roll_to_wav(roll, out / f"sample_{i:02d}.wav", step_seconds=args.step_seconds)
            written = f"{len(paths)} MIDI and WAV files and samples.png"
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


def _resume_hint(args, argv) -> str:
    """Where an interrupted ``train`` left its last checkpoint and the command that resumes."""
    from .training import LAST
    from .training.runlog import MetricsLog

    out = Path(args.run_dir)
    if not (out / LAST).is_file():
        return "; no checkpoint was written yet, nothing to resume"
    done = [r.get("epoch", 0) for r in MetricsLog(out / "metrics.jsonl").read()]
    return (f"; the last checkpoint is {out / LAST} (epoch {max(done, default=0)} of "
            f"{args.epochs}); resume with:\n  {_continue_command(argv, out)}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for messages that quote it
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.WARNING if args.quiet or os.environ.get("RANK", "0") != "0"
                    else logging.INFO)  # under torchrun, rank 0 alone logs
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample}
    _CREATED.clear()
    status = 1
    try:
        threads = args.threads
        if threads is None and not str(args.device).startswith("cuda"):
            threads = 1  # measured: see the README's "Command line" section
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"--threads must be a positive integer, got {threads}")
            import torch

            torch.set_num_threads(threads)
        status = commands[args.command](args)
        return status
    except SeqVAEError as exc:
        from .training.distributed import error_line

        line = error_line(f"pyro-seqvae {args.command}", exc)  # None: another rank reports it
        if line is not None:
            print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyro-seqvae {args.command}: interrupted"
              + (_resume_hint(args, sys.argv[1:] if argv is None else argv)
                 if getattr(args, "run_dir", None) is not None else ""), file=sys.stderr)
        return 130
    finally:
        if status != 0:  # a failed command leaves no empty folder behind (issue 13)
            remove_empty_folders(_CREATED)




if __name__ == "__main__":
    sys.exit(main())
