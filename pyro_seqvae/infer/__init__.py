"""Objectives, KL annealing, importance-sampled and SMC evaluation."""

from .annealing import LinearKLSchedule
from .direct_elbo import DirectELBO
from .downstream import DownstreamCostELBO
from .elbo import ELBOS, JitELBOByLength, make_elbo
from .evaluation import elbo_per_step, evaluate_split, smc_per_step
from .importance import (
    KHAT_THRESHOLD,
    ImportanceEstimate,
    chunked_log_weights,
    estimate_log_likelihood,
    log_importance_weights,
    pareto_khat,
)
from .rws import ReweightedWakeSleep
from .sample_stats import compare_sample_statistics, piano_roll_statistics, sample_statistics
from .smc import SMCEstimate, SMCResult, estimate_smc_log_likelihood, run_smc
from .smc_objectives import FIVO, NASMC

__all__ = ["DirectELBO", "DownstreamCostELBO", "ELBOS", "FIVO", "ImportanceEstimate",
           "JitELBOByLength", "KHAT_THRESHOLD", "LinearKLSchedule", "NASMC", "ReweightedWakeSleep",
           "SMCEstimate", "SMCResult",
           "chunked_log_weights", "compare_sample_statistics", "elbo_per_step",
           "estimate_log_likelihood", "estimate_smc_log_likelihood", "evaluate_split",
           "log_importance_weights", "make_elbo", "pareto_khat", "piano_roll_statistics",
           "run_smc", "sample_statistics", "smc_per_step"]
