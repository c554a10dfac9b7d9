"""The GPU path in one run: what scripts/gpu_check.sh runs (read its header for how to call it).

    python scripts/gpu_check.py [--dry-run] [--wheels DIR] [--budget S] OUT_DIR   # the check (gpu_check.sh's)
    python scripts/gpu_check.py --environment          # one step alone: the environment as a JSON line
    python scripts/gpu_check.py --install DIR [--dry-run]   # one step alone: what is missing, from DIR's wheels
    python scripts/gpu_check.py --download DIR          # here, with the network: wheels for the GPU machine

Each step runs in its own process group under a time limit (its own, and what is left of --budget), writes its
own log in OUT_DIR, and a failure or a timeout in one never stops the next. OUT_DIR gets report.json (every
step's command, status, time and the numbers read from its output) and report.md (the same as tables).
With --dry-run (on any machine): the plan is printed, and the steps that need no GPU run: the environment,
the list of missing packages, the collection of the gpu tests, train_gpu.py --smoke, memory_gpu.py --cpu-smoke.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "06_training_a_qlora_adapter.ipynb"
STAND_IN = ROOT / "assets" / "course-llama"  # the local model that stands in for the 8B (COURSE_GPU_MODEL)
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "tokenizers", "numpy",
            "pandas", "gguf", "matplotlib", "nbclient", "ipykernel", "pytest")
EXTRA_NEEDS = ("pytest>=8",)  # the tests' runner, beside requirements.txt
NEVER_INSTALL = ("torch",)  # the GPU machine's torch is built for its CUDA: never replaced
MIN_STEP_S = 15  # a step with less time than this left in the budget is skipped
# What the GPU machine's image (Python 3.12, x86-64; torch, transformers, peft, accelerate, pandas, matplotlib and
# pytest already there) lacks, for `--download`: these pins of requirements.txt, and what they need beyond the
# image. No ipywidgets (notebook 06 needs none), so the wheels (57 MB) and the repo travel together in 64 MiB.
# Extra wheels do no harm: only what is missing is installed.
IMAGE_LACKS = ("bitsandbytes", "gguf", "ipykernel", "nbclient", "nbformat")
THEIR_NEEDS = ("jupyter_client", "jupyter_core", "traitlets", "pyzmq", "tornado", "comm", "debugpy", "ipython",
               "ipython_pygments_lexers", "matplotlib-inline", "nest_asyncio", "decorator", "jedi", "parso",
               "pexpect", "ptyprocess", "prompt_toolkit", "wcwidth", "stack_data", "asttokens", "executing",
               "pure_eval", "platformdirs", "fastjsonschema", "jsonschema", "jsonschema-specifications",
               "referencing", "rpds-py")


# ----------------------------------------------------------------------------------------------------------
# Single steps, each run in a fresh process by the check
# ----------------------------------------------------------------------------------------------------------

def environment() -> dict:
    """Versions, the GPU and whether bitsandbytes quantizes to NF4 on CUDA."""
    from importlib.metadata import PackageNotFoundError, version
    info: dict = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    info["gpu"] = None
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 1e9, 1),
                       "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    sys.path.insert(0, str(ROOT))  # the course's package, installed or not
    try:
        from course_utils.quantization import four_bit_problem
        info["four_bit_problem_cuda"] = four_bit_problem("cuda")
    except Exception as err:  # the course's package itself failed to import
        info["four_bit_problem_cuda"] = f"{type(err).__name__}: {err}"
    return info


def requirements() -> list:
    """The pins of requirements.txt and the tests' runner, as packaging Requirements."""
    from packaging.requirements import Requirement
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    specs = [line.split("#", 1)[0].strip() for line in lines]
    return [Requirement(s) for s in [*specs, *EXTRA_NEEDS] if s]


def wheel_names(folder: str | None) -> set[str] | None:
    """The (normalized) project names of the wheels in `folder`, or None without a folder."""
    if not folder or not Path(folder).is_dir():
        return None
    from packaging.utils import canonicalize_name
    return {canonicalize_name(p.name.split("-")[0]) for p in Path(folder).glob("*.whl")}


def install(wheels: str | None, dry_run: bool) -> dict:
    """Install from `wheels` (pip --no-index) each requirement that is missing, bitsandbytes also when it is
    another version than the pin; never torch (a constraint holds it). One pip call a package, so one failure
    stops only its package; one with no wheel in the folder is listed as unavailable (notebook 06 and the tests
    need no ipywidgets, say). Versions outside the course's ranges are reported, not changed."""
    from importlib.metadata import PackageNotFoundError, version
    from packaging.utils import canonicalize_name
    result: dict = {"wheels": wheels, "needed": [], "installed": [], "failed": [], "unavailable": [],
                    "other_versions": []}
    available = wheel_names(wheels)
    needed = []
    for req in requirements():
        try:
            have = version(req.name)
        except PackageNotFoundError:
            have = None
        if have is not None and not req.specifier.contains(have, prereleases=True):
            result["other_versions"].append(f"{req.name} {have} (the course asks {req.specifier})")
        if req.name in NEVER_INSTALL:
            continue
        if have is None or (req.name == "bitsandbytes" and not req.specifier.contains(have, prereleases=True)):
            needed.append(req)
    result["needed"] = [str(req) for req in needed]
    try:
        pins = f"torch=={version('torch')}\n"
    except PackageNotFoundError:
        pins = ""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(pins)
    for req in needed:
        if available is not None and canonicalize_name(req.name) not in available:
            print(f"no wheel for {req} in {wheels}: not installed")
            result["unavailable"].append(str(req))
            continue
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
               "--find-links", wheels or "WHEELS", "-c", constraints.name, str(req)]
        print("$", shlex.join(cmd), flush=True)
        if dry_run or not wheels:
            continue
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(done.stdout, end="", flush=True)
        result["installed" if done.returncode == 0 else "failed"].append(str(req))
    os.unlink(constraints.name)
    if not wheels and needed:
        print("No wheels folder (--wheels DIR or WHEELS=DIR): nothing installed.")
    return result


def download(folder: str, python_version: str) -> int:
    """Fetch the wheels the GPU machine lacks (IMAGE_LACKS at the course's pins, and THEIR_NEEDS; no dependencies
    beyond those: the list names them) for Linux x86-64 and `python_version`."""
    wanted = [str(req) for req in requirements() if req.name in IMAGE_LACKS] + list(THEIR_NEEDS)
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", *[a for p in platforms for a in ("--platform", p)],
           "-d", folder, *wanted]
    print("$", shlex.join(cmd), flush=True)
    return subprocess.run(cmd).returncode


# ----------------------------------------------------------------------------------------------------------
# What each step's output says
# ----------------------------------------------------------------------------------------------------------

def last_json(text: str):
    """The last line of `text` that is JSON (the benchmarks and the single steps end with one), or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line[:1] in "[{":
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def pytest_counts(text: str) -> dict:
    """Counts from pytest's closing line, each test's outcome from its -rA summary, the ids it collected."""
    counts: dict = {}
    closing = [line for line in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|"
                                                                  r"deselected|collected|no tests ran)\b", line)]
    for line in closing[-1:]:
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line):
            counts["errors" if word.startswith("error") else word] = int(n)
        if m := re.search(r"(\d+)(?:/\d+)? tests? collected", line):
            counts["collected"] = int(m.group(1))
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+::\S+)", text, flags=re.M)
    if outcomes:
        counts["results"] = {test: outcome for outcome, test in outcomes}
    ids = re.findall(r"^(tests/\S+::\S+)$", text, flags=re.M)
    if ids:
        counts["tests"] = ids
    return counts


def notebook_facts(path: Path) -> dict:
    """What notebook 06 printed that proves the path: the profile it ran in, training, the checksum, the score."""
    if not path.exists():
        return {"notebook": None}
    nb = json.loads(path.read_text())
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append("".join(out.get("text", "")))
            elif out.get("output_type") == "error":
                texts.append(f"{out.get('ename')}: {out.get('evalue')}")
    lines = "\n".join(texts).splitlines()

    def first(pattern: str) -> str | None:
        return next((line.strip() for line in lines if re.search(pattern, line)), None)
    facts = {"notebook": str(path), "run_seconds": nb.get("metadata", {}).get("course", {}).get("run_seconds"),
             "profile": first(r"^Profile '"), "model": first(r"^\s+model .* on "),
             "training": first(r"^\d+ steps in \d+ s"), "exact_match": first(r"^exact match: .* before -> "),
             "checksum_unchanged": first(r"^unchanged: "), "resume": first(r"resumed adapter and the uninterrupted")}
    facts["gpu_profile"] = bool(facts["profile"] and facts["profile"].startswith("Profile 'gpu'"))
    return facts


# ----------------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    what: str
    gpu_command: list[str]                # what the check runs on a GPU machine
    limit_s: int
    dry_command: list[str] | None = None  # what the dry run runs instead (None: nothing, it needs a GPU)
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None      # what this run runs (None: planned only)
    status: str = "planned"               # planned, passed, failed, timeout, skipped
    seconds: float | None = None
    returncode: int | None = None
    log: str | None = None
    details: dict = field(default_factory=dict)
    note: str = ""
    options: str | None = None            # dry run: whether the GPU command's --options exist in its script

    def shown(self, command: list[str] | None = None) -> str:
        command = command or self.command or self.gpu_command
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(command)


def gpu_test_files() -> list[str]:
    """The test modules that hold gpu-marked tests (tests/test_gpu.py and any other that says `mark.gpu`):
    only they are collected, so a module that can't import on the GPU machine (ipywidgets' tests, say)
    doesn't count against the GPU tests."""
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if "mark.gpu" in p.read_text()]


def plan(out: Path, dry_run: bool, wheels: str | None, python: str) -> list[Step]:
    """The steps in order: each with its GPU command, and the dry run's CPU command where it has one."""
    me = [python, "scripts/gpu_check.py"]
    install = me + ["--install"] + ([wheels] if wheels else [])
    scratch = str(Path(tempfile.gettempdir()) / "gpu-check-trainer")  # the Trainer's output folder
    tests = [python, "-m", "pytest", "-m", "gpu", *gpu_test_files(), "-p", "no:cacheprovider"]
    steps = [
        Step("install", "what is missing, installed from the wheels folder (never torch)", install, 150,
             dry_command=install + ["--dry-run"]),
        Step("environment", "versions, the GPU, bitsandbytes' NF4 on CUDA", me + ["--environment"], 120,
             dry_command=me + ["--environment"]),
        Step("gpu_tests", "every gpu-marked test (tests/test_gpu.py, any other module)", tests + ["-q", "-rA"], 180,
             dry_command=tests + ["--collect-only", "-q"]),
        Step("notebook_06", "notebook 06 top to bottom in the gpu profile, the course's model for the 8B",
             [python, "scripts/run_notebooks.py", "06", "--out", str(out / "notebooks")], 240,
             env={"COURSE_PROFILE": "gpu", "COURSE_GPU_MODEL": str(STAND_IN)}),
        Step("train_gpu", "the 8B in NF4 (random weights), T4 preset and memory (15 GB): our loop and the Trainer",
             [python, "benchmarks/train_gpu.py", "--cap-gb", "15", "--out", scratch], 240,
             dry_command=[python, "benchmarks/train_gpu.py", "--smoke", "--steps", "3", "--warm-from", "1",
                          "--out", scratch]),
        Step("memory_gpu", "predicted against measured training memory, Llama 3.2 1B under a T4's 15 GB",
             [python, "benchmarks/memory_gpu.py", "--models", "llama-3.2-1b", "--cap-gb", "15"], 180,
             dry_command=[python, "benchmarks/memory_gpu.py", "--cpu-smoke", "--seq-len", "32"]),
    ]
    for step in steps:
        step.command = step.dry_command if dry_run else step.gpu_command
    if not wheels:
        steps[0].note = "no wheels folder: lists what is missing, installs nothing"
    return steps


def missing_options(command: list[str]) -> list[str] | None:
    """The --options of a `python script.py ...` command that the script's --help doesn't know (None: no script)."""
    if len(command) < 2 or not command[1].endswith(".py"):
        return None
    script = command[1]
    try:
        shown = subprocess.run([command[0], script, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=120, env=child_env({})).stdout
    except subprocess.TimeoutExpired:
        return ["(its --help did not answer)"]
    return [c for c in command if c.startswith("--") and not re.search(re.escape(c) + r"\b", shown)]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of every step: the repo importable (no install needed), unbuffered, no Hub."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "COURSE_TEXT_PROGRESS": "1", **extra}


def run_step(step: Step, out: Path, limit: int, dry_run: bool) -> None:
    """Run one step in its own process group, output to OUT/<name>.log; the whole group is killed at the limit."""
    log = out / f"{step.name}.log"
    step.log = log.name
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(f"$ {step.shown()}\n# limit {limit} s\n")
        fh.flush()
        proc = subprocess.Popen(step.command, cwd=ROOT, env=child_env(step.env), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            step.returncode = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=10)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # what the step left running in its group (a notebook's kernel, say) holds no GPU memory after it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    step.seconds = round(time.perf_counter() - start, 1)
    step.details = details(step, log.read_text(errors="replace"), out)
    if step.returncode is None:
        step.status, step.note = "timeout", f"stopped after {limit} s"
    else:
        step.status = "passed" if step.returncode == 0 and judge(step, dry_run) else "failed"


def details(step: Step, text: str, out: Path) -> dict:
    """The numbers a step's output holds: pytest's counts, the notebook's facts, a script's closing JSON line."""
    if step.name == "gpu_tests":
        return pytest_counts(text)
    if step.name == "notebook_06":
        return notebook_facts(out / "notebooks" / NOTEBOOK)
    found = last_json(text)
    if step.name == "memory_gpu" and isinstance(found, list):
        keys = ("model", "method", "checkpointing", "predicted_total", "measured_total", "ratio", "gpu", "skipped")
        return {"rows": [{k: row.get(k) for k in keys} for row in found]}
    return found if isinstance(found, dict) else {}


def judge(step: Step, dry_run: bool) -> bool:
    """Beyond exit status 0, what a step's output must show for it to pass."""
    d = step.details
    if step.name == "install":
        return not d.get("failed")
    if step.name == "environment":
        return bool(d) and (dry_run or (bool(d.get("cuda_available")) and d.get("four_bit_problem_cuda") is None))
    if step.name == "gpu_tests":
        if dry_run:
            return d.get("collected", 0) > 0
        return d.get("passed", 0) > 0 and not d.get("failed") and not d.get("errors")
    if step.name == "notebook_06":
        return bool(d.get("gpu_profile"))
    if step.name == "train_gpu":
        runners = d.get("runners") or {}
        return bool(runners) and not d.get("skipped") and not any(r.get("error") for r in runners.values())
    if step.name == "memory_gpu":
        return bool(d.get("rows"))
    return True


def summary_line(step: Step) -> str:
    """One line of what a step found, for the markdown table."""
    d = step.details
    if step.status in ("planned", "skipped"):
        return step.note or "not run"
    text = "see its log"
    if step.name == "install":
        text = (f"needed: {', '.join(d.get('needed', [])) or 'nothing'}; installed {len(d.get('installed', []))}; "
                f"failed: {', '.join(d.get('failed', [])) or 'none'}")
    elif step.name == "environment" and d:
        gpu = d.get("gpu") or {}
        where = f"{gpu['name']}, {gpu['memory_gb']} GB, capability {gpu['capability']}" if gpu else "no GPU"
        problem = d.get("four_bit_problem_cuda")
        text = (f"torch {d.get('torch')} (CUDA {d.get('cuda')}), bitsandbytes {d.get('bitsandbytes')}, {where}; "
                f"NF4 on cuda: {'works' if problem is None else problem[:100]}")
    elif step.name == "gpu_tests":
        keys = ("collected", "passed", "failed", "errors", "skipped", "deselected")
        text = ", ".join(f"{d[k]} {k}" for k in keys if k in d) or "no pytest summary"
    elif step.name == "notebook_06":
        keys = ("profile", "training", "exact_match", "checksum_unchanged")
        text = "; ".join(str(d[k]) for k in keys if d.get(k)) or "no outputs"
    elif step.name == "train_gpu" and d.get("runners"):
        def runner(name: str, r: dict) -> str:
            memory = "" if r.get("peak_allocated_gb") is None else \
                f", peak {r['peak_allocated_gb']} GB allocated, {r.get('peak_reserved_gb')} GB reserved"
            return f"{name}: {r.get('error') or str(r.get('tokens_per_s')) + ' tokens/s'}{memory}"
        runs = "; ".join(runner(name, r) for name, r in d["runners"].items())
        text = f"{runs}; estimate {d.get('estimate_gb')} GB"
    elif step.name == "memory_gpu" and d.get("rows"):
        text = "measured/predicted: " + ", ".join(
            f"{r['model']} {r['method']}{' ckpt' if r['checkpointing'] else ''} "
            f"{'skipped' if r.get('skipped') else r.get('ratio')}" for r in d["rows"])
    return f"{text}; {step.note}" if step.note else text


def markdown(report: dict, steps: list[Step]) -> str:
    """The report as markdown: a table of the steps, one of the environment, and every GPU command."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")
    title = "GPU check" + (" (dry run: the plan, and the parts that need no GPU)" if report["dry_run"] else "")
    lines = [f"# {title}", "", f"{report['started_utc']}: {report['seconds']} s of a {report['budget_s']} s budget; "
             f"{'passed' if report['ok'] else 'FAILED'}", "",
             "| step | status | seconds | limit | result |", "| --- | --- | ---: | ---: | --- |"]
    for s in steps:
        seconds = "" if s.seconds is None else f"{s.seconds:.1f}"
        lines.append(f"| {s.name} | {s.status} | {seconds} | {s.limit_s} | {cell(summary_line(s))} |")
    env = report.get("environment") or {}
    if env:
        lines += ["", "| environment | |", "| --- | --- |"] + [f"| {k} | {cell(v)} |" for k, v in env.items()]
    lines += ["", "On a GPU machine the steps run (each one's log is OUT_DIR/<step>.log):", ""]
    lines += [f"- {s.name}: `{s.shown(s.gpu_command)}`" for s in steps]
    return "\n".join(lines) + "\n"


def check(out: Path, dry_run: bool, wheels: str | None, budget: int, python: str) -> int:
    """Run the steps in order within `budget` seconds; write report.json and report.md; 0 when all passed."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    steps = plan(out, dry_run, wheels, python)
    print(f"GPU check{' (dry run)' if dry_run else ''}: {len(steps)} steps within {budget} s; logs in {out}")
    for i, step in enumerate(steps, 1):
        prefix = f"[{i}/{len(steps)}] {step.name}: {step.what}\n"
        if dry_run:
            prefix += f"    on a GPU: {step.shown(step.gpu_command)}  (limit {step.limit_s} s)\n"
            unknown = missing_options(step.gpu_command)
            step.options = "ok" if not unknown else f"unknown: {' '.join(unknown)}"
            if unknown:
                step.note = f"the GPU command's {' '.join(unknown)} is unknown to its script"
        if step.command is None:
            step.note = step.note or "needs a GPU: planned"
            step.status = "failed" if step.options not in (None, "ok") else "planned"
            print(f"{prefix}    now: nothing ({step.note})", flush=True)
            continue
        left = int(budget - (time.perf_counter() - started))
        if left < MIN_STEP_S:
            step.status, step.note = "skipped", f"no time left in the {budget} s budget"
            print(f"{prefix}    skipped: {step.note}", flush=True)
            continue
        limit = min(step.limit_s, left)
        print(f"{prefix}    now: {step.shown()}  (limit {limit} s)", flush=True)
        run_step(step, out, limit, dry_run)
        if step.options not in (None, "ok") and step.status == "passed":
            step.status = "failed"  # the dry run passes, the GPU run would not start
        print(f"    -> {step.status} in {step.seconds} s: {summary_line(step)}", flush=True)
    report = {
        "check": "gpu", "dry_run": dry_run, "started_utc": stamp, "budget_s": budget,
        "seconds": round(time.perf_counter() - started, 1), "repo": str(ROOT), "python": python, "wheels": wheels,
        "environment": next((s.details for s in steps if s.name == "environment"), {}),
        "steps": [{"name": s.name, "what": s.what, "status": s.status, "command": s.shown() if s.command else None,
                   "gpu_command": s.shown(s.gpu_command), "gpu_command_options": s.options, "limit_s": s.limit_s,
                   "seconds": s.seconds,
                   "returncode": s.returncode, "log": s.log, "note": s.note, "details": s.details} for s in steps],
    }
    report["summary"] = {status: [s.name for s in steps if s.status == status]
                         for status in ("passed", "failed", "timeout", "skipped", "planned")}
    report["ok"] = all(s.status == "passed" for s in steps if s.command is not None) and \
        not any(s.status == "failed" for s in steps)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    table = markdown(report, steps)
    (out / "report.md").write_text(table)
    print("\n" + table)
    print(f"report: {out / 'report.json'}, {out / 'report.md'}")
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="folder for the report and the logs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run only what needs no GPU")
    parser.add_argument("--wheels", default=os.environ.get("WHEELS") or None,
                        help="folder of wheels to install what is missing from (default: $WHEELS)")
    parser.add_argument("--budget", type=int, default=480, help="seconds for the whole check (default %(default)s)")
    parser.add_argument("--environment", action="store_true", help="print the environment as JSON and exit")
    parser.add_argument("--install", metavar="DIR", nargs="?", const="", help="install what is missing from DIR")
    parser.add_argument("--download", metavar="DIR", help="download the GPU machine's wheels into DIR")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for --download")
    args = parser.parse_args(argv)
    if args.environment:
        print(json.dumps(environment()))
        return 0
    if args.install is not None:
        result = install(args.install or None, args.dry_run)
        print(json.dumps(result))
        return 1 if result["failed"] else 0
    caller = Path(os.environ.get("GPU_CHECK_CWD") or os.getcwd())  # gpu_check.sh runs this from the repo's root
    if args.download:
        return download(str(caller / args.download), args.python_version)
    if not args.out:
        parser.error("OUT_DIR is needed")
    wheels = str((caller / args.wheels).resolve()) if args.wheels else None
    return check((caller / args.out).resolve(), args.dry_run, wheels, args.budget, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
