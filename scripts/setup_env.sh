#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv by default) from scratch.
# torch: a CPU build 2.13.0 is installed first unless a torch is already there (GPU users bring
# their own build; a bare `torch` requirement would pull a multi-GB CUDA build).
# Never installs the PyPI package `apex` (an unrelated web toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CKBERT_VENV:-.venv}
EXTRAS=${CKBERT_EXTRAS:-dev,demo,ltp,triton,tensorboard,bench}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.ckbert-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  "$VENV/bin/python" -m pip install -q "torch==${CKBERT_TORCH_VERSION:-2.13.0}"
fi
echo "[setup] installing ckbert[$EXTRAS] (editable)"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"
