# The course's virtual environment: .venv, or .venv-colab with --colab; the VENV variable overrides both.
# Sourced by setup_env.sh, test.sh and course.sh, which then write  venv=$(venv_path --colab)  or  venv=$(venv_path).
venv_path() {
  if [ "${1:-}" = "--colab" ]; then echo "${VENV:-.venv-colab}"; else echo "${VENV:-.venv}"; fi
}
