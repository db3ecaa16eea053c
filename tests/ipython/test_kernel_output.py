"""Output in a real ipykernel: callback prints in the cell that sent the callback, remote
figures as PNG, display(fig) in %%remote at once, widgets from %%remote cells, masks."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ipython.kernel_client import Kernel

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def kernel(classic_server) -> Iterator[Kernel]:
    kernel = Kernel()
    # Trusted: our own test server (widgets need it); the untrusted case is tested below.
    run = kernel.run(f"%load_ext remote_kernel\n"
                     f"%remote connect {classic_server.file} --name lab --trust")
    assert run.status == "ok", run.reply
    yield kernel
    kernel.close()


def _iopub_until(kernel: Kernel, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = kernel.client.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            continue
        if predicate(message):
            return message
    raise TimeoutError("the expected message did not arrive")


@pytest.mark.slow
def test_callback_output_lands_in_the_cell_that_sent_it(kernel: Kernel) -> None:
    kernel.run("lab.execute('''\nimport threading\n"
               "def call_later(callback, delay):\n"
               "    threading.Timer(delay, callback, args=('from the device',)).start()\n''')")
    cell2 = kernel.run("def on_event(what):\n    print('callback says', what)\n"
                       "lab.namespace['call_later'](on_event, 2.0)")
    assert cell2.status == "ok", cell2.reply
    cell3 = kernel.run("x = 1 + 1")
    assert cell3.status == "ok"
    message = _iopub_until(kernel, lambda m: m["msg_type"] == "stream"
                           and "callback says" in m["content"]["text"], 15)
    assert message["parent_header"]["msg_id"] == cell2.reply["parent_header"]["msg_id"]
    assert message["parent_header"]["msg_id"] != cell3.reply["parent_header"]["msg_id"]


def test_a_remote_figure_displays_as_png(kernel: Kernel) -> None:
    run = kernel.run("%%remote\nimport matplotlib.pyplot as plt\n"
                     "figure, axes = plt.subplots(figsize=(3, 2))\naxes.plot([1, 3, 2])\n"
                     "plt.close(figure)\n")
    assert run.status == "ok", run.reply
    run = kernel.run("lab.namespace['figure']")
    data = run.of_type("execute_result")[0]["content"]["data"]
    assert data["image/png"].startswith("iVBORw0KGgo")  # base64 of the PNG signature
    assert "Figure" in data["text/plain"]


def test_display_of_a_figure_in_a_remote_cell_arrives_at_once_and_once(kernel: Kernel) -> None:
    run = kernel.run("%%remote\nimport time\nimport matplotlib.pyplot as plt\n"
                     "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 2])\ndisplay(fig)\n"
                     "time.sleep(2)\nprint('done')\n")
    assert run.status == "ok", run.reply
    images = [(t, m) for t, m in run.outputs if m["msg_type"] == "display_data"
              and "image/png" in m["content"]["data"]]
    assert len(images) == 1, [m["msg_type"] for _, m in run.outputs]
    assert images[0][0] < run.ended - 1.5  # not held back until the end of the cell
    assert run.text() == "done\n"


def test_a_widget_made_in_a_remote_cell_stays_live(kernel: Kernel) -> None:
    run = kernel.run("%%remote\nimport ipywidgets\nslider = ipywidgets.IntSlider(value=3)\n"
                     "slider")
    assert run.status == "ok", run.reply
    opens = [m for m in run.of_type("comm_open")
             if m["content"]["data"].get("state", {}).get("_model_name") == "IntSliderModel"]
    assert opens, [m["msg_type"] for _, m in run.outputs]
    comm_id = opens[0]["content"]["comm_id"]
    views = [m["content"]["data"]["application/vnd.jupyter.widget-view+json"]
             for m in run.of_type("execute_result")]
    assert views and views[0]["model_id"] == comm_id
    message = kernel.client.session.msg("comm_msg", {
        "comm_id": comm_id, "data": {"method": "update", "state": {"value": 7},
                                     "buffer_paths": []}})
    kernel.client.shell_channel.send(message)
    deadline = time.monotonic() + 10
    value = None
    while time.monotonic() < deadline:
        value = kernel.run("%remote slider.value").of_type("execute_result")[0]["content"][
            "data"]["text/plain"]
        if value == "7":
            break
        time.sleep(0.2)
    assert value == "7"
    # A change made remotely reaches the frontend through the same comm.
    run = kernel.run("%remote slider.value = 9")
    updates = [m for m in run.of_type("comm_msg") if m["content"]["comm_id"] == comm_id]
    assert any(m["content"]["data"].get("state", {}).get("value") == 9 for m in updates)


def test_an_untrusted_connection_gets_no_widgets(kernel: Kernel, classic_server) -> None:
    """A widget's model state becomes page HTML: only a trusted peer's widgets are live."""
    run = kernel.run(f"%remote connect {classic_server.file} --name stranger")
    assert run.status == "ok", run.reply
    run = kernel.run("%%remote stranger\nimport ipywidgets\nipywidgets.IntSlider(value=3)")
    assert run.status == "ok", run.reply["content"]
    assert run.of_type("comm_open") == []
    (result,) = run.of_type("execute_result")
    assert "application/vnd.jupyter.widget-view+json" not in result["content"]["data"]
    assert "--trust" in run.text("stderr")
    kernel.run("%remote close stranger\n%remote use lab")


def test_remote_cell_outputs_keep_masks(kernel: Kernel) -> None:
    run = kernel.run("%%remote -o trace\nimport numpy as np\n"
                     "trace = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])\n")
    assert run.status == "ok", run.reply
    run = kernel.run("print(type(trace).__name__, trace.sum())")
    assert run.text() == "MaskedArray 4\n"
