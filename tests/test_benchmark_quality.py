"""The quality benchmark's sample statistics count per sampling seed and add up exactly.

``benchmarks/quality.py`` reports, for each configuration, how many free-running samples have a
step of more than 12 notes at the first sampling seed and over all seeds (issue 12). A stand-in
model whose samples depend only on the seed makes every figure known by hand.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality import markdown_table, sample_summary  # noqa: E402


class SeededRolls(torch.nn.Module):
    """Samples with 4 notes at every step; at seed s, the first s samples get one step of 13."""

    def sample(self, num, steps):
        seed = torch.initial_seed()  # sample_statistics seeds torch through pyro.set_rng_seed
        x = torch.zeros(num, steps, 88)
        x[:, :, 40:44] = 1.0
        x[:seed, steps - 1, 50:59] = 1.0  # 4 + 9 = 13 notes at the last step
        return x


def test_sample_summary_counts_dense_samples_per_seed_and_in_total():
    reference = [torch.zeros(5, 88), torch.zeros(3, 88)]
    reference[0][:, 40:43] = 1.0  # 3 notes per step
    reference[1][:, 40:45] = 1.0  # 5 notes per step: 3 * 5 + 5 * 3 = 30 notes in 8 steps
    model = SeededRolls()
    s = sample_summary(model, reference, num=4, steps=10, seeds=[0, 1, 2, 3])
    assert [r["dense"] for r in s["per_seed"]] == [0, 1, 2, 3]
    assert s["dense_first_seed"] == 0 and s["dense_total"] == 6 and s["num_total"] == 16
    assert s["reference_notes_per_step"] == pytest.approx(30 / 8)
    # seed s: 40 steps with 4 notes, plus 9 notes on each of s steps
    means = [(160 + 9 * seed) / 40 for seed in range(4)]
    assert [r["notes_per_step_mean"] for r in s["per_seed"]] == pytest.approx(means)
    assert s["notes_per_step_all_seeds"] == pytest.approx(sum(means) / 4)
    assert s["notes_per_step_ratio"] == pytest.approx(sum(means) / 4 / (30 / 8))
    assert s["first_seed"]["samples"]["notes_per_step_max"] == 4
    assert s["per_seed"][3]["notes_per_step_max"] == 13


def test_markdown_table_shows_the_sample_columns():
    row = {"name": "dmm", "label": "DMM", "config": {"model": "dmm"}, "epochs_run": 3,
           "best_epoch": 2, "train_seconds": 60.0, "best_valid_elbo_per_step": -9.0,
           "test": {"elbo_per_step": -9.1, "elbo_stderr_per_step": 0.01,
                    "is_log_likelihood_per_step": -9.0, "is_stderr_per_step": 0.01,
                    "khat_max": 0.9, "khat_over_0_7": 1, "num_sequences": 2},
           "sample_stats": {"dense_first_seed": 1, "num_samples": 16, "dense_total": 3,
                            "num_total": 64, "notes_per_step_all_seeds": 4.0,
                            "reference_notes_per_step": 3.95}}
    table = markdown_table({"data_key": "jsb", "settings": {"particles": 10}, "rows": [row]})
    assert "| 1/16; 3/64 | 4.00 (data 3.95) |" in table
