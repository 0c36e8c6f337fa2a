#!/usr/bin/env bash
# A PTB twin of 2026-12-08 (trained by twin64.sh on this AVX2 machine), evaluated on the first 300 test
# sentences at 16 AIS chains: what the grid's test sets were evaluated with. Resumable (evaluate keeps its
# chunks in the --out file's .partial.pt; a finished report is skipped).
# usage: twin300.sh ebm|gaussian
set -euo pipefail
PRIOR=$1
CODE=$HOME/textebm-runs/code-36d4d0f; RUN=$HOME/textebm-runs/runs/twin-$PRIOR-seed0
export PYTHONPATH=$CODE TEXTEBM_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 TEXTEBM_OFFLINE=1
cd $CODE
[ -f $RUN/eval300-16.json ] || nice -n 15 /work/main/.venv/bin/python -P -m textebm evaluate --checkpoint $RUN \
  --max-sentences 300 --num-is-samples 16 --fppl-samples 0 --threads 1 --json --no-progress \
  --out $RUN/eval300-16.json > /dev/null
echo done $PRIOR
