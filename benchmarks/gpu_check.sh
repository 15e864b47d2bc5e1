#!/usr/bin/env bash
# The GPU readiness check, one command (about 8 minutes on one H100/H200); everything lands in $OUT.
#   bash benchmarks/gpu_check.sh              # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run    # the same entry points on the CPU, tiny shapes (~2 min)
# Extra arguments go to `python -m benchmarks.gpu_check` (e.g. --only v1_simdino knn, --budget 300).
# Packages the machine lacks (omegaconf, submitit) are installed from wheels in .wheels/ when present:
# `bash benchmarks/gpu_wheels.sh` fetches them on a machine with internet access.
# Writes $OUT/summary.md, summary.json, log.txt (every step's output), trainers.log (the trainers').
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
PY=${PY:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
mkdir -p "$OUT"
if ! "$PY" -c "import omegaconf, submitit" 2>/dev/null; then
    if compgen -G ".wheels/*.whl" >/dev/null; then
        SITE=${TMPDIR:-/tmp}/gpu_check_site
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .wheels/*.whl \
            || { echo "gpu_check: installing .wheels/*.whl failed" >&2; exit 1; }
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: omegaconf/submitit are missing and .wheels/ holds no wheels: run 'bash benchmarks/gpu_wheels.sh' where pip reaches PyPI, then carry .wheels/" >&2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check --out "$OUT" "$@"
