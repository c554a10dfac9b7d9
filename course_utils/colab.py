"""The one place that names the course's GitHub repo, and the cells built from it.

Every notebook starts with a title cell holding an "Open in Colab" badge and a setup cell. Both are generated
here; `scripts/sync_notebooks.py` writes them into the notebooks and a test fails if any notebook disagrees.
"""

from __future__ import annotations

from course_utils.quantization import BITSANDBYTES_PIN

GITHUB_REPO = "open-llm-course/lora-qlora-llama"  # owner/name on GitHub
GITHUB_REF = "main"  # branch or tag that Colab installs from; set a release tag to pin a cohort
COLAB_LACKS = (BITSANDBYTES_PIN,)  # what the setup cell installs in Colab, pinned

SETUP_MARKER = "# Setup (Colab only)"


def colab_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{GITHUB_REF}/notebooks/{notebook}"


def badge(notebook: str) -> str:
    """Markdown for the "Open in Colab" badge of a notebook file name."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def setup_cell() -> str:
    """Source of the setup cell: in Colab it installs what Colab lacks and this course; elsewhere nothing."""
    folder = GITHUB_REPO.split("/")[1]
    return f'''{SETUP_MARKER}: installs what Colab lacks and this course, and opens the course folder.
# Anywhere else it does nothing: run `bash scripts/setup_env.sh` once instead (see the README).
import importlib, os, subprocess, sys
COURSE_REPO, COURSE_REF = "{GITHUB_REPO}", "{GITHUB_REF}"
COLAB_LACKS = {COLAB_LACKS!r}
if "google.colab" in sys.modules:
    root = os.environ.get("COURSE_ROOT", "/content/{folder}")
    if not os.path.isdir(root):
        url = os.environ.get("COURSE_REPO_URL", f"https://github.com/{{COURSE_REPO}}.git")
        clone = ["git", "clone", "-q", "--depth", "1", "--branch", COURSE_REF, url, root]
        subprocess.run(clone, check=True)
    from importlib.metadata import PackageNotFoundError, version
    def _missing(pin):
        name, wanted = pin.split("==")
        try:
            return version(name) != wanted
        except PackageNotFoundError:
            return True
    extra = os.environ.get("COURSE_PIP_ARGS", "").split()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra, root,
                    *[p for p in COLAB_LACKS if _missing(p)]], check=True)
    importlib.invalidate_caches()
    os.chdir(os.path.join(root, "notebooks"))
    print(f"Course installed from {{COURSE_REPO}}@{{COURSE_REF}}; working in", os.getcwd())'''
