"""Objectives, KL annealing and importance-sampled evaluation."""

from .annealing import LinearKLSchedule
from .elbo import ELBOS, JitELBOByLength, make_elbo
from .importance import (
    KHAT_THRESHOLD,
    ImportanceEstimate,
    chunked_log_weights,
    estimate_log_likelihood,
    log_importance_weights,
    pareto_khat,
)
from .sample_stats import compare_sample_statistics, piano_roll_statistics, sample_statistics

__all__ = ["ELBOS", "ImportanceEstimate", "JitELBOByLength", "KHAT_THRESHOLD",
           "LinearKLSchedule", "chunked_log_weights", "estimate_log_likelihood",
           "log_importance_weights", "make_elbo", "pareto_khat", "compare_sample_statistics",
           "piano_roll_statistics", "sample_statistics"]
