#!/usr/bin/env bash
# Install everything and run the whole course headless in the offline profile.
# The executed notebooks land in build/notebooks/, their run times in build/run_times.json.
#   bash scripts/course.sh [--colab] [notebook names...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv_path.sh
with_venv "$@"
"$venv/bin/python" scripts/run_notebooks.py --out build/notebooks "${args[@]}"
