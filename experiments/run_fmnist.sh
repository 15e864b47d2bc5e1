#!/usr/bin/env bash
# Every row of docs/RESULTS.md, in pairs: the two members of a comparison train at the same time, each
# pinned to its own core with one thread, so both see the same machine. Needs 2 cores; about 18 minutes
# per pair at the default 900 s budget (training + calibration / evaluation).
#   bash experiments/run_fmnist.sh [SECONDS] [OUT_ROOT] [PAIR ...]   (pairs: baselines v1 v2 sweep_a sweep_b sweep_c repeat_b demo_v1 demo_sweep)
# The sweep rows are read against the v1 pair (SimDINO eps 0.5, batch 128; DINO teacher temperature
# 0.04 -> 0.07 over the first 30% of the run).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_BUDGET=${1:-900}
ROOT=${2:-outputs/results}
shift $(( $# > 2 ? 2 : $# )) || true
PAIRS=${*:-baselines v1 v2 sweep_a sweep_b}
PY=${PYTHON:-.venv/bin/python}
row() {  # row CORE NAME METHOD [-- OVERRIDES]
    local core=$1 name=$2 method=$3
    shift 3
    taskset -c "$core" "$PY" -m experiments.fmnist --method "$method" --seconds "$SECONDS_BUDGET" \
        --out "$ROOT/$name" --threads 1 "$@" > "$ROOT/$name.log" 2>&1
}
pair() {  # pair "NAME METHOD [-- ...]" "NAME METHOD [-- ...]"
    # shellcheck disable=SC2086
    row 0 $1 & local a=$!
    # shellcheck disable=SC2086
    row 1 $2 & local b=$!
    local ra=0 rb=0
    wait $a || ra=$?
    wait $b || rb=$?
    # a failed row (see its .log) does not stop the other pairs
    if (( ra || rb )); then echo "pair '$1' / '$2' failed (status $ra / $rb): see $ROOT/*.log" >&2; fi
}
mkdir -p "$ROOT"
for p in $PAIRS; do
    case $p in
        baselines) pair "random_init random_init" "pixels pixels" ;;
        v1) pair "simdino simdino" "dino dino" ;;
        v2) pair "simdinov2 simdinov2" "dinov2 dinov2" ;;
        # SimDINO with the paper's ImageNet eps; DINO with teacher temperature 0.07 from the start (no warm-up)
        sweep_a) pair "simdino_eps0.05 simdino -- --eps 0.05" \
                      "dino_no_temp_warmup dino -- --warmup_teacher_temp 0.07 --warmup_teacher_temp_epochs 0" ;;
        # both methods at batch 32 (lr scaled linearly by main_dino)
        sweep_b) pair "simdino_bs32 simdino -- --batch_size_per_gpu 32" "dino_bs32 dino -- --batch_size_per_gpu 32" ;;
        # extra: SimDINO with a 10x larger eps; DINO with DINO's default constant teacher temperature 0.04
        sweep_c) pair "simdino_eps5 simdino -- --eps 5.0" \
                      "dino_temp0.04 dino -- --warmup_teacher_temp 0.04 --teacher_temp 0.04 --warmup_teacher_temp_epochs 0" ;;
        # the batch-size comparison again, both members at the same time (seed 1): a clean pair, and a repeat
        repeat_b) pair "simdino_seed1 simdino --seed 1" "simdino_bs32_seed1 simdino --seed 1 -- --batch_size_per_gpu 32" ;;
        # the v1 pair again with the tuned `make demo` recipe (6 blocks, teacher momentum 0.98; SimDINO eps 0.02)
        demo_v1) pair "simdino_demo simdino -- --depth 6 --eps 0.02 --momentum_teacher 0.98" \
                      "dino_demo dino -- --depth 6 --momentum_teacher 0.98" ;;
        # its random-init baseline (6 blocks), and SimDINO with upstream's eps 0.5 in that recipe
        demo_sweep) pair "random_init_d6 random_init -- --depth 6" \
                         "simdino_demo_eps0.5 simdino -- --depth 6 --eps 0.5 --momentum_teacher 0.98" ;;
        *) echo "unknown pair $p (baselines v1 v2 sweep_a sweep_b sweep_c repeat_b demo_v1 demo_sweep)" >&2; exit 2 ;;
    esac
done
"$PY" -m experiments.fmnist --table "$ROOT"
