#!/usr/bin/env bash
# The forward check: the test suite against the newest releases that pyproject.toml allows (no
# lock), in a venv of its own (.venv-forward), so that a breaking release is found here before a
# user finds it. torch stays the venv's (2.13.0 CPU unless one is there). Prints the versions that
# differ from requirements.lock, then runs the suite; arguments go to pytest.
#   scripts/forward_check.sh [-x] [tests/...]
set -euo pipefail
cd "$(dirname "$0")/.."
export CKBERT_VENV=${CKBERT_VENV:-.venv-forward}
rm -f "$CKBERT_VENV/.ckbert-installed"  # always resolve anew: releases move
CKBERT_DEPS=latest scripts/setup_env.sh
echo "[forward] versions that differ from requirements.lock:"
"$CKBERT_VENV/bin/python" - <<'PY'
import importlib.metadata as md
import sys

sys.path.insert(0, "scripts")
from lock_filter import canonical, pinned

locked = pinned(open("requirements.lock", encoding="utf-8").read())
seen = {canonical(d.metadata["Name"]): d.version for d in md.distributions()}
for name in sorted(set(locked) | set(seen)):
    if name not in ("ckbert", "pip", "torch") and locked.get(name) != seen.get(name):
        print(f"  {name}: lock {locked.get(name, '-')}, newest {seen.get(name, '-')}")
PY
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$CKBERT_VENV/bin/python" -m pytest -q "$@"
