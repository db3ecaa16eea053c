"""The Remote panel in a real JupyterLab, driven by Playwright with Debian's chromium.

A real `jupyter lab` (temporary config/data/runtime dirs, 127.0.0.1, a token), a real
ipykernel and real `remote-kernel serve --classic` processes. The test does what a person
would: runs `%load_ext remote_kernel` and `%remote connect`, watches the panel, browses the
remote namespace, inserts code from the tree and runs it, kills the server, and connects
again through the dialog. Screenshots go to a temporary directory (RK_SCREENSHOT_DIR to
choose it); RK_UPDATE_DOCS=1 copies the object-tree one to docs/lab-panel.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("RK_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
LAB_EXTENSION = Path(sys.prefix) / "share/jupyter/labextensions/remote-kernel-lab/package.json"

playwright_api = pytest.importorskip("playwright.sync_api")
# The marks of every browser test module (this one and those that import its helpers).
NEEDS_CHROMIUM = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no chromium at {CHROMIUM} (make lab-chromium installs it)")
NEEDS_EXTENSION = pytest.mark.skipif(
    not LAB_EXTENSION.exists(), reason="the lab extension is not installed (make setup builds it)")
pytestmark = [pytest.mark.timeout(240), NEEDS_CHROMIUM, NEEDS_EXTENSION]
expect = playwright_api.expect

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
TOKEN = "rk-browser-test"
STEP = 30_000  # ms: the longest any single UI expectation may take
expect.set_options(timeout=STEP)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class Env:
    """Temporary Jupyter dirs shared by the lab server, its kernels and the remote servers."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.vars: dict[str, str] = {}
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
            path = base / sub
            path.mkdir(parents=True, exist_ok=True)
            self.vars[var] = str(path)
        self.runtime = Path(self.vars["JUPYTER_RUNTIME_DIR"])
        self.notebooks = base / "notebooks"
        self.notebooks.mkdir(exist_ok=True)
        self.environ = dict(os.environ, **self.vars, PYTHONUNBUFFERED="1")
        self.environ.pop("JUPYTER_PREFER_ENV_PATH", None)


class RemoteServer:
    """`python -m remote_kernel serve --classic --name NAME --no-auth`."""

    def __init__(self, env: Env, name: str) -> None:
        self.file = env.runtime / f"remote-kernel-{name}.json"
        self.log = open(env.base / f"serve-{name}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remote_kernel", "serve", "--classic", "--name", name,
             "--no-auth"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env.environ, cwd=str(env.base))
        _wait_until(lambda: self.file.exists() or self.process.poll() is not None, 20,
                    f"the connection file of {name}")
        if self.process.poll() is not None:
            raise RuntimeError(f"remote-kernel serve exited: {self.file}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.log.close()


class Lab:
    """`jupyter lab` on 127.0.0.1 with its own dirs; stopped on close."""

    def __init__(self, env: Env) -> None:
        self.port = _free_port()
        config = Path(env.vars["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.py"
        config.write_text(
            "from jupyterlab.galata import configure_jupyter_server\n"
            "configure_jupyter_server(c)\n"
            f"c.ServerApp.ip = '127.0.0.1'\n"
            f"c.ServerApp.port = {self.port}\n"
            f"c.ServerApp.root_dir = {str(env.notebooks)!r}\n"
            f"c.IdentityProvider.token = {TOKEN!r}\n"
            "c.FileContentsManager.delete_to_trash = False\n"
        )
        # No "news" question; pings every second so the test sees latency changes quickly.
        overrides = Path(env.vars["JUPYTER_DATA_DIR"]) / "lab" / "settings"
        overrides.mkdir(parents=True, exist_ok=True)
        (overrides / "overrides.json").write_text(json.dumps({
            "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                             "checkForUpdates": False},
            "@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True},
            "remote-kernel-lab:plugin": {"pingInterval": 1},
        }))
        self.log_path = env.base / "lab.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
             f"--LabApp.app_settings_dir={overrides}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env.environ, cwd=str(env.base))
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_until(self._up, 60, "jupyter lab to answer")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/status?token={TOKEN}", timeout=2):
                return True
        except OSError:
            return False

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def lab(env: Env) -> Iterator[Lab]:
    server = Lab(env)
    yield server
    server.close()


def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RK_SCREENSHOT_DIR if set, else a temporary directory."""
    chosen = os.environ.get("RK_SCREENSHOT_DIR")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def chromium_page(width: int, height: int) -> Iterator[Any]:
    """A page of a headless chromium; its errors and console warnings in ``page.errors``."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True, timeout=60_000)
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(STEP)
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda msg: msg.type in ("error", "warning")
                and page.errors.append(f"console {msg.type}: {msg.text}"))
        try:
            yield page
        finally:
            context.close()
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    with chromium_page(1400, 860) as page:
        yield page


def _notebook(env: Env, name: str) -> str:
    content = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {},
                   "outputs": [], "source": ""}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (env.notebooks / name).write_text(json.dumps(content))
    return name


def open_notebook(page: Any, lab: Lab, name: str) -> Notebook:
    """Open notebook ``name`` in JupyterLab and wait until its kernel is idle."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={TOKEN}", timeout=60_000)
    nb = Notebook(page)
    expect(nb.cells.first).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle")).to_be_visible(
        timeout=60_000)
    return nb


class Notebook:
    """What a person does with the notebook: type into the last cell and run it."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def run(self, source: str, expect_output: str | None = None) -> Any:
        count = self.cells.count()
        cell = self.cells.nth(count - 1)  # .last would follow the cell Shift+Enter appends
        editor = cell.locator(".cm-content")
        editor.click()
        editor.fill(source)
        self.page.keyboard.press("Shift+Enter")
        return self.wait(cell, expect_output)

    def run_active(self, expect_output: str | None = None) -> Any:
        cell = self.page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
        index = cell.evaluate("node => Array.from(node.parentNode.children).indexOf(node)")
        cell = self.cells.nth(index)
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Shift+Enter")
        return self.wait(cell, expect_output)

    def wait(self, cell: Any, expect_output: str | None) -> Any:
        prompt = cell.locator(".jp-InputPrompt")
        expect(prompt).to_have_text(re.compile(r"\[\d+\]:"), timeout=60_000)
        if expect_output is not None:
            expect(cell.locator(".jp-OutputArea-output").first).to_contain_text(expect_output)
        errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0 or "Traceback" not in errors.first.inner_text()
        return cell


def _connection(page: Any, name: str) -> Any:
    return page.locator(f".rk-connection[data-name='{name}']")


def _node(scope: Any, *names: str) -> Any:
    """The tree node reached by names below the root (the root itself with no names)."""
    node = scope.locator(".rk-tree > .rk-node")
    for name in names:
        node = node.locator(f":scope > .rk-children > .rk-node[data-name='{name}']")
    return node


def _row(node: Any) -> Any:
    return node.locator(":scope > .rk-node-row")


def _open(node: Any) -> None:
    """Click a node's name, as a person expands it."""
    _row(node).locator(".rk-node-name").click()


def _widen_sidebar(page: Any, pixels: int) -> None:
    """Drag the sidebar's edge so the tree's reprs fit (for the screenshots)."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + pixels, y, steps=5)
    page.mouse.up()


def test_panel_end_to_end(env: Env, lab: Lab, page: Any, shots: Path) -> None:
    start = time.monotonic()

    def step(what: str) -> None:  # progress with timings, shown with -s or on failure
        print(f"{time.monotonic() - start:6.1f}s {what}")

    name = _notebook(env, "panel.ipynb")
    first = RemoteServer(env, "bench")
    second: RemoteServer | None = None
    try:
        nb = open_notebook(page, lab, name)
        # The panel, before the extension is loaded, says what to do.
        page.locator(".jp-SideBar .lm-TabBar-tab[data-id='remote-kernel-panel']").click()
        panel = page.locator("#remote-kernel-panel")
        expect(panel.locator(".rk-message")).to_contain_text("%load_ext remote_kernel")
        _widen_sidebar(page, 170)

        step("notebook open")
        nb.run("%load_ext remote_kernel")
        expect(panel.locator(".rk-message")).to_contain_text("No connections yet")
        nb.run("%remote connect bench", expect_output="connected to bench")
        nb.run("%%remote\nconfig = {'scope': {'rate': 1000, 'channels': [1, 2]}, 'label': 'bench'}\n"
               "class Stage:\n    '''A motorized stage.'''\n    position = 0.5\n"
               "stage = Stage()\n")

        step("connected and remote cell run")
        bench = _connection(page, "bench")
        expect(bench.locator(".rk-state")).to_have_text("connected")
        expect(bench.locator(".rk-conn-target")).to_have_text("bench")
        expect(bench.locator(".rk-latency")).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"))
        expect(bench.locator(".rk-conn-stats")).to_contain_text("requests")
        expect(page.locator(".rk-status")).to_have_text(re.compile(r"Remote: bench · \d"))
        page.screenshot(path=str(shots / "connected.png"))

        step("panel shows bench with a latency")
        # The object browser: the namespace, then two levels below it, one request each.
        _open(_node(bench))
        expect(_node(bench, "config")).to_be_visible()
        config = _node(bench, "config")
        expect(config.locator(":scope > .rk-node-row .rk-node-type")).to_have_text("dict")
        _open(config)
        scope = _node(bench, "config", "scope")
        _open(scope)
        rate = _node(bench, "config", "scope", "rate")
        expect(rate.locator(":scope > .rk-node-row .rk-node-repr")).to_have_text("1000")
        expect(_node(bench, "config", "scope", "channels")).to_be_visible()
        _open(_node(bench, "stage"))
        expect(_node(bench, "stage", "position")).to_be_visible()
        page.screenshot(path=str(shots / "tree.png"))

        step("tree expanded")
        # Its menu: documentation, then insert the code into the active cell and run it.
        _row(_node(bench, "stage")).hover()
        _node(bench, "stage").locator(":scope > .rk-node-row .rk-node-menu").click()
        page.locator(".lm-Menu .lm-Menu-item:has-text('Show Documentation')").click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_contain_text("A motorized stage.")
        expect(dialog).to_contain_text('bench.namespace["stage"]')
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        expect(dialog).to_have_count(0)

        _row(rate).hover()
        rate.locator(":scope > .rk-node-row .rk-node-menu").click()
        page.locator(".lm-Menu .lm-Menu-item:has-text('Insert Code Into Cell')").click()
        active = page.locator(".jp-Notebook .jp-Cell.jp-mod-active .cm-content")
        expect(active).to_have_text('bench.namespace["config"]["scope"]["rate"]')
        cell = nb.run_active(expect_output="1000")
        expect(cell.locator(".jp-OutputArea-output").first).to_have_text("1000")

        step("docs shown, code inserted and run")
        # The server dies: the panel and the status bar say so.
        first.kill()
        expect(bench.locator(".rk-state")).to_have_text("lost", timeout=20_000)
        expect(page.locator(".rk-status")).to_contain_text("lost")
        page.screenshot(path=str(shots / "lost.png"))

        step("state lost")
        # Connect through the dialog, picking the new server from the list of live files.
        second = RemoteServer(env, "lab2")
        panel.locator(".rk-connect-button").click()
        dialog = page.locator(".jp-Dialog")
        dialog.locator(".rk-connect-file[data-name='lab2']").click()
        expect(dialog.locator(".rk-connect-target")).to_have_value("lab2")
        page.screenshot(path=str(shots / "dialog.png"))
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        lab2 = _connection(page, "lab2")
        expect(lab2.locator(".rk-state")).to_have_text("connected")
        expect(lab2.locator(".rk-latency")).to_have_text(re.compile(r"\d"))
        expect(page.locator(".rk-status")).to_contain_text("Remote: lab2")
        nb.run("lab2.eval('6 * 7')", expect_output="42")

        step("connected through the dialog")
        # Ping, reconnect and disconnect from the panel.
        requests = lab2.locator(".rk-conn-stats").inner_text()
        lab2.locator(".rk-ping").click()
        expect(lab2.locator(".rk-conn-stats")).not_to_have_text(requests)
        nb.run("before = lab2")
        lab2.locator(".rk-reconnect").click()
        expect(lab2.locator(".rk-state")).to_have_text("connected")
        # A new connection, bound to the same name in the notebook, that works.
        # The reconnect is a comm message; wait until the kernel has handled it.
        deadline = time.monotonic() + 30
        while True:
            cell = nb.run("(lab2 is not before, before.closed, lab2.eval('2 + 3'))")
            text = cell.locator(".jp-OutputArea-output").first.inner_text()
            if "(True, True, 5)" in text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "(True, True, 5)" in text, text
        bench.locator(".rk-disconnect").click()
        expect(bench).to_have_count(0)
        page.screenshot(path=str(shots / "dialog-connected.png"))
        step("pinged, reconnected, disconnected")
        assert not [e for e in page.errors if "remote" in e.lower() and "console" not in e], \
            page.errors
    except Exception:
        page.screenshot(path=str(shots / "failure.png"))
        print(f"screenshots in {shots}\n--- page errors ---\n" + "\n".join(page.errors))
        print(f"--- jupyter lab log ---\n{lab.tail()}")
        raise
    finally:
        first.kill()
        if second is not None:
            second.kill()
    if os.environ.get("RK_UPDATE_DOCS"):
        shutil.copyfile(shots / "tree.png", ROOT / "docs" / "lab-panel.png")
    print(f"screenshots in {shots}")
