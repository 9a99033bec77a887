"""Does regional ``torch.compile`` beat eager for the library's SVI step?

For VRNN (+ FilteringGuide) and SRNN (+ SmoothingGuide, Res_q) at the music size, batch 20, on the
JSB training split, this times in one process, alternating within every repetition:

- ``plain``: the plain-PyTorch twin (``plain_torch.py``), the reference of ``speed.py``;
- ``eager``: ``SVI(model, guide, ClippedAdam, Trace_ELBO)``, validation off (the Trainer's
  steady state);
- ``compiled``: the same with a second copy of the networks (same weights) compiled in place by
  :func:`pyro_seqvae.compiling.compile_networks` (``dynamic=True``).

Before timing, the compiled copy's loss and gradients on the first batch are compared with the
eager copy's under the same seed (``max_abs_loss_diff``, ``max_rel_grad_diff``); the first
compiled pass over the timed batches is reported as ``compile_seconds`` (it includes the
compiles, one per network type and shape family, forward and backward).

Example::

    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py --threads 1 --reps 3 --batches 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import build, epoch_batches  # noqa: E402

from pyro_seqvae.compiling import compile_networks  # noqa: E402
from pyro_seqvae.data import load_dataset  # noqa: E402
from pyro_seqvae.training.runlog import environment  # noqa: E402


def loss_and_grads(model, guide, batch, seed):
    pyro.set_rng_seed(seed)
    params = [p for m in (model, guide) for p in m.parameters()]
    for p in params:
        p.grad = None
    loss = Trace_ELBO().differentiable_loss(model, guide, batch.x, batch.mask, 0.5)
    loss.backward()
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for p in params]
    for p in params:
        p.grad = None
    return loss.detach(), grads


def bench(name, splits, args, device):
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide, plain, desc = build(name, args, device)
    cmodel, cguide, _, _ = build(name, args, device, suffix="_compiled")
    cmodel.load_state_dict(model.state_dict())
    cguide.load_state_dict(guide.state_dict())
    n = compile_networks(cmodel, cguide, dynamic=True)
    batches = epoch_batches(splits.train, args, device, None)[: args.batches]
    pyro.enable_validation(False)
    out = {"description": desc, "compiled_networks": n, "timed_batches": len(batches),
           "lengths": [int(b.x.shape[1]) for b in batches]}

    start = time.perf_counter()
    loss_c, grads_c = loss_and_grads(cmodel, cguide, batches[0], args.seed)
    out["first_call_compile_seconds"] = time.perf_counter() - start
    loss_e, grads_e = loss_and_grads(model, guide, batches[0], args.seed)
    out["max_abs_loss_diff"] = float((loss_c - loss_e).abs())
    out["loss"] = float(loss_e)
    out["max_rel_grad_diff"] = max(
        float((gc - ge).abs().max() / ge.abs().max().clamp_min(1e-12))
        for gc, ge in zip(grads_c, grads_e))
    print(f"[{name}] {n} networks compiled; first call {out['first_call_compile_seconds']:.1f}s;"
          f" |loss diff| {out['max_abs_loss_diff']:.2e} (loss {out['loss']:.2f}), max rel grad "
          f"diff {out['max_rel_grad_diff']:.2e}", flush=True)

    adam = torch.optim.Adam(plain.parameters(), lr=1e-3)
    svi = {"eager": SVI(model, guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}), Trace_ELBO()),
           "compiled": SVI(cmodel, cguide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}),
                           Trace_ELBO())}

    def run(variant):
        for b in batches:
            if variant == "plain":
                adam.zero_grad(set_to_none=True)
                (-plain.elbo(b.x, b.mask, 0.5)).backward()
                adam.step()
            else:
                svi[variant].step(b.x, b.mask, 0.5)

    variants = ["plain", "eager", "compiled"]
    out["warmup_seconds"] = {}
    for v in variants:  # warm-up: the compiled variant compiles any remaining shapes here
        start = time.perf_counter()
        run(v)
        out["warmup_seconds"][v] = time.perf_counter() - start
        print(f"  warm-up {v}: {out['warmup_seconds'][v]:.1f}s", flush=True)
    out["times"] = {v: [] for v in variants}
    for rep in range(args.reps):
        order = variants[rep % 3:] + variants[: rep % 3]
        for v in order:
            start = time.perf_counter()
            run(v)
            out["times"][v].append(time.perf_counter() - start)
        print(f"  rep {rep + 1}: " + ", ".join(f"{v} {out['times'][v][-1]:.2f}s"
                                                for v in variants), flush=True)
    med = {v: statistics.median(t) for v, t in out["times"].items()}
    out["median_seconds"] = med
    out["ratio_to_plain"] = {v: med[v] / med["plain"] for v in variants}
    out["compiled_over_eager"] = med["compiled"] / med["eager"]
    print("  ratios to plain: " + ", ".join(f"{v} {r:.2f}x" for v, r in
                                             out["ratio_to_plain"].items())
          + f"; compiled/eager {out['compiled_over_eager']:.2f}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vrnn", "srnn"], choices=["vrnn", "srnn"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batches", type=int, default=2, help="timed batches of the seeded epoch")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--rnn-dim", type=int, default=300)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--nade-hidden", type=int, default=150)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--recompile-limit", type=int, default=64,
                   help="torch._dynamo.config.recompile_limit: every MLP instance shares one code "
                        "object, whose default limit of 8 variants makes later networks run eager")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/compile_speed_cpu.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = args.recompile_limit
    device = torch.device("cpu")
    splits = load_dataset("jsb")
    result = {"command": "python " + shlex.join(sys.argv), "settings": vars(args),
              "environment": environment(device), "torch_threads": torch.get_num_threads(),
              "models": {}}
    for name in args.models:
        result["models"][name] = bench(name, splits, args, device)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
