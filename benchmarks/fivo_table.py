"""A small FIVO-Table-1-style benchmark: a VRNN trained with ELBO, IWAE and FIVO, each evaluated
by all three bounds (and by IS and SMC with more particles) on the embedded chorales.

Maddison et al. 2017, Table 1 (VRNN, JSB, 4 particles): about -8.60 (ELBO training), -7.86
(IWAE), -6.90 (FIVO) nats per step (recalled; third-party reproductions: -8.69 / -8.01 / -7.51).
Here the networks are small and the budget short (equal number of updates for every
objective, the same seed, no KL annealing: beta = 1 as in FIVO), so the figures are far from the
paper's; what the table shows is the ordering and the gap between the bounds.

For every trained model (last epoch), on the test split, frame-weighted nats per step:

- ``ELBO``: the mean log importance weight (single-sample ELBO, averaged over K draws);
- ``IWAE(K)``: ``log (1/K sum_k w_k)`` per sequence, the importance-sampled bound at the
  training K (``--particles``, 4);
- ``FIVO(K)``: SMC's ``log Z-hat`` at the same K (mean of ``--smc-repeats`` runs);
- ``IS(K_eval)``, ``SMC(K_eval)``: the same estimators with ``--eval-particles`` particles.

Example::

    python benchmarks/fivo_table.py --threads 1 --epochs 12 --lr 3e-3
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

from pyro_seqvae.data import load_dataset
from pyro_seqvae.infer.evaluation import evaluate_split
from pyro_seqvae.training import TrainConfig, Trainer
from pyro_seqvae.training.runlog import environment

#: objective name -> (elbo, uses K particles)
OBJECTIVES = {"elbo": ("trace", False), "iwae": ("iwae", True), "fivo": ("fivo", True),
              "nasmc": ("nasmc", True)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objectives", nargs="+", default=["elbo", "iwae", "fivo"],
                   choices=list(OBJECTIVES))
    p.add_argument("--model", default="vrnn", choices=["vrnn", "srnn", "storn", "dmm"])
    p.add_argument("--particles", type=int, default=4, help="K of training and of the bounds")
    p.add_argument("--eval-particles", type=int, default=100, help="K of IS and SMC")
    p.add_argument("--smc-repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--rnn-dim", type=int, default=64)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="use only this many chorales")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs-dir", default="benchmarks/runs/fivo_table")
    p.add_argument("--out", default="benchmarks/results/fivo_table_jsb.json")
    return p.parse_args(argv)


def run_objective(name, splits, args) -> dict:
    elbo, uses_k = OBJECTIVES[name]
    config = TrainConfig(
        data="jsb", model=args.model, guide="filter", residual=False,
        model_kwargs={"z_dim": args.z_dim, "rnn_dim": args.rnn_dim,
                      "hidden_dim": args.hidden_dim},
        guide_kwargs={"hidden_dim": args.hidden_dim, "summary_dim": args.rnn_dim},
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta_start=1.0,
        beta_increment=0.0, elbo=elbo, num_particles=args.particles if uses_k else 1,
        seed=args.seed, limit=args.limit)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide = config.build(splits.x_dim)
    trainer = Trainer(model, guide, config, out_dir=Path(args.runs_dir) / name, progress=False)
    start = time.perf_counter()
    history = trainer.fit(splits)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    at_k = evaluate_split(model, guide, splits.test, particles=args.particles, seed=args.seed,
                          estimator="smc", smc_repeats=args.smc_repeats)
    at_eval = evaluate_split(model, guide, splits.test, particles=args.eval_particles,
                             seed=args.seed, estimator="smc", smc_repeats=args.smc_repeats)
    eval_seconds = time.perf_counter() - start
    row = {"objective": name, "config": config.to_dict(), "epochs": len(history),
           "updates": trainer.step, "train_seconds": train_seconds,
           "eval_seconds": eval_seconds, "history": history,
           "test_at_training_k": at_k, "test_at_eval_k": at_eval}
    print(f"[{name}] {len(history)} epochs in {train_seconds:.0f}s; test ELBO "
          f"{at_k['elbo_per_step']:.3f}, IWAE({args.particles}) "
          f"{at_k['is_log_likelihood_per_step']:.3f}, FIVO({args.particles}) "
          f"{at_k['smc_log_likelihood_per_step']:.3f}, IS({args.eval_particles}) "
          f"{at_eval['is_log_likelihood_per_step']:.3f}, SMC({args.eval_particles}) "
          f"{at_eval['smc_log_likelihood_per_step']:.3f}", flush=True)
    return row


def _pm(value, stderr):
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")


def markdown_table(result) -> str:
    a = result["args"]
    K, KE = a["particles"], a["eval_particles"]
    lines = [f"| trained with | train min | ELBO | IWAE (K={K}) | FIVO (K={K}) | IS (K={KE}) | "
             f"SMC (K={KE}) | resamplings/step (K={KE}) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        t, e = row["test_at_training_k"], row["test_at_eval_k"]
        lines.append(
            f"| {row['objective'].upper()} | {row['train_seconds'] / 60:.1f} | "
            f"{_pm(t['elbo_per_step'], t['elbo_stderr_per_step'])} | "
            f"{_pm(t['is_log_likelihood_per_step'], t['is_stderr_per_step'])} | "
            f"{_pm(t['smc_log_likelihood_per_step'], t['smc_stderr_per_step'])} | "
            f"{_pm(e['is_log_likelihood_per_step'], e['is_stderr_per_step'])} | "
            f"{_pm(e['smc_log_likelihood_per_step'], e['smc_stderr_per_step'])} | "
            f"{e['smc_resamplings_per_step']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_dataset("jsb", limit=args.limit, progress=False)
    rows = [run_objective(name, splits, args) for name in args.objectives]
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "args": vars(args), "rows": rows,
              "environment": environment(torch.device("cpu"))}
    result["markdown"] = markdown_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])


if __name__ == "__main__":
    main()
