"""Issue 11, item 11: the Python API raises library errors (``SeqVAEError``) that name the
argument and what was expected, where it raised raw TypeError, RuntimeError, ValueError or
ZeroDivisionError before."""

import math
import pickle

import pytest
import torch
from common import build_model, build_pair
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_seqvae.data import BatchLoader, Splits, iterate_batches, load_dataset
from pyro_seqvae.data.batching import pad_sequences
from pyro_seqvae.errors import ConfigError, DataError, SeqVAEError
from pyro_seqvae.guides import make_guide
from pyro_seqvae.infer import estimate_log_likelihood
from pyro_seqvae.infer.evaluation import elbo_per_step
from pyro_seqvae.models import make_model


def rolls(B=2, T=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(B, T, 88, generator=g) < 0.1).to(dtype), torch.ones(B, T, dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("caller", ["model", "guide", "svi"])
def test_x_of_another_dtype_is_refused_with_the_fix(dtype, caller):
    """Decision (documented in check_batch): refuse, naming both dtypes and x.float()."""
    model, guide = build_pair("srnn", "smooth")
    x, mask = rolls(dtype=dtype)
    call = {"model": lambda: model(x, mask), "guide": lambda: guide(x, mask),
            "svi": lambda: SVI(model, guide, ClippedAdam({"lr": 1e-3}), Trace_ELBO()).step(x, mask)}
    with pytest.raises(DataError, match=rf"SRNN input: x has dtype {dtype} but the model's "
                                        r"weights are torch.float32; pass x.to\(torch.float32\) "
                                        r"\(e.g. x.float\(\)\)"):
        call[caller]()


@pytest.mark.parametrize("name", ["rnn", "srnn"])
def test_an_empty_batch_is_refused(name):
    model = build_model(name)
    with pytest.raises(DataError, match=r"input: x has no sequences \(B = 0\); expected B >= 1"):
        model(*rolls(B=0))


@pytest.mark.parametrize("beta", [-0.5, 0.0, math.nan, math.inf, torch.tensor(-1.0),
                                  torch.tensor(math.nan), "0.5"],
                         ids=["negative", "zero", "nan", "inf", "tensor-negative", "tensor-nan",
                              "str"])
@pytest.mark.parametrize("who", ["model", "guide", "rnn"])
def test_beta_must_be_a_finite_positive_number(beta, who):
    model, guide = build_pair("rnn" if who == "rnn" else "srnn", "none" if who == "rnn" else
                              "filter")
    fn = guide if who == "guide" else model
    with pytest.raises(ConfigError, match=r"beta \(the KL weight\) must be a finite number > 0"):
        fn(*rolls(), beta)


def test_ints_numpy_floats_and_tensors_are_accepted():
    import numpy as np

    model, guide = build_pair("srnn", "filter")
    for beta in (1, 0.2, np.float32(0.5), torch.tensor(2.0)):
        guide(*rolls(), beta)
        model(*rolls(), beta)


def test_estimate_log_likelihood_of_an_all_masked_batch():
    model, guide = build_pair("srnn", "filter")
    x, mask = rolls()
    mask[1] = False
    with pytest.raises(DataError, match=r"estimate_log_likelihood: batch 0: mask is all False "
                                        r"for sequence \[1\] of 2"):
        estimate_log_likelihood(model, guide, [(x, mask)], num_particles=3)
    with pytest.raises(DataError, match="mask is all False for sequences"):
        estimate_log_likelihood(model, guide, [(x, torch.zeros_like(mask))], num_particles=3)


def test_no_batches():
    model, guide = build_pair("srnn", "filter")
    with pytest.raises(DataError, match="estimate_log_likelihood: batches is empty"):
        estimate_log_likelihood(model, guide, [], num_particles=3)
    with pytest.raises(DataError, match="elbo_per_step: no real steps"):
        elbo_per_step(model, guide, [])


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_batch_size_must_be_positive(size):
    seqs = [torch.zeros(3, 88)]
    with pytest.raises(ConfigError, match=rf"batch_size must be a positive int, got {size!r}"):
        list(iterate_batches(seqs, size))
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        BatchLoader(seqs, size)


def test_pad_sequences_of_nothing():
    with pytest.raises(DataError, match="pad_sequences: expected at least one sequence"):
        pad_sequences([])


@pytest.mark.parametrize("limit", [2, 0, -3])
def test_jsb_limit_too_small_for_three_splits(limit, tmp_path):
    with pytest.raises(ConfigError, match=r"limit must be an integer >= 3 \(at least one "
                                          r"chorale for each of train, valid and test\)"):
        load_dataset("jsb", limit=limit, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing built


def test_unknown_model_kwargs_are_named():
    with pytest.raises(ConfigError, match=r"model 'srnn' \(SRNN\) has no argument 'zdim'; it "
                                          r"takes \[.*'z_dim'"):
        make_model("srnn", zdim=3)
    with pytest.raises(ConfigError, match=r"has no arguments 'depth', 'width'"):
        make_model("vrnn", width=3, depth=2)


def test_unknown_guide_kwargs_are_named():
    model = build_model("srnn")
    with pytest.raises(ConfigError, match=r"guide 'filter' \(FilteringGuide\) has no argument "
                                          r"'rnn_type'"):
        make_guide("filter", model, rnn_type="gru")
    # keywords that the guide forwards to its base class are accepted
    make_guide("smooth", model, hidden_dim=4, summary_dim=3, activation="tanh", name="g")


def test_a_kind_that_contradicts_the_source(tmp_path):
    path = tmp_path / "tiny.pickle"
    path.write_bytes(pickle.dumps({"train": [[(60,)]], "valid": [[(61,)]], "test": [[(62,)]]}))
    with pytest.raises(ConfigError, match=r"kind 'jsb' reads the embedded chorales, but the "
                                          r"data source is .*tiny.pickle"):
        load_dataset(path, kind="jsb")
    with pytest.raises(ConfigError, match="the data source 'jsb' is the embedded chorale set, "
                                          "not midi data"):
        load_dataset("jsb", kind="midi")
    with pytest.raises(ConfigError, match="kind 'midi' reads a folder of files"):
        load_dataset(path, kind="midi")
    assert len(load_dataset(path, kind="pickle").train) == 1


def test_every_error_above_is_a_seqvae_error():
    for cls in (ConfigError, DataError):
        assert issubclass(cls, SeqVAEError) and issubclass(cls, ValueError)


def test_splits_passed_to_the_trainer_are_checked_against_the_emission(tmp_path):
    from pyro_seqvae.training import TrainConfig, Trainer

    config = TrainConfig(model="srnn", guide="filter", emission="stroke", epochs=1,
                         model_kwargs={"z_dim": 2, "rnn_dim": 3, "hidden_dim": 4},
                         guide_kwargs={"hidden_dim": 4, "summary_dim": 3},
                         emission_kwargs={"num_components": 2})
    model, guide = config.build(3)
    seqs = [torch.tensor([[0.1, 0.2, 0.0], [0.3, -0.1, 0.5]])]
    splits = Splits.from_lists({"train": seqs, "valid": seqs, "test": seqs}, source="pen.npy")
    with pytest.raises(DataError, match=r"^pen.npy: split 'train', sequence 0, step 1, feature 2 "
                                        r"holds 0.5 \(1 value in this split\); emission stroke "
                                        r"needs finite \(dx, dy\) and a pen bit of 0 or 1$"):
        Trainer(model, guide, config, out_dir=tmp_path / "run", progress=False).fit(splits)
    assert not (tmp_path / "run").exists()
