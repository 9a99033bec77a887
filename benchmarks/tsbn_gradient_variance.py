"""Gradient variance of the TSBN's score-function estimators, with and without baselines.

A trained TSBN run (``pyro-seqvae train --model tsbn --baseline neural``, whose checkpoint holds
the trained neural baseline) is loaded; on one fixed batch of training chorales and at fixed
parameters, ``--repeats`` independent single-sample gradient estimates are drawn with each
estimator, and the variance of every gradient element across them is summed (separately over
the model's and the guide's parameters; the baseline network's own are left out):

- ``trace``: ``Trace_ELBO``, each ``z_t`` weighted by the whole sequence's ``log p - log q``;
- ``downstream``: :class:`~pyro_seqvae.infer.DownstreamCostELBO` without a baseline (only the
  terms from step ``t`` on, as ``TraceGraph_ELBO``);
- ``downstream+decaying``: with Pyro's decaying-average baseline, warmed up first on
  ``--warmup`` estimates over shuffled training batches, as in training (Pyro keeps one average
  per site and batch position; warmed up on the measured batch itself it would learn that
  batch's own costs, an optimistic figure that is recorded too, as
  ``downstream+decaying(same batch)``);
- ``downstream+neural``: with the run's trained NVIL baseline.

Ratios are against ``trace``. The mean gradient is also recorded: all estimators are unbiased,
so the means agree within Monte-Carlo error. One ``TraceGraph_ELBO`` estimate is timed against
one ``DownstreamCostELBO`` estimate (same gradients, tested in ``tests/models/test_tsbn.py``).

Example (the run quoted in the README)::

    python benchmarks/tsbn_gradient_variance.py runs/tsbn --repeats 200 --threads 1 \\
        --out benchmarks/results/tsbn_gradient_variance.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from pyro_seqvae.data import iterate_batches
from pyro_seqvae.infer import DownstreamCostELBO
from pyro_seqvae.training import TrainConfig, load_checkpoint
from pyro_seqvae.training.checkpoint import restore_modules
from pyro_seqvae.training.runlog import environment, write_json

#: label -> (ELBO class, guide baseline)
ESTIMATORS = {
    "trace": (Trace_ELBO, "none"),
    "downstream": (DownstreamCostELBO, "none"),
    "downstream+decaying": (DownstreamCostELBO, "decaying"),
    "downstream+decaying(same batch)": (DownstreamCostELBO, "decaying"),
    "downstream+neural": (DownstreamCostELBO, "neural"),
}


def load_run(run):
    payload = load_checkpoint(run)
    config = TrainConfig.from_dict(payload["config"])
    model_config, guide_config = payload["model_config"], payload["guide_config"]
    model, guide = config.build(model_config["x_dim"], model_config=model_config,
                                guide_config=guide_config)
    restore_modules(payload, model, guide)
    if guide.baseline != "neural":
        sys.exit(f"{run}: trained without the neural baseline (--baseline neural); its "
                 "checkpoint has no baseline network to measure")
    return model, guide, config, payload


def gradient_estimates(model, guide, elbo, x, mask, repeats):
    """``[repeats, P]`` ELBO-gradient estimates at fixed parameters (model part, guide part)."""
    model_params = list(model.parameters())
    guide_params = [p for n, p in guide.named_parameters() if not n.startswith("baseline_net")]
    rows = []
    for _ in range(repeats):
        for p in model_params + guide_params + list(guide.parameters()):
            p.grad = None
        elbo.loss_and_grads(model, guide, x, mask)
        rows.append(torch.cat([-p.grad.reshape(-1) if p.grad is not None
                               else torch.zeros(p.numel()) for p in model_params + guide_params]))
    n_model = sum(p.numel() for p in model_params)
    rows = torch.stack(rows)
    return rows[:, :n_model], rows[:, n_model:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a TSBN run folder trained with --baseline neural")
    p.add_argument("--repeats", type=int, default=200, help="gradient estimates per estimator")
    p.add_argument("--warmup", type=int, default=3,
                   help="epochs of training batches that warm up the decaying average first "
                        "(estimates on the measured batch for the same-batch variant: x10)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/tsbn_gradient_variance.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    model, guide, config, payload = load_run(args.run)
    splits = config.load_data(progress=False)
    batch = next(iter(iterate_batches(splits.train, args.batch_size, shuffle=True,
                                      seed=args.seed)))
    x, mask = batch.x, batch.mask
    steps = int(mask.sum())
    results, means = {}, {}
    for label, (cls, baseline) in ESTIMATORS.items():
        guide.baseline = baseline
        elbo = cls(max_plate_nesting=1)
        pyro.set_rng_seed(args.seed)
        if baseline == "decaying":
            pyro.clear_param_store()  # a fresh average
            if "same batch" in label:
                gradient_estimates(model, guide, elbo, x, mask, 10 * args.warmup)
            else:
                for epoch in range(args.warmup):
                    for other in iterate_batches(splits.train, args.batch_size, shuffle=True,
                                                 seed=args.seed + 1, epoch=epoch):
                        gradient_estimates(model, guide, elbo, other.x, other.mask, 1)
        start = time.perf_counter()
        model_grads, guide_grads = gradient_estimates(model, guide, elbo, x, mask, args.repeats)
        seconds = (time.perf_counter() - start) / args.repeats
        means[label] = guide_grads.mean(0)
        results[label] = {
            "model_variance_sum": float(model_grads.var(0).sum()),
            "guide_variance_sum": float(guide_grads.var(0).sum()),
            "model_mean_norm": float(model_grads.mean(0).norm()),
            "guide_mean_norm": float(guide_grads.mean(0).norm()),
            "seconds_per_estimate": seconds,
        }
        print(f"{label:22s} guide variance {results[label]['guide_variance_sum']:.4g}  model "
              f"variance {results[label]['model_variance_sum']:.4g}  {seconds:.3f} s/estimate",
              flush=True)
    reference = results["trace"]
    for label, row in results.items():
        for part in ("guide", "model"):
            row[f"{part}_variance_ratio_to_trace"] = (row[f"{part}_variance_sum"]
                                                      / reference[f"{part}_variance_sum"])
        # unbiased estimators: the mean guide gradients agree within Monte-Carlo error
        row["guide_mean_difference_to_trace_norm"] = float((means[label] - means["trace"]).norm())
        row["guide_mean_difference_stderr"] = float(
            ((row["guide_variance_sum"] + reference["guide_variance_sum"]) / args.repeats) ** 0.5)
    # Pyro's TraceGraph_ELBO against the linear-time estimator, one estimate each
    guide.baseline = "neural"
    timing = {}
    for label, cls in (("tracegraph", TraceGraph_ELBO), ("downstream", DownstreamCostELBO)):
        elbo = cls(max_plate_nesting=1)
        gradient_estimates(model, guide, elbo, x, mask, 1)
        start = time.perf_counter()
        gradient_estimates(model, guide, elbo, x, mask, 2)
        timing[label] = (time.perf_counter() - start) / 2
    print(f"TraceGraph_ELBO {timing['tracegraph']:.2f} s, DownstreamCostELBO "
          f"{timing['downstream']:.2f} s per estimate (neural baseline)")
    write_json(args.out, {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "run": str(args.run), "checkpoint_epoch": payload["epoch"],
        "model_config": model.config(), "guide_config": guide.config(),
        "batch": {"sequences": int(x.shape[0]), "padded_steps": int(x.shape[1]),
                  "steps": steps},
        "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed,
        "estimators": results, "seconds_per_estimate_neural": timing,
        "environment": environment(),
    })
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
