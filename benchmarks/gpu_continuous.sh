#!/usr/bin/env bash
# Issue 16's comparison at SD 1.5 size on one GPU, as one command (about 6-8 minutes on an H100/H200):
#   bash benchmarks/gpu_continuous.sh [OUT_DIR]
# 1. bench_engine.py --real-size: images/s at batch 1/8/16 with 1, 8 and 32 distinct adapters (the mixed-batch
#    vs single-adapter ratio), diffusers swapping the LoRA per request, and the share of the measured matmul
#    rate each reaches (UNet FLOP utilisation).
# 2. bench_step_scheduler.py --real-size: per-step continuous batching vs request-level batching under Poisson
#    load at 50/80/95 % of saturation, and 32 users x 2 images against a hot-swapping diffusers pipeline.
# The GPU machine has torch and transformers but not diffusers/peft: install their wheels first
# (benchmarks/bench_engine.py's docstring says how). Figures go to stdout and OUT_DIR (default ./gpu-out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-gpu-out}
mkdir -p "$out"
python=${PYTHON:-python}
timeout 300 "$python" "$here/bench_engine.py" --real-size --batches 1,8,16 --repeats 1 | tee "$out/engine.txt"
timeout 300 "$python" "$here/bench_step_scheduler.py" --real-size --json "$out/step_scheduler.json" | tee "$out/step_scheduler.txt"
