# The course's virtual environment, sourced by setup_env.sh, test.sh and course.sh.
#   venv_path [--colab]   prints .venv, or .venv-colab with --colab (the VENV variable overrides both)
#   with_venv "$@"        installs (or updates) that venv with setup_env.sh and sets $venv to it; the
#                         arguments after an optional leading --colab are left in the array $args
venv_path() {
  if [ "${1:-}" = "--colab" ]; then echo "${VENV:-.venv-colab}"; else echo "${VENV:-.venv}"; fi
}

with_venv() {
  local flag=()
  if [ "${1:-}" = "--colab" ]; then flag=(--colab); shift; fi
  venv=$(venv_path "${flag[@]}")
  args=("$@")
  bash scripts/setup_env.sh "${flag[@]}"
}
