#!/usr/bin/env bash
# Fetch, here (pip reaches the package registry), the wheels that bench/gpu_check.sh installs on the
# GPU machine, whose image (Python 3.12) has no `datasets`; dill and multiprocess are what datasets
# needs beyond that image (/work/.library/device/KINDS.md lists it). Writes .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "datasets==${DATASETS_VERSION:-5.2.0}" "dill==0.4.1" "multiprocess==0.70.19"
ls -l .whl
