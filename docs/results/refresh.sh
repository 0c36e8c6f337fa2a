#!/bin/bash
# Regenerate docs/results.md from a results grid's own output, and keep the grid's small files here.
#   bash docs/results/refresh.sh [OUT]      (OUT: the grid's --out folder; default ~/textebm-runs/results)
#   VENV=~/textebm-runs/code-C/.venv bash docs/results/refresh.sh   (judge "done" by the code of the
#   worktree the grid ran from, e.g. when main's evaluator is newer than the one that evaluated it)
# 1. `textebm reproduce results --out OUT --results-only` writes OUT/results.md, results.json and the
#    figures from what is done (starting nothing); the page becomes docs/results.md (its figures in
#    docs/results/), under the status paragraph of docs/results/status.md.
# 2. Every run of the shipped grid that is trained and evaluated has its small files (config, markers,
#    evaluation reports, logs, learning curves; no weights, checkpoints or TensorBoard events) copied
#    to docs/results/grid/, so that a machine that lost OUT can put them back
#    (mkdir -p OUT && cp -r docs/results/grid/. OUT/) and `reproduce` skips those runs.
set -euo pipefail
out=${1:-$HOME/textebm-runs/results}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${VENV:-$root/.venv}
"$venv/bin/textebm" reproduce results --out "$out" --jobs 2 --results-only > /dev/null
cp "$out/results.json" "$here/"
find "$out" -maxdepth 1 -name '*.png' -exec cp {} "$here/" \;
{ cat "$here/status.md"; echo; sed -e '1d' -e 's#](\([A-Za-z0-9_.-]*\.png\))#](results/\1)#' "$out/results.md"; } \
    > "$root/docs/results.md.tmp" && mv "$root/docs/results.md.tmp" "$root/docs/results.md"
"$venv/bin/python" -P - "$out" "$here/grid" <<'PY'
import shutil, sys
from pathlib import Path

from textebm.experiments.grid import load_grid
from textebm.experiments.reproduce import plan, run_folder

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
skip = shutil.ignore_patterns("*.pt", "*.safetensors", "tensorboard", "vocab.json", ".*.tmp", "*.partial.*")
steps = plan(load_grid("results"), src)
for spec in {s.run.name: s.run for s in steps}.values():
    if all(s.status == "done" for s in steps if s.run.name == spec.name):  # trained, every evaluation done
        shutil.copytree(run_folder(src, spec), dst / "runs" / spec.name, ignore=skip, dirs_exist_ok=True)
        for log in (src / "logs").glob(spec.name + ".*"):
            (dst / "logs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(log, dst / "logs" / log.name)
PY
echo "wrote $root/docs/results.md and $here/"
