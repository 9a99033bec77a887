"""Shared helpers of the model/guide suite: tiny batches, the registry of pairs, trace ELBOs."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine

from pyro_seqvae.guides import GUIDES, make_guide
from pyro_seqvae.models import MODELS, make_model

X_DIM = 88

#: Tiny sizes, so that the whole suite runs in seconds on a 2-core CPU.
MODEL_KWARGS = {
    "rnn": {"rnn_dim": 5, "hidden_dim": 7},
    "vrnn": {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
    "storn": {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
    "srnn": {"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
    "dmm": {"z_dim": 3, "transition_dim": 5, "emission_dim": 5},
    "tsbn": {"z_dim": 3},
}
GUIDE_KWARGS = {
    "filter": {"hidden_dim": 7, "summary_dim": 5},
    "smooth": {"hidden_dim": 7, "summary_dim": 5},
    "none": {},
}


def _compatible(model_name: str, guide_name: str, residual: bool) -> bool:
    """Which pairings DESIGN.md allows, stated from the class flags (not from the guides' checks,
    which the incompatibility tests exercise separately)."""
    model_cls = MODELS[model_name]
    if guide_name == "none":
        return not model_cls.has_latents and not residual
    if not model_cls.has_latents:
        return False
    return not residual or model_cls.has_learned_prior_loc


#: Every compatible (model_name, guide_name, residual) triple of the registries.
ALL_PAIRS = [
    (m, g, r)
    for m in MODELS
    for g in GUIDES
    for r in (False, True)
    if _compatible(m, g, r)
]
#: The pairs with latent sites (everything but the RNN with the empty guide).
LATENT_PAIRS = [p for p in ALL_PAIRS if MODELS[p[0]].has_latents]


def pair_id(pair) -> str:
    """A readable pytest id: ``srnn-smooth-res``."""
    model_name, guide_name, residual = pair
    return f"{model_name}-{guide_name}" + ("-res" if residual else "")


def build_model(model_name: str, device=None, **overrides):
    model = make_model(model_name, x_dim=X_DIM, **{**MODEL_KWARGS[model_name], **overrides})
    return model.to(device) if device is not None else model


def build_pair(model_name: str, guide_name: str, residual: bool = False, device=None,
               model_kwargs=None, guide_kwargs=None):
    """Build a tiny model and its guide by registry names; returns ``(model, guide)``."""
    model = build_model(model_name, device, **(model_kwargs or {}))
    kwargs = dict(GUIDE_KWARGS[guide_name])
    if guide_name != "none":
        kwargs["residual"] = residual
    kwargs.update(guide_kwargs or {})
    guide = make_guide(guide_name, model, **kwargs)
    if device is not None:
        guide = guide.to(device)
    return model, guide


def tiny_batch(B: int = 4, T: int = 6, lengths=None, seed: int = 0, p: float = 0.15,
               device=None):
    """A binary zero-padded piano-roll batch.

    :returns: ``(x [B, T, 88] float, mask [B, T] bool)``; ``lengths`` defaults to all ``T``.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor([T] * B if lengths is None else lengths)
    assert lengths.shape == (B,) and int(lengths.max()) <= T and int(lengths.min()) >= 1
    mask = torch.arange(T).expand(B, T) < lengths.unsqueeze(1)
    x = (torch.rand(B, T, X_DIM, generator=g) < p).float() * mask.unsqueeze(-1)
    if device is not None:
        x, mask = x.to(device), mask.to(device)
    return x, mask


def assert_close(actual, expected, atol: float = 1e-5, rtol: float = 0.0, msg: str = ""):
    """``torch.testing.assert_close`` on anything tensor-like, with an absolute tolerance."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=msg or None)


def z_names(T: int):
    return [f"z_{t + 1}" for t in range(T)]


def trace_pair(model, guide, x, mask, beta=1.0, data=None):
    """Trace the guide, then run the model on the guide's latents.

    Without ``data`` the model is replayed on the guide trace (as ``Trace_ELBO`` does). With
    ``data`` (``{z_t: value}``) the guide is conditioned on those values, and the model on every
    latent value of the guide trace (Pyro refuses to replay an observed site).

    :returns: ``(model_trace, guide_trace)`` with ``log_prob`` computed on every sample site.
    """
    if data:
        guide_trace = poutine.trace(poutine.condition(guide, data=data)).get_trace(x, mask, beta)
        values = {name: guide_trace.nodes[name]["value"] for name in guide_trace.nodes
                  if name.startswith("z_")}
        model = poutine.condition(model, data=values)
    else:
        guide_trace = poutine.trace(guide).get_trace(x, mask, beta)
        model = poutine.replay(model, trace=guide_trace)
    model_trace = poutine.trace(model).get_trace(x, mask, beta)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def elbo_parts(model_trace, guide_trace):
    """Per-sequence ``(log p(x | z), log p(z), log q(z))`` from a replayed pair, each ``[..., B]``.

    Site log-probs already carry the ``beta`` scale of the traces they come from.
    """
    log_px = model_trace.nodes["x"]["log_prob"]
    log_pz = sum(site["log_prob"] for name, site in model_trace.nodes.items()
                 if site["type"] == "sample" and name.startswith("z_"))
    log_qz = sum(site["log_prob"] for name, site in guide_trace.nodes.items()
                 if site["type"] == "sample" and name.startswith("z_"))
    zero = torch.zeros_like(log_px)
    return log_px, zero + log_pz, zero + log_qz


def per_sequence_elbo(model, guide, x, mask, beta=1.0, data=None):
    """``log p(x, z) - log q(z)`` per sequence, ``[B]``, on one (possibly conditioned) sample."""
    log_px, log_pz, log_qz = elbo_parts(*trace_pair(model, guide, x, mask, beta, data))
    return log_px + log_pz - log_qz


def latent_site_names(trace):
    """Names of the unobserved sample sites of a trace, in order (plates left out)."""
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and type(site["fn"]).__name__ != "_Subsample"]


def sample_site_values(trace, prefix="z_"):
    return {name: site["value"] for name, site in trace.nodes.items()
            if site["type"] == "sample" and name.startswith(prefix)}


def clear():
    pyro.clear_param_store()
