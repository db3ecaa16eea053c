"""Remote errors in a real InteractiveShell against real servers: IPython's ``%xmode`` and
``%colors`` apply, the chain reads as Python prints it, a SyntaxError has its caret, a Stop
is one line, and every user mistake of issue 12 is one line without a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk
from remote_kernel.ipython.registry import get_registry
from remote_kernel.net import connfile
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(90)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PACKAGE_FILES = re.compile(r"remote_kernel[/\\]|magics\.py|connection\.py|registry\.py|"
                           r"client\.py|netref\.py|interactiveshell\.py")


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    mode, colors = shell.InteractiveTB.mode, shell.colors
    yield shell
    shell.run_line_magic("xmode", mode)
    shell.run_line_magic("colors", colors)
    shell.run_line_magic("unload_ext", "remote_kernel")


@pytest.fixture(autouse=True)
def settings(shell: InteractiveShell) -> Iterator[None]:
    shell.run_line_magic("xmode", "Context")
    shell.run_line_magic("colors", "nocolor")
    yield
    get_registry().close_all()


@pytest.fixture
def lab(shell: InteractiveShell, classic_server) -> rk.Connection:
    shell.run_line_magic("remote", f"connect {classic_server.file} --name lab")
    conn = shell.user_ns["lab"]
    conn.execute("from tests.error_services import lookup, outer, inner")
    return conn


def output(shell: InteractiveShell, capsys: pytest.CaptureFixture, code: str) -> tuple[Any, str]:
    """Run a cell; what it printed (stdout and stderr), the ANSI codes kept."""
    capsys.readouterr()
    result = shell.run_cell(code)
    captured = capsys.readouterr()
    return result, captured.out + captured.err


def line_of(fragment: str) -> int:
    """The line number of the first line of tests/error_services.py with ``fragment``."""
    lines = (ROOT / "tests" / "error_services.py").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if fragment in line)


def one_line_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and not PACKAGE_FILES.search(text), text
    return lines[0]


# -- the renderer ---------------------------------------------------------------------------


def test_context_mode_shows_both_sections_in_order(shell, lab, capsys) -> None:
    result, text = output(shell, capsys, "lab.namespace['lookup']('missing')")
    assert type(result.error_in_exec).__name__ == "RuntimeError"
    assert "\x1b[" not in text  # %colors nocolor
    assert text.index("KeyError") < text.index(
        "The above exception was the direct cause of the following exception:") < \
        text.index("RuntimeError: lookup failed")
    assert f"[on {lab.peer}]" in text
    assert f"---> {line_of('from exc')}         raise RuntimeError(\"lookup failed\") from exc" \
        in text
    assert f"---> {line_of('return TABLE[key]')}         return TABLE[key]" in text  # the cause
    assert "lab.namespace['lookup']('missing')" in text  # the local frame that called
    assert not PACKAGE_FILES.search(text), text
    assert "Remote traceback" not in text  # the note is for the traceback module only


def test_minimal_mode_is_the_exception_line(shell, lab, capsys) -> None:
    shell.run_line_magic("xmode", "Minimal")
    _, text = output(shell, capsys, "lab.namespace['lookup']('missing')")
    assert one_line_error(text) == "RuntimeError: lookup failed"


def test_plain_mode_reads_like_python(shell, lab, capsys) -> None:
    shell.run_line_magic("xmode", "Plain")
    _, text = output(shell, capsys, "lab.namespace['lookup']('missing')")
    assert text.count("Traceback (most recent call last):") == 2
    assert 'raise RuntimeError("lookup failed") from exc' in text
    assert "---->" not in text


def test_verbose_mode_shows_the_remote_source(shell, lab, capsys) -> None:
    shell.run_line_magic("xmode", "Verbose")
    _, text = output(shell, capsys, "lab.namespace['lookup']('missing')")
    assert f"---> {line_of('from exc')}         raise RuntimeError(\"lookup failed\") from exc" \
        in text


def test_colors_follow_the_shell(shell, lab, capsys) -> None:
    shell.run_line_magic("colors", "linux")
    _, colored = output(shell, capsys, "lab.namespace['lookup']('missing')")
    assert "\x1b[" in colored
    assert ANSI.sub("", colored).count("lookup failed") >= 2


def test_a_callback_chain_is_labelled_by_side(shell, lab, capsys) -> None:
    shell.run_cell("def on_the_client(server_inner):\n    return server_inner()\n")
    _, text = output(shell, capsys, "lab.namespace['outer'](on_the_client)")
    on_server, here = f"[on {lab.peer}]", "[here]"
    assert text.index(on_server) < text.index("in outer") < text.index(here) \
        < text.index("in on_the_client") < text.rindex(on_server) < text.index("in inner")


def test_a_remote_cell_shows_no_local_frame(shell, lab, capsys) -> None:
    _, text = output(shell, capsys, "%%remote\nlookup('missing')\n")
    assert "run_cell_magic" not in text and "<remote-cell-" in text
    assert not PACKAGE_FILES.search(text), text


def test_a_remote_syntax_error_has_its_file_line_and_caret(shell, lab, capsys) -> None:
    result, text = output(shell, capsys, "%%remote\nx = (1 +\n")
    assert isinstance(result.error_in_exec, SyntaxError)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].strip().startswith("File <remote-cell-") and lines[0].endswith(":1")
    assert lines[1].strip() == "x = (1 +"
    assert lines[2].strip() == "^"
    assert lines[3] == "SyntaxError: '(' was never closed"
    assert len(lines) == 4 and not PACKAGE_FILES.search(text), text


def test_a_remote_syntax_error_shows_the_peers_line_not_a_local_source_of_its_name(
        shell, lab, capsys) -> None:
    import linecache

    name = "<remote-cell-1>"  # a cell of a server in this process has that name too
    saved = linecache.cache.get(name)
    linecache.cache[name] = (12, None, ["local_line\n"], name)
    try:
        _, text = output(shell, capsys, f"lab.eval(\"compile('x = (1 +\\\\n', {name!r}, 'exec')\")")
        assert "x = (1 +" in text and "local_line" not in text, text
        assert "SyntaxError: '(' was never closed" in text
        assert linecache.getline(name, 1) == "local_line\n"  # left as it was
    finally:
        if saved is None:
            linecache.cache.pop(name, None)
        else:
            linecache.cache[name] = saved


def test_a_local_error_with_a_remote_context_shows_the_remote_frames(shell, lab,
                                                                     capsys) -> None:
    _, text = output(shell, capsys, "try:\n    lab.namespace['inner']()\n"
                                    "except ValueError:\n    raise KeyError('local')\n")
    assert "in inner" in text and "deep down" in text  # IPython's own renderer, and a note


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11+")
def test_a_remote_exception_group_shows_its_sub_exceptions(shell, lab, capsys) -> None:
    lab.execute("from tests.error_services import group_with_causes")
    result, text = output(shell, capsys, "lab.namespace['group_with_causes']()")
    assert type(result.error_in_exec).__name__ == "ExceptionGroup"
    assert "Exception Group Traceback (most recent call last):" in text
    assert "+-+---------------- 1 ----------------" in text
    assert text.count("| RuntimeError: lookup failed") == 2 and "| KeyError: 'y'" in text
    assert "lab.namespace['group_with_causes']()" in text  # the local frame that called
    assert f"[on {lab.peer}]" in text and "in _failure" in text  # the members' remote frames
    assert not PACKAGE_FILES.search(text), text  # not IPython's print_exc of every frame
    _, text = output(shell, capsys, "%%remote\ngroup_with_causes()\n")
    assert "run_cell_magic" not in text and "<remote-cell-" in text and "| KeyError: 'x'" in text
    assert not PACKAGE_FILES.search(text), text
    shell.run_line_magic("xmode", "Minimal")
    _, text = output(shell, capsys, "lab.namespace['group_with_causes']()")
    assert one_line_error(text) == "ExceptionGroup: lookups (2 sub-exceptions)"


@pytest.mark.serial
def test_stop_is_one_line(shell, lab, capsys) -> None:
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    result, text = output(shell, capsys, "%remote time.sleep(30)")
    assert time.monotonic() - started < 1.0 + 2.0
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert one_line_error(text) == (f"KeyboardInterrupt: the call to {lab.peer} was "
                                    f"interrupted; the connection stays usable")
    assert shell.run_line_magic("remote", "6 * 7") == 42


# -- %remote ping, close, connect ---------------------------------------------------------


def test_ping_returns_one_value(shell, lab, capsys) -> None:
    result, text = output(shell, capsys, "%remote ping")
    assert re.fullmatch(r"Out\[\d+\]: lab: round trip \d+\.\d{3} ms\n", text)  # one display
    assert isinstance(result.result, float) and 0 < result.result < 5
    assert re.fullmatch(r"lab: round trip \d+\.\d{3} ms", repr(result.result))


def test_close_says_what_it_closed(shell, lab, capsys) -> None:
    _, text = output(shell, capsys, "%remote close lab")
    assert text.strip() == f"closed lab ({lab.peer})"
    _, text = output(shell, capsys, "%remote close --all")
    assert text.strip() == "no connections to close"


def test_connecting_again_keeps_a_live_connection(shell, lab, classic_server,
                                                  capsys) -> None:
    _, text = output(shell, capsys, f"%remote connect {classic_server.file} --name lab")
    assert shell.user_ns["lab"] is lab and not lab.closed
    assert text.strip() == (f"lab is already connected to {lab.peer}: kept it "
                            f"(--name NAME opens a second connection)")
    _, text = output(shell, capsys, f"%remote connect {classic_server.file} --name lab2")
    assert shell.user_ns["lab2"] is not lab and text.startswith("connected to lab2")


def test_connecting_several_keeps_each_live_connection(shell, classic_server, start_server,
                                                       capsys) -> None:
    """`%remote connect A B` with A connected keeps A, as `%remote connect A` does."""
    from remote_kernel.ipython.registry import default_name

    other = start_server("--classic", name="other")
    first_name, other_name = default_name(str(classic_server.file)), default_name(str(other.file))
    output(shell, capsys, f"%remote connect {classic_server.file}")
    first = shell.user_ns[first_name]
    _, text = output(shell, capsys, f"%remote connect {classic_server.file} {other.file}")
    assert shell.user_ns[first_name] is first and not first.closed
    assert text.splitlines() == [
        f"{first_name} is already connected to {first.peer}: kept it "
        f"(--name NAME opens a second connection)",
        f"connected to {other_name} ({shell.user_ns[other_name].peer}), bound to `{other_name}`"]
    open_names = [name for name, entry in get_registry().entries.items()
                  if entry.state != "closed"]
    assert sorted(open_names) == sorted([first_name, other_name])


# -- a dead connection answers at once ----------------------------------------------------


@pytest.mark.serial
def test_inspection_and_completion_of_a_dead_connection_answer_at_once(shell,
                                                                       start_server) -> None:
    server = start_server("--classic")
    shell.run_line_magic("remote", f"connect {server.file} --name dying")
    shell.user_ns["gadget"] = shell.user_ns["dying"].eval("[1, 2, 3]")
    server.process.kill()
    server.process.wait(10)
    started = time.monotonic()
    with pytest.raises(KeyError):
        shell.object_inspect_mime("gadget")
    with provisionalcompleter():
        completions = list(shell.Completer.completions("gadget.ap", 9))
    assert not [c for c in completions if c.text.startswith("gadget.")]
    # A wait on the dead link would last unreachable_after (10 s) at least; a loaded CI
    # machine takes a few seconds for jedi alone, so the bound sits between the two.
    assert time.monotonic() - started < 6.0


def test_a_dead_connection_is_one_line_with_a_hint_that_works(shell, start_server,
                                                              capsys) -> None:
    server = start_server("--classic")
    shell.run_line_magic("remote", f"connect {server.file} --name dying")
    shell.user_ns["items"] = shell.user_ns["dying"].eval("[1, 2, 3]")
    peer = shell.user_ns["dying"].peer
    server.process.kill()
    server.process.wait(10)
    with pytest.raises(rk.ConnectionClosed):  # no kernel loop here: read until it notices
        shell.user_ns["dying"].poll(5)
    assert get_registry().entries["dying"].state == "closed"
    for code in ("items.append(4)", "items?"):
        _, text = output(shell, capsys, code)
        line = one_line_error(text)
        assert line.startswith(f"ConnectionClosed: connection to {peer} is closed"), line
        assert line.endswith("(%remote reconnect dying connects again)"), line


# -- every mistake of the issue: one line -------------------------------------------------


@pytest.fixture
def demo_named_server() -> Iterator[str]:
    """A server whose connection file is named "demo" in the runtime directory."""
    process = subprocess.Popen([sys.executable, "-m", "remote_kernel", "serve", "--classic",
                                "--name", "demo"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=str(ROOT),
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 20
    while not connfile.path_for("demo").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    yield "demo"
    process.terminate()
    process.wait(10)


def test_mistake_a_misspelt_connection_name(shell, demo_named_server, capsys) -> None:
    _, text = output(shell, capsys, "%remote connect dmeo")
    line = one_line_error(text)
    # A bare name that is no connection file is tried as an advertised server, then as an
    # ssh host (zero-deploy): the one line names the three tries, the hint first.
    assert line.startswith("UsageError: cannot connect to 'dmeo': no connection file named "
                           "'dmeo': did you mean 'demo'?; ")
    assert "advertised" in line or "no discovery here" in line
    assert "; ssh dmeo failed (" in line


@pytest.mark.parametrize(("target", "expected"), [
    ("localhost:abc", "'abc' is not a port number"),
    ("127.0.0.1:99999", "port 99999 is out of range"),
    ("127.0.0.1:-5", "'-5' is not a port number"),
])
def test_mistake_a_bad_port(shell, capsys, target: str, expected: str) -> None:
    _, text = output(shell, capsys, f"%remote connect {target}")
    line = one_line_error(text)
    assert expected in line and "remote-kernel serve" not in line and "refused" not in line


def test_mistake_a_refused_connect_suggests_no_reconnect(shell, start_server, capsys) -> None:
    server = start_server("--classic")
    port = server.port
    server.stop()
    _, text = output(shell, capsys, f"%remote connect 127.0.0.1:{port}")
    line = one_line_error(text)
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in line
    assert "reconnect" not in line
    _, text = output(shell, capsys, "%remote reconnect")
    assert one_line_error(text) == ("UsageError: no remote connection yet: "
                                    "use %remote connect TARGET")


def test_mistake_reconnect_after_the_server_is_gone(shell, start_server, capsys) -> None:
    server = start_server("--classic")
    shell.run_line_magic("remote", f"connect 127.0.0.1:{server.port} --name gone "
                                   f"--token-file {server.token_file}")
    server.stop()
    _, text = output(shell, capsys, "%remote reconnect gone")
    line = one_line_error(text)
    assert line.startswith(f"UsageError: cannot reconnect gone: cannot connect to "
                           f"127.0.0.1:{server.port}: connection refused")
    _, text = output(shell, capsys, "%remote gone.x")  # the connection is known to be lost
    assert "%remote reconnect gone" in one_line_error(text)


def test_mistake_a_remote_cell_timeout(shell, lab, capsys) -> None:
    _, text = output(shell, capsys, "%%remote --timeout 0.5\nimport time\ntime.sleep(3)\n")
    line = one_line_error(text)
    assert "did not finish on lab within 0.5 s" in line and "CALLATTR" not in line
