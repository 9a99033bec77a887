"""Why do free-running samples collapse? Diagnostics of a trained run (issue 12).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sample_diagnostics.py RUN [--num 16] [--steps 128]
        [--seed 0] [--out benchmarks/results/sample_diagnostics_<name>.json]

Measures, for the run's model and guide on the test split:

1. ``ancestral``: ancestral sampling is conditioned on what the model is trained on: a copy of
   :meth:`LatentSequenceModel.sample` that records every ``z_t`` and the per-step log-densities
   it sampled from reproduces ``model.sample`` bit for bit, and ``model.forward`` run on the
   sampled ``x`` with ``z`` conditioned scores every site exactly as the sampler did
   (max abs difference of per-step log-probs);
2. ``reuse``: the model's log-probs in an SVI trace with and without the guide-state hand-over;
3. ``notes_per_step_along_sample``: mean notes per step at each step of the free-running samples;
4. ``latents``: the prior's free-running ``z_t`` against the guide's ``z_t`` on real data
   (norms, per-dimension mean/std, share of coordinates outside the guide's per-dimension range,
   prior scale vs guide scale);
5. ``expected_notes``: expected notes per step ``sum_d p(x_td = 1)`` under four regimes:
   guide z + data x (training), prior z + data x (teacher forcing of x), guide z + fed-back
   sampled x, prior z + fed-back x (free running);
6. ``sample_stats``: :func:`pyro_seqvae.infer.sample_stats.sample_statistics` against the test
   split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
from pyro import poutine  # noqa: E402

from pyro_seqvae.cli import _load_run  # noqa: E402
from pyro_seqvae.data.batching import pad_sequences  # noqa: E402
from pyro_seqvae.infer.sample_stats import sample_statistics  # noqa: E402


def record_sample(model, num, steps, *, x_fixed=None, z_fixed=None):
    """A copy of ``LatentSequenceModel.sample`` that records ``z``, log-densities, probs.

    ``x_fixed`` ``[N, T, D]``: teacher forcing (x_t is not sampled but taken from data);
    ``z_fixed`` ``[N, T, Z]``: the latents are taken from it instead of the prior.
    """
    like = model._param_like()
    x = like.new_zeros(num, steps, model.x_dim)
    carry = model.initial_carry(x)
    zs, lp_z, lp_x, probs = [], [], [], []
    for t in range(steps):
        pre = model.precompute(x[:, : t + 1], None)
        prior = model.prior(carry, pre[:, t])
        z_t = z_fixed[:, t] if z_fixed is not None else prior.sample()
        lp_z.append(prior.log_prob(z_t))
        record = model.emission_input(carry, z_t).unsqueeze(-2)
        em = model.emission_dist(pre[:, t: t + 1], record)
        x_t = x_fixed[:, t] if x_fixed is not None else em.sample()[:, 0]
        probs.append(em.base_dist.probs[:, 0] if hasattr(em, "base_dist") else None)
        lp_x.append(em.log_prob(x_t.unsqueeze(1))[:, 0])
        x[:, t] = x_t
        pre = model.precompute(x[:, : t + 1], None)
        carry = model.advance(carry, pre[:, t], z_t)
        zs.append(z_t)
    return (x, torch.stack(zs, 1), torch.stack(lp_z, 1), torch.stack(lp_x, 1),
            torch.stack(probs, 1) if probs[0] is not None else None)


def check_ancestral(model, num, steps, seed):
    pyro.set_rng_seed(seed)
    reference = model.sample(num, steps)
    pyro.set_rng_seed(seed)
    x, z, lp_z, lp_x, _ = record_sample(model, num, steps)
    mask = torch.ones(num, steps, dtype=torch.bool)
    data = {f"z_{t + 1}": z[:, t] for t in range(steps)}
    model.reuse_guide_states = False
    tr = poutine.trace(poutine.condition(model, data=data)).get_trace(x, mask)
    model.reuse_guide_states = True
    tr.compute_log_prob()
    fwd_z = torch.stack([tr.nodes[f"z_{t + 1}"]["log_prob"] for t in range(steps)], 1)
    em = tr.nodes["x"]["fn"]
    fwd_x = em.base_dist.base_dist.log_prob(x) if hasattr(em.base_dist, "base_dist") else None
    out = {"copy_reproduces_model_sample": bool(torch.equal(reference, x)),
           "max_abs_diff_log_p_z": float((fwd_z - lp_z).abs().max())}
    if fwd_x is not None:
        out["max_abs_diff_log_p_x"] = float((fwd_x - lp_x).abs().max())
    return out


def check_reuse(model, guide, x, mask, seed):
    logs = {}
    for reuse in (False, True):
        model.reuse_guide_states = reuse
        pyro.set_rng_seed(seed)
        gtr = poutine.trace(guide).get_trace(x, mask, 1.0)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x, mask, 1.0)
        mtr.compute_log_prob()
        logs[reuse] = torch.stack([s["log_prob_sum"] for n, s in mtr.nodes.items()
                                   if s["type"] == "sample"])
    model.reuse_guide_states = True
    return {"max_abs_diff_model_log_probs": float((logs[True] - logs[False]).abs().max())}


def guide_latents(model, guide, x, mask):
    """The guide's z samples and standard deviations on data: ``[B, T, Z]`` each (the scale of
    a Gaussian q, ``sqrt(p (1 - p))`` of the TSBN's Bernoulli units)."""
    tr = poutine.trace(guide).get_trace(x, mask, 1.0)
    T = x.shape[1]
    z = torch.stack([tr.nodes[f"z_{t + 1}"]["value"] for t in range(T)], 1)
    scale = torch.stack([tr.nodes[f"z_{t + 1}"]["fn"].base_dist.base_dist.stddev
                         for t in range(T)], 1)
    return z, scale


def prior_scales(model, x, z):
    """The prior's standard deviation at each step along a trajectory (x, z)."""
    pre = model.precompute(x, None)
    carry = model.initial_carry(x)
    scales = []
    for t in range(x.shape[1]):
        scales.append(model.prior(carry, pre[:, t]).base_dist.stddev)
        carry = model.advance(carry, pre[:, t], z[:, t])
    return torch.stack(scales, 1)


def describe(z, mask=None):
    flat = z[mask] if mask is not None else z.reshape(-1, z.shape[-1])
    return {"norm_mean": float(flat.norm(dim=-1).mean()),
            "norm_p95": float(flat.norm(dim=-1).quantile(0.95)),
            "abs_mean_of_dim_means": float(flat.mean(0).abs().mean()),
            "mean_dim_std": float(flat.std(0).mean()),
            "max_abs": float(flat.abs().max())}


def count_over_seeds(args, model, config, test):
    """Collapsed samples (a step of > 12 notes) and notes per step for several sampling seeds."""
    rows = []
    for seed in args.sample_seeds:
        st = sample_statistics(model, test.sequences, num_samples=args.num,
                               num_steps=args.steps, seed=seed)
        rows.append({"seed": seed,
                     "dense": round(args.num * st["samples"]["share_sequences_dense"]),
                     "notes_per_step_mean": st["samples"]["notes_per_step_mean"],
                     "pitch_tv": st["pitch_tv"]})
        print(rows[-1], flush=True)
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"sample_seeds_{Path(args.run).name}.json")
    out.write_text(json.dumps({"run": str(args.run), "config": config.to_dict(),
                               "num": args.num, "steps": args.steps, "rows": rows,
                               "dense_total": sum(r["dense"] for r in rows)}, indent=1))
    print("wrote", out)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--sample-seeds", type=int, nargs="+", default=None,
                   help="only count collapsed samples over these sampling seeds "
                        "(writes sample_seeds_<run>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, guide, config, payload, device = _load_run(args.run, "cpu")
    splits = config.load_data(progress=False)
    test = splits.test
    if args.sample_seeds:
        return count_over_seeds(args, model, config, test)
    result = {"run": str(args.run), "config": config.to_dict(), "num": args.num,
              "steps": args.steps, "seed": args.seed,
              "versions": {"torch": torch.__version__, "pyro": pyro.__version__,
                           "python": platform.python_version()}, "device": "cpu"}
    with torch.no_grad():
        if model.has_latents:
            result["ancestral"] = check_ancestral(model, 4, 24, args.seed)
        # test sequences cut to a common length, so all regimes see the same steps
        T = min(args.steps, 64)
        seqs = [s[:T] for s in test.sequences if s.shape[0] >= T][: args.num]
        x = torch.stack(seqs)
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        if model.has_latents:
            batch = pad_sequences(test.sequences[:8])
            result["reuse"] = check_reuse(model, guide, batch.x, batch.mask, args.seed)
        pyro.set_rng_seed(args.seed)
        if model.has_latents:
            xs, zs, _, _, probs_free = record_sample(model, args.num, args.steps)
        else:  # the RNN: no latents to record
            xs, probs_free = model.sample(args.num, args.steps), True
        nps = xs.sum(-1)
        result["notes_per_step_along_sample"] = [round(float(v), 3) for v in nps.mean(0)]
        result["share_dense_along_sample"] = [round(float(v), 3)
                                              for v in (nps > 12).double().mean(0)]
        if model.has_latents:
            zg, sg = guide_latents(model, guide, x, mask)
            lo, hi = zg.reshape(-1, zg.shape[-1]).min(0).values, \
                zg.reshape(-1, zg.shape[-1]).max(0).values
            outside = ((zs < lo) | (zs > hi)).double().mean(-1)  # [N, T]
            sp_data = prior_scales(model, x, zg)
            sp_free = prior_scales(model, xs, zs)
            result["latents"] = {
                "guide_on_data": describe(zg), "prior_free_running": describe(zs),
                "prior_free_first16": describe(zs[:, :16]),
                "prior_free_last32": describe(zs[:, -32:]),
                "share_outside_guide_range_along_sample":
                    [round(float(v), 3) for v in outside.mean(0)[::8]],
                "guide_scale_mean": float(sg.mean()),
                "prior_scale_mean_on_guide_path": float(sp_data.mean()),
                "prior_scale_mean_free_running": float(sp_free.mean()),
                "mean_sq_guide_minus_prior_loc_over_prior_var": None,
            }
            pyro.set_rng_seed(args.seed)
            _, _, _, _, p_guide_data = record_sample(model, x.shape[0], T, x_fixed=x,
                                                     z_fixed=zg)
            _, _, _, _, p_prior_data = record_sample(model, x.shape[0], T, x_fixed=x)
            _, _, _, _, p_guide_fb = record_sample(model, x.shape[0], T, z_fixed=zg)
            if p_guide_data is not None:
                result["expected_notes"] = {
                    "data_notes_per_step": float(x.sum(-1).mean()),
                    "guide_z_data_x": float(p_guide_data.sum(-1).mean()),
                    "prior_z_data_x": float(p_prior_data.sum(-1).mean()),
                    "prior_z_data_x_share_steps_over_12":
                        float((p_prior_data.sum(-1) > 12).double().mean()),
                    "guide_z_fed_back_x": float(p_guide_fb.sum(-1).mean()),
                    "prior_z_fed_back_x": float(probs_free.sum(-1).mean()),
                }
        if probs_free is not None:
            result["sample_stats"] = sample_statistics(model, test.sequences,
                                                       num_samples=args.num,
                                                       num_steps=args.steps, seed=args.seed)
            for part in ("samples", "reference"):  # the bass line: share of notes below C4
                hist = result["sample_stats"][part].pop("pitch_hist")
                result["sample_stats"][part]["share_notes_below_C4"] = sum(hist[: 60 - 21])
    name = Path(args.run).name
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"sample_diagnostics_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    short = {k: v for k, v in result.items()
             if k in ("ancestral", "reuse", "latents", "expected_notes")}
    print(json.dumps(short, indent=1))
    s = result.get("sample_stats")
    if s:
        a, r = s["samples"], s["reference"]
        print(f"samples: dense seqs {a['share_sequences_dense']:.3f} notes/step "
              f"{a['notes_per_step_mean']:.2f} (data {r['notes_per_step_mean']:.2f}) pitch_tv "
              f"{s['pitch_tv']:.3f} pc_tv {s['pitch_class_tv']:.3f} dur "
              f"{a['note_duration_mean']:.2f} (data {r['note_duration_mean']:.2f})")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
