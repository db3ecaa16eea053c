"""The small edges: connection files written through fresh temporary files, an empty token
file refused, a peer's odd exception message still printable, ``--unix`` replacing only a
socket, and one table entry for a bound method however often it is asked for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.net import connfile
from remote_kernel.protocol.messages import Kind, Op
from tests.hardening.conftest import EchoService
from tests.hardening.rawpeer import packb

ROOT = Path(__file__).resolve().parents[2]


def test_a_planted_symlink_does_not_receive_the_token(tmp_path: Path) -> None:
    target = tmp_path / "attacker-readable"
    target.write_text("")
    path = tmp_path / "remote-kernel-x.json"
    for planted in (path.with_suffix(".tmp"), tmp_path / ".remote-kernel-x.json.tmp"):
        planted.symlink_to(target)
    written = connfile.write("x", {"token": "secret-token"}, path)
    assert "secret-token" not in target.read_text()
    assert "secret-token" in written.read_text()
    assert (written.stat().st_mode & 0o777) == 0o600
    assert not written.is_symlink()


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "serve", "--token-file", str(empty),
         "--connection-file", str(tmp_path / "c.json")],
        capture_output=True, text=True, timeout=20, cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert "empty" in result.stderr
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("message", [5, None, [1, 2], b"bytes"], ids=repr)
def test_an_exception_message_that_is_not_text_still_prints(message: Any) -> None:
    from remote_kernel.core.connection import Connection
    from remote_kernel.net.transports.sockets import SocketTransport
    from remote_kernel.protocol.messages import Ext
    from tests.hardening.rawpeer import RawPeer

    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    raw = RawPeer(right)
    try:
        result = victim.async_request(Op.PING, None)
        seq = raw.recv_kind((Kind.REQUEST,))[1]
        error = ExtType(Ext.EXC, packb(["builtins", "ValueError", [message], message, 7, [],
                                        "ValueError"]))
        raw.send([Kind.EXCEPTION, seq, error])
        result.wait(5)
        with pytest.raises(ValueError) as info:
            _ = result.value
        assert isinstance(str(info.value), str)
        assert isinstance(info.value.remote_traceback, str)
    finally:
        victim.close()
        right.close()


def test_unix_path_replaces_only_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(FileExistsError):
        rk.Server(EchoService, unix_path=str(path))
    assert path.read_text() == "precious"
    stale = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(stale))
    old.close()  # a socket file left behind by an earlier server
    server = rk.Server(EchoService, unix_path=str(stale))
    try:
        assert stale.exists()
    finally:
        server.close()
    assert not stale.exists()


def test_the_object_table_does_not_grow_per_bound_method_getattr() -> None:
    class Holder(rk.Service):
        def on_connect(self, conn: Any) -> None:
            Holder.conn = conn

        def exposed_echo(self, value: Any) -> Any:
            return value

    with rk.Server(Holder) as server, rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        root = conn.root
        held = [conn.sync_request(Op.GETATTR, root, "echo") for _ in range(1000)]
        assert held[0](3) == 3
        assert Holder.conn.local_object_count <= 2
        del held
        conn.ping()
        assert Holder.conn.local_object_count == 1
