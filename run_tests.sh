#!/usr/bin/env bash
# The test command of the README: sets up .venv if needed, then runs the CPU suite offline.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
