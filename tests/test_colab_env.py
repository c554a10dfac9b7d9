"""The Colab venv is built from Colab's whole published package set (scripts/colab_env.py): the committed lists
account for every package of the freeze, and what is left out says why."""

from packaging.version import Version

from course_utils import colab
from scripts import colab_env


def test_every_package_of_colabs_freeze_is_installed_or_left_out_with_a_reason():
    assert colab_env.check() == []
    freeze = colab_env.read_freeze()
    assert len(freeze) > 600, "Colab's whole set, not a hand-picked part"
    installed = colab_env.read_freeze(colab_env.INSTALL)
    assert len(installed) > 0.85 * len(freeze), f"only {len(installed)} of {len(freeze)} install here"


def test_the_freeze_says_where_and_when_it_comes_from():
    first = colab_env.FREEZE.read_text().splitlines()[:2]
    assert "2026-08-19" in first[0] and "googlecolab/backend-info" in first[1]


def pins() -> dict[str, str]:
    return {colab_env.name_of(line): line.split("  #")[0].split("==")[1] for line in
            colab_env.read_freeze(colab_env.INSTALL)}


def test_the_course_meets_colabs_versions_including_the_torchao_that_breaks_peft():
    """The venv starts where Colab starts: the setup cell, not the package list, upgrades torchao."""
    have = pins()
    assert have["transformers"] == "5.15.0" and have["peft"] == "0.20.0" and have["accelerate"] == "1.14.0"
    torchao = next(fix for fix in colab.COLAB_FIXES if fix[0] == "torchao")
    assert have["torchao"] == "0.10.0" and Version(torchao[1]) > Version(have["torchao"])
    assert "torch" not in have and "torchvision" not in have, "torch stays the local CPU build"


def test_left_out_packages_say_why():
    reasons = {colab_env.name_of(line): line.split("  # ", 1)[1] for line in colab_env.read_freeze(colab_env.LEFT_OUT)}
    assert reasons["torch"] == colab_env.TORCH_BUILD
    assert reasons["nvidia-cublas-cu12"] == "GPU-only (CUDA) build"
    assert reasons["google-colab"].startswith("not from PyPI")
    assert all(len(why) > 10 for why in reasons.values())


def test_overrides_are_applied_and_explained():
    have = pins()
    for name, (version, why) in colab_env.OVERRIDES.items():
        assert have[name] == version and why
    assert "nvidia-ml-py" in have, "pure Python, installs without a GPU"
