"""``%%remote a b c``: one cell on 8 real server processes at once, in a real ipykernel.

Each peer's output arrives labelled while the cell runs, ``-o`` gathers ``{peer: value}``,
a failing peer gives its own error output while the others' results are kept, and Stop ends
the cell on all 8 within 3 s with every connection still answering."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.ipython.kernel_client import CellRun, Kernel

pytestmark = pytest.mark.timeout(240)

PEERS = [f"p{n}" for n in range(1, 9)]
LINE = re.compile(r"^\[(p\d)\]\s+(.*)$")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("fanout")
    started: dict[str, ServerProcess] = {}
    try:
        for name in PEERS:
            started[name] = ServerProcess(tmp, "--classic", name=name)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def kernel(servers: dict[str, ServerProcess]) -> Iterator[Kernel]:
    kernel = Kernel()
    try:
        run = kernel.run("%load_ext remote_kernel")
        assert run.status == "ok", run.reply
        files = " ".join(str(server.file) for server in servers.values())
        run = kernel.run(f"%remote connect {files}")
        assert run.status == "ok", run.reply
        assert run.text().count("connected to p") == 8, run.text()
        yield kernel
    finally:
        kernel.close()


def test_labels_keep_each_peers_lines_whole() -> None:
    from remote_kernel.ipython.fanout import LabelledOutput

    shown: list[tuple[str, str]] = []
    out = LabelledOutput(["a", "bench"], lambda stream, text: shown.append((stream, text)))
    out.write("a", "stdout", "one\ntwo")  # "two" stays open
    out.write("a", "stdout", " more\n")
    out.write("bench", "stdout", "progress 10%\r")
    out.write("bench", "stdout", "progress 20%\r")
    out.write("a", "stdout", "three\n")  # ends bench's open line first
    out.write("bench", "stderr", "careful\r\n")
    out.write("a", "stdout", "")
    text = "".join(text for stream, text in shown if stream == "stdout")
    assert text == ("[a]     one\n[a]     two more\n[bench] progress 10%\r"
                    "[bench] progress 20%\r\n[a]     three\n")
    assert shown[-1] == ("stderr", "[bench] careful\r\n")


def _lines(run: CellRun, stream: str = "stdout") -> list[tuple[float, str, str]]:
    """(arrival time, peer, text) of every labelled line."""
    found = []
    for arrived, text in run.streams(stream):
        for line in text.splitlines():
            match = LINE.match(line)
            if match:
                found.append((arrived, match.group(1), match.group(2)))
    return found


def _value(kernel: Kernel, expression: str) -> object:
    run = kernel.run(f"print(repr({expression}))")
    assert run.status == "ok", run.reply
    return ast.literal_eval(run.text().strip())


@pytest.mark.slow
def test_each_peer_streams_labelled_lines_as_they_come(kernel: Kernel) -> None:
    run = kernel.run(f"%%remote {' '.join(PEERS)}\nimport time\nfor i in range(3):\n"
                     f"    print('tick', i)\n    time.sleep(1)\n")
    assert run.status == "ok", run.reply
    lines = _lines(run)
    for peer in PEERS:
        mine = [(arrived, text) for arrived, who, text in lines if who == peer]
        assert [text for _, text in mine] == ["tick 0", "tick 1", "tick 2"], (peer, lines)
        gaps = [b[0] - a[0] for a, b in zip(mine, mine[1:], strict=False)]
        assert all(0.6 < gap < 1.6 for gap in gaps), (peer, gaps)
    # All 8 at the same time: every first tick came before any second one, and the cell
    # took about 3 s, not 24.
    first = max(arrived for arrived, _, text in lines if text == "tick 0")
    second = min(arrived for arrived, _, text in lines if text == "tick 1")
    assert first < second
    # (Headroom for a loaded 2-core machine: one peer after the other would take 24 s.)
    assert run.ended - run.started < 3 + 6
    # Labels line the text up: "[p1] tick 0".
    assert "[p1] tick 0\n" in run.text()
    # The lab panel heard which cell ran on each connection, and when it ended.
    snapshots = [m["content"]["data"] for m in run.of_type("comm_msg")
                 if m["content"]["data"].get("type") == "snapshot"]
    running = [{c["name"]: c["running"] for c in s["connections"]} for s in snapshots]
    count = run.reply["content"]["execution_count"]  # the cell's In[n]
    assert any(all(state == {"code": "import time", "count": count}
                   for name, state in seen.items() if name in PEERS) for seen in running)
    assert all(state is None for state in running[-1].values())


def test_outputs_gather_a_dict_and_inputs_go_to_all(kernel: Kernel,
                                                   servers: dict[str, ServerProcess]) -> None:
    run = kernel.run("x = 21")
    run = kernel.run("%%remote --all -i x -o pid,doubled\nimport os\npid = os.getpid()\n"
                     "doubled = x * 2\n")
    assert run.status == "ok", run.reply
    assert _value(kernel, "pid") == {name: server.pid for name, server in servers.items()}
    assert _value(kernel, "doubled") == dict.fromkeys(PEERS, 42)
    assert _value(kernel, "list(pid)") == PEERS  # in the order the peers were named


def test_one_failing_peer_gives_its_error_and_keeps_the_others(kernel: Kernel) -> None:
    kernel.run("%%remote --all\nbroken = False\n")
    kernel.run("%%remote p3\nbroken = True\n")
    run = kernel.run("%%remote --all -o reading\ndef read_sensor():\n    if broken:\n"
                     "        raise ValueError('sensor 3 is unplugged')\n    return 1.5\n"
                     "reading = read_sensor()\nprint('read', reading)\n")
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "GroupError"
    errors = run.of_type("error")
    assert len(errors) == 1, errors
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0]["content"]["traceback"]))
    assert traceback.startswith("[p3]")
    assert "raise ValueError('sensor 3 is unplugged')" in traceback  # the remote frame
    assert "ValueError" in traceback and "1 of 8 failed" in traceback
    assert sorted(who for _, who, _ in _lines(run)) == sorted(set(PEERS) - {"p3"})
    assert _value(kernel, "reading") == {name: 1.5 for name in PEERS if name != "p3"}


def test_two_failing_peers_give_two_error_outputs(kernel: Kernel) -> None:
    kernel.run("%%remote --all\nbroken = False\n")
    kernel.run("%%remote p2 p7\nbroken = True\n")
    run = kernel.run("%%remote --all -o ok\nif broken:\n    raise KeyError('calibration')\n"
                     "ok = True\n")
    assert run.status == "error"
    errors = run.of_type("error")
    assert len(errors) == 2
    assert errors[0]["content"]["ename"] == "KeyError"
    assert errors[0]["content"]["traceback"][0] == "[p2]"
    assert errors[1]["content"]["traceback"][0] == "[p7]"
    assert "2 of 8 failed" in errors[1]["content"]["traceback"][-1]
    assert _value(kernel, "sorted(ok)") == sorted(set(PEERS) - {"p2", "p7"})
    kernel.run("%%remote --all\nbroken = False\n")


def test_stop_interrupts_every_peer_and_they_still_answer(kernel: Kernel) -> None:
    run = kernel.run("%%remote --all\nimport time\nprint('sleeping', flush=True)\n"
                     "time.sleep(60)\n", interrupt_after=1.5, timeout=60)
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "KeyboardInterrupt"
    assert run.ended - run.started < 1.5 + 3.0, run.ended - run.started
    assert len(run.reply["content"]["traceback"]) == 1  # one short line, no machinery
    assert sorted(who for _, who, _ in _lines(run)) == PEERS
    run = kernel.run("import remote_kernel as rk\n"
                     f"print(sorted(rk.Group({PEERS!r}).ping(timeout=2)))")
    assert run.status == "ok", run.reply
    assert ast.literal_eval(run.text().strip()) == PEERS
    run = kernel.run("%%remote --all -o after\nafter = 'awake'\n")
    assert run.status == "ok", run.reply
    assert _value(kernel, "after") == dict.fromkeys(PEERS, "awake")


def test_a_timeout_interrupts_the_slow_peers_only(kernel: Kernel) -> None:
    kernel.run("%%remote --all\nbroken = False\n")
    kernel.run("%%remote p5\nbroken = True\n")
    run = kernel.run("%%remote --all --timeout 1 -o quick\nimport time\nif broken:\n"
                     "    time.sleep(30)\nquick = True\n", timeout=30)
    assert run.status == "error"
    assert run.ended - run.started < 1 + 3.0
    errors = run.of_type("error")
    assert len(errors) == 1 and errors[0]["content"]["traceback"][0] == "[p5]"
    assert "RequestTimeout" in "\n".join(errors[0]["content"]["traceback"])
    assert _value(kernel, "sorted(quick)") == sorted(set(PEERS) - {"p5"})
    run = kernel.run("%remote ping p5")  # interrupted, not stuck in its sleep
    assert run.status == "ok", run.reply
    kernel.run("%%remote --all\nbroken = False\n")


def test_a_single_peer_cell_is_shown_running_too(kernel: Kernel) -> None:
    run = kernel.run("%%remote p1\nx = 1\n")
    assert run.status == "ok", run.reply
    snapshots = [m["content"]["data"] for m in run.of_type("comm_msg")
                 if m["content"]["data"].get("type") == "snapshot"]
    seen = [{c["name"]: c["running"] for c in s["connections"]} for s in snapshots]
    count = run.reply["content"]["execution_count"]
    assert {"count": count, "code": "x = 1"} in [state["p1"] for state in seen]
    assert seen[-1]["p1"] is None


def test_rich_output_and_results_come_labelled(kernel: Kernel) -> None:
    run = kernel.run("%%remote p1 p2\nclass Table:\n    def _repr_html_(self):\n"
                     "        return '<table><tr><td>42</td></tr></table>'\n"
                     "    def __repr__(self):\n        return 'Table()'\n"
                     "display(Table())\n6 * 7\n")
    assert run.status == "ok", run.reply
    text = run.text()
    assert "[p1] display:\n" in text and "[p2] display:\n" in text
    assert "[p1] Out[" in text and "]: 42\n" in text
    displays = run.of_type("display_data")
    assert len(displays) == 2
    assert {d["content"]["metadata"]["remote_kernel"]["peer"] for d in displays} == {"p1", "p2"}
    assert all("<td>42</td>" in d["content"]["data"]["text/html"] for d in displays)
    assert not run.of_type("execute_result")  # the values are labelled lines, not Out[]


def test_each_peers_display_ids_are_its_own(kernel: Kernel) -> None:
    """The same cell on two peers: each update_display replaces its own peer's output only
    (the ids go out as PEER:ID), and an update comes without a label line."""
    run = kernel.run("%%remote p1 p2\nimport os\nfrom IPython.display import update_display\n"
                     "display('start', display_id='status')\n"
                     "update_display(os.getpid(), display_id='status')\n")
    assert run.status == "ok", run.reply
    assert run.text().count("display:") == 2
    ids = {d["content"]["metadata"]["remote_kernel"]["peer"]: d["content"]["transient"]
           for d in run.of_type("display_data")}
    assert ids == {"p1": {"display_id": "p1:status"}, "p2": {"display_id": "p2:status"}}
    updates = {u["content"]["transient"]["display_id"]: u["content"]["data"]["text/plain"]
               for u in run.of_type("update_display_data")}
    assert set(updates) == {"p1:status", "p2:status"}
    assert updates["p1:status"] != updates["p2:status"]  # each its own peer's pid


def test_a_named_group(kernel: Kernel) -> None:
    run = kernel.run("%remote group bench p1 p2 p3")
    assert run.status == "ok", run.reply
    assert "group bench: p1 p2 p3" in run.text()
    run = kernel.run("%%remote bench -o where\nimport os\nwhere = os.getpid()\n")
    assert run.status == "ok", run.reply
    assert list(_value(kernel, "where")) == ["p1", "p2", "p3"]
    assert _value(kernel, "bench.eval('1 + 1')") == {"p1": 2, "p2": 2, "p3": 2}
    assert _value(kernel, "bench.names") == ["p1", "p2", "p3"]
    run = kernel.run("%remote list")
    assert "group bench: p1 p2 p3" in run.text()
    run = kernel.run("%%remote bench p4 p1\nprint('hi')\n")  # a group and more, each once
    assert sorted(who for _, who, _ in _lines(run)) == ["p1", "p2", "p3", "p4"]
    run = kernel.run("%%remote nobody p1\n1\n")
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "UsageError"
    assert "nobody" in run.reply["content"]["evalue"]
    run = kernel.run("%remote group p1 p2 p3")  # a connection's name is not a group's
    assert run.reply["content"]["ename"] == "UsageError"
    run = kernel.run("%remote group")
    assert "bench: p1 p2 p3" in run.text()
    run = kernel.run("%remote group pair bench p4")  # a group expands into its members
    assert "group pair: p1 p2 p3 p4" in run.text()


def test_connecting_several_binds_those_that_connect(kernel: Kernel, start_server,
                                                     tmp_path: Path) -> None:
    extra = start_server("--classic", name="extra")
    run = kernel.run(f"%remote connect {extra.file} 127.0.0.1:1")
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "GroupError"
    assert "127.0.0.1:1" in run.reply["content"]["evalue"]
    assert "connected to extra0" in run.text()
    assert _value(kernel, "extra0.eval('6 * 7')") == 42
    kernel.run("%remote close extra0")
