"""Issue 11, item 8: data checked against the emission's support when loaded, and split
fingerprints recorded by a run and compared by ``evaluate``."""

import json
import math
import pickle

import pytest
import torch
from test_cli import TINY, run_cli, write_benchmark_pickle

from pyro_seqvae.data import Splits
from pyro_seqvae.data.fingerprint import changed_splits, data_fingerprints, split_fingerprint
from pyro_seqvae.data.support import check_emission_support, check_support
from pyro_seqvae.emissions import make_emission
from pyro_seqvae.errors import DataError
from pyro_seqvae.training import LAST, load_checkpoint


def splits_of(train, source="src", valid=None, test=None):
    valid = valid or [torch.zeros(2, train[0].shape[1])]
    return Splits.from_lists({"train": train, "valid": valid, "test": test or valid},
                             source=source)


def test_binary_rolls_fit_the_bernoulli_emission():
    rolls = [(torch.rand(7, 88) < 0.1).float() for _ in range(3)]
    check_support(splits_of(rolls), make_emission("bernoulli", 88))


def test_the_first_value_outside_is_located_exactly():
    seqs = [torch.zeros(4, 5), torch.zeros(3, 5)]
    seqs[1][2, 4] = 0.25
    seqs[1][0, 1] = 3.0
    with pytest.raises(DataError) as info:
        check_support(splits_of(seqs, "rolls.pickle"), make_emission("bernoulli", 5))
    assert str(info.value) == ("rolls.pickle: split 'train', sequence 1, step 0, feature 1 holds "
                               "3 (2 values in this split); --emission bernoulli needs 0 or 1 "
                               "(a binary piano roll)")


@pytest.mark.parametrize("emission", ["gauss", "gmm"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_continuous_emissions_need_finite_values(emission, bad):
    seqs = [torch.randn(6, 4)]
    check_support(splits_of(seqs), make_emission(emission, 4))
    seqs[0][5, 3] = bad
    with pytest.raises(DataError, match=rf"split 'train', sequence 0, step 5, feature 3 holds "
                                        rf"{bad}.*--emission {emission} needs finite real"):
        check_support(splits_of(seqs), make_emission(emission, 4))


def test_the_stroke_emission_needs_a_binary_pen_bit():
    seq = torch.tensor([[0.3, -1.2, 0.0], [2.0, 0.1, 1.0], [0.5, 0.5, 0.5]])
    check_support(splits_of([seq[:2]]), make_emission("stroke", 3))
    with pytest.raises(DataError, match=r"step 2, feature 2 holds 0.5 .*pen bit of 0 or 1"):
        check_support(splits_of([seq]), make_emission("stroke", 3))
    seq[0, 0] = math.nan
    with pytest.raises(DataError, match=r"step 0, feature 0 holds nan"):
        check_support(splits_of([seq[:2]]), make_emission("stroke", 3))


def test_a_width_the_emission_cannot_take():
    with pytest.raises(DataError, match=r"^src: the stroke emission models \(dx, dy, pen\): "
                                        r"x_dim must be 3, got 88$"):
        check_emission_support(splits_of([torch.zeros(3, 88)]), "stroke")


def test_fingerprints_are_stable_and_sensitive():
    seqs = [torch.rand(5, 3), torch.rand(4, 3)]
    a = data_fingerprints(splits_of(seqs))
    assert a == data_fingerprints(splits_of([s.clone() for s in seqs]))
    assert a["train"] == {"sha256": split_fingerprint(splits_of(seqs).train), "sequences": 2,
                          "steps": 9}
    changed = [seqs[0].clone(), seqs[1].clone()]
    changed[1][3, 2] = torch.nextafter(changed[1][3, 2], torch.tensor(2.0))  # one ulp
    assert data_fingerprints(splits_of(changed))["train"]["sha256"] != a["train"]["sha256"]
    # same bytes, other cut between sequences: another fingerprint
    recut = [torch.cat(seqs)[:4], torch.cat(seqs)[4:]]
    assert data_fingerprints(splits_of(recut))["train"]["sha256"] != a["train"]["sha256"]
    lines = changed_splits(a, splits_of(changed))
    assert len(lines) == 1 and lines[0].startswith("split 'train' differs")
    assert changed_splits(None, splits_of(changed)) == []


def test_evaluate_warns_when_the_data_changed(tmp_path):
    data = write_benchmark_pickle(tmp_path / "tiny.pickle")
    run = tmp_path / "run"
    status, _, stderr = run_cli("train", "--data", data, *TINY, "--epochs", 1, "--out", run)
    assert status == 0, stderr
    recorded = json.loads((run / "run.json").read_text())["data_fingerprints"]
    assert set(recorded) == {"train", "valid", "test"}
    assert load_checkpoint(run / LAST)["extra"]["data"]["fingerprints"] == recorded

    status, _, stderr = run_cli("evaluate", run, "--particles", 2, "--quiet", "--out",
                                tmp_path / "same.json")
    assert status == 0 and "warning" not in stderr, stderr
    assert json.loads((tmp_path / "same.json").read_text())["data_matches_run"] is True

    # "two files were added": the test split gains a sequence
    content = pickle.loads(data.read_bytes())
    content["test"].append([(60,), (64, 67)])
    data.write_bytes(pickle.dumps(content))
    status, _, stderr = run_cli("evaluate", run, "--particles", 2, "--quiet", "--out",
                                tmp_path / "changed.json")
    assert status == 0
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith(f"pyro-seqvae evaluate: warning: {data}: split 'test' differs "
                                  f"from the one the run was trained with (4 sequences")
    assert json.loads((tmp_path / "changed.json").read_text())["data_matches_run"] is False

    # an explicitly different data set is the user's choice: no warning
    other = write_benchmark_pickle(tmp_path / "other.pickle", seed=5)
    status, _, stderr = run_cli("evaluate", run, "--data", other, "--particles", 2, "--quiet",
                                "--out", tmp_path / "other.json")
    assert status == 0 and "warning" not in stderr, stderr
