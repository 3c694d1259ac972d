#!/usr/bin/env bash
# Figure 8: LoRA training on a GPU, the project's loop against the plain loop after diffusers'
# train_text_to_image_lora.py. An SD-1.5-sized pipeline is built from its configs with random
# weights (nothing is downloaded), then 512 px, batch 1, rank 4, bf16: steps/s and peak memory of
# each, alternating, 5 repetitions (plus the plain loop under torch.compile, 2 repetitions).
# Under 8 minutes on one H100/H200-class GPU; prints a Markdown table, writes bench/gpu-results.json.
#
#   bench/gpu.sh                      # on a machine with a GPU (the repository with its .venv)
#   bench/gpu.sh --device cpu --tiny  # the same code path on a CPU in seconds (make bench-smoke runs it)
#
# Needs: the project's venv (`make setup`: torch 2.13 CUDA build, diffusers, transformers, peft,
# from PyPI) and nothing else; no network at run time (HF_HUB_OFFLINE=1). A GPU machine without
# PyPI access needs the venv built elsewhere for the same Python (3.11) and copied, or a pip
# cache/wheelhouse of worker[training] (`pip download` on a connected host, `pip install --no-index`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
device=cuda tiny=0 compile=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --tiny) tiny=1; shift ;;
    --no-compile) compile=0; shift ;;
    *) echo "usage: bench/gpu.sh [--device cuda|cpu] [--tiny] [--no-compile]" >&2; exit 2 ;;
  esac
done
if [ "$tiny" = 1 ]; then
  args=(--size sd15-mini --resolution 64 --steps 4 --warmup 1 --reps 1)
  compile=0  # torch.compile of even a small UNet takes minutes on 2 CPUs
else
  args=(--size sd15 --resolution 512 --steps 30 --warmup 10 --reps 5 --compile-reps 2)
fi
[ "$compile" = 1 ] && args+=(--compile)
out=${BENCH_GPU_OUT:-bench/gpu-results.json}
if [ "$device" = cuda ]; then
  "$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"; print(torch.cuda.get_device_name(0), "torch", torch.__version__)'
fi
HF_HUB_OFFLINE=1 PYTHONPATH=. timeout 480 "$PY" -m bench.training --device "$device" "${args[@]}" --out "$out" --table
