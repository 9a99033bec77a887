"""The direct importance sampler (pyro_seqvae.infer.direct) against the traced one.

Exact checks: with the same random numbers, the direct log weights equal the weights of the
traced sampler (guide traced under a particle plate, model replayed, site log-probs summed),
in float64, for every model/guide pair of the registries and for the variants whose networks
the direct path factors differently (LSTM, deep TSBN, NADE and Gaussian emissions, linear
heads), in one pass and in several passes with short emission windows.
"""

import pyro
import pytest
import torch
from common import LATENT_PAIRS, build_pair, pair_id, tiny_batch

from pyro_seqvae.errors import ConfigError
from pyro_seqvae.guides import FilteringGuide, SmoothingGuide
from pyro_seqvae.infer.direct import (
    ROWS_SHARE,
    ProtocolSteps,
    direct_log_weights,
    make_steps,
    supports_direct,
)
from pyro_seqvae.infer.importance import (
    chunked_log_weights,
    estimate_log_likelihood,
    log_importance_weights,
)
from pyro_seqvae.models import VRNN

pytestmark = pytest.mark.usefixtures("single_thread")


def double_pair(pair, model_kwargs=None, guide_kwargs=None, scale=3.0, lengths=(4, 6, 2, 6),
                T=None):
    """A float64 pair with larger weights (the clamps and soft bounds are reached too) and a
    padded batch whose lengths are not sorted (the direct path sorts and drops ended ones)."""
    pyro.set_rng_seed(1)
    model, guide = build_pair(*pair, model_kwargs=model_kwargs, guide_kwargs=guide_kwargs)
    model.double()
    guide.double()
    with torch.no_grad():
        for p in list(model.parameters()) + list(guide.parameters()):
            p.mul_(scale)
    x, mask = tiny_batch(B=len(lengths), T=T or max(lengths), lengths=list(lengths))
    return model, guide, x.double(), mask


def assert_same_weights(model, guide, x, mask, K=5):
    pyro.set_rng_seed(3)
    traced = log_importance_weights(model, guide, x, mask, K)
    pyro.set_rng_seed(3)
    direct = direct_log_weights(model, guide, x, mask, K)
    assert direct.shape == (K, x.shape[0])
    torch.testing.assert_close(direct, traced, atol=1e-9, rtol=1e-12)


@pytest.mark.parametrize("pair", LATENT_PAIRS, ids=pair_id)
def test_direct_weights_equal_the_traced_weights(pair):
    model, guide, x, mask = double_pair(pair)
    assert supports_direct(model, guide)
    assert_same_weights(model, guide, x, mask)


@pytest.mark.parametrize("pair, model_kwargs, guide_kwargs", [
    (("vrnn", "smooth", True), {"rnn_type": "lstm"}, None),
    (("storn", "filter", False), {"rnn_type": "lstm", "hidden_layers": 2}, None),
    (("srnn", "filter", True), {"emission": "nade", "emission_kwargs": {"hidden_dim": 4}},
     {"hidden_layers": 2}),
    (("vrnn", "filter", False), {"emission": "nade", "emission_kwargs": {"hidden_dim": 4}}, None),
    (("srnn", "smooth", False), {"emission": "gauss"}, None),
    (("tsbn", "filter", False), {"layers": 2, "z_dim": 4}, {"hidden_layers": 0}),
], ids=["vrnn-lstm", "storn-lstm-deep", "srnn-nade", "vrnn-nade", "srnn-gauss", "tsbn-deep"])
def test_direct_weights_equal_the_traced_weights_for_variants(pair, model_kwargs, guide_kwargs):
    model, guide, x, mask = double_pair(pair, model_kwargs, guide_kwargs)
    if model.emission.name == "gauss":
        x = x + 0.3 * torch.randn_like(x)
    assert_same_weights(model, guide, x, mask)


@pytest.mark.parametrize("pair", [("vrnn", "filter", True), ("tsbn", "smooth", False)],
                         ids=pair_id)
def test_steps_of_padding_only_at_the_end_add_nothing(pair):
    """A batch cut from a longer one keeps steps where every sequence is padding."""
    model, guide, x, mask = double_pair(pair, lengths=(3, 1, 2), T=6)
    assert_same_weights(model, guide, x, mask)


@pytest.mark.parametrize("pair", [("vrnn", "filter", False), ("srnn", "smooth", True),
                                  ("dmm", "smooth", True)], ids=pair_id)
def test_passes_and_windows_equal_the_traced_chunks(pair):
    """Two particles per pass (2 B rows per step): the emission is scored one step at a time
    and the passes draw as the traced sampler's chunks of two particles do."""
    model, guide, x, mask = double_pair(pair)
    B, T = mask.shape
    pyro.set_rng_seed(4)
    traced = chunked_log_weights(model, guide, x, mask, 5, max_rows=2 * B * T, path="traced")
    pyro.set_rng_seed(4)
    direct = direct_log_weights(model, guide, x, mask, 5, max_rows=2 * B * ROWS_SHARE)
    torch.testing.assert_close(direct, traced, atol=1e-9, rtol=1e-12)
    pyro.set_rng_seed(4)
    auto = chunked_log_weights(model, guide, x, mask, 5, max_rows=2 * B * ROWS_SHARE)
    torch.testing.assert_close(auto, direct, atol=0, rtol=0)


def test_factored_steps_are_chosen_by_exact_type_and_unknown_pairs_stay_traced():
    class MyVRNN(VRNN):
        pass

    class MyGuide(FilteringGuide):
        def forward(self, x, mask, beta=1.0):
            return super().forward(x, mask, beta)

    model = MyVRNN(88, z_dim=3, rnn_dim=5, hidden_dim=7)
    assert type(make_steps(model, FilteringGuide(model, hidden_dim=7))) is ProtocolSteps
    mine = MyGuide(model, hidden_dim=7)
    assert not supports_direct(model, mine)
    x, mask = tiny_batch(B=2, T=4, lengths=[4, 3])
    with pytest.raises(ConfigError, match="path='traced'"):
        direct_log_weights(model, mine, x, mask, 2)
    other = VRNN(88, z_dim=3, rnn_dim=5, hidden_dim=7, name="Other")
    assert not supports_direct(other, SmoothingGuide(model, hidden_dim=7, summary_dim=5))
    # a subclass on the protocol: the direct path on the protocol methods, still exact
    model.double()
    guide = FilteringGuide(model, hidden_dim=7).double()
    assert_same_weights(model, guide, x.double(), mask)


def test_estimate_takes_the_direct_path_by_default_and_both_paths_agree_in_float64():
    model, guide, x, mask = double_pair(("srnn", "smooth", True))
    estimates = {}
    for path in ("auto", "traced", "direct"):
        pyro.set_rng_seed(6)
        estimates[path] = estimate_log_likelihood(model, guide, [(x, mask)], num_particles=7,
                                                  path=path)
    for path in ("traced", "direct"):
        torch.testing.assert_close(torch.as_tensor(estimates[path].log_likelihood),
                                   torch.as_tensor(estimates["auto"].log_likelihood),
                                   atol=1e-9, rtol=0)
