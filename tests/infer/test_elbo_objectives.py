"""Objectives: make_elbo's names, the KL schedule, and JIT with one compiled trace per length."""

import math

import pyro
import pytest
import torch
from pyro.infer import JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_seqvae.data import Splits
from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides import make_guide
from pyro_seqvae.infer import ELBOS, JitELBOByLength, LinearKLSchedule, make_elbo
from pyro_seqvae.models import make_model
from pyro_seqvae.training import LAST, TrainConfig, Trainer, load_checkpoint


def tiny_pair():
    model = make_model("srnn", x_dim=88, z_dim=3, rnn_dim=5, hidden_dim=7)
    return model, make_guide("smooth", model, hidden_dim=7, summary_dim=5, residual=True)


def binary_batch(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, 88, generator=g) < 0.15).float(), torch.ones(B, T, dtype=torch.bool)


# ---- LinearKLSchedule --------------------------------------------------------------------------
def test_linear_schedule_values():
    schedule = LinearKLSchedule(0.2, 0.1)
    assert [schedule(s) for s in (0, 1, 4)] == pytest.approx([0.2, 0.3, 0.6])
    assert schedule(8) == 1.0 and schedule(10_000) == 1.0
    default = LinearKLSchedule()
    assert (default.start, default.increment, default.end) == (0.2, 3e-4, 1.0)
    assert default(2666) < 1.0 == default(2667)
    assert LinearKLSchedule(1.0, 0.0)(123) == 1.0  # annealing off


@pytest.mark.parametrize("start, increment, match", [
    (0.0, 0.1, "start"), (-0.5, 0.1, "start"), (1.5, 0.1, "start"), (0.2, -1e-4, "increment"),
])
def test_invalid_schedule(start, increment, match):
    with pytest.raises(ConfigError, match=match):
        LinearKLSchedule(start, increment)


# ---- make_elbo -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, cls", [("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO),
                                       ("iwae", RenyiELBO), ("jit", JitELBOByLength)])
def test_make_elbo_names(kind, cls):
    elbo = make_elbo(kind, num_particles=3)
    assert isinstance(elbo, cls)
    assert kind in ELBOS
    if kind != "jit":
        assert elbo.num_particles == 3 and elbo.vectorize_particles
    if kind == "iwae":
        assert elbo.alpha == 0.0


def test_single_particle_is_not_vectorised():
    assert not make_elbo("trace").vectorize_particles


@pytest.mark.parametrize("kwargs, match", [({"kind": "elbo2000"}, "elbo2000"),
                                           ({"kind": "trace", "num_particles": 0}, "num_particles"),
                                           ({"kind": "trace", "num_particles": 2.0},
                                            "num_particles")])
def test_make_elbo_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_elbo(**kwargs)


def test_every_objective_gives_a_finite_loss():
    model, guide = tiny_pair()
    x, mask = binary_batch(2, 4, seed=0)
    for kind in ("trace", "meanfield", "iwae"):
        loss = make_elbo(kind, num_particles=2).loss(model, guide, x, mask)
        assert math.isfinite(loss), kind


# ---- JIT -----------------------------------------------------------------------------------------
def test_jit_refuses_a_float_beta():
    model, guide = tiny_pair()
    x, mask = binary_batch(2, 4, seed=0)
    elbo = make_elbo("jit")
    with pytest.raises(ConfigError, match="beta must be a tensor"):
        elbo.loss(model, guide, x, mask, 0.5)
    with pytest.raises(ConfigError, match="beta must be a tensor"):
        elbo.loss_and_grads(model, guide, x, mask, beta=0.5)


def test_jit_keeps_one_compiled_trace_per_length():
    # JitTrace_ELBO alone would reuse the T=5 trace for T=8 and score only 5 of 8 steps
    # (STYLE.md "Traps"). Once compiled, a trace draws the same numbers as the eager ELBO for
    # the same seed, so the two losses agree to float precision. (JitTrace_ELBO.loss is
    # Trace_ELBO's eager loss; only loss_and_grads runs the compiled trace.)
    model, guide = tiny_pair()
    elbo = JitELBOByLength(max_plate_nesting=1)
    beta = torch.tensor(1.0)
    batches = {T: binary_batch(3, T, seed=T) for T in (5, 8)}
    for x, mask in batches.values():
        elbo.loss_and_grads(model, guide, x, mask, beta)  # compile
    assert sorted(elbo._by_length) == [5, 8]
    assert all(isinstance(e, JitTrace_ELBO) for e in elbo._by_length.values())
    for T in (8, 5):
        x, mask = batches[T]
        pyro.set_rng_seed(T)
        jit_loss = elbo.loss_and_grads(model, guide, x, mask, beta)
        pyro.set_rng_seed(T)
        eager_loss = Trace_ELBO(max_plate_nesting=1).loss(model, guide, x, mask, beta)
        assert jit_loss == pytest.approx(eager_loss, rel=1e-4), T


def test_jit_training_epoch(tmp_path):
    g = torch.Generator().manual_seed(0)
    lengths = {"train": [5, 7, 9, 6], "valid": [5, 8], "test": [6]}
    splits = Splits.from_lists({name: [(torch.rand(T, 88, generator=g) < 0.1).float()
                                       for T in lens] for name, lens in lengths.items()},
                               source="synthetic")
    config = TrainConfig(data="synthetic", model="srnn", guide="smooth", residual=True,
                         model_kwargs={"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
                         guide_kwargs={"hidden_dim": 7, "summary_dim": 5},
                         elbo="jit", pad_to_multiple=16, epochs=1, batch_size=2)
    model, guide = config.build(88)
    trainer = Trainer(model, guide, config, out_dir=tmp_path, progress=False)
    history = trainer.fit(splits)
    assert len(history) == 1 and history[0]["step"] == 2
    assert math.isfinite(history[0]["train_objective_per_step"])
    assert math.isfinite(history[0]["valid_elbo_per_step"])
    assert list(trainer.elbo._by_length) == [16]  # every batch padded to one length
    assert trainer.svi.loss_and_grads == trainer.elbo.loss_and_grads  # SVI sees an ELBO
    assert torch.is_tensor(trainer._beta())
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 1
