"""Sampling speed: step-by-step features (O(T)) against the old prefix recomputation (O(T^2)).

Before ``precompute_step``, ``LatentSequenceModel.sample`` recomputed the model's features over
the whole prefix ``x[:, :t + 1]`` twice per step (the SRNN's ``d_t``: a GRU over ``t + 1`` steps;
the VRNN's ``phi_x``), and ``RNN.sample`` recomputed ``p(x_t | x_<t)`` over the prefix and
sampled all ``t + 1`` frames to keep the last one (with a NADE emission: ``88 (t + 1)`` key
draws per step). This script times both loops, in one process with the same untrained
paper-size model (GRU 300, z 100, 500-unit layers; NADE H 150), N sequences of T steps (after a
4-step warm-up of each), and writes the ratio. The old loops are copied here as they were (the test
``tests/models/test_sampling_incremental.py`` checks that the new loops draw the same rolls).

    python benchmarks/sampling_speed.py --num 16 --steps 512 --threads 1 \\
        --out benchmarks/results/sampling_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine

from pyro_seqvae.models import make_model
from pyro_seqvae.training.runlog import environment


@torch.no_grad()
def old_latent_sample(model, num_sequences, num_steps, prefix=None, guide=None):
    """``LatentSequenceModel.sample`` as it was: the features of the whole prefix, twice per
    step."""
    x, P = model._prepare_prefix(num_sequences, num_steps, prefix)
    guide_z = {}
    if P and guide is not None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        tr = poutine.trace(guide).get_trace(x[:, :P], mask[:, :P])
        guide_z = {t: tr.nodes[f"z_{t + 1}"]["value"] for t in range(P)}
    carry = model.initial_carry(x)
    for t in range(num_steps):
        pre = model.precompute(x[:, : t + 1], None)
        z_t = guide_z[t] if t in guide_z else model.prior(carry, pre[:, t]).sample()
        if t >= P:
            record = model.emission_input(carry, z_t).unsqueeze(-2)
            x[:, t] = model.emission_dist(pre[:, t : t + 1], record).sample()[:, 0]
            pre = model.precompute(x[:, : t + 1], None)
        carry = model.advance(carry, pre[:, t], z_t)
    return x


@torch.no_grad()
def old_rnn_sample(model, num_sequences, num_steps, prefix=None):
    """``RNN.sample`` as it was: all ``t + 1`` frames sampled at step ``t``, the last kept."""
    x, P = model._prepare_prefix(num_sequences, num_steps, prefix)
    for t in range(P, num_steps):
        x[:, t] = model.predictive(x[:, : t + 1]).sample()[:, t]
    return x


def time_one(fn, model, num, steps, seed):
    """Seconds of one ``fn(model, num, steps)`` call from ``seed``."""
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    fn(model, num, steps)
    return time.perf_counter() - start


def new_sample(model, num, steps):
    return model.sample(num, steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["rnn", "srnn", "vrnn", "dmm"])
    p.add_argument("--emissions", nargs="+", default=["bernoulli", "nade"])
    p.add_argument("--num", type=int, default=16, help="sequences N")
    p.add_argument("--steps", type=int, default=512, help="steps T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    result = {"benchmark": "sampling_speed", "command": "python " + shlex.join(sys.argv),
              "settings": vars(args), "environment": environment(torch.device("cpu")),
              "torch_threads": torch.get_num_threads(), "rows": rows}
    for name in args.models:
        for emission in args.emissions:
            pyro.clear_param_store()
            pyro.set_rng_seed(args.seed)
            kwargs = {"emission": emission}
            if emission == "nade":
                kwargs["emission_kwargs"] = {"hidden_dim": 150}
            model = make_model(name, x_dim=88, **kwargs).eval()
            old = old_latent_sample if model.has_latents else old_rnn_sample
            for fn in (new_sample, old):  # warm-up
                fn(model, args.num, 4)
            new_s = time_one(new_sample, model, args.num, args.steps, args.seed)
            old_s = time_one(old, model, args.num, args.steps, args.seed)
            row = {"model": name, "emission": emission, "old_seconds": old_s,
                   "new_seconds": new_s, "speedup": old_s / new_s}
            rows.append(row)
            print(f"{name:5s} {emission:9s} old {old_s:8.2f} s  new {new_s:7.2f} s  "
                  f"speed-up {old_s / new_s:6.1f}x", flush=True)
            if args.out:  # after every row: a cut-off run keeps its finished rows
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
