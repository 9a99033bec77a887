"""Objectives, KL annealing and importance-sampled evaluation."""

from .annealing import LinearKLSchedule
from .downstream import DownstreamCostELBO
from .elbo import ELBOS, JitELBOByLength, make_elbo
from .importance import (
    KHAT_THRESHOLD,
    ImportanceEstimate,
    chunked_log_weights,
    estimate_log_likelihood,
    log_importance_weights,
    pareto_khat,
)

__all__ = ["DownstreamCostELBO", "ELBOS", "ImportanceEstimate", "JitELBOByLength", "KHAT_THRESHOLD",
           "LinearKLSchedule", "chunked_log_weights", "estimate_log_likelihood",
           "log_importance_weights", "make_elbo", "pareto_khat"]
