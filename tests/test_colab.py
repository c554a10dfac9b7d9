"""The Colab badge and setup cell come from course_utils/colab.py; the Colab branch is tested by simulation."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils import colab
from scripts.run_notebooks import notebook_paths

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths()


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_and_setup_cell_come_from_the_one_config(path):
    nb = nbformat.read(path, as_version=4)
    assert colab.badge(path.name) in nb.cells[0].source, "run `python scripts/sync_notebooks.py`"
    assert nb.cells[1].source == colab.setup_cell(), "run `python scripts/sync_notebooks.py`"
    assert "choose_profile(PROFILE)" in nb.cells[2].source, "the third cell picks the profile"


def test_readme_badges_point_at_the_configured_repo():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert colab.colab_url(path.name) in readme, path.name
    for url in re.findall(r"colab\.research\.google\.com/github/([^)\s]+)", readme):
        assert url.startswith(f"{colab.GITHUB_REPO}/blob/{colab.GITHUB_REF}/"), url


def test_setup_cell_pins_match_requirements():
    reqs = (ROOT / "requirements.txt").read_text().split()
    assert colab.COLAB_LACKS, "the setup cell installs at least bitsandbytes"
    for pin in colab.COLAB_LACKS:
        assert pin in reqs


def test_setup_cell_does_nothing_outside_colab(tmp_path):
    out = subprocess.run([sys.executable, "-c", colab.setup_cell() + "\nprint('cwd', os.getcwd())"],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"cwd {tmp_path}"


def _snapshot_repo(dest: Path) -> Path:
    """This checkout's files as they are now (committed or not), as a git repo with a `main` branch."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(dest)]
    subprocess.run(git + ["init", "-q", "-b", colab.GITHUB_REF], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "snapshot"], check=True)
    return dest


def test_setup_cell_in_simulated_colab_installs_the_course_from_a_clone(tmp_path):
    """A fake google.colab module, the repo cloned from this checkout, the package installed into a target dir."""
    fake = tmp_path / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text("")
    site, root = tmp_path / "site", tmp_path / "content" / "course"
    origin = _snapshot_repo(tmp_path / "origin")
    env = dict(os.environ, PYTHONPATH=str(fake), COURSE_ROOT=str(root), COURSE_REPO_URL=origin.as_uri(),
               COURSE_PIP_ARGS=f"--target {site} --no-deps")
    code = "import google.colab\n" + colab.setup_cell() + "\nprint('cwd', os.getcwd())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"cwd {root / 'notebooks'}" in out.stdout
    assert (site / "course_utils" / "model_configs" / "llama-3.1-8b.json").is_file(), "configs ship in the package"
    # The installed package (not this checkout) loads a config, and finds the clone's assets from notebooks/.
    check = ("import course_utils, os; from course_utils import configs, runtime;"
             "print(course_utils.__file__); print(configs.load_config('llama-3.1-8b').num_hidden_layers);"
             "print(runtime.assets_dir())")
    env2 = dict(os.environ, PYTHONPATH=str(site))
    env2.pop("COURSE_ASSETS", None)
    res = subprocess.run([sys.executable, "-c", check], cwd=root / "notebooks", env=env2, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    file, layers, assets = res.stdout.split()
    assert file.startswith(str(site)) and layers == "32" and Path(assets) == root / "assets"
