"""Cost of a FIVO update with K particles against a single-particle ELBO update.

One process, the same model, guide, optimizer and batches; variants alternate within every
repetition and medians are reported:

- ``elbo``: ``SVI(model, guide, ClippedAdam, Trace_ELBO())``, one particle (the reference);
- ``fivo``: ``SVI(..., make_elbo("fivo", num_particles=K))``, K vectorised particles;
- ``iwae``: ``SVI(..., make_elbo("iwae", num_particles=K))`` for comparison.

Validation is off for all (the Trainer's default after the first update). The issue's target:
a FIVO update with K = 4 costs at most 2.5x a single-particle update.

Example::

    python benchmarks/fivo_speed.py --threads 1 --reps 3 --batches 3
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.data import load_dataset
from pyro_seqvae.data.batching import iterate_batches
from pyro_seqvae.guides import FilteringGuide
from pyro_seqvae.infer.elbo import make_elbo
from pyro_seqvae.models import VRNN
from pyro_seqvae.training.runlog import environment


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--batches", type=int, default=3, help="training batches timed per rep")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--rnn-dim", type=int, default=300)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/fivo_speed_cpu.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    splits = load_dataset("jsb", progress=False)
    batches = list(iterate_batches(splits.train, args.batch_size, shuffle=True, seed=args.seed,
                                   bucket_by_length=True))[: args.batches]
    pyro.clear_param_store()
    model = VRNN(splits.x_dim, z_dim=args.z_dim, rnn_dim=args.rnn_dim,
                 hidden_dim=args.hidden_dim)
    guide = FilteringGuide(model, hidden_dim=args.hidden_dim)
    optim = ClippedAdam({"lr": 1e-4, "clip_norm": 10.0})
    variants = {
        "elbo": SVI(model, guide, optim, Trace_ELBO()),
        "fivo": SVI(model, guide, optim, make_elbo("fivo", num_particles=args.particles)),
        "iwae": SVI(model, guide, optim, make_elbo("iwae", num_particles=args.particles)),
    }
    times = {name: [] for name in variants}
    with pyro.validation_enabled(False):
        for svi in variants.values():  # warm-up
            svi.step(batches[0].x, batches[0].mask)
        for rep in range(args.reps):
            names = list(variants)
            names = names[rep % len(names):] + names[: rep % len(names)]
            for name in names:
                start = time.perf_counter()
                for batch in batches:
                    variants[name].step(batch.x, batch.mask)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "config": vars(args),
        "steps_timed": int(sum(int(b.mask.sum()) for b in batches)),
        "padded_lengths": [int(b.x.shape[1]) for b in batches],
        "seconds_per_rep": times,
        "median_seconds": median,
        "ratio_fivo_to_elbo": median["fivo"] / median["elbo"],
        "ratio_iwae_to_elbo": median["iwae"] / median["elbo"],
        "environment": environment(torch.device("cpu")),
        "machine": platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratio_fivo_to_elbo",
                                             "ratio_iwae_to_elbo")}, indent=2))


if __name__ == "__main__":
    main()
