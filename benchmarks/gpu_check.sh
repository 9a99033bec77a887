#!/usr/bin/env bash
# The GPU figures of issue 17 in one short session (about 10 minutes on one GPU; each step is
# bounded by `timeout`). Run from the repository root on a machine with CUDA:
#
#     bash benchmarks/gpu_check.sh [results-folder]        # default: benchmarks/results
#
# 1. speed.py --device cuda: the library's SVI step (eager and JIT) against plain PyTorch;
# 2. a short training run (3 epochs, paper size) and `evaluate` with K = 500 on the test split;
# 3. torchrun with nccl: on N >= 2 GPUs N ranks; on one GPU a one-rank nccl group
#    (PYRO_SEQVAE_DISTRIBUTED=1), since two nccl ranks cannot share one device;
# 4. distributed.py --device cuda: throughput of W ranks against one (N >= 2 GPUs only).
#
# Written without a GPU to run it on: the CPU/gloo path is what the test suite checks.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
runs=$(mktemp -d)
export OMP_NUM_THREADS=1
ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $ngpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_info.csv"

timeout 300 python benchmarks/speed.py --device cuda --models vrnn srnn --reps 3 \
    --epochs-fraction 0.5 --is-particles 500 --is-sequences 16 --out "$out/speed_cuda.json"
python benchmarks/speed.py --report "$out/speed_cuda.json"

start=$(date +%s)
timeout 180 python -m pyro_seqvae train --device cuda --epochs 3 --quiet --out "$runs/srnn"
echo "train: $(( $(date +%s) - start )) s for 3 epochs" | tee "$out/train_cuda.txt"
timeout 180 python -m pyro_seqvae evaluate "$runs/srnn" --device cuda --particles 500 --quiet \
    --out "$out/eval_cuda_K500.json"

if [ "$ngpu" -ge 2 ]; then
    timeout 180 torchrun --standalone --nproc_per_node "$ngpu" -m pyro_seqvae train \
        --device cuda --epochs 2 --batch-size $(( 16 * ngpu )) --quiet --out "$runs/srnn-nccl"
    timeout 300 python benchmarks/distributed.py --device cuda --worlds 1 "$ngpu" --reps 3 \
        --batch-size $(( 16 * ngpu )) --out "$out/distributed_cuda.json"
else
    PYRO_SEQVAE_DISTRIBUTED=1 timeout 180 torchrun --standalone --nproc_per_node 1 \
        -m pyro_seqvae train --device cuda --epochs 2 --quiet --out "$runs/srnn-nccl"
fi
cat "$runs/srnn-nccl/metrics.jsonl" | tee "$out/nccl_metrics.jsonl"
echo "done: results in $out"
