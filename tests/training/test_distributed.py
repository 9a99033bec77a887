"""Data-parallel training on CPU with ``gloo`` (training/distributed.py).

Two ranks are real processes (``multiprocessing`` spawn, TCP rendezvous on 127.0.0.1, or
``torchrun``). What is asserted:

- two ranks with half of every global batch each reach the parameters of one process with the
  whole batch (the RNN, whose ELBO draws nothing at random; a final batch of one sequence leaves
  one rank with an empty shard), to 1e-5, and every rank holds the same parameters;
- with latent variables, one data-parallel update is the sum of the per-shard gradients drawn
  with each rank's own random stream, followed by one ClippedAdam step (SRNN smooth+Res_q);
- the CLI run folder of two ranks is the one-process run folder: the same files, one
  ``metrics.jsonl`` line per epoch, the same numbers and weights; resumed on two ranks, too;
- a rank whose update raises stops every rank at that update: its own error there, a
  :class:`PeerFailedError` naming it elsewhere (no rank waits for ever);
- SIGKILLing rank 0 (the writer) under ``torchrun`` stops the run, leaves a loadable last
  checkpoint with finite weights, and ``--resume`` finishes the run;
- the one-line error rules per rank and the backend chosen from the device.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.util import zero_grads
from pyro.optim import ClippedAdam
from test_cli import run_cli, write_benchmark_pickle
from test_trainer_resume import read_metrics, tiny_splits

import pyro_seqvae.cli as cli
from pyro_seqvae.errors import ConfigError, DataError, DivergenceError
from pyro_seqvae.infer.elbo import make_elbo
from pyro_seqvae.training import BEST, LAST, TrainConfig, Trainer, load_checkpoint
from pyro_seqvae.training.distributed import (
    DistributedGroup,
    PeerFailedError,
    SingleProcess,
    backend_for,
    error_line,
)

WORLD = 2
#: 9 training sequences with a global batch of 4: batches of 4, 4 and 1 (one empty shard).
LENGTHS = {"train": [5, 7, 9, 12, 6, 8, 10, 11, 7], "valid": [5, 9, 12], "test": [6, 8, 10]}
RNN = dict(data="synthetic", model="rnn", guide="none", model_kwargs={"rnn_dim": 5,
                                                                       "hidden_dim": 7},
           epochs=2, batch_size=4, beta_increment=0.25, seed=0, input_flip=0.0)
SRNN = dict(data="synthetic", model="srnn", guide="smooth", residual=True,
            model_kwargs={"z_dim": 3, "rnn_dim": 5, "hidden_dim": 7},
            guide_kwargs={"hidden_dim": 7, "summary_dim": 5}, batch_size=4, seed=0,
            input_flip=0.0)  # the comparisons are exact: no random input flips (issue 12)
SHARD_SEED = 100  # rank r draws the guide's samples from torch.manual_seed(SHARD_SEED + r)
SRNN_UPDATES = 3
TINY_RNN_CLI = ["--model", "rnn", "--rnn-dim", "5", "--hidden-dim", "7", "--batch-size", "4",
                "--beta-increment", "0.25", "--quiet", "--threads", "1", "--input-flip", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_group(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _states(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _group_worker(rank, port, folder, cli_argv):
    """One rank: an RNN Trainer run, SRNN_UPDATES raw updates of the SRNN, a CLI run and its
    resumption by one more epoch, then an update that fails on rank 1 only (one process group
    for all: each spawned process costs seconds of imports)."""
    from pyro_seqvae.training.distributed import from_environment

    _join_group(rank, port)
    group = from_environment("cpu")
    try:
        config = TrainConfig(**RNN)
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        model, guide = config.build(88)
        trainer = Trainer(model, guide, config, out_dir=os.path.join(folder, "run"),
                          progress=False, parallel=group)
        history = trainer.fit(tiny_splits(lengths=LENGTHS))
        rnn = {"history": history, "states": _states(model, guide)}

        config = TrainConfig(**SRNN)
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        model, guide = config.build(88)
        svi = SVI(model, guide, ClippedAdam({"lr": 1e-2, "clip_norm": 10.0}), make_elbo("trace"))
        torch.manual_seed(SHARD_SEED + rank)
        losses = []
        for batch in _srnn_batches():
            losses.append(group.step(svi, *group.shard(batch.x, batch.mask), 0.5))
        srnn = {"losses": losses, "states": _states(model, guide)}
        torch.save({"rnn": rnn, "srnn": srnn}, os.path.join(folder, f"rank{rank}.pt"))
        assert cli.main(cli_argv) == 0  # joins the group made above, and leaves it to us
        if rank == 0:
            shutil.copytree(cli_argv[-1], cli_argv[-1] + "_resumed")
        dist.barrier()
        resume = [*cli_argv[:-3], "3", "--out", cli_argv[-1] + "_resumed", "--resume"]
        assert cli.main(resume) == 0

        config = TrainConfig(**RNN)
        pyro.clear_param_store()
        model, guide = config.build(88)
        trainer = Trainer(model, guide, config, progress=False, parallel=group)
        real, calls = trainer.svi.loss_and_grads, []

        def fails_on_rank_1_at_update_2(*args, **kwargs):
            calls.append(1)
            if rank == 1 and len(calls) == 2:
                raise ValueError("boom")
            return real(*args, **kwargs)

        trainer.svi.loss_and_grads = fails_on_rank_1_at_update_2
        try:
            trainer.fit(tiny_splits(lengths=LENGTHS))
            failure = None
        except Exception as exc:
            failure = (type(exc).__name__, str(exc))
        torch.save(failure, os.path.join(folder, f"failure{rank}.pt"))
    finally:
        group.close()


def _srnn_batches():
    from pyro_seqvae.data import iterate_batches

    splits = tiny_splits(lengths=LENGTHS)
    batches = iterate_batches(splits.train, SRNN["batch_size"], shuffle=True, seed=0)
    return [b for _, b in zip(range(SRNN_UPDATES), batches)]


def spawn(fn, *args):
    """Run ``fn(rank, port, *args)`` on WORLD spawned processes; fail on a non-zero exit."""
    context = mp.get_context("spawn")
    port = free_port()
    procs = [context.Process(target=fn, args=(rank, port, *args)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORLD


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_benchmark_pickle(tmp_path_factory.mktemp("data") / "tiny.pickle",
                                  sizes=(9, 3, 3))


def cli_train_argv(data_file, out, epochs=2):
    return ["train", "--data", str(data_file), *TINY_RNN_CLI, "--epochs", str(epochs),
            "--out", str(out)]


@pytest.fixture(scope="module")
def group_results(tmp_path_factory, data_file):
    folder = tmp_path_factory.mktemp("group")
    spawn(_group_worker, str(folder), cli_train_argv(data_file, folder / "cli"))
    return folder, [torch.load(folder / f"rank{r}.pt", weights_only=False)
                    for r in range(WORLD)]


def assert_close_states(actual, expected, atol=1e-5):
    for a, e in zip(actual, expected):
        assert a.keys() == e.keys()
        for key in e:
            torch.testing.assert_close(a[key], e[key], atol=atol, rtol=0,
                                       msg=lambda m, key=key: f"{key}: {m}")


# ---- the update ----------------------------------------------------------------------------------
def test_two_ranks_with_half_batches_match_one_process_with_whole_batches(group_results):
    folder, results = group_results
    config = TrainConfig(**RNN)
    pyro.set_rng_seed(config.seed)
    model, guide = config.build(88)
    single = Trainer(model, guide, config, progress=False)
    history = single.fit(tiny_splits(lengths=LENGTHS))
    assert single.step == 6  # 3 updates per epoch, the last on one sequence
    rnn = results[0]["rnn"]
    assert_close_states(rnn["states"], _states(model, guide))
    assert [r["step"] for r in rnn["history"]] == [r["step"] for r in history]
    for mine, theirs in zip(rnn["history"], history):
        for key in ("train_objective_per_step", "valid_elbo_per_step", "beta"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key
    # every rank ends with the same weights, bit for bit, and rank 0 alone wrote the run
    assert_close_states(results[1]["rnn"]["states"], rnn["states"], atol=0)
    assert_close_states(results[1]["srnn"]["states"], results[0]["srnn"]["states"], atol=0)
    assert len(read_metrics(folder / "run")) == 2
    assert {p.name for p in (folder / "run").iterdir()} == {LAST, BEST, "metrics.jsonl",
                                                            "curves.png", "run.json"}


def test_a_latent_update_is_the_sum_of_the_per_shard_gradients(group_results):
    _, results = group_results
    config = TrainConfig(**SRNN)
    pyro.set_rng_seed(config.seed)
    model, guide = config.build(88)
    elbo, optim = make_elbo("trace"), ClippedAdam({"lr": 1e-2, "clip_norm": 10.0})
    streams = []
    for rank in range(WORLD):
        torch.manual_seed(SHARD_SEED + rank)
        streams.append(torch.get_rng_state())
    losses = []
    for batch in _srnn_batches():
        rows = torch.tensor_split(torch.arange(batch.x.shape[0]), WORLD)
        params, loss = set(), 0.0
        for rank in range(WORLD):  # rank r's shard, with rank r's stream; gradients accumulate
            if rows[rank].numel() == 0:  # an empty shard: a stand-in, drawn and dropped
                torch.set_rng_state(streams[rank])
                with poutine.trace(param_only=True):
                    elbo.loss(model, guide, batch.x[:1], batch.mask[:1] & False, 0.5)
                streams[rank] = torch.get_rng_state()
                continue
            torch.set_rng_state(streams[rank])
            with poutine.trace(param_only=True) as capture:
                loss += elbo.loss_and_grads(model, guide, batch.x[rows[rank]],
                                            batch.mask[rows[rank]], 0.5)
            streams[rank] = torch.get_rng_state()
            params |= {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        optim(params)
        zero_grads(params)
        losses.append(loss)
    assert results[0]["srnn"]["losses"] == pytest.approx(losses, rel=1e-6)
    assert_close_states(results[0]["srnn"]["states"], _states(model, guide))


def test_one_process_is_svi_step_itself():
    """With one process the hooks are today's code: ``step`` is ``svi.step``, ``shard`` keeps
    the whole batch (the same tensors), ``evaluate`` calls the function given."""
    single = SingleProcess()
    x, mask = torch.zeros(3, 4, 2), torch.ones(3, 4, dtype=torch.bool)
    assert single.shard(x, mask)[0] is x and single.shard(x, mask)[1] is mask

    class Recorder:
        def step(self, *args):
            self.args = args
            return 1.5

    svi = Recorder()
    assert single.step(svi, x, mask, 0.3) == 1.5 and svi.args == (x, mask, 0.3)
    assert single.evaluate(lambda m, g, b: (m, g, b), 1, 2, 3) == (1, 2, 3)
    assert single.is_main and single.world_size == 1


def test_a_group_of_one_rank_is_svi_step_exactly(tmp_path):
    """The hand-made update (trace, loss_and_grads, all-reduce, ClippedAdam, zero_grads) of a
    one-rank gloo group gives SVI.step's parameters and losses bit for bit."""
    config = TrainConfig(**SRNN)
    batches = _srnn_batches()
    results = []
    for grouped in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = config.build(88)
        svi = SVI(model, guide, ClippedAdam({"lr": 1e-2, "clip_norm": 10.0}),
                  make_elbo("trace"))
        if grouped:
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                                    rank=0, world_size=1)
            group = DistributedGroup("cpu", owns_group=True)
        try:
            losses = [group.step(svi, *group.shard(b.x, b.mask), 0.5) if grouped
                      else svi.step(b.x, b.mask, 0.5) for b in batches]
        finally:
            if grouped:
                group.close()
        results.append((losses, _states(model, guide)))
    assert results[1][0] == results[0][0]
    assert_close_states(results[1][1], results[0][1], atol=0)
    assert not dist.is_initialized()


# ---- the command line ----------------------------------------------------------------------------
def test_the_run_folder_of_two_ranks_is_the_one_process_run_folder(group_results, data_file,
                                                                   tmp_path):
    one, two = tmp_path / "one", group_results[0] / "cli"
    status, _, stderr = run_cli(*cli_train_argv(data_file, one))
    assert status == 0, stderr
    assert {p.name for p in two.iterdir()} == {p.name for p in one.iterdir()} == {
        LAST, BEST, "metrics.jsonl", "curves.png", "run.json"}
    mine, theirs = read_metrics(two), read_metrics(one)
    assert [r["epoch"] for r in mine] == [r["epoch"] for r in theirs] == [1, 2]
    for a, b in zip(mine, theirs):
        assert a["step"] == b["step"]
        assert a["valid_elbo_per_step"] == pytest.approx(b["valid_elbo_per_step"], abs=1e-5)
        assert a["train_objective_per_step"] == pytest.approx(b["train_objective_per_step"],
                                                              abs=1e-5)
    a, b = load_checkpoint(two / LAST), load_checkpoint(one / LAST)
    assert (a["epoch"], a["step"], a["config"]) == (b["epoch"], b["step"], b["config"])
    assert_close_states([a["model_state"]], [b["model_state"]])
    run_two, run_one = (json.loads((f / "run.json").read_text()) for f in (two, one))
    assert run_two["config"] == run_one["config"]


def test_two_ranks_resume_like_one_process(group_results, data_file, tmp_path):
    """The 2-rank run above was resumed on 2 ranks to 3 epochs: rank 0 read the checkpoint and
    the history, every rank took them, and the result is a 3-epoch one-process run."""
    one, two = tmp_path / "one", group_results[0] / "cli_resumed"
    status, _, stderr = run_cli(*cli_train_argv(data_file, one, epochs=3))
    assert status == 0, stderr
    mine, theirs = read_metrics(two), read_metrics(one)
    assert [r["epoch"] for r in mine] == [1, 2, 3]
    assert mine[-1]["valid_elbo_per_step"] == pytest.approx(theirs[-1]["valid_elbo_per_step"],
                                                            abs=1e-5)
    a, b = load_checkpoint(two / LAST), load_checkpoint(one / LAST)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 9)
    assert_close_states([a["model_state"]], [b["model_state"]])


def test_a_failing_rank_stops_every_rank_at_the_same_update(group_results):
    folder = group_results[0]
    failures = [torch.load(folder / f"failure{r}.pt", weights_only=False) for r in range(WORLD)]
    # rank 1's own error, with the Trainer's context; rank 0 stops with a pointer to it
    assert failures[1][0] == "DataError"
    assert "update 2" in failures[1][1] and "boom" in failures[1][1]
    assert failures[0] == ("PeerFailedError", "rank 1 of 2 failed during an update (its error is "
                           "printed by that rank); all ranks stopped")


def test_a_killed_rank_leaves_a_resumable_last_checkpoint(data_file, tmp_path):
    run = tmp_path / "run"
    argv = cli_train_argv(data_file, run, epochs=400)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(cli.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "--monitor_interval", "0.2", "-m", "pyro_seqvae", *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                (run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 2):
            assert launcher.poll() is None, launcher.communicate()
            time.sleep(0.2)
        assert len(read_metrics(run)) >= 2, "the run did not start in time"
        workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                 text=True).stdout.split()
        assert len(workers) == WORLD, workers
        # torchrun starts its workers in rank order: the lowest pid is rank 0, the one that
        # writes, killed at whatever point of an epoch (or of a checkpoint write) it is in
        os.kill(min(int(w) for w in workers), signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0, stderr
    payload = load_checkpoint(run / LAST)
    assert 2 <= payload["epoch"] < 400
    assert all(torch.isfinite(v).all() for v in payload["model_state"].values())
    assert [r["epoch"] for r in read_metrics(run)][:payload["epoch"]] == list(
        range(1, payload["epoch"] + 1))
    # the global batch does not depend on the number of ranks: one process may finish the run
    target = payload["epoch"] + 1
    status, _, err = run_cli(*cli_train_argv(data_file, run, epochs=target), "--resume")
    assert status == 0, err
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, target + 1))
    assert load_checkpoint(run / LAST)["epoch"] == target


# ---- errors and devices --------------------------------------------------------------------------
def test_error_lines_per_rank(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert error_line("pyro-seqvae train", DataError("bad")) == "pyro-seqvae train: error: bad"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert error_line("p", PeerFailedError("rank 2 failed")) == "p: error: rank 2 failed"
    monkeypatch.setenv("RANK", "2")
    assert error_line("p", DataError("bad")) == "p: error: rank 2 of 4: bad"
    assert error_line("p", PeerFailedError("x")) is None  # rank 0 says it
    assert error_line("p", DivergenceError("nan")) is None  # every rank met it; rank 0 says it


def test_backend_follows_the_device():
    assert backend_for("cpu") == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for("cuda") == "nccl"


def test_without_torchrun_training_is_one_process(monkeypatch):
    from pyro_seqvae.training.distributed import from_environment

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert type(from_environment("cpu")) is SingleProcess
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK is not"):
        from_environment("cpu")
    assert not isinstance(SingleProcess(), DistributedGroup)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="expected an integer"):
        monkeypatch.setenv("LOCAL_RANK", "first")
        from_environment("cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    if not torch.cuda.is_available():  # nccl is chosen for CUDA, which must then exist
        with pytest.raises(ConfigError, match="CUDA is not available"):
            from_environment("cuda")
