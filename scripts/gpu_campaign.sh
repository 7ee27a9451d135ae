#!/usr/bin/env bash
# The device campaign: one command for an offline GPU machine (e.g. one H200) that measures the
# training program, then trains the paper's next queued cells that fit the time left, and leaves
# their results records (the format of results/, ready to commit) under $OUT
# (benchmarks/README.md, "The device campaign"). Dry-run on CPU by scripts/tests/test_gpu_campaign.py.
#
#   1. setup (scripts/gpu_common.sh): the bundle (scripts/gpu_bundle.sh) checked against its
#      SHA256SUMS, its wheels installed with pip --no-index into $WORK/site, the imports checked;
#   2. the program, measured (benchmarks/run_all.py --preset gpu_campaign): ResNet-18 at the paper's
#      batch 100 with 1, 5, 16 and 32 seeds vmapped, in float32 and (where the config has
#      train.compute_dtype) bfloat16, MFU and images/s beside PyTorch's best setting (channels_last;
#      bf16 autocast beside bfloat16); kept in $WORK, so a rerun on the same machine skips it;
#   3. the cells (benchmarks/campaign.py run): the queue (benchmarks/campaign_queue.json) less the
#      cells results/ already holds, in order; a cell starts only if its estimate fits the seconds
#      left (KD cells count their teacher's when the workdir lacks it); each finished cell's
#      experiment record is written to $OUT at once;
#   4. summary.md (also printed), campaign.json (estimate against wall time per cell, the cells not
#      started and why), runs.tar.gz (records, metrics, plots; no checkpoints).
#
# Out files: progress.txt, bench.txt, bench.json, campaign_log.txt, campaign.json, summary.md,
# runs.tar.gz, and one <experiment>.<cells>.json per experiment with finished cells.
#
# Time (sized for a command limit of 600 s): GPU_RUN_BUDGET_S (default 560 s) in all; setup ~20 s;
# the measurement at most GPU_RUN_BENCH_S (default 150 s: 8-10 programs compiled at once, then
# 10 rounds); the cells get the rest less 25 s for the summary; the Python side stops starting
# cells 20 s before its deadline. A cell cut off by the limit resumes from its checkpoint when the
# same command runs again on the same machine (the workdir is kept); GPU_CAMPAIGN_NEXT_S (default 0)
# says how many seconds such a following call will have, so that one cell longer than this call
# may start and end there.
#
# Usage (on the accelerator machine, from the repository root; bundle built by scripts/gpu_bundle.sh):
#   OUT=gpu_out bash scripts/gpu_campaign.sh gpu_bundle
# Environment: OUT (required), GPU_RUN_BUDGET_S, GPU_RUN_BENCH_S (0 skips the measurement),
# GPU_RUN_WORKDIR (default /tmp/distill_jax_gpu_campaign), GPU_CAMPAIGN_QUEUE (default
# benchmarks/campaign_queue.json), GPU_CAMPAIGN_RESULTS (default results: the done markers),
# GPU_CAMPAIGN_NEXT_S, PYTHON (default python3), GPU_RUN_TOY=1 (the CPU dry run: the same phases
# at toy size, labelled so; estimates divided by the toy's epoch divisor).
set -uo pipefail
WORK_DEFAULT=/tmp/distill_jax_gpu_campaign
BENCH_DEFAULT=150
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
QUEUE=${GPU_CAMPAIGN_QUEUE:-benchmarks/campaign_queue.json}
RESULTS=${GPU_CAMPAIGN_RESULTS:-results}
NEXT_S=${GPU_CAMPAIGN_NEXT_S:-0}
if [ "$TOY" = 1 ]; then PRESET=gpu_campaign_toy; else PRESET=gpu_campaign; fi

log "campaign$([ "$TOY" = 1 ] && echo ' (TOY DRY RUN)'): bundle $BUNDLE, workdir $WORK, budget ${BUDGET}s, queue $QUEUE"
device_setup

# ---- the program, measured
bench_phase "$PRESET"

# ---- the cells
cap=$(( $(left) - 25 ))
log "cells: at most ${cap}s"
if [ "$cap" -gt 20 ]; then
  timeout --kill-after=15 "$cap" "$PYTHON" benchmarks/campaign.py run --bundle "$BUNDLE" --workdir "$WORK/campaign" \
    --out "$OUT" --deadline "$(( $(date +%s) + cap - 5 ))" --queue "$QUEUE" --results "$RESULTS" --next-s "$NEXT_S" \
    $TOY_FLAG >> "$OUT/campaign_log.txt" 2>&1
  CELLS_RC=$?
  log "cells: exit $CELLS_RC$(timed_out $CELLS_RC && echo ' (time budget reached: a cell was cut; rerun to resume)')"
fi

# ---- what came of it
"$PYTHON" benchmarks/campaign.py summary --out "$OUT" $TOY_FLAG > "$WORK/summary.txt" 2>&1
rc=$?
tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude=checkpoints --exclude='*.npz' --exclude=toy_data campaign 2>/dev/null
log "done (summary exit $rc)"
cat "$WORK/summary.txt"
failed_phase_tail measurement "${BENCH_RC:-0}" "$OUT/bench.txt" 25
failed_phase_tail cells "${CELLS_RC:-0}" "$OUT/campaign_log.txt" 40
