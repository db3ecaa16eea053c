"""`make demo` in a real browser: notebook 02 runs top to bottom and shows a plot and a slider.

Starts `python -m remote_kernel.demo.launcher` as `make demo` does (the simulated bench, the
`remote-demo` kernelspec and JupyterLab), with its own Jupyter/IPython dirs and a copy of
notebooks/ so the repository's notebooks are never saved over. Reads the URL it prints, opens
notebook 02 in headless chromium, runs Run > Run All Cells and waits until every code cell has
an execution count and none has an error; then checks for the matplotlib image and the
ipywidgets slider, takes a screenshot (RK_SCREENSHOT_DIR, else a temporary directory;
RK_UPDATE_DOCS=1 copies it to docs/notebook-02.png), stops the launcher with SIGINT as Ctrl-C
does, and checks that everything it started is gone: its processes, the `remote-demo`
kernelspec and its runtime directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, Env, _free_port, _wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
psutil = pytest.importorskip("psutil")
nbformat = pytest.importorskip("nbformat")
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no chromium at {CHROMIUM} (make lab-chromium installs it)"),
]
expect = playwright_api.expect

NOTEBOOK = "02-instrument-control.ipynb"
KERNEL_NAME = "remote-demo"
RUN_ALL = 120  # s: Run All Cells to the last execution count
STOP = 20  # s: SIGINT to the launcher's exit
SHOT_SIZE = {"width": 1400, "height": 1360}


class Launcher:
    """`python -m remote_kernel.demo.launcher --port PORT`, its output collected by a thread."""

    URL = re.compile(r"JupyterLab: (http://127\.0\.0\.1:\d+/lab/tree/\S+\?token=(\w+))")

    def __init__(self, env: Env) -> None:
        self.env = env
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remote_kernel.demo.launcher", "--port", str(_free_port()),
             "--notebooks", str(env.notebooks)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env.environ,
            cwd=str(env.base), start_new_session=True)  # Ctrl-C in pytest's terminal is ours
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            match = _wait_until(lambda: self._url() or self._exited(), 60, "the JupyterLab URL")
            self.url, self.token = match.group(1), match.group(2)
            self.base_url = self.url.split("/lab/", 1)[0]
            _wait_until(self._up, 60, "jupyter lab to answer")
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _url(self) -> re.Match[str] | None:
        for line in list(self.lines):
            match = self.URL.search(line)
            if match:
                return match
        return None

    def _exited(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the demo launcher exited:\n{self.output()}")

    def _up(self) -> bool:
        self._exited()
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/status?token={self.token}",
                                        timeout=2):
                return True
        except OSError:
            return False

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def processes(self) -> list[Any]:
        """The launcher and everything below it: the bench, JupyterLab, the kernel."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """Last resort, on a failure: the session the launcher leads, and its kernelspec."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
            subprocess.run([sys.executable, "-m", "remote_kernel", "kernel", "remove",
                            KERNEL_NAME], env=self.env.environ, capture_output=True, timeout=60)


def _kernelspecs(env: Env) -> str:
    result = subprocess.run([sys.executable, "-m", "remote_kernel", "kernel", "list"],
                            env=env.environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _has_demo_kernelspec(env: Env) -> bool:
    return any(line.split("\t")[0] == KERNEL_NAME for line in _kernelspecs(env).splitlines())


def _prepare(env: Env) -> None:
    """A copy of notebooks/ (02 without outputs), JupyterLab settings without the news
    question or autosave."""
    shutil.copytree(ROOT / "notebooks", env.notebooks, dirs_exist_ok=True)
    path = env.notebooks / NOTEBOOK
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, path)
    (env.base / "tmp").mkdir()  # TMPDIR: where the launcher makes its runtime directory
    env.environ["TMPDIR"] = str(env.base / "tmp")
    config = Path(env.vars["JUPYTER_CONFIG_DIR"])
    # window.jupyterapp: the test reads execution counts and outputs from the notebook model.
    (config / "jupyter_server_config.py").write_text(
        "c.LabApp.expose_app_in_browser = True\n"
        "c.FileContentsManager.delete_to_trash = False\n")
    settings = config / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in (
            ("apputils-extension/notification", {"fetchNews": "false",
                                                 "checkForUpdates": False}),
            ("docmanager-extension/plugin", {"autosave": False})):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


# The open notebook's code cells as the frontend's model has them: execution count, outputs.
CELLS_JS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.content.model) return null;
    const cells = [];
    for (const cell of panel.content.model.cells) {
        if (cell.type !== 'code') continue;
        const outputs = [];
        for (let i = 0; i < cell.outputs.length; i++) {
            outputs.push(cell.outputs.get(i).toJSON());
        }
        cells.push({count: cell.executionCount, outputs: outputs});
    }
    return cells;
}"""


def _errors(cells: list[dict[str, Any]]) -> list[str]:
    return [f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
            for index, cell in enumerate(cells) for output in cell["outputs"]
            if output.get("output_type") == "error"]


def _run_all(page: Any) -> list[dict[str, Any]]:
    """Run > Run All Cells, then wait for the last execution count; fail on the first error."""
    first = page.evaluate(CELLS_JS)
    assert first and all(cell["count"] is None for cell in first), first
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + RUN_ALL
    while True:
        cells = page.evaluate(CELLS_JS)
        errors = _errors(cells)
        assert not errors, errors
        busy = page.locator(".jp-Notebook .jp-InputPrompt", has_text="[*]").count()
        if all(cell["count"] is not None for cell in cells) and not busy:
            return cells
        if time.monotonic() > deadline:
            pending = [i for i, cell in enumerate(cells) if cell["count"] is None]
            raise TimeoutError(f"cells {pending} did not run within {RUN_ALL} s")
        time.sleep(0.25)


def _in_the_browser(launcher: Launcher, shot: Path, step: Any) -> None:
    """Open notebook 02, run all cells, check the plot and the slider, take the screenshot."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True, timeout=60_000)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            page.goto(launcher.url, timeout=60_000)
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            expect(notebook.locator(".jp-Cell").first).to_be_visible(timeout=60_000)
            expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle")).to_be_visible(
                timeout=60_000)
            # More room for the notebook: collapse the file browser.
            page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
            step("notebook open, kernel idle")

            cells = _run_all(page)
            step(f"{len(cells)} code cells ran")
            # What a person sees: every prompt numbered, the plots, the slider at ~2500 Hz.
            prompts = notebook.locator(".jp-CodeCell .jp-InputPrompt")
            assert prompts.count() == len(cells)
            for index in range(len(cells)):
                expect(prompts.nth(index)).to_have_text(re.compile(r"^\[\d+\]:$"))
            plots = notebook.locator(".jp-OutputArea-output img[src^='data:image/png']")
            expect(plots.first).to_be_visible()
            assert plots.count() >= 2  # the trace and the live plot
            slider = notebook.locator(".jp-OutputArea-output .jupyter-widgets.widget-slider")
            expect(slider).to_have_count(1)
            expect(slider.locator(".widget-label")).to_have_text("Hz")
            # slider.value = 2500: the readout shows it snapped to the log step (10**3.4).
            expect(slider.locator(".widget-readout")).to_have_text(re.compile(r"^2\.5\d*e\+0?3$"))

            # The screenshot: the trace's cell at the top, the live plot and the slider below;
            # a taller window so that all three fit.
            page.set_viewport_size(SHOT_SIZE)
            plot_cell = notebook.locator(".jp-CodeCell", has=page.locator(
                ".jp-OutputArea-output img[src^='data:image/png']")).first
            plot_cell.evaluate("node => node.scrollIntoView({block: 'start'})")
            page.mouse.move(0, 0)
            expect(slider).to_be_in_viewport()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot))
            step(f"screenshot {shot}")
        except Exception:
            page.screenshot(path=str(shot.with_name("failure.png")))
            raise
        finally:
            context.close()
            browser.close()


def test_demo_notebook_runs_in_the_browser(tmp_path: Path) -> None:
    start = time.monotonic()

    def step(what: str) -> None:  # progress with timings, shown with -s or on failure
        print(f"{time.monotonic() - start:6.1f}s {what}")

    env = Env(tmp_path)
    if _has_demo_kernelspec(env):
        pytest.skip(f"a {KERNEL_NAME!r} kernelspec is installed: is `make demo` running?")
    _prepare(env)
    chosen = os.environ.get("RK_SCREENSHOT_DIR")
    shots = Path(chosen) if chosen else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "notebook-02.png"

    launcher = Launcher(env)
    step(f"launcher up: {launcher.url}")
    try:
        assert launcher.url.endswith(f"/lab/tree/{NOTEBOOK}?token={launcher.token}")
        _in_the_browser(launcher, shot, step)

        # Ctrl-C: the launcher stops JupyterLab (and with it the kernel) and the bench.
        processes = launcher.processes()
        assert len(processes) >= 4, [proc.cmdline() for proc in processes]
        os.kill(launcher.process.pid, signal.SIGINT)
        try:
            code = launcher.process.wait(STOP)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not exit within {STOP} s of SIGINT")
        step(f"launcher exited with {code}")
        assert code == 0
        _, alive = psutil.wait_procs(processes, timeout=5)
        assert not alive, [proc.cmdline() for proc in alive]
        assert not _has_demo_kernelspec(env), _kernelspecs(env)
        assert not list((env.base / "tmp").glob("rk-demo-*"))
        step("everything stopped and removed")
    except BaseException:
        print(f"screenshots in {shots}\n--- launcher output ---\n{launcher.output()}")
        raise
    finally:
        launcher.kill()
    if os.environ.get("RK_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "notebook-02.png")
    print(f"screenshot {shot}")
