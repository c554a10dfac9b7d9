#!/usr/bin/env bash
# Install everything and run the test suite (unit tests, then every notebook executed in the offline profile).
#   bash scripts/test.sh            -> newest tested releases, in .venv
#   bash scripts/test.sh --colab    -> Google Colab's versions, in .venv-colab
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k configs`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv_path.sh
with_venv "$@"
"$venv/bin/python" -m pytest --durations=25 "${args[@]}"  # the 25 slowest tests listed at the end
