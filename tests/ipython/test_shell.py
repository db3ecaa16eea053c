"""The IPython extension in a real InteractiveShell against real server processes."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk
from remote_kernel.ipython.registry import get_registry


@pytest.fixture
def lab(shell: InteractiveShell, classic_server) -> Iterator[rk.Connection]:
    shell.run_line_magic("remote", f"connect 127.0.0.1:{classic_server.port} --name lab "
                                   f"--token-file {classic_server.token_file}")
    conn = shell.user_ns["lab"]
    conn.execute("from tests.services import Gadget, InstrumentError\ng = Gadget(4)\n"
                 "d = {'alpha': 1, 'beta': 2, 'child': Gadget(5)}")
    yield conn
    if "lab" in get_registry().entries:
        shell.run_line_magic("remote", "close lab")


def run(shell: InteractiveShell, code: str) -> Any:
    result = shell.run_cell(code)
    if result.error_in_exec is not None:
        raise result.error_in_exec
    if result.error_before_exec is not None:
        raise result.error_before_exec
    return result.result


def requests(conn: rk.Connection) -> int:
    return conn.stats["requests"]


def test_connect_binds_the_name_and_lists_it(shell, lab, capsys) -> None:
    assert isinstance(shell.user_ns["lab"], rk.Connection)
    assert get_registry().current == "lab"
    shell.run_line_magic("remote", "ping")
    shell.run_line_magic("remote", "list")
    out = capsys.readouterr().out
    assert "lab" in out and " open " in out and " ms" in out
    header = [line for line in out.splitlines() if "name" in line and "state" in line][0]
    for column in ("target", "latency", "requests", "bytes in", "bytes out"):
        assert column in header


def test_remote_expression_and_pull_push(shell, lab, classic_server) -> None:
    assert run(shell, "%remote os.getpid()") == classic_server.pid
    shell.user_ns["local_list"] = [1, 2, 3]
    run(shell, "%remote push local_list")
    assert lab.eval("type(local_list).__name__") == "list"
    assert lab.eval("local_list") == [1, 2, 3]
    lab.execute("remote_value = {'x': [1, 2]}")
    run(shell, "%remote pull remote_value")
    assert shell.user_ns["remote_value"] == {"x": [1, 2]}
    assert type(shell.user_ns["remote_value"]) is dict  # by value
    run(shell, "%remote pull g")
    assert rk.is_netref(shell.user_ns["g"])  # not copyable: by reference


def test_usage_errors(shell, lab) -> None:
    with pytest.raises(UsageError, match="did you mean 'connect'"):
        shell.run_line_magic("remote", "conect pi")
    with pytest.raises(UsageError, match="subcommand"):
        shell.run_line_magic("remote", "")
    with pytest.raises(UsageError, match="no connection named"):
        shell.run_line_magic("remote", "use nothere")
    with pytest.raises(UsageError):
        shell.run_line_magic("remote", "connect")
    with pytest.raises(UsageError):
        shell.run_line_magic("remote", "connect x --bogus-flag")
    with pytest.raises(UsageError, match="not defined here"):
        shell.run_line_magic("remote", "push not_a_local_variable_xyz")
    doc = shell.find_line_magic("remote").__doc__
    for sub in ("connect", "list", "use", "close", "ping", "reconnect", "pull", "push", "EXPR"):
        assert sub in doc


def test_cell_magic_with_inputs_outputs_and_last_value(shell, lab, capsys) -> None:
    shell.user_ns["n"] = 10
    result = shell.run_cell_magic("remote", "-i n -o total", "total = sum(range(n))\n"
                                  "print('remote total', total)\ntotal * 2")
    assert "remote total 45" in capsys.readouterr().out
    assert shell.user_ns["total"] == 45
    assert result.data["text/plain"] == "90"


def test_display_is_one_request_and_probes_are_free(shell, lab) -> None:
    gadget = lab.namespace["g"]
    before = requests(lab)
    data, _ = shell.display_formatter.format(gadget)
    assert requests(lab) - before == 1
    assert data["text/plain"] == "Gadget(value=4)"
    remote_list = lab.eval("[1, 2, 3]")
    before = requests(lab)
    data, _ = shell.display_formatter.format(remote_list)
    assert requests(lab) - before == 1 and data["text/plain"] == "[1, 2, 3]"


@pytest.mark.parametrize("use_jedi", [True, False])
def test_completion_is_one_request_then_cached(shell, lab, use_jedi: bool) -> None:
    shell.Completer.use_jedi = use_jedi
    shell.user_ns["g"] = lab.namespace["g"]
    try:
        with provisionalcompleter():
            before = requests(lab)
            texts = [c.text for c in shell.Completer.completions("g.", 2)]
            assert requests(lab) - before == 1
            assert {"g.double", "g.add", "g.reads", "g.value"} <= set(texts)
            before = requests(lab)
            texts = [c.text for c in shell.Completer.completions("g.do", 4)]
            assert requests(lab) - before == 0
            assert texts == ["g.double"]
    finally:
        shell.Completer.use_jedi = True


def test_completion_of_chains_and_dict_keys(shell, lab) -> None:
    shell.user_ns["d"] = lab.namespace["d"]
    with provisionalcompleter():
        line = 'd["'
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert requests(lab) - before == 1
        assert set(texts) == {'alpha"', 'beta"', 'child"'}
        line = "d['be"
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert texts == ["beta'"]
        shell.user_ns["g"] = lab.namespace["g"]
        lab.execute("g.child = Gadget(6)")
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions("g.child.do", 10)]
        assert requests(lab) - before == 1
        assert texts == ["g.child.double"]


def test_completion_through_a_connection_and_constant_subscripts(shell, lab) -> None:
    """``lab.namespace['<TAB>`` offers the remote keys, ``lab.namespace['g'].<TAB>`` the
    Gadget's attributes, ``lab.modules.os.ge<TAB>`` the module's names: attribute chains in
    the one completion request, a subscript's object fetched once, nothing called."""
    with provisionalcompleter():
        lab.root  # noqa: B018 - fetched once per connection, by any first use
        line = "lab.modules.os.ge"
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert requests(lab) - before == 1
        assert "lab.modules.os.getpid" in texts and "lab.modules.os.getcwd" in texts
        line = "lab.namespace['"
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert {"g'", "d'"} <= set(texts) and not [t for t in texts if "/" in t]
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions("lab.namespace['g", 16)]
        assert requests(lab) - before <= 1 and texts == ["g'"]
        line = "lab.namespace['d']['child'].do"
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert requests(lab) - before == 3  # one per subscript, then the names (once)
        assert texts == ["lab.namespace['d']['child'].double"]
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert requests(lab) - before == 0 and texts == ["lab.namespace['d']['child'].double"]
        line = "lab.namespace['d']['"
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert set(texts) == {"alpha'", "beta'", "child'"}
        lab.execute("calls = []\nclass Trap:\n    def __getitem__(self, key):\n"
                    "        calls.append(key)\n        return self\ntrap = Trap()")
        for line in ("lab.namespace['trap'][len('x')].", "lab.namespace['nothing'].",
                     "lab.eval('1').", "lab.namespace['trap'][0]['k'][0]."):
            list(shell.Completer.completions(line, len(line)))
    assert lab.eval("calls") == [0, "k", 0]  # constant subscripts only, nothing called


def test_completion_inside_a_remote_cell(shell, lab) -> None:
    lab.execute("remote_only_variable = 1")
    text = "%%remote\nremote_only_va"
    with provisionalcompleter():
        list(shell.Completer.completions(text, len(text)))  # fetches the interpreter once
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions(text, len(text))]
    assert requests(lab) - before == 1
    assert "remote_only_variable" in texts


def test_local_completion_is_untouched(shell, lab) -> None:
    shell.user_ns["local_thing"] = [1]
    before = requests(lab)
    with provisionalcompleter():
        texts = [c.text for c in shell.Completer.completions("local_thing.app", 15)]
    assert any(text.endswith("append") for text in texts)
    assert requests(lab) == before


@pytest.mark.parametrize("detail", [0, 1])
def test_inspection_is_one_request(shell, lab, detail: int) -> None:
    shell.user_ns["g"] = lab.namespace["g"]
    before = requests(lab)
    bundle = shell.object_inspect_mime("g", detail_level=detail)
    assert requests(lab) - before == 1
    text = re.sub(r"\x1b\[[0-9;]*m", "", bundle["text/plain"])
    assert re.search(r"^Type:\s+Gadget$", text, re.M), text  # as local IPython prints it
    if detail:
        assert "def double" in text
    else:
        assert "A custom class" in text
    before = requests(lab)
    bundle = shell.object_inspect_mime("g.add")
    assert requests(lab) - before == 1
    assert "add(x: 'int', y: 'int' = 0) -> 'int'" in re.sub(r"\x1b\[[0-9;]*m", "",
                                                              bundle["text/plain"])


def test_remote_traceback_shows_remote_frames(shell, lab) -> None:
    lab.execute("def explode():\n    return 1 / 0\n")
    result = shell.run_cell("%remote explode()")
    exc = result.error_in_exec
    assert isinstance(exc, ZeroDivisionError)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(exc._render_traceback_()))
    assert "explode" in lines and "return 1 / 0" in lines
    assert lab.peer in lines
    result = shell.run_cell("%remote g.fail()")
    assert type(result.error_in_exec).__name__ == "InstrumentError"
    assert result.error_in_exec.remote_type == "tests.services.InstrumentError"


def test_dead_connection_displays_short_text_and_reconnect(shell, start_server) -> None:
    server = start_server("--classic")
    shell.run_line_magic("remote", f"connect 127.0.0.1:{server.port} --name dying "
                                   f"--token-file {server.token_file}")
    conn = shell.user_ns["dying"]
    remote_list = conn.eval("[1]")
    conn.close()
    data, _ = shell.display_formatter.format(remote_list)
    assert data["text/plain"] == "<remote object, connection lost>"
    with pytest.raises(rk.ConnectionClosed, match="reconnect"):
        shell.run_line_magic("remote", "dying.x")
    shell.run_line_magic("remote", "reconnect dying")
    assert shell.user_ns["dying"].eval("1 + 1") == 2
    shell.run_line_magic("remote", "close --all")
    assert get_registry().entries == {}
    gc.collect()


def test_connect_to_a_subprocess(shell) -> None:
    shell.run_line_magic("remote", "connect subprocess --name child")
    try:
        pid = shell.run_line_magic("remote", "os.getpid()")
        assert pid == shell.user_ns["child"].process.pid
    finally:
        shell.run_line_magic("remote", "close child")


def test_unload_removes_everything(classic_server) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("unload_ext", "remote_kernel")
    assert "remote" not in shell.magics_manager.magics["line"]
    assert type(shell.inspector).__name__ != "RemoteInspector"
    assert not any(getattr(m, "_rk_matcher", False) for m in shell.Completer.custom_matchers)
    shell.run_line_magic("load_ext", "remote_kernel")
    assert "remote" in shell.magics_manager.magics["line"]


def test_use_switches_the_current_connection(shell, classic_server, capsys) -> None:
    for name in ("first", "second"):
        shell.run_line_magic("remote", f"connect 127.0.0.1:{classic_server.port} --name {name} "
                                       f"--token-file {classic_server.token_file}")
    assert get_registry().current == "second"
    shell.run_line_magic("remote", "use first")
    assert get_registry().current == "first"
    shell.run_line_magic("remote", "list")
    assert any(line.startswith("*") and "first" in line
               for line in capsys.readouterr().out.splitlines())
    shell.run_line_magic("remote", "close first")
    shell.run_line_magic("remote", "close second")
    assert "first" not in get_registry().entries


def test_magic_subcommands_and_names_complete_locally(shell, lab) -> None:
    with provisionalcompleter():
        before = requests(lab)
        texts = [c.text for c in shell.Completer.completions("%remote re", 10)]
        assert "reconnect" in texts
        line = "%remote ping l"
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert "lab" in texts
        line = "%remote connect sub"
        texts = [c.text for c in shell.Completer.completions(line, len(line))]
        assert "subprocess" in texts
        assert requests(lab) == before
