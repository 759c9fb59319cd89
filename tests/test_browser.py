"""The chapters that have widgets, run top to bottom in JupyterLab in headless Chromium, the path a
student with a live frontend takes (nbval and the other tests set ``EDITNB_STATIC=1`` and never
show a widget).  For each chapter: every cell runs without an error, and each widget is operated
(a dropdown or slider must redraw the figure, a 2AFC click must change the board), with a
screenshot of the widget before and after in ``build/browser-screenshots/`` (``EDITNB_SCREENSHOTS``
moves it).

- The kernel is ``tests/browser/colab_like_kernel.py``: its shell is a subclass of ipykernel's
  named ``Shell``, as Colab's is, so frontend detection by class name shows no widget here.
- The chapters run on the ``sd15-shaped`` profile (chapter 05 switches itself to toy): they are
  this suite's sd15-shaped runs of chapters 01, 05, 06 and 07 (``test_chapters_sd15_shaped.py``
  runs the others headless), so their pictures are noise; the toy profile's figures are nbval's.
- JupyterLab listens on the loopback with a random token; Chromium is Debian's (``chromium``),
  driven by playwright through ``executable_path`` (playwright's own browser download is not used).
- A cell that runs past :data:`CELL_TIMEOUT` fails the test with the kernel's stacks (py-spy).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = Path(__file__).resolve().parent / "browser" / "colab_like_kernel.py"
SCREENSHOTS = Path(os.environ.get("EDITNB_SCREENSHOTS") or ROOT / "build" / "browser-screenshots")
CELL_TIMEOUT = 300  # seconds without a cell finishing, as nbval's --nbval-cell-timeout
WIDGET_TIMEOUT = 60  # seconds for a widget to appear, and for it to redraw after an operation

#: per chapter, the widgets to operate: (text in the source of the cell that shows it, the control
#: to operate, what must change: "figure" = the images drawn in the widget, "board" = its last output)
WIDGETS = {  # the longest first (see conftest.py)
    "06_editclip": [("grid_explorer(", "slider", "figure")],
    "01_foundations": [("attention_explorer(", "dropdown", "figure"), ("attention_explorer(", "slider", "figure")],
    "05_uip2p": [("study.panel(", "button", "board")],
    "07_evaluation": [("study.panel(", "button", "board")],
}

# the notebook panel's state, read from JupyterLab itself (--LabApp.expose_app_in_browser)
JS_READY = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!(kernel && kernel.status === 'idle' && panel.content && panel.content.widgets.length > 0);
}"""
JS_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  let done = 0, error = null;
  cells.forEach((c, i) => {
    if (c.model.executionCount !== null) done++;
    for (const o of c.model.outputs.toJSON())
      if (o.output_type === 'error' && error === null)
        error = {cell: i, ename: o.ename, evalue: o.evalue, traceback: (o.traceback || []).join('\\n')};
  });
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {total: cells.length, done: done, error: error, status: kernel ? kernel.status : 'none'};
}"""
JS_CHECKED_OUTPUTS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes('NBVAL_CHECK_OUTPUT'))
  .map(c => c.model.outputs.toJSON().filter(o => o.output_type === 'stream').map(o => o.text).join(''))"""
#: the chapters that run on the toy profile here too (05 switches itself to toy): their nbval run would
#: execute the same cells a second time, so conftest.py leaves it out when this test runs, and this
#: test checks their NBVAL_CHECK_OUTPUT cells against the committed outputs instead
TOY_CHAPTERS = ("05_uip2p",)
JS_CELL_WITH = """(text) => window.jupyterapp.shell.currentWidget.content.widgets
  .findIndex(c => c.model.sharedModel.getSource().includes(text))"""


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    process: subprocess.Popen

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if body else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    path = os.environ.get("EDITNB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the browser test needs Debian's Chromium: `apt-get install chromium` (scripts/test.sh installs it "
                    "when run as root), or EDITNB_CHROMIUM=/path/to/chromium", pytrace=False)
    return path


def _write_settings(folder: Path) -> None:
    """JupyterLab user settings: every cell in the page (no windowing, so that the widgets of cells
    out of view exist to be operated) and no news or update checks (no network, no pop-ups)."""
    settings = {"notebook-extension/tracker": {"windowingMode": "none"},
                "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}
    for name, value in settings.items():
        path = folder / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import nbformat

    root = tmp_path_factory.mktemp("lab")
    for chapter in WIDGETS:  # without the committed outputs: an execution count then means "ran now"
        nb = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, root / f"{chapter}.ipynb")
    data = tmp_path_factory.mktemp("jupyter-data")
    spec = data / "kernels" / "python3"  # found before the built-in python3 kernel
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(KERNEL), "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab-like shell)", "language": "python"}))
    settings = tmp_path_factory.mktemp("lab-settings")
    _write_settings(settings)
    env = {**os.environ, "JUPYTER_PATH": str(data), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTER_RUNTIME_DIR": str(tmp_path_factory.mktemp("jupyter-runtime")),
           "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("jupyter-config")),
           "EDITNB_PROFILE": "sd15-shaped", "EDITNB_NO_PROGRESS": "1"}
    env.pop("EDITNB_STATIC", None)  # the frontend path
    token, port = secrets.token_hex(16), _free_port()
    log = open(root / "jupyterlab.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
         "--allow-root"],  # CI runs as root
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    server = Lab(f"http://127.0.0.1:{port}", token, root, process)
    deadline = time.monotonic() + 90
    while True:
        try:
            server.api("status")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"JupyterLab did not start:\n{(root / 'jupyterlab.log').read_text()[-3000:]}", pytrace=False)
            time.sleep(0.5)
    yield server
    try:
        server.api("shutdown", method="POST")  # stops its kernels too
        process.wait(30)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox
        chromium = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, lab):
    """A fresh page per chapter, and the chapter's kernels stopped after it (their models freed)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()  # without the "leave page?" prompt of an unsaved notebook
    for kernel in lab.api("kernels"):
        lab.api(f"kernels/{kernel['id']}", method="DELETE")


def _kernel_stacks(lab: Lab) -> str:
    from editnb.figures import kernel_stacks

    stacks = []
    for kernel in lab.api("kernels"):
        for pid in os.listdir("/proc"):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if pid.isdigit() and f"kernel-{kernel['id']}.json" in cmdline:
                stacks.append(kernel_stacks(int(pid)))
    return "\n".join(stacks) or "(no kernel process found)"


def run_all(page, lab: Lab, chapter: str) -> None:
    """Open the chapter in JupyterLab, run all its cells, and wait for the last one; fail on a cell
    error (with its traceback) or a cell running past CELL_TIMEOUT (with the kernel's stacks)."""
    page.goto(f"{lab.url}/lab/tree/{chapter}.ipynb?reset&token={lab.token}")  # reset: no tabs restored
    page.wait_for_function(JS_READY, timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    done, since = -1, time.monotonic()
    while True:
        state = page.evaluate(JS_STATE)
        if state["error"]:
            e = state["error"]
            traceback = re.sub(r"\x1b\[[0-9;]*m", "", e["traceback"])[-3000:]
            pytest.fail(f"{chapter}: code cell {e['cell']} raised {e['ename']}: {e['evalue']}\n{traceback}", pytrace=False)
        if state["done"] == state["total"] and state["status"] == "idle":
            return
        if state["done"] != done:
            done, since = state["done"], time.monotonic()
        elif time.monotonic() - since > CELL_TIMEOUT:
            pytest.fail(f"{chapter}: code cell {done} ran past {CELL_TIMEOUT} s; the kernel's stacks:\n"
                        f"{_kernel_stacks(lab)}", pytrace=False)
        time.sleep(1)


def committed_checked_outputs(chapter: str) -> list[str]:
    """The stream text of the chapter's NBVAL_CHECK_OUTPUT cells in the committed notebook."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
    return ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
            for c in nb.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]


def check_outputs(page, chapter: str) -> None:
    """nbval's output check, for a chapter whose nbval run this test replaces (TOY_CHAPTERS)."""
    expected, found = committed_checked_outputs(chapter), page.evaluate(JS_CHECKED_OUTPUTS)
    assert expected, f"{chapter} has no NBVAL_CHECK_OUTPUT cell"
    for k, (want, got) in enumerate(zip(expected, found)):
        assert got == want, f"{chapter}: output-checked cell {k} printed {got!r}, the committed notebook {want!r}"
    assert len(found) == len(expected)


def _drawn(area, watch: str):
    """What the operation must change: the images of the widget's figure, or the text of its board."""
    if watch == "figure":
        return area.locator("img").evaluate_all("els => els.map(e => e.src)")
    return area.locator(".widget-output").last.inner_text()


def _operate(page, area, control: str) -> str:
    """Operate the first control of that kind in the widget; returns what was done."""
    if control == "dropdown":
        select = area.locator("select").first
        values = select.locator("option").evaluate_all("os => os.map(o => o.value)")
        other = next(v for v in values if v != select.input_value())
        select.select_option(value=other)
        return f"chose option {other!r} of {len(values)}"
    if control == "slider":
        handle = area.locator(".noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowLeft")
        return "moved the slider one stop left"
    if control == "button":
        area.locator("button", has_text="left is better").click()
        return "clicked 'left is better'"
    raise ValueError(control)


def operate_widgets(page, chapter: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for k, (marker, control, watch) in enumerate(WIDGETS[chapter]):
        index = page.evaluate(JS_CELL_WITH, marker)
        assert index >= 0, f"{chapter} has no cell with {marker!r}"
        cell = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(index)
        area = cell.locator(".jp-OutputArea .widget-vbox").first
        try:
            area.wait_for(state="visible", timeout=WIDGET_TIMEOUT * 1000)
        except Exception:  # playwright's TimeoutError
            outputs = cell.locator(".jp-OutputArea").inner_text()[-1500:]
            pytest.fail(f"{chapter}: the cell with {marker!r} shows no widget although a frontend is running (its output: "
                        f"{outputs!r}); frontend detection must count a Colab-like kernel shell", pytrace=False)
        area.scroll_into_view_if_needed()
        before = _drawn(area, watch)
        area.screenshot(path=str(SCREENSHOTS / f"{chapter}-{k}-{control}-before.png"))
        what = _operate(page, area, control)
        deadline = time.monotonic() + WIDGET_TIMEOUT
        while _drawn(area, watch) == before:
            if time.monotonic() > deadline:
                pytest.fail(f"{chapter}: {what} in the widget of the cell with {marker!r}, and its {watch} did not change",
                            pytrace=False)
            time.sleep(0.5)
        time.sleep(0.5)  # let the new figure finish drawing before the screenshot
        area.screenshot(path=str(SCREENSHOTS / f"{chapter}-{k}-{control}-after.png"))


def _chapter_case(chapter: str) -> type:
    """One test class per chapter, so that pytest-xdist's --dist loadscope spreads them over workers."""

    class Case:
        def test_runs_in_jupyterlab_and_its_widgets_respond(self, lab, page):
            run_all(page, lab, chapter)
            if chapter in TOY_CHAPTERS:
                check_outputs(page, chapter)
            operate_widgets(page, chapter)

    Case.__name__ = Case.__qualname__ = f"TestBrowser{chapter}"
    return Case


for _chapter in WIDGETS:
    globals()[f"TestBrowser{_chapter}"] = _chapter_case(_chapter)
