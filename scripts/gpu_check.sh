#!/usr/bin/env bash
# Prove the course's GPU path in one run (at most --budget seconds, 480 by default, on one GPU, no Hub):
#   1. install      what is missing (bitsandbytes==0.50.2, requirements.txt's pins, pytest) from a wheels folder
#                   with `pip install --no-index --find-links DIR`; torch is never changed
#   2. environment  python, torch, CUDA, transformers, peft, accelerate, bitsandbytes, the GPU, and
#                   course_utils.quantization.four_bit_problem("cuda")
#   3. gpu_tests    pytest -m gpu tests/ (tests/test_gpu.py and any other gpu-marked test): pass/fail counts
#   4. notebook_06  notebook 06 top to bottom in the gpu profile, the course's model standing in for the 8B
#                   (COURSE_PROFILE=gpu COURSE_GPU_MODEL=<repo>/assets/course-llama); the executed copy in OUT_DIR
#   5. train_gpu    benchmarks/train_gpu.py --cap-gb 15: the 8B in NF4 (random weights) under a T4's memory, fp16,
#                   our loop and the Trainer; its closing JSON line goes into the report
#   6. memory_gpu   benchmarks/memory_gpu.py --models llama-3.2-1b --cap-gb 15: predicted against measured memory
# Each step runs under its own time limit, logs to OUT_DIR/<step>.log, and a failure never stops the next one.
# OUT_DIR gets report.json and report.md (the steps, pass or fail, seconds, the numbers they printed).
#
#   bash scripts/gpu_check.sh OUT_DIR                           # on a GPU machine, in the course's venv
#   PYTHON=python3 bash scripts/gpu_check.sh --wheels DIR OUT_DIR   # a GPU machine without a venv (or WHEELS=DIR)
#   bash scripts/gpu_check.sh --dry-run OUT_DIR                 # anywhere: the plan, and the steps that need no
#                                                               # GPU (environment, missing packages, collecting
#                                                               # the gpu tests, both benchmarks' CPU smoke modes)
#   bash scripts/gpu_check.sh --download-wheels DIR             # here, with the network: the GPU machine's wheels
#                                                               # (Python 3.12, x86-64; --python-version X.Y)
# The interpreter: $PYTHON when set (e.g. PYTHON=python3, the system's, on a machine with no venv), else the
# venv that scripts/test.sh uses (scripts/venv_path.sh: .venv, or $VENV). Other options: --budget SECONDS.
# Exit status: 0 when every step that ran passed, 1 otherwise (the report is written either way).
set -euo pipefail
export GPU_CHECK_CWD=$PWD  # relative OUT_DIR and folders are the caller's, not the repo's
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
else
  source scripts/venv_path.sh
  python="$(venv_path)/bin/python"
  if [ ! -x "$python" ]; then
    echo "No venv at $(venv_path): run \`bash scripts/setup_env.sh\` first, or use PYTHON=python3." >&2
    exit 2
  fi
fi
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --download-wheels) args+=(--download "${2:?--download-wheels needs a folder}"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec "$python" scripts/gpu_check.py "${args[@]}"
