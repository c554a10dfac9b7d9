#!/usr/bin/env bash
# Install everything and run the whole course headless in the offline profile.
# The executed notebooks land in build/notebooks/, their run times in build/run_times.json.
#   bash scripts/course.sh [--colab] [notebook names...]
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
if [ "${1:-}" = "--colab" ]; then args=(--colab); shift; fi
venv=$(bash scripts/setup_env.sh "${args[@]}" | tail -n 1)
"$venv/bin/python" scripts/run_notebooks.py --out build/notebooks "$@"
