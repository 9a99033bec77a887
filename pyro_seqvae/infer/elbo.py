"""The one place the training objective is chosen: :func:`make_elbo`."""

from __future__ import annotations

import contextlib
import warnings

import torch
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from ..errors import ConfigError
from .direct_elbo import DirectELBO, supports_direct_elbo
from .downstream import DownstreamCostELBO
from .rws import ReweightedWakeSleep, supports_direct_rws
from .smc_objectives import FIVO, NASMC

#: Objective names accepted by :func:`make_elbo` and the CLI's ``--elbo``.
#: ``fivo`` and ``nasmc`` are SMC objectives (:mod:`pyro_seqvae.infer.smc_objectives`).
#: ``rws`` is reweighted wake-sleep (:mod:`pyro_seqvae.infer.rws`).
ELBOS = ("trace", "jit", "meanfield", "iwae", "fivo", "nasmc", "downstream", "tracegraph",
         "rws")
#: How ``trace``, ``meanfield`` and ``rws`` are computed (:func:`make_elbo`'s ``path``): ``pyro``
#: (on Pyro's traces), ``direct`` (on the step protocol without traces, the same loss and
#: gradients, faster: :class:`~pyro_seqvae.infer.direct_elbo.DirectELBO`,
#: :func:`~pyro_seqvae.infer.rws.direct_log_densities`) or ``auto`` (direct where the pair
#: allows it, Pyro's otherwise).
ELBO_PATHS = ("pyro", "direct", "auto")
#: The objectives that have a direct path.
DIRECT_ELBOS = ("trace", "meanfield", "rws")
#: What each objective's direct path needs of the pair (for messages; :func:`supports_direct_path`).
_GAUSSIAN_PAIR = "a library model with Gaussian latents and its guide, without a baseline"
DIRECT_PATH_NEEDS = {"trace": _GAUSSIAN_PAIR, "meanfield": _GAUSSIAN_PAIR,
                     "rws": "a library model whose carry is z_(t-1) alone (TSBN, SRNN, DMM) "
                            "and its guide"}


def supports_direct_path(kind: str, model, guide) -> bool:
    """Whether objective ``kind`` (one of :data:`DIRECT_ELBOS`) has a direct path for this
    model and guide."""
    return (supports_direct_rws(model, guide) if kind == "rws"
            else supports_direct_elbo(model, guide))


@contextlib.contextmanager
def _tracing_warnings_ignored():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch >= 2.9 deprecates torch.jit.trace, which JitTrace_ELBO is built on
        warnings.filterwarnings("ignore", "`torch.jit.trace` is", DeprecationWarning)
        yield


class JitELBOByLength(ELBO):
    """``JitTrace_ELBO`` with one compiled trace per padded sequence length.

    Pyro's JIT cache keys compiled functions by the number of arguments, not by tensor shapes,
    so one instance silently reuses the trace of the first length it saw (STYLE.md, "Traps").
    This wrapper keeps one ``JitTrace_ELBO`` per ``x.shape[1]``; pad batches to a multiple
    (``iterate_batches(..., pad_to_multiple=8)``, the ``TrainConfig`` default under JIT) to keep
    the number of compiles small. Pass ``beta`` as a tensor. TorchScript's graph optimiser is
    switched off: with it, compiling a T=40 trace took over 3 minutes on a 2-core CPU.

    It has ELBO's ``loss`` and ``loss_and_grads``, so it goes straight into ``SVI``.
    """

    def __init__(self, **kwargs):
        self.kwargs = dict(kwargs, ignore_jit_warnings=True)
        # an ELBO subclass, so that SVI calls loss_and_grads (it treats other objects as a
        # plain loss callable)
        super().__init__(**self.kwargs)
        self._by_length = {}
        torch._C._set_graph_executor_optimize(False)

    def _elbo(self, x) -> JitTrace_ELBO:
        T = int(x.shape[1])
        if T not in self._by_length:
            self._by_length[T] = JitTrace_ELBO(**self.kwargs)
        return self._by_length[T]

    def _get_trace(self, model, guide, args, kwargs):
        return self._elbo(args[0])._get_trace(model, guide, args, kwargs)

    @staticmethod
    def _check_beta(args, kwargs):
        beta = args[2] if len(args) > 2 else kwargs.get("beta", 1.0)
        if not isinstance(beta, torch.Tensor):
            raise ConfigError("under JIT, beta must be a tensor (a float breaks the trace)")

    def loss(self, model, guide, x, mask, *args, **kwargs):
        self._check_beta((x, mask) + args, kwargs)
        with _tracing_warnings_ignored():
            return self._elbo(x).loss(model, guide, x, mask, *args, **kwargs)

    def loss_and_grads(self, model, guide, x, mask, *args, **kwargs):
        self._check_beta((x, mask) + args, kwargs)
        with _tracing_warnings_ignored():
            return self._elbo(x).loss_and_grads(model, guide, x, mask, *args, **kwargs)


def make_elbo(kind: str = "trace", *, num_particles: int = 1, discount: float = 1.0,
              path: str = "pyro"):
    """Build the training objective.

    - ``trace``: ``Trace_ELBO``, the reparameterised single- or multi-sample ELBO;
    - ``jit``: ``JitTrace_ELBO``, one compiled trace per padded length (:class:`JitELBOByLength`);
    - ``meanfield``: ``TraceMeanField_ELBO``, analytic ``KL(q(z_t|.) || p(z_t|.))`` per step;
    - ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound with ``num_particles``;
    - ``fivo``: the SMC bound ``log Z-hat`` with ``num_particles`` particles (:class:`FIVO`);
    - ``nasmc``: neural adaptive SMC: proposal by the inclusive KL, model by ``log Z-hat``
      (:class:`NASMC`). Both temper the latent part of the weights by ``beta`` (KL annealing).
    - ``downstream``: :class:`~pyro_seqvae.infer.downstream.DownstreamCostELBO`, score-function
      gradients with each latent's downstream cost and the guide's baselines (binary latents:
      TSBN), in time linear in T, with the analytic KL of each step (``analytic_kl=True``: the
      model's gradient variance 0.05-0.08 times that of the sampled terms on trained TSBNs);
    - ``tracegraph``: Pyro's ``TraceGraph_ELBO``, the same gradients found by provenance
      tracking (about 15 times slower on a TSBN);
    - ``rws``: reweighted wake-sleep with ``num_particles >= 2``
      (:class:`~pyro_seqvae.infer.rws.ReweightedWakeSleep`): the model on the IWAE gradient,
      the guide on the inclusive-KL (wake-phi) gradient, no score function.

    Particles are vectorised in a plate at ``dim=-2`` (the models use one plate at ``dim=-1``).

    :param str kind: one of :data:`ELBOS`.
    :param int num_particles: samples per step (``iwae`` needs at least 2 to differ from trace).
    :param float discount: ``downstream`` only: the learning signal's weight per future step.
    :param str path: ``trace``, ``meanfield`` and ``rws`` only: one of :data:`ELBO_PATHS`.
        ``direct`` and ``auto`` give a :class:`~pyro_seqvae.infer.direct_elbo.DirectELBO`
        (``rws``: RWS's direct densities), the same loss and gradients as on Pyro's traces
        without them; under ``auto`` pairs outside the step protocol (``trace``/``meanfield``:
        binary latents; ``rws``: a z-dependent recurrence such as the VRNN's; models written
        as free Pyro programs) use Pyro's traces.
    :rtype: pyro.infer.ELBO or JitELBOByLength
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}")
    if path not in ELBO_PATHS:
        raise ConfigError(f"elbo path must be one of {list(ELBO_PATHS)}, got {path!r}")
    if path != "pyro" and kind not in DIRECT_ELBOS:
        raise ConfigError(f"elbo path {path!r} applies to the objectives {list(DIRECT_ELBOS)} "
                          f"only, got elbo {kind!r}; use path 'pyro'")
    if kind == "rws":
        return ReweightedWakeSleep(num_particles, path=path)
    common = dict(num_particles=num_particles, max_plate_nesting=1,
                  vectorize_particles=num_particles > 1)
    if path != "pyro":
        fallback = make_elbo(kind, num_particles=num_particles) if path == "auto" else None
        return DirectELBO(analytic_kl=kind == "meanfield", num_particles=num_particles,
                          fallback=fallback)
    if kind == "trace":
        return Trace_ELBO(**common)
    if kind == "jit":
        return JitELBOByLength(**common)
    if kind == "meanfield":
        return TraceMeanField_ELBO(**common)
    if kind == "downstream":
        return DownstreamCostELBO(analytic_kl=True, discount=discount, **common)
    if kind == "tracegraph":
        return TraceGraph_ELBO(**common)
    if kind == "iwae":
        return RenyiELBO(alpha=0.0, **common)
    if kind == "fivo":
        return FIVO(num_particles)
    if kind == "nasmc":
        return NASMC(num_particles)
    raise ConfigError(f"unknown elbo {kind!r}; expected one of {list(ELBOS)}")


__all__ = ["DIRECT_ELBOS", "DIRECT_PATH_NEEDS", "ELBO", "ELBOS", "ELBO_PATHS", "JitELBOByLength",
           "make_elbo", "supports_direct_path"]
