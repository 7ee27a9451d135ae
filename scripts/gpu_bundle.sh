#!/usr/bin/env bash
# Builds the folder the accelerator run carries (scripts/gpu_device_run.sh): that machine has no
# network and no data root, and only the working tree plus this folder are copied to it (64 MiB
# in all). The folder (default gpu_bundle/, git-ignored) holds:
#
#   data/cifar10_jpeg_test.npz              the CIFAR-10 (JPEG) test split (28.4 MB), as in the data root
#   data/distilled/cifar10_10_frepo/        the published FRePo IPC 10 set (1.2 MB)
#   data/distilled/cifar10_1_{frepo,mtt}/   the published IPC 1 sets (0.1 MB each; the campaign's IPC 1 rows)
#   data/teachers/cifar10_1_mtt_convnet/    the published ConvNet trained on the MTT IPC 1 set (1.3 MB)
#   zca_mtt.packed.npz                      zca_mtt fitted on the training split (18.9 MB packed; the split
#                                           itself, 142 MB, stays here); benchmarks/gpu_run.py unpacks it
#   wheels/                                 pure-Python wheels of what distill_jax imports at module level
#                                           and the device image lacks: ml-collections, tensorboardX
#                                           (tensorflow-datasets is imported only for tfds sources: not needed)
#   MANIFEST.txt, SHA256SUMS                what was built from what; the device run checks the sums first
#
# The FRePo tables train their own ConvNet-FRePo teachers (none is published for those sets); the
# MTT IPC 1 row imports the published one. The bundle must stay under GPU_BUNDLE_MAX_MIB (default 60) MiB, and
# with the working tree that travels beside it under 64 MiB; the build fails otherwise (exit 2).
# Wheels that cannot be downloaded fail the build with exit 3.
#
# Usage: scripts/gpu_bundle.sh [bundle dir]        (default: gpu_bundle in the repository root)
#        scripts/gpu_bundle.sh --check <dir>       (the size check alone)
# Data root: $DISTILL_JAX_DATA, else ../shared/data beside the repository.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
MAX_MIB=${GPU_BUNDLE_MAX_MIB:-60}
TREE_MAX_MIB=64
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi
WHEELS="ml-collections tensorboardX"  # distill_jax's module-level imports missing from the device image

check_size() {  # check_size <dir>: the bundle under MAX_MIB, and bundle + travelling tree under 64 MiB
  "$PYTHON" - "$1" "$MAX_MIB" "$TREE_MAX_MIB" "$HERE" <<'EOF'
import os, pathlib, subprocess, sys
bundle, max_mib, tree_max_mib, repo = pathlib.Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
if not bundle.is_dir():
    sys.exit(f"gpu_bundle.sh: {bundle} is not a folder")
size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and not p.is_symlink())
listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "-co", "--exclude-standard"], capture_output=True,
                        check=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(os.path.join(repo, f)) for f in listed if f and os.path.isfile(os.path.join(repo, f)))
mib = 2 ** 20
print(f"bundle {bundle}: {size / mib:.1f} MiB (limit {max_mib:g}); working tree that travels: {tree / mib:.1f} MiB; "
      f"together {(size + tree) / mib:.1f} MiB (limit {tree_max_mib:g})")
if size > max_mib * mib:
    print(f"gpu_bundle.sh: the bundle {bundle} is {size / mib:.1f} MiB, over the limit of {max_mib:g} MiB",
          file=sys.stderr)
    sys.exit(2)
if size + tree > tree_max_mib * mib:
    print(f"gpu_bundle.sh: bundle + working tree = {(size + tree) / mib:.1f} MiB, over the {tree_max_mib:g} MiB "
          "a device call carries", file=sys.stderr)
    sys.exit(2)
EOF
}

if [ "${1:-}" = "--check" ]; then
  check_size "${2:?usage: scripts/gpu_bundle.sh --check <dir>}"
  exit $?
fi

BUNDLE=${1:-$HERE/gpu_bundle}
DATA=${DISTILL_JAX_DATA:-$(cd "$HERE/.." && pwd)/shared/data}
export DISTILL_JAX_DATA=$DATA
SETS="cifar10_10_frepo cifar10_1_frepo cifar10_1_mtt"
TEACHER=teachers/cifar10_1_mtt_convnet/checkpoint_best.pth
for f in cifar10_jpeg_test.npz cifar10_jpeg_train.npz $TEACHER \
         $(for s in $SETS; do echo "distilled/$s/images_best.pt distilled/$s/labels_best.pt"; done); do
  [ -f "$DATA/$f" ] || { echo "gpu_bundle.sh: $DATA/$f not found (set DISTILL_JAX_DATA to the data root)" >&2; exit 1; }
done

TMP="$BUNDLE.tmp.$$"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/wheels" "$TMP/data/$(dirname "$TEACHER")"
cp "$DATA/cifar10_jpeg_test.npz" "$TMP/data/"
cp "$DATA/$TEACHER" "$TMP/data/$TEACHER"
for s in $SETS; do
  mkdir -p "$TMP/data/distilled/$s"
  cp "$DATA/distilled/$s/images_best.pt" "$DATA/distilled/$s/labels_best.pt" "$TMP/data/distilled/$s/"
done
if [ -f "$DATA/SHA256SUMS" ]; then  # the copies are the published files
  (cd "$TMP/data" && grep -E '  (cifar10_jpeg_test\.npz|distilled/cifar10_1?0?_(frepo|mtt)/.*|teachers/.*)$' \
     "$DATA/SHA256SUMS" | sha256sum -c --quiet -)
fi

echo "fitting (or reading from the cache) zca_mtt on $DATA/cifar10_jpeg_train.npz ..."
TRANSFORM_META=$("$PYTHON" "$HERE/benchmarks/gpu_run.py" bundle-transform "$TMP/zca_mtt.packed.npz" | tail -n 1)

SPECS=""
for name in $WHEELS; do
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  SPECS="$SPECS $name${version:+==$version}"
done
# shellcheck disable=SC2086  # one argument per package
if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --dest "$TMP/wheels" $SPECS; then
  echo "gpu_bundle.sh: could not download the wheels$SPECS (pip download needs a package index)" >&2
  exit 3
fi

{
  echo "distill_jax device bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ) from commit $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "data root: $DATA (CIFAR-10 (JPEG) test split, distilled/{${SETS// /,}}, $TEACHER)"
  echo "transform: $TRANSFORM_META"
  echo "wheels:$SPECS"
} > "$TMP/MANIFEST.txt"
(cd "$TMP" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum > SHA256SUMS)

check_size "$TMP"
rm -rf "$BUNDLE"
mv "$TMP" "$BUNDLE"
trap - EXIT
echo "bundle ready: $BUNDLE"
case "$(cd "$BUNDLE" && pwd)/" in
  "$HERE"/*) ;;
  *) echo "note: $BUNDLE is outside the repository; a device call carries only folders inside it" ;;
esac
