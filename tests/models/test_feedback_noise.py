"""The training-only corruption of the fed-back notes ``u_t = x_{t-1}`` (issue 12)."""

from __future__ import annotations

import pyro
import pytest
import torch
from common import MODEL_KWARGS, X_DIM, tiny_batch
from pyro import poutine

from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides import make_guide
from pyro_seqvae.models import make_model
from pyro_seqvae.models.feedback_noise import corrupt_feedback


def test_rates_match_and_dropout_only_removes_notes():
    torch.manual_seed(0)
    u = (torch.rand(64, 50, X_DIM) < 0.3).float()
    assert torch.equal(corrupt_feedback(u), u)
    dropped = corrupt_feedback(u, dropout=0.25)
    assert bool((dropped <= u).all())  # never adds a note
    lost = 1 - dropped[u == 1].mean().item()
    assert abs(lost - 0.25) < 0.01, lost  # 84k on-keys: 3 sigma is 0.0045
    flipped = corrupt_feedback(u, flip=0.05)
    assert set(flipped.unique().tolist()) <= {0.0, 1.0}
    share = (flipped != u).float().mean().item()
    assert abs(share - 0.05) < 0.003, share  # 282k keys: 3 sigma is 0.0012


def _log_p_x(model, x, mask, guide=None):
    if guide is None:
        return poutine.trace(model).get_trace(x, mask).nodes["x"]["fn"].log_prob(x).sum()
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    tr = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, mask)
    return tr.nodes["x"]["fn"].log_prob(x).sum()


@pytest.mark.parametrize("name", ["rnn", "srnn", "vrnn", "storn", "tsbn"])
def test_noise_only_in_training_steps(name):
    pyro.clear_param_store()
    torch.manual_seed(1)
    noisy = make_model(name, x_dim=X_DIM, input_dropout=0.3, input_flip=0.2,
                       **MODEL_KWARGS[name])
    clean = make_model(name, x_dim=X_DIM, name="clean", **MODEL_KWARGS[name])
    clean.load_state_dict(noisy.state_dict())
    guide = make_guide("smooth", noisy, hidden_dim=7, summary_dim=5) if name != "rnn" else None
    x, mask = tiny_batch(B=3, T=7, lengths=[7, 5, 2])
    assert noisy.config()["input_dropout"] == 0.3 and noisy.config()["input_flip"] == 0.2
    if name == "rnn":
        noisy.eval()  # evaluation: the exact model, equal to the one without the option
        pyro.set_rng_seed(2)
        assert torch.equal(_log_p_x(noisy, x, mask), _log_p_x(clean, x, mask))
        assert torch.equal(noisy.log_likelihood(x, mask), clean.log_likelihood(x, mask))
        noisy.train()
        with torch.no_grad():  # sampling and other no-grad passes: exact as well
            assert torch.equal(_log_p_x(noisy, x, mask), _log_p_x(clean, x, mask))
        assert not torch.equal(_log_p_x(noisy, x, mask), _log_p_x(clean, x, mask))
    else:
        noisy.eval()
        guide.eval()
        pyro.set_rng_seed(2)
        exact = _log_p_x(noisy, x, mask, guide)
        pyro.set_rng_seed(2)
        assert torch.equal(noisy.precompute(x, mask), clean.precompute(x, mask))
        noisy.train()
        guide.train()
        with torch.no_grad():
            assert torch.equal(noisy.precompute(x, mask), clean.precompute(x, mask))
        pyro.set_rng_seed(2)
        assert not torch.equal(_log_p_x(noisy, x, mask, guide), exact)
        assert not torch.equal(noisy.precompute(x, mask), clean.precompute(x, mask))


def test_old_configs_build_without_noise_and_bad_rates_are_refused():
    pyro.clear_param_store()
    model = make_model("srnn", x_dim=X_DIM, **MODEL_KWARGS["srnn"])  # a config from before
    assert model.input_dropout == 0.0 and model.input_flip == 0.0
    for bad in (1.0, -0.1, float("nan"), "x"):
        with pytest.raises(ConfigError, match="input_flip must be"):
            make_model("rnn", x_dim=X_DIM, input_flip=bad, **MODEL_KWARGS["rnn"])


def test_train_config_default_and_checkpoints_keep_their_value():
    from pyro_seqvae.training import TrainConfig

    pyro.clear_param_store()
    srnn, _ = TrainConfig(model="srnn", model_kwargs=MODEL_KWARGS["srnn"],
                          guide_kwargs={"hidden_dim": 7, "summary_dim": 5}).build(X_DIM)
    assert srnn.input_flip == TrainConfig().input_flip == 0.02 and srnn.input_dropout == 0.0
    rnn, _ = TrainConfig(model="rnn", model_kwargs={**MODEL_KWARGS["rnn"], "input_flip": 0.1},
                         input_flip=0.05).build(X_DIM)
    assert rnn.input_flip == 0.1  # an explicit model option wins
    vrnn, _ = TrainConfig(model="vrnn", model_kwargs=MODEL_KWARGS["vrnn"]).build(X_DIM)
    assert vrnn.input_flip == 0.02  # reads x_t back through phi_x
    dmm, _ = TrainConfig(model="dmm", model_kwargs=MODEL_KWARGS["dmm"]).build(X_DIM)
    assert "input_flip" not in dmm.config()  # reads no notes back: nothing to corrupt
    # a checkpoint from before the option stored no input_flip: it is rebuilt without noise
    stored = {k: v for k, v in srnn.config().items() if k not in ("input_flip", "input_dropout")}
    pyro.clear_param_store()
    old, _ = TrainConfig().build(X_DIM, model_config=stored,
                                 guide_config={"hidden_dim": 7, "summary_dim": 5})
    assert old.input_flip == 0.0 and old.input_dropout == 0.0
    with pytest.raises(ConfigError, match=r"input_flip must be in \[0, 1\), got 1"):
        TrainConfig(input_flip=1)
