#!/usr/bin/env bash
# The device run of issue 15, from the repository root of a lent GPU machine:
#   bash bench/gpu_check.sh            (device tool: carry .whl and runs/demo/prepared; results in $OUT)
# Sets up what the machine's image lacks, then runs bench/gpu_check.py (its docstring lists the steps).
# - wheels carried in .whl/ (bench/gpu_check_wheels.sh fetches them: datasets and what it needs beyond
#   the image), installed into /tmp/gpu_check_site only when `datasets` is not importable;
# - this checkout, installed there too (no build isolation, no index) only when `ckbert` is not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=/tmp/gpu_check_site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import datasets" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check: error: datasets is missing and no wheels in .whl/ (run bench/gpu_check_wheels.sh here, carry .whl)" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
if ! "$PY" -c "import ckbert.data_prep" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" .
fi
exec "$PY" bench/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
