#!/usr/bin/env bash
# The GPU acceptance run of textebm (issue 25; bench/gpu_acceptance.py says what it checks).
#
#   bash bench/gpu_acceptance.sh --device cuda --data-dir .gpu-data   # on the GPU machine, in one call
#   bash bench/gpu_acceptance.sh --device cpu --out DIR               # dry mode on a CPU (tests/test_gpu_acceptance.py)
#
# On a machine without a package registry, the packages textebm needs beyond the machine's own
# (torch, numpy, ...) come from a wheelhouse built beforehand by bench/gpu_wheelhouse.sh: the
# folder $WHEELHOUSE, or .whl when the device tool's $OUT is set. They are installed into a
# folder of their own in /tmp, put first on PYTHONPATH with the repository. How to carry the
# wheelhouse and PTB, and run this in one call: docs/training.md (GPUs).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-}
if [ -z "$WHEELHOUSE" ] && [ -n "${OUT:-}" ]; then WHEELHOUSE=.whl; fi
SITE=""
if [ -n "$WHEELHOUSE" ]; then
  if ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
    echo "gpu_acceptance: no wheels in $WHEELHOUSE (build them with bench/gpu_wheelhouse.sh)" >&2; exit 2
  fi
  SITE=/tmp/textebm-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELHOUSE"/*.whl || { echo "gpu_acceptance: installing the wheelhouse failed" >&2; exit 3; }
fi
export PYTHONPATH="${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TEXTEBM_OFFLINE=1
exec "$PY" -m bench.gpu_acceptance "$@"
