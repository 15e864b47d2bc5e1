#!/usr/bin/env bash
# Run every benchmark with its defaults (each about 3 minutes or less on a 2-core CPU) and keep the printed
# tables and JSON under benchmarks/results/. Numbers are only meaningful on a quiet machine: the scripts
# print a warning when the 1-minute load average is 1 or more.
#   bash benchmarks/run_all.sh            # from the repository root; all of them
#   bash benchmarks/run_all.sh knn loss   # only these (names as below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
mkdir -p "$OUT"
ONLY=" $* "
run() {
    local name=$1; shift
    if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
    echo "== $name: $PY $*  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    local start=$SECONDS
    "$PY" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name took $((SECONDS - start)) s (load after: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/$name.txt"
}
run train_step -m benchmarks.train_step --profile
run train_step_foreach_adamw -m benchmarks.train_step --ours-adamw foreach --methods simdino dino simdinov2 --dtypes bf16
run optim_pieces -m benchmarks.optim_pieces
run loss -m benchmarks.loss --collapse
run knn -m benchmarks.knn
run augment -m benchmarks.augment
run attention -m benchmarks.attention
run listing -m benchmarks.listing
run gradient_checkpointing -m benchmarks.gradient_checkpointing
