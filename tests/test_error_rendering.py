"""How an error shows is given to the connection that raises it (core/hooks.py,
``ConnectionHooks(error_rendering=...)``), not set in a module of the layer below: two
connections in one process, built with different hooks, render their errors each their own
way, whatever the IPython layer installed for the process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel import errors
from remote_kernel.core.connection import Connection
from remote_kernel.core.hooks import PROCESS_HOOKS, ConnectionHooks
from remote_kernel.errors import ErrorRendering
from remote_kernel.net.transports.sockets import SocketTransport

pytestmark = pytest.mark.timeout(60)


class Tagged(ErrorRendering):
    """Every rendering names itself, so a test can tell which one was used."""

    def remote_error(self, exc: Any) -> list[str]:
        return ["tagged remote", *super().remote_error(exc)]

    def connection_closed(self, exc: Any) -> list[str]:
        return ["tagged closed", *super().connection_closed(exc)]

    def one_line(self, exc: BaseException) -> list[str]:
        return ["tagged one line", *super().one_line(exc)]


def _pair(hooks: ConnectionHooks) -> tuple[Connection, Connection]:
    left, right = socket.socketpair()
    server = Connection(SocketTransport(right, "client"), rk.ClassicService, name="client",
                        hooks=ConnectionHooks())
    server.serve_in_background()
    return Connection(SocketTransport(left, "server"), rk.VoidService, name="server",
                      hooks=hooks), server


@pytest.fixture
def tagged() -> Iterator[Connection]:
    client, server = _pair(ConnectionHooks(error_rendering=Tagged()))
    yield client
    client.close()
    server.close()


@pytest.fixture
def plain() -> Iterator[Connection]:
    client, server = _pair(ConnectionHooks())
    yield client
    client.close()
    server.close()


def _rendered(call: Any) -> list[str]:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - whatever came is rendered
        return exc._render_traceback_()
    raise AssertionError("nothing was raised")


def test_a_remote_error_renders_as_its_connection_says(tagged: Connection,
                                                        plain: Connection) -> None:
    tagged_lines = _rendered(lambda: tagged.root.eval("1/0"))
    plain_lines = _rendered(lambda: plain.root.eval("1/0"))
    assert tagged_lines[0] == "tagged remote"
    assert any(line.startswith("ZeroDivisionError") for line in tagged_lines)
    assert "tagged remote" not in plain_lines
    assert any(line.startswith("ZeroDivisionError") for line in plain_lines)


def test_a_timeout_and_a_closed_connection_render_as_their_connection_says(
        tagged: Connection) -> None:
    lines = _rendered(lambda: tagged.call(tagged.root, "eval", "__import__('time').sleep(2)",
                                          timeout=0.2))
    assert lines == ["tagged one line", f"RequestTimeout: no reply from {tagged.peer} within 0.2 s"]
    tagged.close()
    lines = _rendered(lambda: tagged.root)
    assert lines[0] == "tagged closed"
    assert lines[1].startswith("ConnectionClosed: connection to server is closed")


def test_a_connection_built_without_hooks_renders_as_the_process_says(plain: Connection) -> None:
    saved = PROCESS_HOOKS.error_rendering
    PROCESS_HOOKS.error_rendering = Tagged()
    left, right = socket.socketpair()
    server = Connection(SocketTransport(right, "client"), rk.ClassicService, name="client")
    server.serve_in_background()
    client = Connection(SocketTransport(left, "server"), rk.VoidService, name="server")
    try:
        assert _rendered(lambda: client.root.eval("1/0"))[0] == "tagged remote"
        assert "tagged remote" not in _rendered(lambda: plain.root.eval("1/0"))
    finally:
        PROCESS_HOOKS.error_rendering = saved
        client.close()
        server.close()


def test_the_errors_module_holds_no_rendering_set_from_above() -> None:
    assert not [name for name in vars(errors) if name.startswith("render_")]
