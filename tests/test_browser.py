"""The calculators in a real browser: Jupyter from this venv, headless Chromium driven by Selenium.

JupyterLab 4 with ipywidgets 8 (.venv), the classic Notebook 6.5 with Colab's ipywidgets 7.7.1 (.venv-colab).
Each notebook runs top to bottom in the offline profile on a copy in a temporary folder (never the originals:
the frontends save), then one dropdown of its calculator is changed and the verdict and chart must follow.
Needs Debian's chromium and chromium-driver (`bash scripts/install_browser.sh`): skipped without them, except in CI.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from scripts.run_notebooks import NOTEBOOKS, offline_env

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CALCULATOR_NOTEBOOKS = ["02_parameters_and_memory.ipynb", "04_lora_with_peft.ipynb"]
RAW_REPRS = ("HBox(children=", "VBox(children=")
# Console errors allowed: the "Open in Colab" badge, an image from the web (none offline), and the classic
# Notebook's MathJax 2 probing a blank web font at about:blank (Chromium refuses it), whenever math renders.
ALLOWED_ERRORS = ("colab.research.google.com/assets/colab-badge.svg", "Access to font at 'about:blank'",
                  "about:blank - Failed to load resource")
RUN_TIMEOUT = 240  # s for all cells of one notebook (20-60 s in the browser on a 2-core CPU)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# Colab's ipywidgets 7 goes with the classic Notebook (what .venv-colab has), ipywidgets 8 with JupyterLab 4.
FRONTEND = "classic" if (_version("ipywidgets") or "8").startswith("7.") else "lab"


def missing() -> str | None:
    """Why the browser test can't run here, or None."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return f"no {CHROMIUM} or {CHROMEDRIVER}: `bash scripts/install_browser.sh` installs them (apt-get)"
    if _version("selenium") is None:
        return "selenium is not installed: `bash scripts/setup_env.sh` installs it (the test extra)"
    if FRONTEND == "lab" and _version("jupyterlab") is None:
        return "jupyterlab is not installed: `bash scripts/setup_env.sh` installs it (the lab extra)"
    if FRONTEND == "classic" and not (_version("notebook") or "7").startswith("6."):
        return "the classic Notebook 6 is not installed: `bash scripts/setup_env.sh --colab` installs it"
    return None


def _skip_or_fail() -> None:
    problem = missing()
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {problem}")
    if problem:
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def other_nbextensions() -> dict[str, bool]:
    """The classic Notebook extensions that the venv's packages turn on, bar the widgets' own, each turned off.
    Colab's frontend loads none of them; in the Colab venv (Colab's whole package set) some lack their files, and
    one that fails to load stops the widgets' extension from loading after it."""
    found = {}
    for folder in (Path(sys.prefix) / "etc" / "jupyter" / "nbconfig" / "notebook.d").glob("*.json"):
        found.update(json.loads(folder.read_text()).get("load_extensions", {}))
    return {name: False for name, on in found.items() if on and name != "jupyter-js-widgets/extension"}


class Server:
    """A Jupyter server on 127.0.0.1 with a random port and token, serving `root`."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.log = home / "server.log"
        env = offline_env()
        env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
                   COURSE_CHECKPOINT_ROOT=str(home / "runs"),
                   # The copies live outside the checkout, and the venv's course_utils may be an installed copy
                   # (the Colab venv's, put there by the setup cell): the checkout's assets, as in Colab's clone.
                   COURSE_ASSETS=str(NOTEBOOKS.parent / "assets"))
        common = ["--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0"]
        if os.geteuid() == 0:
            common.append("--allow-root")
        if FRONTEND == "lab":
            settings = home / "lab-settings"
            env.update(JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
            _write_json(settings / "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings", {"autosave": False})
            # No "official Jupyter news?" pop-up over the cells, and no update check that needs the web.
            _write_json(settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                        {"fetchNews": "false", "checkForUpdates": False})
            cmd = [sys.executable, "-m", "jupyterlab", *common, f"--ServerApp.token={self.token}",
                   f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
        else:
            _write_json(home / "config" / "nbconfig" / "notebook.json", {"load_extensions": other_nbextensions()})
            env["JUPYTER_PREFER_ENV_PATH"] = "0"  # the first config folder wins: the one above, not the venv's
            cmd = [sys.executable, "-m", "notebook", *common, f"--NotebookApp.token={self.token}",
                   f"--NotebookApp.notebook_dir={root}"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def autosave(self) -> bool:
        """JupyterLab's autosave setting as the server hands it to the page."""
        with urllib.request.urlopen(self.url("lab/api/settings/@jupyterlab/docmanager-extension:plugin")) as r:
            return json.loads(r.read())["settings"]["autosave"]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}{'&' if '?' in path else '?'}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        """Call the server's REST API; the decoded JSON answer (None when empty)."""
        with urllib.request.urlopen(urllib.request.Request(self.url(f"api/{path}"), method=method), timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def _wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Jupyter exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"Jupyter did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def shut_down_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Jupyter serving copies of the calculator notebooks (the frontends write to what they open)."""
    _skip_or_fail()
    root, home = tmp_path_factory.mktemp("notebooks"), tmp_path_factory.mktemp("jupyter-home")
    for name in CALCULATOR_NOTEBOOKS:
        shutil.copy(NOTEBOOKS / name, root / name)
    server = Server(root, home)
    try:
        assert FRONTEND == "classic" or server.autosave() is False, "JupyterLab would save the copies"
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium through Debian's chromedriver (no Selenium Manager, nothing downloaded)."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_script_timeout(RUN_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


# JavaScript for each frontend: READY is true once the notebook and its kernel are; RUN_ALL runs every cell and
# calls back with null when all are done (or a reason); CELLS gives the notebook's cells as nbformat dicts.
LAB_READY = """
const app = window.jupyterapp, panel = app && app.shell.currentWidget;
return !!(panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel
          && panel.sessionContext.session.kernel.status === "idle" && panel.context.isReady);
"""
LAB_RUN_ALL = """
const done = arguments[arguments.length - 1];
window.jupyterapp.commands.execute("notebook:run-all-cells").then(() => done(null), e => done(String(e)));
"""
LAB_CELLS = "return window.jupyterapp.shell.currentWidget.content.model.toJSON().cells;"
CLASSIC_READY = """
const nb = window.Jupyter && Jupyter.notebook;
return !!(nb && nb._fully_loaded && nb.kernel && nb.kernel.is_connected() && Jupyter.WidgetManager
          && require.defined("nbextensions/jupyter-js-widgets/extension") && nb.kernel.widget_manager);
"""
CLASSIC_RUN_ALL = """
const done = arguments[arguments.length - 1];
Jupyter.notebook.set_autosave_interval(0);  // on from page load (every 2 min); the nbconfig can't turn it off
if (Jupyter.notebook.autosave_interval !== 0) { done("autosave is still on"); return; }
Jupyter.notebook.execute_all_cells();
const busy = () => Jupyter.notebook.get_cells().some(c => c.cell_type === "code" && c.input_prompt_number === "*");
const poll = () => busy() ? setTimeout(poll, 250) : done(null);
poll();
"""
CLASSIC_CELLS = "return Jupyter.notebook.toJSON().cells;"


def open_and_run(driver, server: Server, name: str) -> list[dict]:
    """Open notebook `name`, run all its cells and return its cells as nbformat dicts."""
    from selenium.webdriver.support.ui import WebDriverWait

    lab = FRONTEND == "lab"
    driver.get(server.url(f"lab/tree/{name}?reset" if lab else f"notebooks/{name}"))
    WebDriverWait(driver, 90, poll_frequency=0.5).until(
        lambda d: d.execute_script(LAB_READY if lab else CLASSIC_READY),
        f"{name}: the notebook and its kernel were not ready within 90 s")
    failure = driver.execute_async_script(LAB_RUN_ALL if lab else CLASSIC_RUN_ALL)
    assert failure is None, f"{name}: running all cells failed: {failure}"
    cells = driver.execute_script(LAB_CELLS if lab else CLASSIC_CELLS)
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{name}: a cell raised {errors}"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: not every code cell ran"
    return cells


def calculator_state(calculator) -> tuple[str, list[str | None]]:
    """(verdict text, the src of every image) of one calculator, read in one script: a chart redrawn while it is
    read can't leave a stale image element behind (a race seen once in CI)."""
    verdict, images = calculator.parent.execute_script(
        "const c = arguments[0], v = c.querySelector('.course-verdict');"
        "return [v ? v.innerText : '', Array.from(c.querySelectorAll('.course-chart img')).map(i => i.src)];",
        calculator)
    return verdict, images


def console_errors(driver) -> list[str]:
    """SEVERE browser-console entries since the last call, less the allowed ones."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in ALLOWED_ERRORS)]


def calculator_outputs(cells: list[dict]) -> list[list[str]]:
    """The output kinds (mime types, or the output type) of each cell that makes a calculator."""
    return [[kind for o in c.get("outputs", []) for kind in (o.get("data") or {o.get("output_type"): 0})]
            for c in cells if c["cell_type"] == "code" and "Calculator" in "".join(c["source"])]


def check_calculator(driver, name: str, cells: list[dict]) -> None:
    """The notebook's one calculator shows one chart and a verdict, and both follow a changed dropdown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    calculators = WebDriverWait(driver, 150).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".course-calculator"),
        f"{name}: no calculator (.course-calculator) was drawn within 150 s; "
        f"the calculator cells' outputs: {calculator_outputs(cells)}")
    assert len(calculators) == 1, f"{name}: {len(calculators)} calculators drawn"
    calculator = calculators[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", calculator)
    verdict, images = calculator_state(calculator)
    assert verdict.strip(), f"{name}: the calculator's verdict is empty"
    assert len(images) == 1, f"{name}: the chart shows {len(images)} images, not one"
    # Every image of the calculator's cell: the saved picture must not show beside the live widget.
    cell = calculator.find_element(By.XPATH, "./ancestor::*[contains(@class, 'jp-Cell') or "
                                             "contains(concat(' ', @class, ' '), ' cell ')][1]")
    assert len(cell.find_elements(By.TAG_NAME, "img")) == 1, f"{name}: the calculator's cell shows more images"

    dropdown = Select(calculator.find_element(By.TAG_NAME, "select"))
    current = dropdown.first_selected_option.text
    other = next(o.text for o in dropdown.options if o.text != current)
    dropdown.select_by_visible_text(other)
    from selenium.common.exceptions import StaleElementReferenceException

    WebDriverWait(driver, 30, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: calculator_state(calculator)[0] != verdict and calculator_state(calculator)[1] != images,
        f"{name}: choosing {other!r} instead of {current!r} did not change both the verdict and the chart")
    time.sleep(1)  # let a second, unwanted redraw show up if there is one
    new_verdict, new_images = calculator_state(calculator)
    assert len(new_images) == 1, f"{name}: after the change the chart shows {len(new_images)} images"
    assert new_verdict.strip() and new_verdict != verdict

    page = driver.execute_script("return document.body.innerText;")
    raw = [r for r in RAW_REPRS if r in page]
    assert not raw, f"{name}: a raw widget repr is visible: {raw}"


@pytest.mark.parametrize("name", CALCULATOR_NOTEBOOKS)
def test_calculator_answers_its_knobs_in_the_browser(server, browser, name):
    """All cells run in the browser; the calculator answers a dropdown; the console has no errors."""
    try:
        cells = open_and_run(browser, server, name)
        check_calculator(browser, name, cells)
    except Exception as err:  # the console usually says why a widget is missing
        pytest.fail(f"{FRONTEND}: {err}\nbrowser console errors:\n" + "\n".join(console_errors(browser)))
    else:
        errors = console_errors(browser)  # before the kernel goes: the page then fails to reach it
        assert not errors, f"{FRONTEND}: {name}: the browser console has errors:\n" + "\n".join(errors)
    finally:
        server.shut_down_kernels()  # two cores: the next notebook's kernel gets them
