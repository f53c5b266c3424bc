#!/usr/bin/env bash
# raycl on one GPU, one prepared run (issue 13): correctness on CUDA, the tiled loss at up to
# 1,048,576 embeddings against its own matmul limit, bf16 training steps, a one-rank nccl group.
# Every result goes to one folder, $OUT if set, else ./gpu-results; gpu.md is the report.
#
#   benchmarks/gpu/run.sh                          # the full run on CUDA (< 8 minutes, H200)
#   benchmarks/gpu/run.sh --device cpu --dry-run   # tiny sizes, to debug the script anywhere
#   benchmarks/gpu/run.sh --stages loss            # one stage again, e.g. to measure a faster
#                                                  # CUDA tile path against the same limit
#
# Needs Python with torch, numpy, scikit-learn, torchvision and pytest; no Ray, Hydra or
# OmegaConf. Each stage runs in its own process under a time box (raycl/bench/gpu.py, FULL):
# a failure, out-of-memory or hang in one is recorded and the run goes on.
#
# Time on one H200 (dense bf16 ≈ 800 TFLOP/s, fp32 ≈ 50 TFLOP/s, fp64 ≈ 60, HBM ≈ 4.8 TB/s):
#  loss (box 210 s). At M = 1,048,576 the tiled engine visits the 128·129/2 = 8,256 tiles on
#    and above the diagonal (block 8,192), each 1 GEMM forward + 3 backward of
#    2·8192²·128 = 1.7e10 FLOP: 5.7e14 FLOP (≈ two 1M×1M×128 GEMMs of 2.8e14). Its matmul
#    limit: bf16 ≈ 0.7 s, fp32 ≈ 11 s; five sizes 65,536 … 1,048,576 (Σ M² = 4/3 of the
#    largest) ≈ 1 s + 15 s. The engine's elementwise work, ~25 passes over each 268 MB fp32
#    tile, ≈ 1.4 ms a tile, ≈ 12 s per loss at 1,048,576; with its GEMMs, over all sizes and
#    both families: bf16 ≈ 2 · 4/3 · 13 ≈ 35 s, fp32 ≈ 2 · 4/3 · 23 ≈ 61 s. The materialised
#    engine (at 65,536 only) ≈ 4 s; inputs drawn on the CPU ≈ 20 s. Stage ≈ 135 s.
#  correctness (box 90 s): pytest -m cuda ≈ 20 s (its own box 45 s); 12 engine checks at
#    M = 12,288: the fp64 reference evaluates 3 times 2 GEMMs of 2·12288³ = 3.7e12 FLOP,
#    2.7e14 FLOP in all ≈ 5 s, the engines ≈ 5 s. Stage ≈ 35 s.
#  train (box 130 s): digits, 2 short epochs ≈ 10 s; resnet18 (CIFAR stem) ≈ 1.1 GFLOP per
#    32×32 view forward, ×2 views ×3 (forward + backward) ≈ 6.7 GFLOP per item, at ~30 % of
#    peak ≈ 35,000 items/s; 6 steps at each batch 256 … 16,384 (≈ 200,000 items) ≈ 6 s, set-up
#    and the out-of-memory attempt ≈ 15 s; then train.chunk_size=256 at 256 … 65,536 (one
#    extra forward: ≈ 25,000 items/s, 6 × 131,000 items) ≈ 32 s. Stage ≈ 65 s.
#  collectives (box 40 s): nccl start-up and two tiny losses ≈ 10 s.
#  Each stage's start (import torch, CUDA context, ≈ 5 s) is inside its box. Expected ≈ 4.5
#  minutes; the boxes sum to 470 s, so the run ends within 8 minutes whatever happens.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m raycl.bench.gpu "$@"
