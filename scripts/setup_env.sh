#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv by default) from scratch.
#
# Default (CKBERT_DEPS=lock): every package comes from the committed lock, requirements.lock
# (uv pip compile of pyproject.toml with all extras, hashes checked; refreshed by scripts/lock.sh),
# which the test suite passed with. The lock is resolved for CPython 3.11 on Linux x86-64 (the CI
# machine); elsewhere the script says so and resolves the ranges of pyproject.toml instead.
# CKBERT_DEPS=latest: the newest releases that pyproject.toml allows (scripts/forward_check.sh).
#
# torch is not in the lock. The torch already in the venv is kept, together with the packages it
# requires (a GPU user's own CUDA build and its triton stay as they are); without one, torch 2.13.0
# is installed (on the project's machines the CPU build lies on local disk). Never installs the PyPI
# package `apex` (an unrelated web toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CKBERT_VENV:-.venv}
DEPS=${CKBERT_DEPS:-lock}
PY=${PYTHON:-python3}
EXTRAS=dev,demo,ltp,triton,tensorboard,bench
LOCK=requirements.lock
case "$DEPS" in lock|latest) ;; *) echo "[setup] error: CKBERT_DEPS=$DEPS (expected lock or latest)" >&2; exit 2 ;; esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if [ "$DEPS" = lock ] && ! "$VPY" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.system() == "Linux" and platform.machine() == "x86_64"))'; then
  echo "[setup] warning: $LOCK is resolved for CPython 3.11 on Linux x86-64; this is $("$VPY" -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())'): installing from the ranges of pyproject.toml instead (untested versions)" >&2
  DEPS=latest
fi
stamp="$VENV/.ckbert-installed"
want="$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16) $DEPS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$VPY" -m pip install -q)
ours="$VENV/.ckbert-torch"  # present when this script installed the venv's torch
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==${CKBERT_TORCH_VERSION:-2.13.0}"
  "${pip[@]}" "torch==${CKBERT_TORCH_VERSION:-2.13.0}"
  touch "$ours"
fi
own_torch=1
[ -f "$ours" ] && own_torch=0
torch_version=$("$VPY" -c "import importlib.metadata as m; print(m.version('torch'))")

if [ "$DEPS" = lock ]; then
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  # A torch that was there before keeps its own requirements (e.g. a CUDA build's triton pin).
  keep=()
  [ "$own_torch" = 1 ] && keep=(--keep-torch-deps)
  "$VPY" scripts/lock_filter.py "$LOCK" "${keep[@]}" > "$reqs"
  echo "[setup] installing $LOCK (hashes checked) and ckbert (editable), torch $torch_version"
  "${pip[@]}" --no-deps --require-hashes -r "$reqs"
  "${pip[@]}" --no-deps -e .
else
  echo "[setup] installing ckbert[$EXTRAS] (editable) with the newest releases pyproject.toml allows, torch $torch_version kept"
  cons=$(mktemp)
  trap 'rm -f "$cons"' EXIT
  echo "torch==$torch_version" > "$cons"
  "${pip[@]}" --upgrade --upgrade-strategy eager -c "$cons" -e ".[$EXTRAS]"
fi
"$VPY" -m pip check
echo "$want" > "$stamp"
