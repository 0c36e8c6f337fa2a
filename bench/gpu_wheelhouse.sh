#!/usr/bin/env bash
# The wheelhouse for bench/gpu_acceptance.sh: the packages textebm needs that the GPU machine's image
# lacks (bench/gpu_wheelhouse.txt; the image has torch, numpy, sentencepiece, pyarrow, pytest, ...;
# no package registry; Python 3.12 on x86-64), as wheels at this environment's versions, downloaded
# into .whl (or $1). KenLM is left out (source only; the acceptance run skips FPPL).
#
#   bash bench/gpu_wheelhouse.sh            # then carry .whl (and .gpu-data with ptb/) in the device call
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}  # the GPU machine's Python (another version: to rehearse the run here)
PACKAGES=$(grep -v "^#" bench/gpu_wheelhouse.txt)
specs=()
for name in $PACKAGES; do
  specs+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${specs[@]}"
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST"
