"""Speed benchmark: the library's SVI step against a plain PyTorch network of the same shape.

For VRNN (+ FilteringGuide, the paper's encoder) and SRNN (+ SmoothingGuide with Res_q, the
SRNN paper's best), at the music size (GRU 300, z 100, 500-unit layers), batch 20, on the JSB
training split, this script times in one process, alternating variants within every repetition:

- ``plain``: the same layers written in plain PyTorch (``plain_torch.py``), the same
  single-sample reparameterised ELBO as ``Trace_ELBO`` (sampled ``log q - log p``, masked,
  ``beta``-scaled), recurrence run once, ``backward`` and ``torch.optim.Adam``;
- ``plain2``: the same, but with the recurrence run twice, once for q and once for p, as a
  Pyro model/guide pair does (how much of the gap is the duplicate work, not Pyro);
- ``eager``: the library's ``SVI(model, guide, ClippedAdam, Trace_ELBO)`` step with Pyro's
  validation on every update (``TrainConfig(validate="always")``);
- ``eager_noval``: the same with validation off, which is what the ``Trainer`` does by default
  after the first update of a run (``validate="first"``);
- ``direct``: ``SVI(model, guide, ClippedAdam, DirectELBO())`` (``make_elbo("trace",
  path="direct")``, ``TrainConfig(elbo_path="direct")``): the same loss and gradients as
  ``Trace_ELBO`` computed on the step protocol, the model scored on the guide's samples in one
  batched call per network (:mod:`pyro_seqvae.infer.direct_elbo`);
- ``jit``: ``make_elbo("jit")`` with batches padded to multiples of ``--jit-pad`` (the
  ``TrainConfig`` default under JIT, 8) and a tensor ``beta``;
- ``nade``: ``eager_noval`` for the same model and guide with the NADE emission
  (``emission="nade"``, hidden width ``--nade-hidden``): the cost of modelling the keys of a
  frame jointly, read as the ratio ``nade / eager_noval`` (``ratio_nade_to_bernoulli``).

``--models rnn`` times the RNN baseline (the NADE variant of it is RNN-NADE); it has no
plain-PyTorch twin, so only the library variants run for it.

Each variant is warmed up once on the timed batches (JIT: compiles, timed separately); each
repetition times the same batches for every variant in a rotated order; medians are reported and
the ratios to ``plain``. With ``--epochs-fraction f < 1`` only the first ``ceil(f * N)`` batches
of the (seeded, length-bucketed) epoch are timed and the per-epoch figure is extrapolated by
padded steps (``seconds * sum_T(epoch) / sum_T(timed)``): it is labelled as such in the output.
Then the importance-sampled log-likelihood of the test split (``evaluate_split``, K particles)
is timed, and peak memory is recorded (CPU: ``ru_maxrss`` after each phase, monotone; CUDA:
``torch.cuda.max_memory_allocated`` per phase).

Example::

    python benchmarks/speed.py --models vrnn srnn --reps 5 --epochs-fraction 0.3
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import platform
import pstats
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plain_torch import PlainSRNN, PlainVRNN  # noqa: E402

from pyro_seqvae.data import load_dataset  # noqa: E402
from pyro_seqvae.data.batching import iterate_batches  # noqa: E402
from pyro_seqvae.guides import EmptyGuide, FilteringGuide, SmoothingGuide  # noqa: E402
from pyro_seqvae.infer.elbo import make_elbo  # noqa: E402
from pyro_seqvae.infer.evaluation import evaluate_split  # noqa: E402
from pyro_seqvae.models import RNN, SRNN, VRNN  # noqa: E402
from pyro_seqvae.training.config import JIT_PAD_MULTIPLE  # noqa: E402
from pyro_seqvae.training.runlog import environment  # noqa: E402

VARIANTS = ("plain", "plain2", "eager", "eager_noval", "direct", "jit", "nade")
#: Variants that need the plain-PyTorch twin of a model.
PLAIN_VARIANTS = ("plain", "plain2")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # Linux: KiB


def build(name, args, device, emission="bernoulli", suffix=""):
    """``(model, guide, plain twin or None, description)``; ``suffix`` names a second copy's
    Pyro roots so that two live copies do not share parameters."""
    sizes = dict(z_dim=args.z_dim, rnn_dim=args.rnn_dim, hidden_dim=args.hidden_dim)
    kw = dict(emission=emission, emission_kwargs={"hidden_dim": args.nade_hidden}
              if emission == "nade" else None)
    if name == "vrnn":
        model = VRNN(88, **sizes, **kw, name="VRNN" + suffix)
        guide = FilteringGuide(model, hidden_dim=args.hidden_dim, summary_dim=args.rnn_dim,
                               name="FilteringGuide" + suffix)
        plain = PlainVRNN(88, **sizes)
        desc = "VRNN + FilteringGuide (the VRNN encoder)"
    elif name == "srnn":
        model = SRNN(88, **sizes, **kw, name="SRNN" + suffix)
        guide = SmoothingGuide(model, residual=True, hidden_dim=args.hidden_dim,
                               summary_dim=args.rnn_dim, name="SmoothingGuide" + suffix)
        plain = PlainSRNN(88, **sizes)
        desc = "SRNN + SmoothingGuide(residual=True) (smooth + Res_q)"
    else:
        model = RNN(88, rnn_dim=args.rnn_dim, hidden_dim=args.hidden_dim, **kw,
                    name="RNN" + suffix)
        guide = EmptyGuide(model, name="EmptyGuide" + suffix)
        plain = None
        desc = "RNN (exact likelihood; with the NADE emission: RNN-NADE)"
    return (model.to(device), guide.to(device), plain.to(device) if plain is not None else None,
            desc)


def epoch_batches(split, args, device, pad):
    return list(iterate_batches(split, args.batch_size, shuffle=True, seed=args.seed, epoch=0,
                                bucket_by_length=True, pad_to_multiple=pad, device=device))


def bench_model(name, splits, args, device) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide, plain, desc = build(name, args, device)
    n_lib = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in guide.parameters())
    n_plain = sum(p.numel() for p in plain.parameters()) if plain is not None else 0
    eager_epoch = epoch_batches(splits.train, args, device, None)
    jit_epoch = epoch_batches(splits.train, args, device, args.jit_pad)
    nb = max(1, math.ceil(args.epochs_fraction * len(eager_epoch)))
    timed = {"eager": eager_epoch[:nb], "jit": jit_epoch[:nb]}
    steps = {k: sum(int(b.x.shape[1]) for b in v) for k, v in timed.items()}
    epoch_steps = {"eager": sum(int(b.x.shape[1]) for b in eager_epoch),
                   "jit": sum(int(b.x.shape[1]) for b in jit_epoch)}
    beta_f = 0.5
    beta_t = torch.tensor(beta_f, device=device)

    adam = torch.optim.Adam(plain.parameters(), lr=1e-3) if plain is not None else None
    svi_eager = SVI(model, guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}),
                    make_elbo("trace"))
    variants = [v for v in args.variants if not (v == "jit" and args.skip_jit)
                and not (v in PLAIN_VARIANTS and plain is None)]
    svi_nade = None
    if "nade" in variants:
        nade_model, nade_guide, _, _ = build(name, args, device, emission="nade", suffix="_nade")
        svi_nade = SVI(nade_model, nade_guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}),
                       make_elbo("trace"))
    svi_jit = SVI(model, guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}),
                  make_elbo("jit")) if "jit" in variants else None
    svi_direct = SVI(model, guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}),
                     make_elbo("trace", path="direct")) if "direct" in variants else None

    def run(variant):
        if variant in ("plain", "plain2"):
            for b in timed["eager"]:
                adam.zero_grad(set_to_none=True)
                loss = -plain.elbo(b.x, b.mask, beta_f, two_pass=variant == "plain2")
                loss.backward()
                adam.step()
        elif variant in ("eager", "eager_noval"):
            pyro.enable_validation(variant == "eager")
            for b in timed["eager"]:
                svi_eager.step(b.x, b.mask, beta_f)
        elif variant == "nade":
            pyro.enable_validation(False)
            for b in timed["eager"]:
                svi_nade.step(b.x, b.mask, beta_f)
        elif variant == "direct":
            for b in timed["eager"]:
                svi_direct.step(b.x, b.mask, beta_f)
        else:
            pyro.enable_validation(False)
            for b in timed["jit"]:
                svi_jit.step(b.x, b.mask, beta_t)
        sync(device)

    out = {"description": desc, "parameters": {"library": n_lib, "plain": n_plain},
           "timed_batches": nb, "epoch_batches": len(eager_epoch),
           "timed_padded_steps": steps, "epoch_padded_steps": epoch_steps,
           "warmup_seconds": {}, "times": {v: [] for v in variants}, "memory": {}}
    print(f"[{name}] {desc}: {nb}/{len(eager_epoch)} batches timed, "
          f"{n_lib} library / {n_plain} plain parameters", flush=True)
    for v in variants:  # warm-up; the JIT compiles here (one trace per padded length)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run(v)
        out["warmup_seconds"][v] = time.perf_counter() - start
        out["memory"][v] = _memory(device)
        print(f"  warm-up {v}: {out['warmup_seconds'][v]:.1f}s", flush=True)
    for rep in range(args.reps):
        order = variants[rep % len(variants):] + variants[: rep % len(variants)]
        for v in order:
            start = time.perf_counter()
            run(v)
            out["times"][v].append(time.perf_counter() - start)
        print(f"  rep {rep + 1}: " + ", ".join(
            f"{v} {out['times'][v][-1]:.2f}s" for v in variants), flush=True)
    pyro.enable_validation(True)
    med = {v: statistics.median(t) for v, t in out["times"].items()}
    out["median_seconds_timed"] = med
    out["seconds_per_epoch_extrapolated"] = {
        v: med[v] * epoch_steps["jit" if v == "jit" else "eager"]
        / steps["jit" if v == "jit" else "eager"] for v in variants}
    out["ratio_to_plain"] = {v: med[v] / med["plain"] for v in variants} if "plain" in med else {}
    per_epoch = out["seconds_per_epoch_extrapolated"]
    out["ratio_to_plain_per_epoch"] = {v: per_epoch[v] / per_epoch["plain"]
                                       for v in variants} if "plain" in med else {}
    if "nade" in med and "eager_noval" in med:
        out["ratio_nade_to_bernoulli"] = med["nade"] / med["eager_noval"]
        out["nade_hidden"] = args.nade_hidden
        print(f"  NADE emission / Bernoulli emission (eager, Trainer default): "
              f"{out['ratio_nade_to_bernoulli']:.2f}x", flush=True)

    if args.profile:
        out["profile_top"] = profile_eager(svi_eager, timed["eager"], args)

    if args.is_particles:
        test = splits.test
        if args.is_sequences:
            from pyro_seqvae.data.sequences import Split
            test = Split("test", list(splits.test.sequences[: args.is_sequences]))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pyro.enable_validation(not args.is_noval)
        start = time.perf_counter()
        scores = evaluate_split(model, guide, test, particles=args.is_particles,
                                batch_size=args.is_batch_size, seed=args.seed, device=device)
        sync(device)
        secs = time.perf_counter() - start
        pyro.enable_validation(True)
        out["importance_sampling"] = {
            "particles": args.is_particles, "sequences": len(test),
            "steps": test.num_steps, "seconds": secs,
            "seconds_extrapolated_to_full_test": secs * splits.test.num_steps / test.num_steps,
            "validation": not args.is_noval, "batch_size": args.is_batch_size,
            "memory": _memory(device),
            "is_log_likelihood_per_step_untrained": scores["is_log_likelihood_per_step"]}
        print(f"  IS K={args.is_particles} on {len(test)} test sequences: {secs:.1f}s", flush=True)
    return out


def _memory(device):
    mem = {"process_maxrss_mb": maxrss_mb()}
    if device.type == "cuda":
        mem["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return mem


def profile_eager(svi, batches, args, top=25):
    """cProfile the eager SVI step (validation on) on the timed batches: top functions."""
    pyro.enable_validation(True)
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        svi.step(b.x, b.mask, 0.5)
    prof.disable()
    s = io.StringIO()
    stats = pstats.Stats(prof, stream=s)
    stats.sort_stats("tottime").print_stats(top)
    text_tot = s.getvalue()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top + 15)
    Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
    with open(args.profile, "a") as f:
        f.write(text_tot + "\n" + s.getvalue())
    return text_tot.splitlines()[:top + 12]


def table(result) -> str:
    lines = ["| model | plain s/epoch | plain x2-pass | eager, checks every update | "
             "eager, Trainer default | direct ELBO | JIT | "
             "NADE emission, Trainer default (x Bernoulli) | "
             "IS K test (s) | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        e = r["seconds_per_epoch_extrapolated"]
        # per epoch (JIT: its own padded lengths); without a plain twin, against eager_noval
        base = "plain" if "plain" in e else "eager_noval"
        ratio = {v: e[v] / e[base] for v in e}

        def cell(v, e=e, ratio=ratio):
            return f"{e[v]:.1f} ({ratio[v]:.2f}x)" if v in e else "—"

        nade = (f"{e['nade']:.1f} ({r['ratio_nade_to_bernoulli']:.2f}x)"
                if "ratio_nade_to_bernoulli" in r else "—")

        is_ = r.get("importance_sampling")
        is_cell = (f"{is_['seconds_extrapolated_to_full_test']:.0f} (K={is_['particles']}"
                   + ("" if is_["sequences"] == 65 else f", from {is_['sequences']} seqs") + ")"
                   if is_ else "—")
        peak = max(m["process_maxrss_mb"] for m in r["memory"].values())
        if is_:
            peak = max(peak, is_["memory"]["process_maxrss_mb"])
        plain = f"{e['plain']:.1f}" if "plain" in e else "—"
        lines.append(f"| {name} | {plain} | {cell('plain2')} | {cell('eager')} | "
                     f"{cell('eager_noval')} | {cell('direct')} | {cell('jit')} | {nade} | "
                     f"{is_cell} | {peak:.0f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vrnn", "srnn"],
                   choices=["vrnn", "srnn", "rnn"])
    p.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "nade"],
                   choices=list(VARIANTS),
                   help="variants to time (default: all but nade; add nade for the cost of the "
                        "NADE emission)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--epochs-fraction", type=float, default=1.0,
                   help="time the first ceil(f * N) batches and extrapolate to an epoch")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--rnn-dim", type=int, default=300)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--skip-jit", action="store_true")
    p.add_argument("--nade-hidden", type=int, default=150,
                   help="hidden width of the NADE emission of the nade variant (default: 150)")
    p.add_argument("--jit-pad", type=int, default=JIT_PAD_MULTIPLE,
                   help=f"JIT: pad batch lengths to multiples of this (default: "
                        f"{JIT_PAD_MULTIPLE}, the TrainConfig default)")
    p.add_argument("--is-particles", type=int, default=500, help="0 skips the IS timing")
    p.add_argument("--is-sequences", type=int, default=None,
                   help="time IS on the first N test sequences and extrapolate by steps")
    p.add_argument("--is-batch-size", type=int, default=16)
    p.add_argument("--is-noval", action="store_true", help="IS with validation off")
    p.add_argument("--profile", default=None, help="append a cProfile of the eager step here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/speed_cpu.json")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="print the table of an existing result file and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    splits = load_dataset("jsb")
    result = {"benchmark": "speed",
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "settings": vars(args), "environment": environment(device),
              "torch_threads": torch.get_num_threads(),
              "torch_interop_threads": torch.get_num_interop_threads(),
              "cpu": platform.processor() or platform.machine(),
              "note": ("seconds_per_epoch_extrapolated: median time of the timed batches scaled "
                       "by padded steps to the whole epoch (exact when epochs_fraction=1); "
                       "ratios are medians within one process, variants alternated"),
              "models": {}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        result["models"][name] = bench_model(name, splits, args, device)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print()
    print(table(result))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
