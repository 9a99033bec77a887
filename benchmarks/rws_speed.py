"""Speed of reweighted wake-sleep on the TSBN: the traced path, the direct path, plain PyTorch.

The TSBN of the quality table (100 binary units, the paper's linear recognition model,
``FilteringGuide(model, hidden_layers=0)``), ``K`` particles, batch 20, on the JSB training
split; in one process, alternating the variants within every repetition:

- ``plain``: the same networks and the same two losses written by hand
  (``plain_torch.PlainTSBN``), ``backward`` of each into its own parameters and
  ``torch.optim.Adam``;
- ``traced``: ``SVI(model, guide, ClippedAdam, ReweightedWakeSleep(K, path="pyro"))``: the guide
  traced under a particle plate, the model replayed on it, site log-probs summed;
- ``direct``: the same with ``path="direct"`` (the default under ``auto``): the sampling
  recursion alone runs step by step, without autograd, and the densities are one batched call
  each (:mod:`pyro_seqvae.infer.rws`).

Pyro's validation is off, as in the ``Trainer`` after its first update. Medians of the
repetitions, per epoch, and their ratios to ``plain``.

Example::

    python benchmarks/rws_speed.py --particles 10 --reps 5 --threads 1
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
from pyro.infer import SVI
from pyro.optim import ClippedAdam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_torch import PlainTSBN  # noqa: E402

from pyro_seqvae.data import load_dataset  # noqa: E402
from pyro_seqvae.data.batching import iterate_batches  # noqa: E402
from pyro_seqvae.guides import FilteringGuide  # noqa: E402
from pyro_seqvae.infer import ReweightedWakeSleep  # noqa: E402
from pyro_seqvae.models import TSBN  # noqa: E402
from pyro_seqvae.training.runlog import environment  # noqa: E402

VARIANTS = ("plain", "traced", "direct")


def make_steppers(K, lr, seed):
    """One callable per variant that takes one update on a batch."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = TSBN(88, z_dim=100)
    guide = FilteringGuide(model, hidden_layers=0)
    svis = {path: SVI(model, guide, ClippedAdam({"lr": lr}), ReweightedWakeSleep(K, path=path))
            for path in ("pyro", "direct")}
    plain = PlainTSBN(88, z_dim=100)
    optim = torch.optim.Adam(plain.parameters(), lr=lr)
    model_params, guide_params = plain.model_parameters(), plain.guide_parameters()

    def plain_step(b):
        optim.zero_grad()
        theta, phi = plain.rws_losses(b.x, b.mask, K)
        theta.backward(inputs=model_params, retain_graph=True)
        phi.backward(inputs=guide_params)
        optim.step()

    return {"plain": plain_step,
            "traced": lambda b: svis["pyro"].step(b.x, b.mask),
            "direct": lambda b: svis["direct"].step(b.x, b.mask)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--particles", type=int, nargs="+", default=[10])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/rws_speed_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    train = load_dataset("jsb").train
    batches = list(iterate_batches(train, args.batch_size, shuffle=True, seed=args.seed,
                                   epoch=0, bucket_by_length=True))
    result = {"benchmark": "rws_speed",
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "settings": vars(args), "environment": environment(torch.device("cpu")),
              "note": "seconds per epoch of the JSB training split; medians of the repetitions, "
                      "variants alternated in one process", "particles": {}}
    for K in args.particles:
        steppers = make_steppers(K, 1e-3, args.seed)
        for step in steppers.values():  # warm-up
            step(batches[0])
        times = {v: [] for v in VARIANTS}
        for rep in range(args.reps):
            order = VARIANTS[rep % 3:] + VARIANTS[: rep % 3]
            for v in order:
                start = time.perf_counter()
                for b in batches:
                    steppers[v](b)
                times[v].append(time.perf_counter() - start)
            print(f"K={K} rep {rep}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS),
                  flush=True)
        med = {v: statistics.median(times[v]) for v in VARIANTS}
        result["particles"][str(K)] = {
            "seconds_per_epoch": med, "times": times,
            "ratio_to_plain": {v: med[v] / med["plain"] for v in VARIANTS},
            "ratio_per_rep": {v: [t / q for t, q in zip(times[v], times["plain"])]
                              for v in VARIANTS}}
        print(f"K={K}: " + ", ".join(f"{v} {med[v]:.2f}s ({med[v] / med['plain']:.2f}x)"
                                     for v in VARIANTS))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
