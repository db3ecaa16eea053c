"""A chained remote error as a person sees it in JupyterLab (headless chromium): one error
output, the cause's section, the "direct cause" line and the error's section, the crossing
of the connection labelled. The screenshot goes to a temporary directory (RK_SCREENSHOT_DIR
to choose it); RK_UPDATE_DOCS=1 copies it to docs/error-chain.png."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_browser import (
    NEEDS_CHROMIUM,
    NEEDS_EXTENSION,
    ROOT,
    Env,
    Lab,
    Notebook,
    RemoteServer,
    _notebook,
    chromium_page,
    expect,
    open_notebook,
    screenshot_dir,
)

pytestmark = [pytest.mark.timeout(240), NEEDS_CHROMIUM, NEEDS_EXTENSION]

CALIBRATION = '''%%remote
calibration = {"ch1": 1.02, "ch2": 0.98}

def gain(channel):
    """The calibrated gain of a digitizer channel."""
    try:
        return calibration[channel]
    except KeyError as exc:
        raise RuntimeError(f"no calibration for {channel!r}") from exc
'''


@pytest.fixture
def lab_env(tmp_path: Path) -> Iterator[tuple[Env, Lab]]:
    env = Env(tmp_path / "lab")
    lab = Lab(env)
    try:
        yield env, lab
    finally:
        lab.close()


def test_a_chained_remote_error_in_the_notebook(
        lab_env: tuple[Env, Lab], tmp_path_factory: pytest.TempPathFactory) -> None:
    env, lab = lab_env
    shots = screenshot_dir(tmp_path_factory)
    name = _notebook(env, "errors.ipynb")
    bench = RemoteServer(env, "bench")
    try:
        with chromium_page(1100, 900) as page:
            try:
                _show_the_error(page, lab, name, shots / "error-chain.png")
            except Exception:
                page.screenshot(path=str(shots / "failure.png"))
                print(f"screenshots in {shots}\n--- jupyter lab log ---\n{lab.tail()}")
                raise
    finally:
        bench.kill()
    if os.environ.get("RK_UPDATE_DOCS") == "1":
        shutil.copyfile(shots / "error-chain.png", ROOT / "docs" / "error-chain.png")
    print(f"screenshot {shots / 'error-chain.png'}")


def _show_the_error(page: Any, lab: Lab, name: str, shot: Path) -> None:
    nb = open_notebook(page, lab, name)
    page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
    nb.run("%load_ext remote_kernel")
    nb.run("%remote connect bench", expect_output="connected to bench")
    nb.run(CALIBRATION)
    cell = _run_failing(page, nb, 'gain = bench.namespace["gain"]\ngain("ch3")')
    outputs = cell.locator(".jp-OutputArea-output")
    expect(outputs).to_have_count(1)  # one error output, both sections in it
    error = outputs.first
    expect(error).to_contain_text("The above exception was the direct cause of the following "
                                  "exception:")
    text = error.inner_text()
    assert text.index("KeyError") < text.index("direct cause") < text.index(
        "RuntimeError: no calibration for 'ch3'")
    assert "[on 127.0.0.1:" in text and "return calibration[channel]" in text
    assert 'gain("ch3")' in text  # the cell's own line, before the crossing
    for internal in ("connection.py", "netref.py", "magics.py", "remote_kernel/"):
        assert internal not in text
    # Colors as IPython's: the exception names in the theme's red.
    assert error.locator(".ansi-red-intense-fg, .ansi-red-fg").count() > 0
    cell.evaluate("node => node.scrollIntoView({block: 'start'})")
    page.mouse.move(0, 0)
    page.wait_for_timeout(300)
    cell.screenshot(path=str(shot))


def _run_failing(page: Any, nb: Notebook, source: str) -> Any:
    """Type into the last cell and run it, as Notebook.run does; an error is expected."""
    cell = nb.cells.nth(nb.cells.count() - 1)
    editor = cell.locator(".cm-content")
    editor.click()
    editor.fill(source)
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"),
                                                         timeout=60_000)
    return cell
