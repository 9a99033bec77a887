"""Objectives, KL annealing and importance-sampled evaluation."""

from .annealing import LinearKLSchedule
from .elbo import ELBOS, JitELBOByLength, make_elbo
from .evaluation import elbo_per_step, evaluate_split
from .importance import (
    KHAT_THRESHOLD,
    ImportanceEstimate,
    chunked_log_weights,
    estimate_log_likelihood,
    log_importance_weights,
    pareto_khat,
)

__all__ = ["ELBOS", "ImportanceEstimate", "JitELBOByLength", "KHAT_THRESHOLD",
           "LinearKLSchedule", "chunked_log_weights", "elbo_per_step", "estimate_log_likelihood",
           "evaluate_split", "log_importance_weights", "make_elbo", "pareto_khat"]
