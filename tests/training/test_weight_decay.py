"""TrainConfig.weight_decay: ClippedAdam's coupled L2 penalty, its validation and resume."""

import json
import math

import pytest
from test_trainer_resume import fresh_trainer, states, tiny_config, tiny_splits

from pyro_seqvae.errors import ConfigError
from pyro_seqvae.training import LAST, TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("value", [-1e-3, math.inf, math.nan, True])
def test_a_bad_weight_decay_is_a_config_error(value):
    with pytest.raises(ConfigError, match="weight_decay must be a finite number >= 0"):
        TrainConfig(weight_decay=value)


def test_weight_decay_shrinks_the_parameters(tmp_path):
    """One epoch from the same seed, with and without the penalty: at 1e4 ``weight_decay * p``
    dominates the gradient, so every tensor of the model and the guide ends closer to zero
    than in the run without it (ClippedAdam's coupled L2)."""
    splits = tiny_splits()
    ends = {}
    for wd in (0.0, 1e4):
        config = tiny_config(epochs=1, weight_decay=wd, lr=1e-2)
        trainer = fresh_trainer(config, tmp_path / str(wd))
        trainer.fit(splits)
        ends[wd] = states(trainer)
    for plain, decayed in zip(ends[0.0], ends[1e4]):
        for key in plain:
            assert float(decayed[key].norm()) < float(plain[key].norm()), key


def test_a_resumed_run_may_change_its_weight_decay(tmp_path):
    splits = tiny_splits()
    first = fresh_trainer(tiny_config(epochs=1), tmp_path / "a")
    first.fit(splits)
    second = fresh_trainer(tiny_config(epochs=2, weight_decay=0.5), tmp_path / "a")
    history = second.fit(splits, resume=tmp_path / "a" / LAST)
    assert history[-1]["epoch"] == 2
    groups = [g for state in second.optim.get_state().values() for g in state["param_groups"]]
    assert groups and all(g["weight_decay"] == 0.5 for g in groups)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["sessions"][-1]["changes"]["weight_decay"] == [0.0, 0.5]
