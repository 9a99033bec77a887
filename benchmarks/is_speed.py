"""Importance sampling speed: the library's estimator against a plain-PyTorch sampler (issue 18).

For VRNN (+ FilteringGuide, the VRNN encoder) and SRNN (+ SmoothingGuide with Res_q) at the
music size (GRU 300, z 100, 500-unit layers), ``K`` particles (500) per sequence of the JSB test
split (or its first ``--sequences`` sequences), batches of ``--batch-size`` bucketed by length as
``evaluate_split`` makes them, in one process, variants alternated in every repetition:

- ``traced``: the library's importance sampler before issue 18, still available as
  ``estimate_log_likelihood(..., path="traced")``: the guide traced under a particle plate, the
  model replayed, site log-probs summed, particles chunked to ``max_rows`` particle-steps;
- ``direct``: the library's default (``path="auto"``): :mod:`pyro_seqvae.infer.direct`;
- ``plain``: ``plain_torch.py``'s ``log_weights``, the same networks written by hand in plain
  PyTorch (all particles at once, weight summed step by step), then the same per-sequence
  summary and PSIS k-hat as the library.

Before timing, the three are checked to give the same log weights with the same random numbers
(the library's weights copied into the plain networks; ``max_abs_diff`` in the JSON). Peak
memory is measured per variant in a fresh subprocess running one pass of the same workload:
its resident set after building the networks and its peak during the pass (Linux: the peak
``VmHWM`` reset after the set-up through ``/proc/self/clear_refs``, since loading the data set
peaks higher; elsewhere ``ru_maxrss``; ``tracemalloc`` does not see torch's allocations).

Example::

    OMP_NUM_THREADS=1 python benchmarks/is_speed.py --threads 1 --sequences 6 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plain_torch import PlainSRNN, PlainVRNN, load_library_weights  # noqa: E402

from pyro_seqvae.data import load_dataset  # noqa: E402
from pyro_seqvae.data.batching import iterate_batches  # noqa: E402
from pyro_seqvae.data.sequences import Split  # noqa: E402
from pyro_seqvae.guides import FilteringGuide, SmoothingGuide  # noqa: E402
from pyro_seqvae.infer.direct import direct_log_weights  # noqa: E402
from pyro_seqvae.infer.importance import (  # noqa: E402
    DEFAULT_MAX_ROWS,
    estimate_log_likelihood,
    log_importance_weights,
    pareto_khat,
    summarise_log_weights,
)
from pyro_seqvae.models import SRNN, VRNN  # noqa: E402
from pyro_seqvae.training.runlog import environment  # noqa: E402

VARIANTS = ("traced", "plain", "direct")


def maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # Linux: KiB


def build(name, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if name == "vrnn":
        model = VRNN(88)
        guide = FilteringGuide(model)
        plain = PlainVRNN(88)
        desc = "VRNN + FilteringGuide (the VRNN encoder)"
    else:
        model = SRNN(88)
        guide = SmoothingGuide(model, residual=True)
        plain = PlainSRNN(88)
        desc = "SRNN + SmoothingGuide(residual=True) (smooth + Res_q)"
    load_library_weights(plain, model, guide)
    model.eval()
    guide.eval()
    return model, guide, plain, desc


def workload(args):
    test = load_dataset("jsb").test
    if args.sequences:
        test = Split("test", list(test.sequences[: args.sequences]))
    return test, list(iterate_batches(test, args.batch_size, bucket_by_length=True))


def run_variant(variant, model, guide, plain, batches, args):
    pyro.set_rng_seed(args.seed)
    if variant == "plain":
        for b in batches:
            log_w = plain.log_weights(b.x, b.mask, args.particles)
            summarise_log_weights(log_w)
            pareto_khat(log_w)
    else:
        estimate_log_likelihood(model, guide, batches, num_particles=args.particles,
                                max_rows=args.max_rows,
                                path="traced" if variant == "traced" else "auto")


def check_equal(model, guide, plain, batches, args) -> dict:
    """The three variants' log weights with the same random numbers (first batch, K = 3)."""
    b = batches[0]
    out = {}
    for variant in VARIANTS:
        torch.manual_seed(args.seed)
        if variant == "plain":
            out[variant] = plain.log_weights(b.x, b.mask, 3)
        elif variant == "traced":
            out[variant] = log_importance_weights(model, guide, b.x, b.mask, 3)
        else:
            out[variant] = direct_log_weights(model, guide, b.x, b.mask, 3)
    scale = float(out["traced"].abs().max())
    diffs = {v: float((out[v] - out["traced"]).abs().max()) for v in ("plain", "direct")}
    return {"log_weight_scale": scale, "max_abs_diff_to_traced": diffs,
            "equal_rel_1e-5": all(d <= 1e-5 * scale for d in diffs.values())}


def _status_mb(key) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def child(args):
    """One pass of one variant in this fresh process; prints its memory figures as JSON.

    Loading the data set peaks higher than the networks need, so the peak is reset after the
    set-up where Linux allows (``/proc/self/clear_refs``, then ``VmHWM``); else ``ru_maxrss``.
    """
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, guide, plain, _ = build(args.child[1], args.seed)
    _, batches = workload(args)
    import gc

    gc.collect()
    setup_peak = maxrss_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    setup = _status_mb("VmRSS") or setup_peak
    start = time.perf_counter()
    with torch.no_grad():
        run_variant(args.child[0], model, guide, plain, batches, args)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") if reset else maxrss_mb()
    print(json.dumps({"rss_after_setup_mb": setup, "rss_peak_mb": peak,
                      "setup_peak_mb": setup_peak, "peak_reset_after_setup": reset,
                      "seconds": seconds}))


def memory(variant, name, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, name, "--particles",
           str(args.particles), "--sequences", str(args.sequences), "--batch-size",
           str(args.batch_size), "--seed", str(args.seed), "--max-rows", str(args.max_rows)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_model(name, args) -> dict:
    model, guide, plain, desc = build(name, args.seed)
    test, batches = workload(args)
    padded = sum(int(b.x.shape[0] * b.x.shape[1]) for b in batches)
    out = {"description": desc, "sequences": len(test), "steps": test.num_steps,
           "padded_steps": padded, "batches": [list(b.x.shape[:2]) for b in batches],
           "particles": args.particles, "check": check_equal(model, guide, plain, batches, args),
           "times": {v: [] for v in args.variants}}
    print(f"[{name}] {desc}: {len(test)} sequences, {test.num_steps} steps, K={args.particles}; "
          f"check {out['check']}", flush=True)
    for v in args.variants:  # warm-up on the first batch (first calls, allocator)
        with torch.no_grad():
            run_variant(v, model, guide, plain, batches[:1], args)
    for rep in range(args.reps):
        order = args.variants[rep % len(args.variants):] + args.variants[: rep % len(args.variants)]
        for v in order:
            start = time.perf_counter()
            with torch.no_grad():
                run_variant(v, model, guide, plain, batches, args)
            out["times"][v].append(time.perf_counter() - start)
        print(f"  rep {rep + 1}: " + ", ".join(f"{v} {out['times'][v][-1]:.1f}s"
                                              for v in args.variants), flush=True)
    med = {v: statistics.median(t) for v, t in out["times"].items()}
    out["median_seconds"] = med
    if "traced" in med:
        out["ratio_to_traced"] = {v: med[v] / med["traced"] for v in med}
        # per repetition: the variants of one repetition ran back to back
        out["ratio_to_traced_per_rep"] = {
            v: [a / b for a, b in zip(out["times"][v], out["times"]["traced"])] for v in med}
    if "plain" in med:
        out["ratio_to_plain"] = {v: med[v] / med["plain"] for v in med}
    if args.memory:
        out["memory"] = {v: memory(v, name, args) for v in args.memory_variants or args.variants}
        print(f"  memory: {out['memory']}", flush=True)
    return out


def table(result) -> str:
    lines = ["| model | workload | traced (today) s | plain s | direct s | direct / traced | "
             "direct / plain | traced / plain | peak RSS MB traced / plain / direct |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        m = {v: r["median_seconds"].get(v, float("nan")) for v in VARIANTS}
        mem = r.get("memory")
        peak = " / ".join(f"{mem[v]['rss_peak_mb']:.0f}" if v in mem else "—"
                          for v in VARIANTS) if mem else "—"
        lines.append(
            f"| {name} | {r['sequences']} seqs, {r['steps']} steps, K={r['particles']} | "
            f"{m['traced']:.1f} | {m['plain']:.1f} | {m['direct']:.1f} | "
            f"{m['direct'] / m['traced']:.2f} | {m['direct'] / m['plain']:.2f} | "
            f"{m['traced'] / m['plain']:.2f} | {peak} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vrnn", "srnn"], choices=["vrnn", "srnn"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--particles", type=int, default=500)
    p.add_argument("--sequences", type=int, default=0,
                   help="the first N test sequences (0: the whole test split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the per-variant memory subprocesses")
    p.add_argument("--memory-variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="measure the memory of these variants only (default: all timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/is_speed_cpu.json")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="print the table of an existing result file and exit")
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return
    if args.child:
        child(args)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    result = {"benchmark": "is_speed",
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "settings": vars(args), "environment": environment(device),
              "torch_threads": torch.get_num_threads(),
              "pyro_validation": pyro.infer.util.is_validation_enabled(),
              "cpu": platform.processor() or platform.machine(),
              "load_average_at_start": list(os.getloadavg()),
              "models": {}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        result["models"][name] = bench_model(name, args)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    result["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print()
    print(table(result))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
