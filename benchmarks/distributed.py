"""Throughput of data-parallel training: W processes (gloo or nccl) against one.

Each repetition launches, for every world size ``W`` in ``--worlds`` (rotated order), ``W``
processes (``torch.multiprocessing`` spawn, TCP rendezvous on 127.0.0.1), each with
``--threads`` torch threads. Every process builds the same model (SRNN + SmoothingGuide with
Res_q at the music size by default), takes the first ``--warmup + --updates`` global batches of
the seeded, length-bucketed JSB epoch (``--batch-size`` sequences per update *in all*; with
``--weak``, per rank), and runs the Trainer's update,
``parallel.step(svi, *parallel.shard(x, mask), beta)`` (:mod:`pyro_seqvae.training.distributed`).
After ``--warmup`` updates and a barrier, rank 0 times ``--updates`` updates (a barrier at the
end). Reported: real (unpadded) steps, padded steps and sequences per second, the speed-up of
each ``W`` over ``W = 1`` in real steps per second within the same repetition, and the seconds
each rank spent inside the all-reduces (the transfer plus waiting for the slowest rank); the
load average of the machine before and after is recorded, since the figures depend on it.

Example::

    python benchmarks/distributed.py --worlds 1 2 --reps 3 --updates 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(args.threads)
    import pyro
    import torch.distributed as dist
    from pyro.infer import SVI
    from pyro.optim import ClippedAdam

    from pyro_seqvae.data import load_dataset
    from pyro_seqvae.data.batching import iterate_batches
    from pyro_seqvae.infer.elbo import make_elbo
    from pyro_seqvae.training import TrainConfig
    from pyro_seqvae.training.distributed import from_environment

    parallel = from_environment(args.device)
    device = parallel.local_device(torch.device(args.device))
    batch_size = args.batch_size * world if args.weak else args.batch_size
    config = TrainConfig(model=args.model, guide="smooth", residual=True, seed=args.seed,
                         batch_size=batch_size, validate="never", device=args.device,
                         model_kwargs={"z_dim": args.z_dim, "rnn_dim": args.rnn_dim,
                                       "hidden_dim": args.hidden_dim})
    splits = load_dataset("jsb", progress=False, limit=args.limit)
    batches = iterate_batches(splits.train, batch_size, shuffle=True, seed=args.seed,
                              bucket_by_length=True, device=device)
    batches = [b for _, b in zip(range(args.warmup + args.updates), batches)]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide = config.build(splits.x_dim)
    model.to(device)
    guide.to(device)
    svi = SVI(model, guide, ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm}),
              make_elbo("trace"))
    parallel.begin_fit(model, guide, seed=args.seed, step=0)

    waited = [0.0]  # seconds inside the all-reduces: the transfer plus the wait for the slowest
    if world > 1:
        all_reduce = parallel._all_reduce

        def timed_all_reduce(*a, **k):
            start = time.perf_counter()
            try:
                return all_reduce(*a, **k)
            finally:
                waited[0] += time.perf_counter() - start

        parallel._all_reduce = timed_all_reduce

    def update(batch):
        return parallel.step(svi, *parallel.shard(batch.x, batch.mask), 0.5)

    for batch in batches[:args.warmup]:
        update(batch)
    if world > 1:
        dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, waited[0] = time.perf_counter(), 0.0
    for batch in batches[args.warmup:]:
        update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    queue.put({"rank": rank, "all_reduce_seconds": waited[0]})
    if parallel.is_main:
        timed = batches[args.warmup:]
        queue.put({"world": world, "seconds": seconds, "updates": len(timed),
                   "sequences": sum(b.x.shape[0] for b in timed),
                   "padded_steps": sum(b.x.shape[0] * b.x.shape[1] for b in timed),
                   "real_steps": sum(int(b.mask.sum()) for b in timed)})
    parallel.close()


def measure(world, args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_worker, args=(rank, world, port, args, queue))
             for rank in range(world)]
    for p in procs:
        p.start()
    messages = [queue.get(timeout=args.timeout) for _ in range(world + 1)]
    result = next(m for m in messages if "world" in m)
    result["all_reduce_seconds_per_rank"] = [
        m["all_reduce_seconds"] for m in sorted(messages, key=lambda m: m.get("rank", -1))
        if "rank" in m]
    for p in procs:
        p.join(timeout=60)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"W={world}: exit codes {[p.exitcode for p in procs]}")
    result["sequences_per_second"] = result["sequences"] / result["seconds"]
    result["padded_steps_per_second"] = result["padded_steps"] / result["seconds"]
    result["real_steps_per_second"] = result["real_steps"] / result["seconds"]
    return result


def table(result) -> str:
    """One row per repetition and world size: real (unpadded) steps per second, the primary
    figure (with --weak the batches differ in length, so sequences per second mislead), and
    the speed-up over W = 1 in the same repetition."""
    rows = ["| rep | W | mean global batch | updates | seconds | real steps/s | x of W=1 | "
            "all-reduce s per rank |", "|---|---|---|---|---|---|---|---|"]
    for i, rep in enumerate(result["reps"]):
        base = rep.get("1")
        for w, r in rep.items():
            batch = r["sequences"] / r["updates"]
            speedup = (r["real_steps"] / r["seconds"]) / (base["real_steps"] / base["seconds"])
            rows.append(f"| {i + 1} | {w} | {batch:.0f} | {r['updates']} | {r['seconds']:.1f} | "
                        f"{r['real_steps'] / r['seconds']:.0f} | "
                        + (f"{speedup:.2f}" if base else "") + " | "
                        + ", ".join(f"{t:.1f}" for t in r.get("all_reduce_seconds_per_rank",
                                                               [])) + " |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--updates", type=int, default=10, help="timed updates per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=20, help="global batch (all ranks)")
    p.add_argument("--weak", action="store_true",
                   help="weak scaling: --batch-size sequences per rank (global W * batch)")
    p.add_argument("--model", default="srnn")
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--rnn-dim", type=int, default=300)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--limit", type=int, default=None, help="JSB chorales (default: all)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU a rank)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="print the table of an existing result file and exit")
    args = p.parse_args(argv)
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return

    from pyro_seqvae.training.runlog import environment

    load_before = os.getloadavg()
    reps = []
    for rep in range(args.reps):
        order = args.worlds[rep % len(args.worlds):] + args.worlds[:rep % len(args.worlds)]
        runs = {w: measure(w, args) for w in order}
        base = runs.get(1)
        for w, r in runs.items():
            r["speedup_vs_1"] = (r["real_steps_per_second"] / base["real_steps_per_second"]
                                 if base else None)
            print(f"rep {rep + 1}: W={w}: {r['real_steps_per_second']:.0f} steps/s "
                  f"({r['seconds']:.1f} s for {r['updates']} updates, in all-reduces per rank "
                  f"{', '.join(f'{t:.1f}' for t in r['all_reduce_seconds_per_rank'])} s)"
                  + (f", x{r['speedup_vs_1']:.2f} of W=1" if base else ""), flush=True)
        reps.append({str(w): r for w, r in runs.items()})
    summary = {str(w): {"median_real_steps_per_second": statistics.median(
                            r[str(w)]["real_steps_per_second"] for r in reps),
                        "median_speedup_vs_1": statistics.median(
                            r[str(w)]["speedup_vs_1"] for r in reps)
                        if 1 in args.worlds else None}
               for w in args.worlds}
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "settings": vars(args), "environment": environment(args.device),
              "cpu_count": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "reps": reps, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    for w, s in summary.items():
        print(f"W={w}: median {s['median_real_steps_per_second']:.0f} steps/s"
              + (f", median speed-up x{s['median_speedup_vs_1']:.2f}"
                 if s["median_speedup_vs_1"] is not None else ""))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
