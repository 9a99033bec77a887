"""Quality benchmark: the papers' model x guide table, trained and scored on one data set.

For each configuration (RNN, STORN, VRNN, SRNN filter/smooth +- Res_q, DMM) this script trains
with :class:`pyro_seqvae.training.TrainConfig` and :class:`~pyro_seqvae.training.Trainer` (one
run folder per configuration under ``--runs-dir``), reloads the checkpoint with the best
validation ELBO, and scores the test split with
:func:`pyro_seqvae.infer.evaluation.evaluate_split`: the ELBO per step and the
importance-sampled log-likelihood per step (K particles), frame-weighted, with Monte-Carlo
standard errors and PSIS k-hat; then it draws free-running samples and compares them with the
test split (issue 12: samples with a step of more than 12 notes, notes per step, pitch-class
distance; ``--samples 0`` skips it). Results go to ``benchmarks/results/quality_<data>.json``
(written after every configuration, so a cut-off run leaves its finished rows) and a markdown
table is printed next to the published numbers of DESIGN.md.

Example (the run quoted in the README; see the JSON for the exact command)::

    python benchmarks/quality.py --epochs 5 --particles 100

Sample statistics for the rows of an earlier result file, from the run folders it kept::

    python benchmarks/quality.py --add-samples benchmarks/results/quality_jsb_srnn_t3.json

Quick smoke run::

    python benchmarks/quality.py --configs vrnn srnn-smooth-resq --epochs 1 --particles 10 \\
        --z-dim 8 --rnn-dim 16 --hidden-dim 16 --out /tmp/q.json --runs-dir /tmp/qruns
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_seqvae.data import load_dataset
from pyro_seqvae.infer.evaluation import evaluate_split
from pyro_seqvae.infer.sample_stats import sample_statistics
from pyro_seqvae.training import TrainConfig, Trainer
from pyro_seqvae.training.checkpoint import load_checkpoint, restore_modules
from pyro_seqvae.training.runlog import environment
from pyro_seqvae.training.trainer import claim_param_store

#: name -> (TrainConfig fields, label of the papers' tables).
CONFIGS = {
    "rnn": (dict(model="rnn", guide="none"), "RNN"),
    "storn": (dict(model="storn", guide="filter"), "STORN"),
    "vrnn": (dict(model="vrnn", guide="filter"), "VRNN"),
    "srnn-filter": (dict(model="srnn", guide="filter"), "SRNN filter"),
    "srnn-filter-resq": (dict(model="srnn", guide="filter", residual=True),
                         "SRNN filter + Res_q"),
    "srnn-smooth": (dict(model="srnn", guide="smooth"), "SRNN smooth"),
    "srnn-smooth-resq": (dict(model="srnn", guide="smooth", residual=True),
                         "SRNN smooth + Res_q"),
    "dmm": (dict(model="dmm", guide="smooth"), "DMM"),
    "rnn-nade": (dict(model="rnn", guide="none", emission="nade"), "RNN-NADE"),
    "rnn-nade-high-to-low": (dict(model="rnn", guide="none", emission="nade",
                                  emission_kwargs={"order": "high_to_low"}),
                             "RNN-NADE, keys high to low"),
    "rnn-nade-random": (dict(model="rnn", guide="none", emission="nade",
                             emission_kwargs={"order": "random"}),
                        "RNN-NADE, keys in a random order"),
    "srnn-smooth-resq-nade": (dict(model="srnn", guide="smooth", residual=True,
                                   emission="nade"), "SRNN smooth + Res_q, NADE emission"),
    "vrnn-nade": (dict(model="vrnn", guide="filter", emission="nade"),
                  "VRNN, NADE emission"),
    # the paper's linear recognition model (guide hidden_layers=0, set in size_kwargs)
    "tsbn": (dict(model="tsbn", guide="filter", baseline="neural"),
             "TSBN + linear filtering guide, NVIL baseline"),
}

#: Published test log-likelihood per step (nats), SRNN paper Table 2, as quoted in DESIGN.md.
PUBLISHED = {
    "jsb": {"srnn-smooth-resq": ">= -4.74", "storn": "~ -6.91", "rnn": "~ -8.71",
            "rnn-nade": "~ -5.19"},
    "nottingham": {"srnn-smooth-resq": ">= -2.94", "storn": "~ -2.85", "rnn": "~ -4.46"},
    "musedata": {"srnn-smooth-resq": ">= -6.28", "storn": "~ -6.16", "rnn": "~ -8.13"},
    "piano-midi": {"srnn-smooth-resq": ">= -8.20", "storn": "~ -7.13", "rnn": "~ -8.37"},
}
PUBLISHED_NOTE = ("published: SRNN paper Table 2 via DESIGN.md (SRNN: ELBO, a lower bound; "
                  "others: reported log-likelihood); RNN-NADE (Boulanger-Lewandowski 2012): "
                  "JSB ~ -5.19, Nottingham ~ -2.31, MuseData ~ -5.60, Piano-midi ~ -7.05")


def data_key(data: str) -> str:
    """``jsb`` / ``nottingham`` / ``musedata`` / ``piano-midi`` / the file or folder stem."""
    name = Path(data).stem.lower().replace(" ", "").replace("_", "").replace(".", "")
    for key, needle in (("jsb", "jsb"), ("nottingham", "nottingham"),
                        ("musedata", "musedata"), ("piano-midi", "piano")):
        if needle in name:
            return key
    return name or "data"


def size_kwargs(model: str, args) -> tuple[dict, dict]:
    """Model and guide keyword overrides from ``--z-dim --rnn-dim --hidden-dim``."""
    mk, gk = {}, {}
    if model != "rnn" and args.z_dim is not None:
        mk["z_dim"] = args.z_dim
    if model in ("rnn", "vrnn", "storn", "srnn"):
        if args.rnn_dim is not None:
            mk["rnn_dim"] = args.rnn_dim
        if args.hidden_dim is not None:
            mk["hidden_dim"] = args.hidden_dim
    if model == "tsbn":
        gk["hidden_layers"] = 0
    if model != "rnn":
        if args.hidden_dim is not None:
            gk["hidden_dim"] = args.hidden_dim
        if args.rnn_dim is not None:
            gk["summary_dim"] = args.rnn_dim
    return mk, gk


class BudgetTrainer(Trainer):
    """A :class:`Trainer` that stops starting new epochs after ``max_seconds`` of training."""

    class OutOfTime(Exception):
        pass

    def __init__(self, *args, max_seconds=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_seconds = max_seconds
        self.started = time.perf_counter()

    def train_epoch(self, split):
        if self.max_seconds is not None and self.epoch > 0 \
                and time.perf_counter() - self.started > self.max_seconds:
            raise self.OutOfTime()
        return super().train_epoch(split)


def sample_summary(model, reference, *, num: int, steps: int, seeds) -> dict:
    """Free-running samples of ``model`` against ``reference`` rolls, for each sampling seed.

    :param model: a trained sequence model with a binary emission.
    :param reference: the test split's rolls (list of ``[T_i, D]``).
    :param int num: samples per seed; ``steps``: their length.
    :param seeds: sampling seeds; the first one's full statistics are kept
        (:func:`~pyro_seqvae.infer.sample_stats.sample_statistics`).
    :returns: per-seed counts of samples with a step of more than 12 notes (``dense``),
        notes per step and pitch-class TV, their totals, and the reference's notes per step.
    """
    per_seed, first = [], None
    for seed in seeds:
        with torch.no_grad():
            stats = sample_statistics(model, reference, num_samples=num, num_steps=steps,
                                      seed=seed)
        first = first or stats
        per_seed.append({"seed": seed,
                         "dense": round(num * stats["samples"]["share_sequences_dense"]),
                         "notes_per_step_mean": stats["samples"]["notes_per_step_mean"],
                         "notes_per_step_max": stats["samples"]["notes_per_step_max"],
                         "pitch_class_tv": stats["pitch_class_tv"],
                         "pitch_tv": stats["pitch_tv"]})
    reference_mean = first["reference"]["notes_per_step_mean"]
    mean_all = sum(r["notes_per_step_mean"] for r in per_seed) / len(per_seed)
    return {"num_samples": num, "num_steps": steps, "seeds": list(seeds),
            "dense_first_seed": per_seed[0]["dense"],
            "dense_total": sum(r["dense"] for r in per_seed),
            "num_total": num * len(per_seed),
            "notes_per_step_first_seed": per_seed[0]["notes_per_step_mean"],
            "notes_per_step_all_seeds": mean_all,
            "reference_notes_per_step": reference_mean,
            "notes_per_step_ratio": mean_all / reference_mean,
            "pitch_class_tv_first_seed": first["pitch_class_tv"],
            "per_seed": per_seed, "first_seed": first}


def print_sample_summary(name: str, summary: dict) -> None:
    print(f"[{name}] samples with a step > 12 notes: {summary['dense_first_seed']}/"
          f"{summary['num_samples']} (seed {summary['seeds'][0]}), {summary['dense_total']}/"
          f"{summary['num_total']} (seeds {summary['seeds']}); notes per step "
          f"{summary['notes_per_step_all_seeds']:.2f} (data "
          f"{summary['reference_notes_per_step']:.2f})", flush=True)


def run_config(name: str, splits, args) -> dict:
    fields, label = CONFIGS[name]
    model_kwargs, guide_kwargs = size_kwargs(fields["model"], args)
    config = TrainConfig(data=args.data, model_kwargs=model_kwargs, guide_kwargs=guide_kwargs,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, device=args.device, transpose=args.transpose,
                         patience=args.patience,
                         **fields)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide = config.build(splits.x_dim)
    num_params = sum(p.numel() for p in model.parameters()) + sum(
        p.numel() for p in guide.parameters())
    out_dir = Path(args.runs_dir) / name
    trainer = BudgetTrainer(model, guide, config, out_dir=out_dir, progress=False, overwrite=True,
                            max_seconds=None if args.max_minutes is None
                            else 60 * args.max_minutes)
    start = time.perf_counter()
    stopped_by_budget = False
    try:
        history = trainer.fit(splits)
    except BudgetTrainer.OutOfTime:
        history, stopped_by_budget = trainer.history, True
    train_seconds = time.perf_counter() - start
    payload = load_checkpoint(out_dir)  # checkpoint_best.pt: the best validation ELBO
    restore_modules(payload, model, guide)
    claim_param_store(model, guide)
    start = time.perf_counter()
    scores = evaluate_split(model, guide, splits.test, particles=args.particles,
                            batch_size=args.eval_batch_size, seed=args.seed,
                            device=trainer.device)
    eval_seconds = time.perf_counter() - start
    row = {
        "name": name, "label": label, "config": config.to_dict(),
        "model_config": model.config(), "guide_config": guide.config(),
        "num_parameters": num_params,
        "epochs_run": len(history), "best_epoch": payload["epoch"],
        "best_valid_elbo_per_step": payload["best_valid"],
        "stopped_by_time_budget": stopped_by_budget,
        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "seconds_per_epoch": [r["seconds"] for r in history],
        "history": history, "test": scores, "run_dir": str(out_dir),
    }
    if args.samples > 0:
        row["sample_stats"] = sample_summary(model, splits.test.sequences, num=args.samples,
                                             steps=args.sample_steps, seeds=args.sample_seeds)
    print(f"[{name}] {len(history)} epochs in {train_seconds:.0f}s, best epoch "
          f"{payload['epoch']} (valid {payload['best_valid']:.3f}); test ELBO "
          f"{scores['elbo_per_step']:.3f}, IS LL {scores['is_log_likelihood_per_step']:.3f} "
          f"(K={args.particles}, {eval_seconds:.0f}s)", flush=True)
    if "sample_stats" in row:
        print_sample_summary(name, row["sample_stats"])
    return row


def fmt(value, stderr=None, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"  # k-hat: too few particles to fit the tail
    text = f"{value:.{digits}f}"
    if stderr is not None and math.isfinite(stderr):
        text += f" ± {stderr:.{digits}f}"
    return text


def markdown_table(result: dict) -> str:
    key = result["data_key"]
    published = PUBLISHED.get(key, {})
    settings = result["settings"]
    K = (settings[0] if isinstance(settings, list) else settings)["particles"]
    lines = [
        f"| configuration | epochs (best) | train min | valid ELBO | test ELBO | "
        f"test IS log-lik (K={K}) | k-hat max (>0.7) | samples with a step > 12 notes | "
        f"notes per step | published ({key}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        t = row["test"]
        khat = "n/a (exact)" if row["config"]["model"] == "rnn" else (
            f"{fmt(t['khat_max'], digits=2)} ({t['khat_over_0_7']}/{t['num_sequences']})")
        ss = row.get("sample_stats")
        dense = "n/a" if ss is None else (
            f"{ss['dense_first_seed']}/{ss['num_samples']}; "
            f"{ss['dense_total']}/{ss['num_total']}")
        notes = "n/a" if ss is None else (f"{ss['notes_per_step_all_seeds']:.2f} (data "
                                          f"{ss['reference_notes_per_step']:.2f})")
        lines.append(
            f"| {row['label']} | {row['epochs_run']} ({row['best_epoch']}) | "
            f"{row['train_seconds'] / 60:.1f} | {fmt(row['best_valid_elbo_per_step'])} | "
            f"{fmt(t['elbo_per_step'], t['elbo_stderr_per_step'])} | "
            f"{fmt(t['is_log_likelihood_per_step'], t['is_stderr_per_step'])} | {khat} | "
            f"{dense} | {notes} | {published.get(row['name'], '—')} |")
    lines.append("")
    lines.append(f"nats per time step on the test split, frame-weighted, ± Monte-Carlo standard "
                 f"error; {PUBLISHED_NOTE}.")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="jsb", help="jsb, a benchmark pickle or a MIDI folder")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="per configuration: start no new epoch after this many minutes")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--transpose", type=int, default=0)
    p.add_argument("--patience", type=int, default=None,
                   help="stop a configuration after this many epochs without a better "
                        "validation ELBO")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--particles", type=int, default=500, help="K of the IS estimate")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--z-dim", type=int, default=None)
    p.add_argument("--rnn-dim", type=int, default=None)
    p.add_argument("--hidden-dim", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--samples", type=int, default=16,
                   help="free-running samples per sampling seed for the sample statistics "
                        "(0: skip them)")
    p.add_argument("--sample-steps", type=int, default=128, help="length of each sample")
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="sampling seeds; the first one's full statistics are kept")
    p.add_argument("--add-samples", default=None, metavar="JSON",
                   help="add sample statistics to the rows of this result file from the run "
                        "folders it kept (best checkpoints), rewrite it, and exit")
    p.add_argument("--runs-dir", default="benchmarks/runs")
    p.add_argument("--out", default=None,
                   help="results JSON (default benchmarks/results/quality_<data>.json)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine result files of runs over disjoint --configs (e.g. two "
                        "processes side by side) into --out, print the table, and exit")
    return p.parse_args(argv)


def merge(paths, out):
    """One result file from several runs of this script over disjoint configurations."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    rows = {r["name"]: r for part in parts for r in part["rows"]}
    result = dict(parts[0])
    result["rows"] = [rows[name] for name in CONFIGS if name in rows]
    result["command"] = [part["command"] for part in parts]
    result["merged_from"] = [str(p) for p in paths]
    result["complete"] = all(part["complete"] for part in parts)
    result["wall_seconds"] = max(part.get("wall_seconds", 0) for part in parts)
    result["settings"] = [part["settings"] for part in parts]
    result["settings_particles"] = parts[0]["settings"]["particles"]
    out.write_text(json.dumps(result, indent=2, default=str))
    return result


def add_samples(path, args):
    """Sample statistics for every row of an earlier result file, from its run folders."""
    from pyro_seqvae.cli import _load_run

    result = json.loads(Path(path).read_text())
    splits = load_dataset(result["data"])
    for row in result["rows"]:
        model, _, _, payload, _ = _load_run(row["run_dir"], "cpu")
        if payload["epoch"] != row["best_epoch"]:
            raise SystemExit(f"{row['run_dir']}: best checkpoint is from epoch "
                             f"{payload['epoch']}, the result file's row from epoch "
                             f"{row['best_epoch']}: not the same run")
        row["sample_stats"] = sample_summary(model, splits.test.sequences, num=args.samples,
                                             steps=args.sample_steps, seeds=args.sample_seeds)
        row["sample_stats"]["added_by"] = "python " + " ".join(shlex.quote(a)
                                                               for a in sys.argv)
        print_sample_summary(row["name"], row["sample_stats"])
    Path(path).write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.add_samples:
        result = add_samples(args.add_samples, args)
        print(markdown_table(result))
        print(f"\nwrote {args.add_samples}")
        return
    key = data_key(args.data)
    out = Path(args.out or f"benchmarks/results/quality_{key}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        result = merge(args.merge, out)
        print(markdown_table(result))
        print(f"\nwrote {out} (complete: {result['complete']})")
        return
    splits = load_dataset(args.data)
    result = {
        "benchmark": "quality", "data": args.data, "data_key": key,
        "data_sizes": {s.name: len(s) for s in splits},
        "data_steps": {s.name: s.num_steps for s in splits},
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "settings": vars(args),
        "budget": {"epochs": args.epochs, "max_minutes_per_config": args.max_minutes},
        "environment": environment(args.device),
        "published": PUBLISHED.get(key, {}), "published_note": PUBLISHED_NOTE,
        "rows": [], "complete": False,
    }
    start = time.perf_counter()
    for name in args.configs:
        result["rows"].append(run_config(name, splits, args))
        result["wall_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(result, indent=2, default=str))
    result["complete"] = True
    out.write_text(json.dumps(result, indent=2, default=str))
    print()
    print(markdown_table(result))
    print(f"\nwrote {out} ({result['wall_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
