"""A fan-out cell in a real JupyterLab (headless chromium), as a person sees it.

Four `remote-kernel serve --classic` processes; the notebook connects to all four at once,
groups them, and runs one `%%remote rack` cell on all of them: each line arrives labelled
with its peer while the cell runs, the panel shows the group and the cell running on each
connection, `-o` gathers a dict, and the Stop button ends a cell sleeping on all four.
Last, the connect dialog lists a server "advertised on the network" (discovery is replaced by
tests/discovery_stub.py in the kernel) and connects to it by name.
The screenshot of the finished cell is docs/fanout.png (RK_UPDATE_DOCS=1 copies it there;
RK_SCREENSHOT_DIR keeps the screenshots). The extension built in this tree
(remote_kernel/labextension) is used when present, else the installed one.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests import discovery_stub as stub

from .test_browser import (
    LAB_EXTENSION,
    NEEDS_CHROMIUM,
    ROOT,
    Env,
    Lab,
    RemoteServer,
    _notebook,
    _widen_sidebar,
    chromium_page,
    expect,
    open_notebook,
    screenshot_dir,
)

pytestmark = [
    pytest.mark.timeout(240),
    NEEDS_CHROMIUM,
    pytest.mark.skipif(not LAB_EXTENSION.exists()
                       and not (ROOT / "remote_kernel/labextension/package.json").exists(),
                       reason="the lab extension is not built (make setup builds it)"),
]

PEERS = ["pi1", "pi2", "pi3", "pi4"]
FAN_OUT = """%%remote rack -o peak
import random, time
print("configuring the generator")
time.sleep(random.uniform(0.3, 1.0))
peak = round(random.uniform(0.95, 1.05), 3)
print(f"acquired 1000 samples, peak {peak} V")
time.sleep(2.5)  # averaging
print("done")"""


def _use_this_tree_extension(env: Env) -> None:
    """Put this tree's build first on Jupyter's path (the user data dir wins)."""
    built = ROOT / "remote_kernel" / "labextension"
    if (built / "package.json").exists():
        target = Path(env.vars["JUPYTER_DATA_DIR"]) / "labextensions" / "remote-kernel-lab"
        shutil.copytree(built, target, dirs_exist_ok=True)
        shutil.copy(ROOT / "labextension" / "install.json", target / "install.json")
        env.environ["JUPYTER_PREFER_ENV_PATH"] = "0"  # else the venv's copy comes first


def _output_text(cell: Any) -> str:
    return "\n".join(cell.locator(".jp-OutputArea-output").all_inner_texts())


def test_a_fan_out_cell_in_jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = Env(tmp_path_factory.mktemp("fanout-lab"))
    shots = screenshot_dir(tmp_path_factory)
    _use_this_tree_extension(env)
    servers = [RemoteServer(env, name) for name in PEERS]
    # One more, known only from the network: no connection file under the name it announces.
    hidden = RemoteServer(env, "hidden")
    servers.append(hidden)
    port = __import__("json").loads(hidden.file.read_text())["port"]
    site = env.base / "site"
    site.mkdir()
    stub.sitecustomize(site)
    env.environ["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.environ["RK_DISCOVERY_SERVERS"] = stub.servers_env(
        stub.ServerInfo("labpc", "127.0.0.1", port, False, "ClassicService"))
    lab = Lab(env)
    try:
        with chromium_page(1400, 900) as page:
            try:
                _drive(page, env, lab, shots)
            except Exception:
                page.screenshot(path=str(shots / "fanout-failure.png"))
                print(f"screenshots in {shots}\n--- jupyter lab log ---\n{lab.tail()}")
                raise
    finally:
        lab.close()
        for server in servers:
            server.kill()
    if os.environ.get("RK_UPDATE_DOCS"):
        shutil.copyfile(shots / "fanout.png", ROOT / "docs" / "fanout.png")
    print(f"screenshots in {shots}")


def _drive(page: Any, env: Env, lab: Lab, shots: Path) -> None:
    name = _notebook(env, "fanout.ipynb")
    nb = open_notebook(page, lab, name)
    page.locator(".jp-SideBar .lm-TabBar-tab[data-id='remote-kernel-panel']").click()
    panel = page.locator("#remote-kernel-panel")
    _widen_sidebar(page, 120)

    nb.run("%load_ext remote_kernel")
    nb.run(f"%remote connect {' '.join(PEERS)}", expect_output="connected to pi4")
    nb.run(f"%remote group rack {' '.join(PEERS)}", expect_output="group rack")
    group = panel.locator(".rk-group[data-name='rack']")
    expect(group.locator(".rk-group-member")).to_have_text(PEERS)

    # The fan-out cell: lines arrive labelled while it runs; the panel shows it running.
    count = nb.cells.count()
    cell = nb.cells.nth(count - 1)
    editor = cell.locator(".cm-content")
    editor.click()
    editor.fill(FAN_OUT)
    started = time.monotonic()
    page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output").first
    for peer in PEERS:
        expect(output).to_contain_text(re.compile(rf"\[{peer}\]\s+acquired 1000 samples"))
    assert time.monotonic() - started < 2.5 + 1.5  # before the cell's final 2.5 s sleep
    expect(panel.locator(".rk-conn-running")).to_have_count(4)
    expect(panel.locator(".rk-group-member.rk-busy")).to_have_count(4)
    prompt = cell.locator(".jp-InputPrompt").inner_text()  # "[*]:" while it runs
    assert prompt.startswith("[*]")
    expect(panel.locator(".rk-connection[data-name='pi1'] .rk-conn-running")).to_have_text(
        "▶ [4] import random, time")  # its In[4]
    page.screenshot(path=str(shots / "fanout-running.png"))
    nb.wait(cell, None)
    text = _output_text(cell)
    for peer in PEERS:
        assert re.search(rf"\[{peer}\]\s+done", text), text
    expect(panel.locator(".rk-conn-running")).to_have_count(0)
    result = nb.run("{name: 0.9 < value < 1.1 for name, value in peak.items()}",
                    expect_output="'pi1': True")
    assert "'pi4': True" in _output_text(result)
    page.screenshot(path=str(shots / "fanout.png"))

    # Stop, while every peer sleeps: the cell ends at once and the connections still answer.
    count = nb.cells.count()
    cell = nb.cells.nth(count - 1)
    editor = cell.locator(".cm-content")
    editor.click()
    editor.fill("%%remote --all\nimport time\nprint('sleeping')\ntime.sleep(60)")
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-OutputArea-output").first).to_contain_text("[pi4] sleeping")
    stop = time.monotonic()
    page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").click()
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"),
                                                         timeout=10_000)
    assert time.monotonic() - stop < 3 + 1  # one browser round trip on top of the 3 s
    assert "KeyboardInterrupt" in _output_text(cell)
    nb.run("sorted(rack.ping())", expect_output="['pi1', 'pi2', 'pi3', 'pi4']")

    # The connect dialog: this machine's connection files, then what the network announces.
    panel.locator(".rk-connect-button").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".rk-connect-file[data-name='pi1']")).to_be_visible()
    server = dialog.locator(".rk-connect-server[data-name='labpc']")
    expect(server).to_contain_text("127.0.0.1:")
    expect(dialog.locator(".rk-connect-network-heading")).to_contain_text(
        "Advertised on the local network")
    server.click()
    expect(dialog.locator(".rk-connect-target")).to_have_value("labpc")
    page.screenshot(path=str(shots / "fanout-dialog.png"))
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    labpc = panel.locator(".rk-connection[data-name='labpc']")
    expect(labpc.locator(".rk-state")).to_have_text("connected")
    nb.run("labpc.eval('6 * 7')", expect_output="42")
