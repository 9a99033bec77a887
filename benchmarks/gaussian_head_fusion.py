"""Would fusing a Gaussian head's two first layers into one matrix product pay?

``GaussianHead`` runs ``loc_net`` and ``logvar_net`` on the same input; their first layers could be
one ``Linear(in, 2h)`` whose output is split. This times, forward + backward of one head call
(music size: hidden 500, z 100, leaky ReLU clamped at 3), alternating in one process:

- ``separate``: the library's ``GaussianHead.loc`` and ``.scale`` (two first layers);
- ``cat_weights``: the two first layers' weights concatenated at every call, one ``F.linear``
  (keeps today's parameters and names);
- ``fused_param``: one stored ``Linear(in, 2h)`` parameter (a new parameter layout), split.

Example::

    OMP_NUM_THREADS=1 python benchmarks/gaussian_head_fusion.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyro_seqvae.layers import LOGVAR_MAX, LOGVAR_MIN, GaussianHead, soft_clamp
from pyro_seqvae.training.runlog import environment


def time_head(B, D, args):
    """Median ms per head call (forward + backward) of each variant at input ``[B, D]``."""
    head = GaussianHead(D, 100, [500], activation="leaky_relu", clip=3.0)
    x = torch.randn(B, D, requires_grad=True)
    l1, l2 = head.loc_net.layers, head.logvar_net.layers
    first = torch.nn.Linear(D, 1000)
    with torch.no_grad():
        first.weight.copy_(torch.cat([l1[0].weight, l2[0].weight]))
        first.bias.copy_(torch.cat([l1[0].bias, l2[0].bias]))

    def tails(hidden):
        a, c = l1[2](l1[1](hidden)).split(500, -1)
        return l1[3](a), (0.5 * soft_clamp(l2[3](c), LOGVAR_MIN, LOGVAR_MAX)).exp()

    variants = {
        "separate": lambda: (head.loc(x), head.scale(x)),
        "cat_weights": lambda: tails(F.linear(
            x, torch.cat([l1[0].weight, l2[0].weight]), torch.cat([l1[0].bias, l2[0].bias]))),
        "fused_param": lambda: tails(first(x)),
    }
    ref = variants["separate"]()
    for f in variants.values():  # same numbers (float tolerance)
        for r, o in zip(ref, f()):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    times = {k: [] for k in variants}
    for rep in range(args.reps):
        for name in list(variants)[rep % 3:] + list(variants)[: rep % 3]:
            start = time.perf_counter()
            for _ in range(args.calls):
                loc, scale = variants[name]()
                (loc.sum() + scale.sum()).backward()
            times[name].append((time.perf_counter() - start) * 1e3 / args.calls)
    return {k: statistics.median(v) for k, v in times.items()}, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["20x300", "20x600", "500x300"],
                   help="BATCHxIN_DIM of the head's input")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/gaussian_head_fusion_cpu.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = {"command": "python " + shlex.join(sys.argv), "settings": vars(args),
              "environment": environment(torch.device("cpu")),
              "torch_threads": torch.get_num_threads(), "ms_per_call": {}}
    for shape in args.shapes:
        B, D = (int(v) for v in shape.split("x"))
        med, times = time_head(B, D, args)
        result["ms_per_call"][shape] = {"median": med, "ratio_to_separate": {
            k: v / med["separate"] for k, v in med.items()}, "times": times}
        print(shape, {k: f"{v:.3f} ms ({v / med['separate']:.2f}x)" for k, v in med.items()},
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
