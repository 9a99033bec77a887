"""The RNN baseline's exact log-likelihood against a hand computation on a tiny network."""

import math

import pyro
import pytest
import torch
from common import GUIDE_KWARGS, assert_close, build_model, tiny_batch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.guides import EmptyGuide, default_guide_name, make_guide
from pyro_seqvae.layers import shift_right
from pyro_seqvae.models import RNN

pytestmark = pytest.mark.usefixtures("single_thread")


def _set_weights(model):
    """Give every weight of RNN(x_dim=3, rnn_dim=2, hidden_dim=2) a fixed, hand-chosen value."""
    gru = model.rnn.rnn
    dec0, dec2 = model.decoder.layers[0], model.decoder.layers[-1]
    values = {
        # rows: reset (2), update (2), new (2) gates, PyTorch's order
        gru.weight_ih_l0: [[0.5, -0.3, 0.8], [0.1, 0.4, -0.6], [-0.7, 0.2, 0.3],
                           [0.9, -0.5, 0.1], [0.6, 0.7, -0.2], [-0.4, 0.3, 0.5]],
        gru.weight_hh_l0: [[0.2, -0.1], [0.3, 0.5], [-0.6, 0.4], [0.1, -0.8], [0.7, 0.2],
                           [-0.3, 0.6]],
        gru.bias_ih_l0: [0.1, -0.2, 0.05, 0.3, -0.1, 0.2],
        gru.bias_hh_l0: [-0.05, 0.15, 0.2, -0.1, 0.25, -0.3],
        # large enough that the clamp at +-3 is reached on some steps
        dec0.weight: [[9.0, -12.0], [-18.0, 4.0]],
        dec0.bias: [0.6, 1.5],
        dec2.weight: [[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]],
        dec2.bias: [0.2, -0.4, 0.1],
    }
    with torch.no_grad():
        for param, value in values.items():
            param.copy_(torch.tensor(value))
    return {name: [list(map(float, row)) if isinstance(row, list) else float(row)
                   for row in value]
            for name, value in zip(
                ["W_ih", "W_hh", "b_ih", "b_hh", "W1", "b1", "W2", "b2"], values.values())}


def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


def _clamped_leaky_relu(a):
    return min(3.0, max(-3.0, a if a > 0 else a / 3.0))


def _matvec(W, v):
    return [sum(w * x for w, x in zip(row, v)) for row in W]


def _hand_log_likelihood(w, seq):
    """``sum_t log p(x_t | x_<t)`` in plain Python floats: the GRU equations of
    ``torch.nn.GRU`` with ``u_t = x_{t-1}``, ``x_0 = 0``, ``h_0 = 0``, then MLP logits through
    the paper's hidden unit: leaky ReLU with slope 1/3, clamped to [-3, 3]."""
    h = [0.0, 0.0]
    u = [0.0, 0.0, 0.0]
    total = 0.0
    for x_t in seq:
        gi = [a + b for a, b in zip(_matvec(w["W_ih"], u), w["b_ih"])]
        gh = [a + b for a, b in zip(_matvec(w["W_hh"], h), w["b_hh"])]
        r = [_sigmoid(gi[k] + gh[k]) for k in range(2)]
        z = [_sigmoid(gi[2 + k] + gh[2 + k]) for k in range(2)]
        n = [math.tanh(gi[4 + k] + r[k] * gh[4 + k]) for k in range(2)]
        h = [(1 - z[k]) * n[k] + z[k] * h[k] for k in range(2)]
        hidden = [_clamped_leaky_relu(a + b) for a, b in zip(_matvec(w["W1"], h), w["b1"])]
        logits = [a + b for a, b in zip(_matvec(w["W2"], hidden), w["b2"])]
        for logit, xi in zip(logits, x_t):
            p = _sigmoid(logit)
            total += math.log(p) if xi else math.log(1 - p)
        u = list(x_t)
    return total


SEQS = [
    [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]],
    [[0, 1, 0], [1, 0, 0]],  # length 2, padded to 4
]


def test_log_likelihood_equals_hand_computation_and_ignores_padding():
    model = RNN(x_dim=3, rnn_dim=2, hidden_dim=2)
    weights = _set_weights(model)
    x = torch.tensor([SEQS[0], SEQS[1] + [[1, 1, 1], [1, 0, 1]]], dtype=torch.float)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    expected = torch.tensor([_hand_log_likelihood(weights, s) for s in SEQS])
    assert model.activation == "leaky_relu" and model.clip == 3.0  # the paper's defaults
    # every branch of the hidden unit is exercised, or the hand MLP would not be checked:
    # negative (leaky), positive, and clamped at +3 and at -3 (below -9 before the slope)
    with torch.no_grad():
        pre = model.decoder.layers[0](model.rnn(shift_right(x)))[mask]
    assert ((pre < 0) & (pre > -9)).any() and ((pre > 0) & (pre < 3)).any()
    assert (pre > 3).any() and (pre < -9).any()

    with torch.no_grad():
        assert_close(model.log_likelihood(x, mask), expected, atol=1e-5)
        loss = Trace_ELBO().loss(model, EmptyGuide(model), x, mask)
    assert_close(-loss, expected.sum(), atol=1e-5)

    # padding content never counts; an unpadded copy of the short sequence scores the same
    x_other = x.clone()
    x_other[1, 2:] = 0.0
    with torch.no_grad():
        assert_close(model.log_likelihood(x_other, mask), expected, atol=1e-5)
        short = model.log_likelihood(x[1:, :2], mask[1:, :2])
    assert_close(short, expected[1:], atol=1e-5)
    # and the padded steps really would change the value if they were scored
    with torch.no_grad():
        full = model.log_likelihood(x, torch.ones_like(mask))
    assert (full[1] - expected[1]).abs() > 1e-2


def test_log_likelihood_is_log_of_a_normalised_distribution():
    """On x_dim=1, T=2 the probabilities of the 4 possible sequences sum to one."""
    model = RNN(x_dim=1, rnn_dim=2, hidden_dim=2)
    seqs = torch.tensor([[[a], [b]] for a in (0.0, 1.0) for b in (0.0, 1.0)])
    mask = torch.ones(4, 2, dtype=torch.bool)
    with torch.no_grad():
        total = model.log_likelihood(seqs, mask).exp().sum()
    assert_close(total, 1.0, atol=1e-5)


@pytest.mark.parametrize("model_name", ["rnn", "vrnn", "srnn"])
def test_lstm_variant_trains_a_step(model_name, device):
    model = build_model(model_name, device, rnn_type="lstm")
    guide_name = default_guide_name(model)
    guide = make_guide(guide_name, model, **GUIDE_KWARGS[guide_name]).to(device)
    x, mask = tiny_batch(3, 5, (5, 2, 4), device=device)
    rnn_params = {n: p for n, p in model.named_parameters()
                  if "weight_hh" in n or "cell.weight" in n}
    assert rnn_params and all(p.shape[0] == 4 * model.rnn_dim for p in rnn_params.values())
    before = {n: p.detach().clone() for n, p in rnn_params.items()}
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, mask) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses)
    for name, param in rnn_params.items():
        assert not torch.equal(param.detach(), before[name]), name
    assert pyro.get_param_store().keys() >= {f"{type(model).__name__}.{n}" for n in rnn_params}
