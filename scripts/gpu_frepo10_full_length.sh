#!/usr/bin/env bash
# Full-length FRePo IPC 10 on CIFAR-10 (JPEG): ConvNet-FRePo teacher, then the paper's five
# ResNet-18 columns (Baseline, w/o DP & KD, w/o DP: 1000 epochs; w/o KD, Full: 4000), 3 seeds
# each, vmapped in one program per cell, at the paper's widths (about 10 min on one H200,
# docs/results.md §1e). Writes the run's results record to results/gpu_frepo10_full_length.json
# (docs/results.md is rendered from results/: add {{ table:gpu_frepo10_full_length }} to
# docs/templates/results.md, then run `distill-jax render-docs`).
# For a GPU machine that has the data root (DISTILL_JAX_DATA, with the training split) and time.
# An offline GPU machine (no network, no data root) runs the same cells through
# scripts/gpu_bundle.sh + scripts/gpu_device_run.sh instead (benchmarks/README.md, "Running on an
# offline accelerator machine").
#
# Usage (on a GPU machine, from the repository root):  scripts/gpu_frepo10_full_length.sh [workdir]
# Rerun the same command to resume an interrupted run (cells restart from their checkpoints).
set -euo pipefail
WORKDIR=${1:-runs/gpu_frepo_cifar10_jpeg_10_resnet18}
PYTHON=${PYTHON:-python}
mkdir -p "$WORKDIR"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo "unknown device")
"$PYTHON" launch/main.py --config "configs/reproduce.py:frepo_cifar10_jpeg_10_resnet18" --workdir "$WORKDIR" \
  2>&1 | tee -a "$WORKDIR/log.txt"
"$PYTHON" -m distill_jax.cli record "$WORKDIR" --out results/gpu_frepo10_full_length.json \
  --command "scripts/gpu_frepo10_full_length.sh $WORKDIR"
echo "GPU: $CARD; record: results/gpu_frepo10_full_length.json"
