#!/usr/bin/env bash
# Refresh requirements.lock: the newest releases that pyproject.toml allows (all extras), resolved
# by uv for CPython 3.11 on Linux x86-64 (the CI machine), every transitive dependency pinned with
# its hashes. torch is resolved as the 2.13.0 CPU build (so that no CUDA-only package enters the
# lock) and left out of the file: scripts/setup_env.sh installs it, or keeps a GPU user's own.
# Then run the suite from the new lock (rm -rf .venv && ./run_tests.sh) before committing it.
#   scripts/lock.sh [extra uv pip compile options, e.g. --upgrade-package transformers]
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.10
tool=${CKBERT_LOCK_TOOL_VENV:-.venv-lock}
if [ ! -x "$tool/bin/uv" ] || [ "$("$tool/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv "$tool"
  "$tool/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
override=$(mktemp)
trap 'rm -f "$override"' EXIT
echo "torch==2.13.0+cpu" > "$override"
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)  # where the CPU build lies on the project's machines
"$tool/bin/uv" pip compile pyproject.toml --all-extras --generate-hashes --upgrade \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --override "$override" "${find_links[@]}" --no-emit-package torch \
  --custom-compile-command scripts/lock.sh -o requirements.lock "$@"
