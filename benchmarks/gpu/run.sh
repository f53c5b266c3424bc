#!/usr/bin/env bash
# raycl on one GPU, one prepared run (issue 13): correctness on CUDA, the tiled loss at up to
# 1,048,576 embeddings against its own matmul limit, bf16 training steps, a one-rank nccl group.
# Every result goes to one folder: $OUT if set, else ./gpu-results; gpu.md is the report.
#
#   benchmarks/gpu/run.sh                          # the full run on CUDA (≤ 8 minutes on an H200)
#   benchmarks/gpu/run.sh --device cpu --dry-run   # tiny sizes, to debug the script anywhere
#   benchmarks/gpu/run.sh --stages loss            # one stage again (e.g. after a faster tile path)
#
# Needs Python with torch (+ numpy, scikit-learn, torchvision, pytest): no Ray, Hydra or
# OmegaConf. Each stage runs in its own process under a time box (raycl/bench/gpu.py, FULL);
# a failure or out-of-memory in one is recorded and the run goes on.
#
# Time estimate on one H200 (dense bf16 ≈ 800 TFLOP/s, fp32 ≈ 50 TFLOP/s, HBM ≈ 4.8 TB/s):
#  * loss (box 230 s). The tiled engine visits the 8,256 tiles on and above the diagonal of a
#    1,048,576² matrix (block 8,192), each 1 GEMM forward + 3 backward of 2·8192²·128 =
#    1.7e10 FLOP: 5.7e14 FLOP (two 1M×1M×128 GEMMs of 2.8e14). Its matmul limit: bf16 ≈ 0.7 s,
#    fp32 ≈ 11 s; all five sizes (65,536 … 1,048,576: Σ M² = 4/3 of the largest) ≈ 1 s + 15 s.
#    The engine's elementwise work, ~25 passes over each 268 MB fp32 tile, ≈ 1.4 ms a tile or
#    ≈ 12 s per loss at M = 1,048,576; with its GEMMs, summed over sizes and both families:
#    bf16 ≈ 2 · 4/3 · 13 ≈ 35 s, fp32 ≈ 2 · 4/3 · 23 ≈ 61 s; the materialised engine (only at
#    65,536) ≈ 4 s; random inputs generated on the CPU ≈ 20 s. Stage ≈ 135 s.
#  * correctness (box 70 s): pytest ≈ 20 s; 12 engine checks at M = 12,288 whose fp64
#    reference does 3 evaluations × 2 GEMMs of 2·12288³ = 3.7e12 FLOP ≈ 2.7e14 FLOP at
#    ≈ 60 TFLOP/s fp64 ≈ 5 s, plus the engines ≈ 5 s. Stage ≈ 35 s.
#  * train (box 100 s): digits, 2 short epochs ≈ 10 s; resnet18 CIFAR stem ≈ 1.1 GFLOP per
#    32×32 view forward, ×2 views ×3 (forward + backward) ≈ 6.7 GFLOP per item; at ~30 % of
#    bf16 peak ≈ 35,000 items/s; 6 steps at each batch 256 … 16,384 (≈ 200,000 items) ≈ 6 s,
#    model set-up and the out-of-memory attempt ≈ 15 s. Stage ≈ 30 s.
#  * collectives (box 40 s): nccl start-up and two tiny losses ≈ 10 s.
#  Each stage's process start (import torch, CUDA context) ≈ 5 s is inside its box.
#  Expected ≈ 4 minutes; the boxes sum to 440 s, so the run ends within 7.5 minutes whatever
#  happens, report included.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m raycl.bench.gpu "$@"
