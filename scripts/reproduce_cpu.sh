#!/usr/bin/env bash
# The CPU reproduction of docs/results.md, scaled for a 2-core machine.
#
# Scale (every cell): schedules / 20 (1000 -> 50 epochs, 4000 -> 200, keep-rate period
# 500 -> 25, lr cycle 1000 -> 50, warm-up 100 -> 5), peak lr x 20 (same lr x steps), test
# networks at width 8 (ResNet-18: 8-64 channels instead of 64-512, depth kept), trained
# ConvNet teachers at width 32 (ConvNet-FRePo 32-128 instead of 128-512), 2 evaluations per
# run, 3 seeds, each seed its own program (vmapped convolutions are slow on XLA:CPU).
#
# Usage: scripts/reproduce_cpu.sh <experiment> [runs root] [--config.field=value ...]
#   (rerun the same command to resume; e.g. --config.reproduce.cells=full runs one cell)
#   experiments: frepo_cifar10_jpeg_10_resnet18, mtt_cifar10_jpeg_1_resnet18,
#                realsubset_fashion_mnist_10_resnet18
set -euo pipefail
EXPERIMENT=${1:?experiment name}
ROOT=${2:-runs/repro}
HERE=$(cd "$(dirname "$0")/.." && pwd)
# the data root (CIFAR-10 (JPEG), published sets, teachers): $DISTILL_JAX_DATA, else ../shared/data beside the repository
export DISTILL_JAX_DATA=${DISTILL_JAX_DATA:-$(cd "$HERE/.." && pwd)/shared/data}
mkdir -p "$ROOT/$EXPERIMENT"
exec nice -n 5 "${PYTHON:-$HERE/.venv/bin/python}" "$HERE/launch/main.py" \
  --config "$HERE/configs/reproduce.py:$EXPERIMENT" --workdir "$ROOT/$EXPERIMENT" \
  --config.reproduce.epoch_divisor=20 --config.reproduce.lr_multiplier=20 \
  --config.reproduce.width=8 --config.reproduce.teacher_width=32 \
  --config.reproduce.evals=2 --config.reproduce.split_seeds=True "${@:3}" \
  >> "$ROOT/$EXPERIMENT/log.txt" 2>&1
