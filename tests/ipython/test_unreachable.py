"""A notebook's view of a link that fails: the registry, `%remote list` and the waiting cell
say "unreachable" (with how long), then the session resumes and the names still work."""

from __future__ import annotations

import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

from remote_kernel.ipython.registry import get_registry
from tests.net.test_resume import ResettingRelay

pytestmark = pytest.mark.timeout(90)


def test_an_unreachable_peer_is_said_and_the_session_resumes(shell: InteractiveShell,
                                                             classic_server, capsys) -> None:
    relay = ResettingRelay(("127.0.0.1", classic_server.port))
    try:
        shell.run_line_magic("remote", f"connect 127.0.0.1:{relay.port} --name bench "
                                       f"--token-file {classic_server.token_file}")
        shell.run_cell("items = bench.eval('[1, 2]')")
        entry = get_registry().entries["bench"]
        assert entry.state == "open"
        changes: list[str] = []
        listener = lambda: changes.append(entry.state)  # noqa: E731 - what the panel hears
        get_registry().add_listener(listener)
        relay.down = True
        relay.cut()
        deadline = time.monotonic() + 5
        while entry.state != "unreachable" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert entry.state == "unreachable"
        assert "unreachable" in changes  # the panel's listener was told
        time.sleep(1.1)
        capsys.readouterr()
        shell.run_line_magic("remote", "list")
        listed = capsys.readouterr().out
        assert "unreachable for 1 s" in listed or "unreachable for 2 s" in listed, listed
        threading.Timer(1.5, lambda: setattr(relay, "down", False)).start()
        result = shell.run_cell("items.append(3)\nlist(items)")
        assert result.error_in_exec is None, result.error_in_exec
        assert result.result == [1, 2, 3]
        err = capsys.readouterr().err
        assert "unreachable: waiting for the link to return" in err
        assert "reachable again: session resumed" in err
        assert entry.state == "open"
        assert changes[-1] == "open"
        get_registry().remove_listener(listener)
    finally:
        if "bench" in get_registry().entries:
            shell.run_line_magic("remote", "close bench")
        relay.close()
