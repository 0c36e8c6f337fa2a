#!/usr/bin/env bash
# One command for a fresh Debian machine: system packages, a virtual environment in .venv,
# torch (the CPU build when no NVIDIA GPU is present), textebm with its test extras, and the
# KenLM command-line tools (lmplz, build_binary) compiled once into the user's cache.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_PACKAGES="build-essential cmake libboost-program-options-dev libboost-system-dev \
libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev chromium"
missing=$(dpkg-query -W -f='${Status} ${Package}\n' $APT_PACKAGES 2>/dev/null | grep -c "^install ok installed" || true)
if [ "$missing" -lt "$(echo $APT_PACKAGES | wc -w)" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# torch: the CPU build unless an NVIDIA driver is visible (TEXTEBM_TORCH overrides the spec).
if [ -n "${TEXTEBM_TORCH:-}" ]; then TORCH_SPEC="$TEXTEBM_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TORCH_SPEC="torch"
else TORCH_SPEC="torch==2.13.0"; fi
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"

# KenLM's lmplz and build_binary (not shipped in any wheel): built from the kenlm sdist, cached.
.venv/bin/python -m lm_eval.kenlm_tools install
echo "textebm is set up: activate with 'source .venv/bin/activate'"
