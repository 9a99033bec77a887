"""The speed benchmark's plain-PyTorch networks compute the library's ELBO exactly.

``benchmarks/speed.py`` reports the library's SVI epoch as a ratio to ``benchmarks/plain_torch.py``.
The ratio is only honest if the two run the same network and the same objective: with the
library's weights copied into the plain network and the same random numbers, the plain
single-sample ELBO must equal ``-Trace_ELBO().loss`` of the library's model and guide.
"""

import sys
from pathlib import Path

import pytest
import torch
from common import tiny_batch
from pyro.infer import Trace_ELBO

from pyro_seqvae.guides import FilteringGuide, SmoothingGuide
from pyro_seqvae.infer import ReweightedWakeSleep
from pyro_seqvae.models import SRNN, TSBN, VRNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from plain_torch import (  # noqa: E402
    PlainSRNN,
    PlainTSBN,
    PlainVRNN,
    load_library_tsbn_weights,
    load_library_weights,
)

SIZES = dict(z_dim=3, rnn_dim=5, hidden_dim=7)


def srnn_pair():
    model = SRNN(88, **SIZES)
    guide = SmoothingGuide(model, residual=True, hidden_dim=7, summary_dim=5)
    return model, guide, load_library_weights(PlainSRNN(88, **SIZES), model, guide)


def vrnn_pair():
    model = VRNN(88, **SIZES)
    guide = FilteringGuide(model, hidden_dim=7, summary_dim=5)
    return model, guide, load_library_weights(PlainVRNN(88, **SIZES), model, guide)


@pytest.mark.parametrize("make", [srnn_pair, vrnn_pair], ids=["srnn-smooth-resq", "vrnn-filter"])
@pytest.mark.parametrize("two_pass", [False, True])
def test_plain_network_computes_the_librarys_elbo(make, two_pass):
    model, guide, plain = make()
    assert sum(p.numel() for p in plain.parameters()) == sum(
        p.numel() for m in (model, guide) for p in m.parameters())
    x, mask = tiny_batch(3, 7, (7, 5, 2))
    # large weights drive the hidden units into the clamp, so that it is compared too
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(4.0)
        for p in list(model.parameters()) + list(guide.parameters()):
            p.mul_(4.0)
    for beta in (1.0, 0.3):
        torch.manual_seed(5)
        with torch.no_grad():
            library = -Trace_ELBO().loss(model, guide, x, mask, beta)
        torch.manual_seed(5)
        with torch.no_grad():
            baseline = plain.elbo(x, mask, beta, two_pass=two_pass)
        assert abs(float(baseline) - library) <= 1e-4 * abs(library), (beta, baseline, library)


@pytest.mark.parametrize("make", [srnn_pair, vrnn_pair], ids=["srnn-smooth-resq", "vrnn-filter"])
def test_plain_importance_sampler_computes_the_librarys_log_weights(make):
    """``is_speed.py``'s plain sampler: with the same random numbers, its ``[K, B]`` log weights
    equal those of the library's traced importance sampler (float64, K = 6, padded batch)."""
    from pyro_seqvae.infer.importance import log_importance_weights

    model, guide, plain = make()
    for m in (model, guide, plain):
        m.double()
    x, mask = tiny_batch(3, 7, (7, 5, 2))
    x = x.double()
    with torch.no_grad():  # large weights: the clamp is reached
        for p in list(model.parameters()) + list(guide.parameters()) + list(plain.parameters()):
            p.mul_(4.0)
    torch.manual_seed(5)
    library = log_importance_weights(model, guide, x, mask, 6)
    torch.manual_seed(5)
    baseline = plain.log_weights(x, mask, 6)
    assert baseline.shape == (6, 3)
    torch.testing.assert_close(baseline, library, atol=1e-9, rtol=1e-12)


def test_plain_tsbn_computes_the_librarys_rws_losses_and_gradients():
    """``rws_speed.py``'s plain TSBN: with the library's weights and the same random numbers,
    both RWS losses and every gradient equal ``ReweightedWakeSleep``'s (padded batch)."""
    torch.manual_seed(0)
    model = TSBN(88, z_dim=6)
    guide = FilteringGuide(model, hidden_layers=0)
    plain = load_library_tsbn_weights(PlainTSBN(88, z_dim=6), model, guide)
    x, mask = tiny_batch(B=3, T=5, lengths=[5, 3, 4])
    objective = ReweightedWakeSleep(4)
    torch.manual_seed(1)
    loss = objective.loss_and_grads(model, guide, x, mask)
    torch.manual_seed(1)
    theta, phi = plain.rws_losses(x, mask, 4)
    theta.backward(inputs=plain.model_parameters(), retain_graph=True)
    phi.backward(inputs=plain.guide_parameters())
    assert float(theta.detach()) == pytest.approx(loss, rel=1e-5)
    head = guide.head.logit_net.layers[0].weight.grad
    pairs = [(plain.prior_z.weight, model.prior_z[0].weight.grad),
             (plain.prior_x.weight, model.prior_x.weight.grad),
             (plain.decoder_z.weight, model.decoder_z.weight.grad),
             (plain.decoder_x.weight, model.decoder_x.weight.grad),
             (plain.q_x.weight, head[:, :176]), (plain.q_z.weight, head[:, 176:]),
             (plain.q_x.bias, guide.head.logit_net.layers[0].bias.grad)]
    for param, expected in pairs:
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-4)
