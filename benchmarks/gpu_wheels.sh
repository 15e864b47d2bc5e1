#!/usr/bin/env bash
# Fetch the wheels of what the GPU machine's image lacks into .wheels/ (git-ignored), for
# benchmarks/gpu_check.sh to install offline. Needs pip and access to PyPI; run from anywhere.
# The image has a recent torch, numpy, PyYAML, cloudpickle, typing_extensions, scikit-image and pytest;
# it lacks omegaconf and submitit (wandb is not needed by any step of the check, so it is not fetched).
#   PYVER=3.12 bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .wheels "omegaconf==2.4.0" "submitit==1.5.4" "timm==1.0.31" "safetensors"
ls -l .wheels
