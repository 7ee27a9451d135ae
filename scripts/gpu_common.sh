# The parts the accelerator scripts share (scripts/gpu_device_run.sh, scripts/gpu_campaign.sh):
# sourced by them, not run. Before sourcing, the script sets WORK_DEFAULT (its workdir) and
# BENCH_DEFAULT (its benchmark's time cap, s); the caller's first argument is the bundle folder.
#
# Sets: OUT (absolute), REPO, BUNDLE, TOY (GPU_RUN_TOY), BUDGET (GPU_RUN_BUDGET_S, default 560),
# BENCH_S (GPU_RUN_BENCH_S), WORK (GPU_RUN_WORKDIR), PYTHON, START, TOY_FLAG (--toy or empty),
# JAX_COMPILATION_CACHE_DIR (in $WORK, so a rerun on the same machine loads its programs).
# Functions: log, left (seconds of the budget left), timed_out RC, device_setup (the bundle's sums,
# its wheels, an import check; exits 2 if the bundle is bad), bench_phase PRESET (benchmarks/run_all.py
# under a time cap, once per workdir; out: bench.txt, bench.json).
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=$(cd "${1:-$REPO/gpu_bundle}" 2>/dev/null && pwd) || {
  echo "no bundle folder ${1:-$REPO/gpu_bundle}: build it with scripts/gpu_bundle.sh" | tee -a "$OUT/progress.txt"; exit 2; }
cd "$REPO"
TOY=${GPU_RUN_TOY:-0}
BUDGET=${GPU_RUN_BUDGET_S:-560}
BENCH_S=${GPU_RUN_BENCH_S:-$BENCH_DEFAULT}
WORK=${GPU_RUN_WORKDIR:-$WORK_DEFAULT}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
START=$SECONDS
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/xla_cache}
if [ "$TOY" = 1 ]; then TOY_FLAG=--toy; else TOY_FLAG=; fi

log() { echo "[$(date -u +%H:%M:%S)] +$((SECONDS - START))s $*" | tee -a "$OUT/progress.txt"; }
left() { echo $((BUDGET - (SECONDS - START))); }
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }

device_setup() {  # the bundle checked against its sums, its wheels installed into $WORK/site, imports checked
  if ! (cd "$BUNDLE" && sha256sum -c --quiet SHA256SUMS) >> "$OUT/progress.txt" 2>&1; then
    log "the bundle does not match its SHA256SUMS: rebuild it with scripts/gpu_bundle.sh"; exit 2
  fi
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
       "$BUNDLE"/wheels/*.whl >> "$OUT/progress.txt" 2>&1; then
    log "installing the carried wheels failed (see above)"; exit 2
  fi
  export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  {
    if command -v nvidia-smi > /dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    else
      echo "no nvidia-smi on this machine"
    fi
    "$PYTHON" - <<'EOF' > "$WORK/setup_check.txt" 2>&1
import importlib.metadata as m, platform
import jax
def version(name):
    for candidate in (name, name.replace("-", "_")):
        try:
            return m.version(candidate)
        except m.PackageNotFoundError:
            pass
    return "absent"
print("python", platform.python_version(), "| jax devices:", jax.devices())
print("versions:", {n: version(n) for n in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex",
                                          "ml-collections", "tensorboardX", "torch", "numpy")})
import distill_jax.training.loop  # every module-level import the run needs
import ml_collections, tensorboardX
print("distill_jax imports: ok; ml_collections from", ml_collections.__file__, "| tensorboardX from", tensorboardX.__file__)
EOF
    SETUP_RC=$?
    cat "$WORK/setup_check.txt"
  } >> "$OUT/progress.txt"
  if [ "$SETUP_RC" -ne 0 ]; then  # the phases after it will fail the same way: say why at once
    log "setup check failed (exit $SETUP_RC):"; tail -n 30 "$WORK/setup_check.txt"
  else
    log "setup done"
  fi
}

bench_phase() {  # bench_phase PRESET: at most BENCH_S s (and 60 s short of the budget); kept in $WORK once done
  local preset=$1 cap rc
  if [ -f "$WORK/bench.json" ]; then
    log "benchmark: finished in an earlier call, kept"
  else
    cap=$(( $(left) - 60 < BENCH_S ? $(left) - 60 : BENCH_S ))
    if [ "$cap" -le 10 ]; then
      log "benchmark: skipped (GPU_RUN_BENCH_S=$BENCH_S, ${cap}s left for it)"
    else
      log "benchmark: preset $preset, at most ${cap}s"
      timeout --kill-after=10 "$cap" "$PYTHON" benchmarks/run_all.py --preset "$preset" --out "$WORK/bench.partial.json" \
        --log "$WORK/bench_workers.log" > "$OUT/bench.txt" 2>&1
      rc=$?
      BENCH_RC=$rc
      [ $rc -eq 0 ] && mv "$WORK/bench.partial.json" "$WORK/bench.json"
      log "benchmark: exit $rc$(timed_out $rc && echo ' (time cap reached)')"
    fi
  fi
  [ -f "$WORK/bench.json" ] && cp "$WORK/bench.json" "$OUT/bench.json"
  [ ! -f "$WORK/bench.json" ] && [ -f "$WORK/bench.partial.json" ] && cp "$WORK/bench.partial.json" "$OUT/bench.json"
  if [ -f "$WORK/bench_workers.log" ]; then
    { echo; echo "---- worker log (last 200 lines)"; tail -n 200 "$WORK/bench_workers.log"; } >> "$OUT/bench.txt"
  fi
}

failed_phase_tail() {  # failed_phase_tail NAME RC FILE LINES: a phase that failed (not cut by the budget), its end
  if [ "$2" -ne 0 ] && ! timed_out "$2"; then
    echo "---- $1 failed (exit $2); end of $(basename "$3"):"; tail -n "$4" "$3"
  fi
}
