#!/usr/bin/env bash
# One PTB twin of the results grid's seed-0 pair, trained here and evaluated on the first 100 test
# sentences at 16 and at 64 AIS chains. Resumable: each stage is skipped when its output exists.
# usage: twin64.sh ebm|gaussian
set -euo pipefail
PRIOR=$1; STEPS=$([ "$PRIOR" = ebm ] && echo 800 || echo 817)
CODE=$HOME/textebm-runs/code-36d4d0f; RUN=$HOME/textebm-runs/runs/twin-$PRIOR-seed0
PY=/work/main/.venv/bin/python
export PYTHONPATH=$CODE TEXTEBM_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 TEXTEBM_OFFLINE=1
cd $CODE
if [ ! -f $RUN/trained-$STEPS ]; then
  if [ -f $RUN/config.json ] || ls $RUN/*.pt >/dev/null 2>&1; then R=--resume; else R=; fi
  nice -n 15 $PY -P -m textebm train --corpus ptb --preset cpu --set chain_precision=fp32 \
    --set prior=$PRIOR --set posterior_init=noise --set valid_every=600 --max-steps $STEPS \
    --seed 0 --threads 1 --out $RUN --no-progress $R
  git -C $CODE rev-parse HEAD > $RUN/trained-$STEPS
fi
for S in 16 64; do
  [ -f $RUN/eval100-$S.json ] || nice -n 15 $PY -P -m textebm evaluate --checkpoint $RUN \
    --max-sentences 100 --num-is-samples $S --fppl-samples 0 --threads 1 --json --no-progress \
    --out $RUN/eval100-$S.json > /dev/null
done
echo done $PRIOR
