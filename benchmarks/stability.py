"""Stability check: the paper-size SRNN's first updates with and without the clamped hidden units.

For each hidden-unit setting (default: unclamped ReLU, and the library's default, the SRNN
paper's leaky ReLU of slope 1/3 clamped to [-3, 3]), this script trains the SRNN with the
smoothing guide and Res_q (GRU 300, z 100, 500-unit layers, batch 20, ClippedAdam at ``--lr``,
the Trainer's KL schedule) on the JSB training split for ``--updates`` updates, and records after
each update the loss per step and the largest ``|z_t|`` the guide samples (and ``|mu_p|`` of the
prior) on a fixed training batch. A run whose loss becomes NaN or infinite is recorded as
diverged at that update.

Example (the run quoted in the README)::

    python benchmarks/stability.py --updates 40 --threads 1 \\
        --out benchmarks/results/stability_srnn_lr1e-3.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import warnings
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.data import iterate_batches, load_dataset
from pyro_seqvae.guides import SmoothingGuide
from pyro_seqvae.models import SRNN
from pyro_seqvae.training import TrainConfig
from pyro_seqvae.training.runlog import environment

#: label -> (activation, clip)
SETTINGS = {"relu": ("relu", None), "leaky_relu_clip3": ("leaky_relu", 3.0)}


def largest_latent(model, guide, batch) -> tuple[float, float]:
    """``max |z_t|`` sampled by the guide and ``max |mu_p|`` of the prior along it."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(batch.x, batch.mask)
        zs = [site["value"] for name, site in trace.nodes.items()
              if site["type"] == "sample" and name.startswith("z_")]
        mask = batch.mask
        z_max = max(float(z[mask[:, t]].abs().max()) for t, z in enumerate(zs))
        model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(
            batch.x, batch.mask)
        loc_max = max(float(model_trace.nodes[f"z_{t + 1}"]["fn"].mean[mask[:, t]]
                            .abs().max()) for t in range(len(zs)))
    return z_max, loc_max


def run(label, splits, args) -> dict:
    activation, clip = SETTINGS[label]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model = SRNN(88, activation=activation, clip=clip)
    guide = SmoothingGuide(model, residual=True)
    config = TrainConfig(epochs=args.epochs_for_schedule, batch_size=args.batch_size, lr=args.lr)
    updates_per_epoch = math.ceil(len(splits.train) / args.batch_size)
    schedule = config.kl_schedule(updates_per_epoch)
    svi = SVI(model, guide, ClippedAdam({"lr": args.lr, "clip_norm": config.clip_norm}),
              Trace_ELBO(max_plate_nesting=1))
    batches = []
    epoch = 0
    while len(batches) < args.updates:
        batches += list(iterate_batches(splits.train, args.batch_size, shuffle=True,
                                        seed=args.seed, epoch=epoch, bucket_by_length=True))
        epoch += 1
    probe = batches[0]
    records, diverged_at = [], None
    pyro.enable_validation(False)
    for step, batch in enumerate(batches[: args.updates]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = svi.step(batch.x, batch.mask, schedule(step))
        if not math.isfinite(loss):
            diverged_at = step + 1
            records.append({"update": step + 1, "loss_per_step": loss})
            break
        z_max, loc_max = largest_latent(model, guide, probe)
        records.append({"update": step + 1, "loss_per_step": loss / int(batch.mask.sum()),
                        "max_abs_z": z_max, "max_abs_prior_loc": loc_max})
        print(f"[{label}] update {step + 1}: loss/step {records[-1]['loss_per_step']:.3f}, "
              f"max |z| {z_max:.3g}, max |mu_p| {loc_max:.3g}", flush=True)
    pyro.enable_validation(True)
    finite = [r for r in records if "max_abs_z" in r]
    return {"activation": activation, "clip": clip, "diverged_at_update": diverged_at,
            "max_abs_z_overall": max((r["max_abs_z"] for r in finite), default=None),
            "updates": records}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--epochs-for-schedule", type=int, default=300,
                   help="the run length the KL schedule is set for (default: 300 epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/stability_srnn.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    splits = load_dataset("jsb", progress=False)
    result = {"benchmark": "stability",
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "settings": vars(args), "environment": environment(torch.device("cpu")),
              "runs": {}}
    for label in args.settings:
        result["runs"][label] = run(label, splits, args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    for label, r in result["runs"].items():
        print(f"{label}: diverged at update {r['diverged_at_update']}, "
              f"max |z| {r['max_abs_z_overall']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
