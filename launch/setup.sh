#!/usr/bin/env bash
# Sets up a fresh machine for distill_jax: Debian's Fashion-MNIST (the offline real dataset)
# and a virtual environment `.venv` with the package and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: Fashion-MNIST, and a C++ compiler with oneDNN for the fast CPU convolutions
# (distill_jax/models/onednn_conv.py compiles them on first use; without them it falls back).
PACKAGES=""
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || PACKAGES="$PACKAGES dataset-fashion-mnist"
[ -f /usr/include/dnnl.hpp ] || PACKAGES="$PACKAGES libdnnl-dev"
command -v g++ > /dev/null || PACKAGES="$PACKAGES g++"
if [ -n "$PACKAGES" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PACKAGES
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# Compile the oneDNN convolutions now rather than in the first run; says why if it cannot.
.venv/bin/python -c 'from distill_jax.models import onednn_conv; print(onednn_conv.status())'
