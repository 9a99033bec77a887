"""What limits a trained TSBN: is it more than a linear autoregression, do its latents carry data?

Two measurements, recorded in one JSON file:

1. **The same model without latents**: ``p(x_t | x_{t-1}) = Bernoulli(sigmoid(W4 x_{t-1} + c))``,
   the TSBN's direct connection alone, fitted by L-BFGS on the training split (full batch,
   L2 penalty ``--l2`` on ``W4``, per step), and its exact log-likelihood per step on the
   validation and test splits. A TSBN whose ELBO is at this figure has not used its latents.
2. **Latent use** of each trained run given (``RUN`` folders of ``pyro-seqvae train --model
   tsbn``), on the test split with one sample from the guide (seed 0): the reconstruction term
   ``E_q log p(x | z)`` and the sampled ``log q - log p`` of the latents per step, the analytic
   ``KL(q(z_t | .) || p(z_t | .))`` per unit averaged over steps (units above ``0.01`` nats per
   step count as *used*), the entropy of ``q`` per unit, and how much ``q``'s probabilities
   vary from step to step (their standard deviation over all steps, per unit): a unit whose
   ``q`` hardly varies carries no information about the data.
3. With ``--variance N``: the **gradient variance** of :class:`~pyro_seqvae.infer.
   DownstreamCostELBO` at the run's parameters, on one batch of 20 training chorales (seed 1),
   with the sampled latent terms, with the analytic KL (``analytic_kl=True``) and with the
   discounted signals (``discount`` 0.9 and 0.5): ``N`` single-sample estimates each, after
   30 that warm up a decaying-average baseline on that batch (an optimistic baseline, the same
   for all); the summed variance of the guide's and of the model's gradient elements.

Example (the figures quoted in the README)::

    python benchmarks/tsbn_diagnostics.py runs/tsbn-tuned --variance 40 --threads 1 \\
        --out benchmarks/results/tsbn_diagnostics.json
"""

from __future__ import annotations

import argparse
import shlex
import sys

import pyro
import torch
from pyro import poutine
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from pyro_seqvae.data import load_dataset, pad_sequences
from pyro_seqvae.models.tsbn import LayeredBernoulli
from pyro_seqvae.training import TrainConfig, load_checkpoint
from pyro_seqvae.training.checkpoint import restore_modules
from pyro_seqvae.training.runlog import environment, write_json


def _pairs(split):
    """``(x_{t-1}, x_t)`` over all steps of a split, ``x_0 = 0``: two ``[N, D]`` tensors."""
    inputs, targets = [], []
    for seq in split.sequences:
        seq = torch.as_tensor(seq, dtype=torch.float32)
        inputs.append(torch.cat([torch.zeros(1, seq.shape[1]), seq[:-1]]))
        targets.append(seq)
    return torch.cat(inputs), torch.cat(targets)


def autoregression(splits, l2: float) -> dict:
    """Fit ``sigmoid(W4 x_{t-1} + c)`` on the training split; log-likelihood per step."""
    x_train, y_train = _pairs(splits.train)
    torch.manual_seed(0)
    linear = torch.nn.Linear(x_train.shape[1], y_train.shape[1])
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=500,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = bce(linear(x_train), y_train, reduction="sum") / len(x_train) \
            + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    out = {"l2": l2}
    with torch.no_grad():
        for name in ("train", "valid", "test"):
            x, y = _pairs(getattr(splits, name))
            out[f"{name}_log_lik_per_step"] = -float(bce(linear(x), y, reduction="sum")) / len(x)
    return out


def _bernoulli_probs(site):
    """The unit probabilities of a latent site (a deep TSBN's prior: given the layer above)."""
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if isinstance(fn, LayeredBernoulli):
        return torch.sigmoid(fn._full_logits(site["value"]))
    return fn.probs


@torch.no_grad()
def latent_use(run, splits, threshold: float) -> dict:
    """Latent statistics of a trained TSBN run on the test split (see the module docstring)."""
    payload = load_checkpoint(run)
    config = TrainConfig.from_dict(payload["config"])
    pyro.clear_param_store()
    model_config, guide_config = payload["model_config"], payload["guide_config"]
    model, guide = config.build(model_config["x_dim"], model_config=model_config,
                                guide_config=guide_config)
    restore_modules(payload, model, guide)
    model.eval()
    guide.eval()
    batch = pad_sequences([torch.as_tensor(s, dtype=torch.float32)
                           for s in splits.test.sequences])
    x, mask = batch.x, batch.mask
    steps = float(mask.sum())
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, mask)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    names = [f"z_{t + 1}" for t in range(x.shape[1])]
    log_ratio = sum(float((guide_trace.nodes[n]["log_prob"] - model_trace.nodes[n]["log_prob"])
                          .sum()) for n in names)
    reconstruction = float(model_trace.nodes["x"]["log_prob"].sum())
    q = torch.stack([_bernoulli_probs(guide_trace.nodes[n]) for n in names], 1)[mask]
    p = torch.stack([_bernoulli_probs(model_trace.nodes[n]) for n in names], 1)[mask]
    q, p = q.clamp(1e-7, 1 - 1e-7), p.clamp(1e-7, 1 - 1e-7)
    kl = (q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())).mean(0)
    entropy = -(q * q.log() + (1 - q) * (1 - q).log()).mean(0)
    spread = q.std(0)
    return {
        "run": str(run), "epoch": payload["epoch"], "units": int(q.shape[-1]),
        "reconstruction_per_step": reconstruction / steps,
        "latent_log_ratio_per_step": log_ratio / steps,
        "elbo_per_step_one_sample": (reconstruction - log_ratio) / steps,
        "kl_per_step_analytic": float(kl.sum()),
        "units_used": int((kl > threshold).sum()), "used_threshold_nats": threshold,
        "kl_per_unit_top10": [round(float(v), 4) for v in kl.sort(descending=True).values[:10]],
        "q_entropy_per_unit_mean": float(entropy.mean()),
        "q_step_to_step_sd_per_unit_median": float(spread.median()),
        "q_step_to_step_sd_per_unit_max": float(spread.max()),
        "emission_weight_norm_per_unit_median": float(
            model.decoder_z.weight.norm(dim=0).median()),
        "direct_weight_norm": float(model.decoder_x.weight.norm()),
    }


def gradient_variance(run, splits, repeats: int) -> dict:
    """Summed gradient variances of DownstreamCostELBO variants (see the module docstring)."""
    from pyro_seqvae.data import iterate_batches
    from pyro_seqvae.infer import DownstreamCostELBO

    payload = load_checkpoint(run)
    config = TrainConfig.from_dict(payload["config"])
    model_config = payload["model_config"]
    guide_config = {**payload["guide_config"], "baseline": "decaying"}
    pyro.clear_param_store()
    model, guide = config.build(model_config["x_dim"], model_config=model_config,
                                guide_config=guide_config)
    model.load_state_dict(payload["model_state"])
    guide.load_state_dict(payload["guide_state"], strict=False)  # an NVIL run's extra buffers
    batch = next(iter(iterate_batches(splits.train, 20, shuffle=True, seed=1)))
    guide_params, model_params = list(guide.parameters()), list(model.parameters())

    def estimates(elbo, n):
        rows = []
        for _ in range(n):
            for p in guide_params + model_params:
                p.grad = None
            elbo.loss_and_grads(model, guide, batch.x, batch.mask)
            rows.append([torch.cat([p.grad.reshape(-1) for p in ps])
                         for ps in (guide_params, model_params)])
        return [torch.stack([r[i] for r in rows]).var(0).sum().item() for i in (0, 1)]

    out = {"run": str(run), "repeats": repeats, "steps": int(batch.mask.sum())}
    variants = {"sampled": dict(analytic_kl=False), "analytic_kl": dict(analytic_kl=True),
                "analytic_kl+discount0.9": dict(analytic_kl=True, discount=0.9),
                "analytic_kl+discount0.5": dict(analytic_kl=True, discount=0.5)}
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):
        for label, kwargs in variants.items():
            pyro.clear_param_store()
            elbo = DownstreamCostELBO(**kwargs)
            estimates(elbo, 30)  # warm up the decaying averages
            guide_var, model_var = estimates(elbo, repeats)
            out[label] = {"guide_variance": guide_var, "model_variance": model_var}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="trained TSBN run folders or checkpoints")
    parser.add_argument("--l2", type=float, nargs="+", default=[0.0, 1e-4, 1e-3])
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--variance", type=int, default=0,
                        help="gradient estimates per estimator (0: no variance measurement)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_dataset("jsb", progress=False)
    result = {"command": "python benchmarks/tsbn_diagnostics.py " + shlex.join(
                  sys.argv[1:] if argv is None else argv),
              "autoregression": [autoregression(splits, l2) for l2 in args.l2],
              "runs": [latent_use(run, splits, args.threshold) for run in args.runs],
              "gradient_variance": [gradient_variance(run, splits, args.variance)
                                    for run in args.runs] if args.variance else [],
              "environment": environment()}
    for row in result["autoregression"]:
        print(f"W4 x_(t-1) + c alone, l2 {row['l2']:g}: valid {row['valid_log_lik_per_step']:.3f}"
              f", test {row['test_log_lik_per_step']:.3f} nats per step")
    for row in result["runs"]:
        print(f"{row['run']} (epoch {row['epoch']}): reconstruction "
              f"{row['reconstruction_per_step']:.3f}, KL {row['kl_per_step_analytic']:.3f} "
              f"nats per step; {row['units_used']} of {row['units']} units used; q's "
              f"step-to-step sd (median unit) {row['q_step_to_step_sd_per_unit_median']:.3f}")
    for row in result["gradient_variance"]:
        base = row["sampled"]
        for label in ("analytic_kl", "analytic_kl+discount0.9", "analytic_kl+discount0.5"):
            guide = row[label]["guide_variance"] / base["guide_variance"]
            model = row[label]["model_variance"] / base["model_variance"]
            print(f"{label}: guide variance x{guide:.3g}, model variance x{model:.3g} "
                  "(against the sampled latent terms)")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
