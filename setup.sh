#!/usr/bin/env bash
# One command for a fresh Debian machine: system packages, a virtual environment in .venv,
# torch (the CPU build when no NVIDIA GPU is present), textebm with its test extras, and the
# KenLM command-line tools (lmplz, build_binary) compiled once into the user's cache.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: Python with venv and headers (the kenlm module compiles against them), a C++
# toolchain, CMake, Boost and the compression libraries (the kenlm module and KenLM's tools),
# Chromium (the browser test of the server's page).
APT_PACKAGES="python3 python3-venv python3-dev build-essential cmake libboost-program-options-dev \
libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev chromium"
missing=$(for package in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q "^install ok installed" || echo "$package"
done)
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:" $missing
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root (or install sudo) to install:" $missing >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "setup: creating .venv with $PY"; "$PY" -m venv .venv; }
.venv/bin/python -m pip install -q --upgrade pip

# torch: the CPU build unless an NVIDIA driver is visible (TEXTEBM_TORCH overrides the spec).
if [ -n "${TEXTEBM_TORCH:-}" ]; then TORCH_SPEC="$TEXTEBM_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TORCH_SPEC="torch"
else TORCH_SPEC="torch==2.13.0"; fi
echo "setup: installing $TORCH_SPEC, then textebm (editable) with its test extras into .venv"
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"

# KenLM's lmplz and build_binary (not shipped in any wheel): built from the kenlm sdist, cached.
echo "setup: KenLM's lmplz and build_binary (built once into ~/.cache/textebm/kenlm)"
.venv/bin/python -m lm_eval.kenlm_tools install
echo "textebm is set up: activate with 'source .venv/bin/activate'"
