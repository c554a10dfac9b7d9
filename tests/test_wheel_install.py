"""The course as a plain `pip install .` ships it: a wheel built from this checkout, installed into a folder of its
own and imported with the repo off sys.path. The editable install of .venv hides a module or data file the wheel
lacks (issue 28: course_utils.exercises was missing, so every notebook's checkers failed to import)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "06_training_a_qlora_adapter.ipynb"  # the notebook that imports the most modules
SETUP_CELL = "# Setup (Colab only)"
IMPORT_ALL = """
import importlib, json, sys
files, errors = {}, {}
for name in sys.argv[1:]:
    try:
        files[name] = importlib.import_module(name).__file__
    except Exception as err:
        errors[name] = f"{type(err).__name__}: {err}"
print(json.dumps({"files": files, "errors": errors}))
"""
LOAD_CONFIGS = """
from importlib import resources
from course_utils import configs
print(resources.files("course_utils"))
for name in configs.known_names():
    configs.load_config(name)
"""


def checkout_files() -> list[str]:
    """This checkout's files as they are now (committed or not, git-ignored ones left out), relative to the root."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return [name for name in out.stdout.splitlines() if (ROOT / name).is_file()]


def package_files() -> list[str]:
    """The files of course_utils in this checkout: "course_utils/configs.py", "course_utils/model_configs/..."."""
    return sorted(name for name in checkout_files() if name.startswith("course_utils/"))


def module_names(files: list[str]) -> list[str]:
    """The modules the .py files stand for: "course_utils/exercises/__init__.py" -> "course_utils.exercises"."""
    names = []
    for name in files:
        if name.endswith(".py"):
            parts = name.removesuffix(".py").split("/")
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def notebook_imports(path: Path) -> list[str]:
    """The top-level import statements of a notebook's code cells, the Colab setup cell left out."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or cell.source.startswith(SETUP_CELL):
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        found += [ast.unparse(node) for node in ast.parse(code).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return list(dict.fromkeys(found))


def run(cmd: list[str], what: str, cwd: Path | None = None, pythonpath: str = "") -> subprocess.CompletedProcess:
    """`cmd`, which must succeed; `what` names it in the failure message, with the end of its output. The
    environment is built here, not passed in, so that pytest does not print it in a failure's traceback."""
    env = dict(os.environ, PYTHONPATH=pythonpath, MPLBACKEND="Agg") if pythonpath else None
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{what} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def run_installed(site_dir: Path, what: str, code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`code` in `python -S`, from `cwd`: the installed copy and the venv's site-packages on the path by hand, so
    no .pth file runs (the editable install's finder included) and the repo is not on the path."""
    path = [str(site_dir), *(p for p in site.getsitepackages() if Path(p).is_dir())]
    return run([sys.executable, "-S", "-c", code, *args], what, cwd, os.pathsep.join(path))


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    """The wheel of a copy of this checkout (building in the checkout would leave build/, whose stale files end up
    in later wheels), installed by pip into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(source)],
        "building the wheel")
    wheels = sorted((tmp / "dist").glob("course_utils-*.whl"))
    assert len(wheels) == 1, f"expected one course_utils wheel, got {wheels}"
    run(pip + ["install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheels[0])],
        "installing the wheel")
    return tmp / "site"


def test_every_module_imports_from_the_installed_wheel(site_dir, tmp_path):
    expected = module_names(package_files())
    assert {"course_utils", "course_utils.exercises", "course_utils.exercises.nb01"} <= set(expected)
    out = run_installed(site_dir, "importing every module", IMPORT_ALL, tmp_path, *expected)
    found = json.loads(out.stdout.splitlines()[-1])
    top = found["files"].get("course_utils", "")
    assert Path(top).is_relative_to(site_dir), (
        f"course_utils was imported from {top or found['errors'].get('course_utils')}, not from the installed wheel "
        f"in {site_dir}: the repo or the editable install is on the path")
    assert not found["errors"], (
        "modules of course_utils that the installed wheel lacks or cannot import (does pyproject.toml's "
        "[tool.setuptools.packages.find] miss a subpackage?):\n"
        + "\n".join(f"  {name}: {error}" for name, error in found["errors"].items()))
    elsewhere = {name: file for name, file in found["files"].items() if not Path(file).is_relative_to(site_dir)}
    assert not elsewhere, f"modules imported from outside the installed wheel: {elsewhere}"


def test_the_installed_wheel_has_every_data_file(site_dir, tmp_path):
    data = {name for name in package_files() if not name.endswith(".py")}
    assert "course_utils/model_configs/llama-3.1-8b.json" in data
    installed = {p.relative_to(site_dir).as_posix() for p in (site_dir / "course_utils").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(data - installed)
    assert not missing, (f"data files of course_utils that the installed wheel lacks (add them to "
                         f"[tool.setuptools.package-data] in pyproject.toml): {missing}")
    # The files the code opens from inside the package: every shipped config, read through the installed copy.
    folder = run_installed(site_dir, "loading the shipped configs", LOAD_CONFIGS, tmp_path).stdout.splitlines()[-1]
    assert Path(folder) == site_dir / "course_utils"


def test_a_notebooks_imports_run_from_the_installed_wheel(site_dir, tmp_path):
    imports = notebook_imports(NOTEBOOK)
    assert "from course_utils.exercises import nb06" in imports, imports
    code = "\n".join(imports) + "\nimport course_utils\nprint(course_utils.__file__)"
    file = run_installed(site_dir, f"{NOTEBOOK.name}'s imports from the installed wheel", code,
                         tmp_path).stdout.splitlines()[-1]
    assert Path(file).is_relative_to(site_dir), f"{NOTEBOOK.name}'s imports used {file}, not the installed wheel"
