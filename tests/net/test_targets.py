"""net/targets.py: what each target string means (kind, fields, the names it gets in a group
and in a notebook), the one-line errors of bad ones, the token-file reader, and that
``rk.connect``, ``rk.Group`` and the notebook registry read targets the same way."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.ipython.registry import default_name
from remote_kernel.net import connfile
from remote_kernel.net.group import target_name
from remote_kernel.net.targets import (
    MAX_TOKEN_FILE,
    Target,
    open_target,
    parse,
    read_token_file,
)
from tests import discovery_stub as stub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runtime directory of our own: no connection file of another test counts."""
    directory = tmp_path / "runtime"
    directory.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(directory))
    return directory


def _connection_file(name: str, path: Path | None = None) -> Path:
    """A connection file whose server is "alive" (this process's pid)."""
    return connfile.write(name, {"transport": "tcp", "host": "127.0.0.1", "port": 1,
                                 "token": "t", "tls": False, "pid": os.getpid()}, path)


# target, kind, the fields its kind needs, member name (rk.Group), variable name (%remote)
SHAPES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("subprocess", "subprocess", {}, "subprocess", "sub"),
    ("ssh:pi1", "ssh", {"destination": "pi1"}, "pi1", "pi1"),
    ("ssh:me@pi-2.lab", "ssh", {"destination": "me@pi-2.lab"}, "pi-2.lab", "pi_2_lab"),
    ("ssh:", "ssh", {"destination": ""}, "ssh:", "remote"),
    ("10.0.0.7:4000", "address", {"host": "10.0.0.7", "port": 4000}, "10.0.0.7:4000", "remote"),
    ("localhost:1", "address", {"host": "localhost", "port": 1}, "localhost:1", "remote"),
    ("[::1]:65535", "address", {"host": "::1", "port": 65535}, "[::1]:65535", "remote"),
    ("lab", "name", {}, "lab", "lab"),
    ("bench-3", "name", {}, "bench-3", "bench_3"),
    ("2nd", "name", {}, "2nd", "r_2nd"),
    ("class", "name", {}, "class", "r_class"),
    ("", "name", {}, "", "remote"),
    ("[::1]", "name", {}, "[::1]", "___1_"),
    ("/gone/remote-kernel-bench.json", "name", {}, "bench", "bench"),
    ("old.json", "name", {}, "old", "old"),
    ("/gone/rk.sock", "name", {}, "rk.sock", "rk_sock"),
]


@pytest.mark.parametrize(("text", "kind", "fields", "member", "variable"), SHAPES,
                         ids=[repr(row[0]) for row in SHAPES])
def test_what_a_target_string_means_and_is_named(text: str, kind: str, fields: dict[str, Any],
                                                 member: str, variable: str) -> None:
    target = parse(text)
    assert target == Target(text, kind, **fields)  # type: ignore[arg-type]
    assert (target.member_name, target.variable_name) == (member, variable)
    # The group and the notebook name through the same rules.
    assert (target_name(text), default_name(text)) == (member, variable)


def test_files_and_sockets_that_exist(runtime: Path, tmp_path: Path) -> None:
    by_name = _connection_file("bench")
    assert parse("bench") == Target("bench", "file", path=str(by_name))
    assert (parse("bench").member_name, parse("bench").variable_name) == ("bench", "bench")
    elsewhere = _connection_file("pi", tmp_path / "remote-kernel-pi.json")
    assert parse(str(elsewhere)) == Target(str(elsewhere), "file", path=str(elsewhere))
    assert parse(str(elsewhere)).member_name == "pi"
    # A connection file named like an address is the file, not the address.
    odd = _connection_file("host:4000")
    assert parse("host:4000") == Target("host:4000", "file", path=str(odd))
    listening = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "rk.sock")
    try:
        listening.bind(path)
        assert parse(path) == Target(path, "unix", path=path)
        assert (parse(path).member_name, parse(path).variable_name) == ("rk.sock", "rk_sock")
    finally:
        listening.close()


def test_an_explicit_port_makes_the_target_a_host() -> None:
    assert parse("subprocess", 4000) == Target("subprocess", "address", host="subprocess",
                                               port=4000)
    for port in (0, 65536, "80", 4000.0):
        with pytest.raises(ValueError, match="is not a port number from 1 to 65535"):
            parse("pi1", port)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "message"), [
    ("localhost:abc", "cannot connect to 'localhost:abc': 'abc' is not a port number"),
    ("127.0.0.1:99999", "cannot connect to '127.0.0.1:99999': port 99999 is out of range"),
    ("127.0.0.1:-5", "cannot connect to '127.0.0.1:-5': '-5' is not a port number"),
    ("127.0.0.1:0", "cannot connect to '127.0.0.1:0': port 0 is out of range"),
    ("[::1]:http", "cannot connect to '[::1]:http': 'http' is not a port number"),
])
def test_a_port_that_is_not_one_is_said_when_parsing(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse(text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert str(info.value).endswith("a port from 1 to 65535")


@pytest.mark.parametrize(("text", "message"), [
    ("no-such-server", "no connection file named 'no-such-server': start a server with "
                       "'remote-kernel serve --name no-such-server', or give HOST:PORT"),
    ("/gone/x.json", "there is no connection file /gone/x.json (a server removes its file "
                     "when it stops): start the server, or give HOST:PORT"),
    ("", "cannot connect to '': it is neither HOST:PORT nor a connection file"),
    ("two words", "cannot connect to 'two words': it is neither HOST:PORT nor a connection"),
    ("ssh:-oProxyCommand=touch /tmp/x", "not an ssh destination: '-oProxyCommand=touch"),
    ("ssh:", "not an ssh destination: ''"),
])
def test_what_cannot_be_opened_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        rk.connect(text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_misspelt_name_gets_the_running_one(runtime: Path) -> None:
    _connection_file("bench")
    with pytest.raises(ValueError, match="^no connection file named 'bnech': did you mean "
                                         "'bench'\\?$"):
        rk.connect("bnech")
    with pytest.raises(ValueError, match=r"\(running: bench\)"):
        rk.connect("other")


def test_a_name_nobody_advertises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the notebook (``discover=True``) looks on the network, and says it did."""
    stub.install(monkeypatch)
    monkeypatch.setenv("RK_DISCOVERY_SERVERS", "[]")
    with pytest.raises(rk.ConnectionClosed, match="^cannot connect to 'nobody': no connection "
                       "file named 'nobody'.*; no server advertised as 'nobody'; ssh nobody "
                       r"failed \("):
        open_target(parse("nobody"), discover=True)  # (then ssh: no such host)
    with pytest.raises(ValueError, match="give HOST:PORT$"):
        open_target(parse("nobody"))


def test_an_advertised_name_that_needs_its_token(monkeypatch: pytest.MonkeyPatch,
                                                 start_server: Any) -> None:
    server = start_server("--classic")
    stub.install(monkeypatch)
    monkeypatch.setenv("RK_DISCOVERY_SERVERS", stub.servers_env(
        stub.ServerInfo("labpc", "127.0.0.1", server.port, False, "ClassicService")))
    with pytest.raises(rk.AuthenticationError, match="labpc was found on the network at "
                                                     f"127.0.0.1:{server.port} but needs its "
                                                     "token"):
        open_target(parse("labpc"), discover=True)
    with open_target(parse("labpc"), token=server.token, discover=True) as conn:
        assert conn.eval("__import__('os').getpid()") == server.pid


def test_rk_connect_opens_a_subprocess_like_a_group_does() -> None:
    with rk.connect("subprocess") as conn:
        assert conn.eval("__import__('os').getpid()") != os.getpid()
        assert conn.trust_output is False


# -- token files -----------------------------------------------------------------------------


def test_a_token_file_holds_one_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret-token\n\n")
    assert read_token_file(path) == "s3cret-token"
    assert read_token_file(str(path)) == "s3cret-token"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_token_file("~/token") == "s3cret-token"


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b" \n\t\n", "is empty"),
    (b"\xff\xfe token", "is not text"),
    (b"x" * (MAX_TOKEN_FILE + 1), f"is larger than {MAX_TOKEN_FILE} bytes"),
])
def test_a_token_file_that_is_no_token_is_refused(tmp_path: Path, content: bytes,
                                                  message: str) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^the token file {path} {message}"):
        read_token_file(path)


def test_a_token_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^cannot read the token file .*missing: No such file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="^cannot read the token file .*: Is a directory"):
        read_token_file(tmp_path)


def test_a_token_from_a_pipe_and_a_device_that_never_ends(tmp_path: Path) -> None:
    """``--token-file <(pass show lab)`` is a pipe; /dev/zero would never end: bounded."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as handle:
            handle.write("piped-token\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert read_token_file(fifo) == "piped-token"
    writer.join(5)
    with pytest.raises(ValueError, match="is larger than"):
        read_token_file("/dev/zero")


def test_every_reader_is_the_one_reader(tmp_path: Path, start_server: Any) -> None:
    """rk.Group(token_file=), %remote connect --token-file (the registry) and serve
    --token-file refuse an empty file with the same words."""
    from remote_kernel.ipython.registry import open_connection

    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"the token file {empty} is empty"):
        rk.Group(["127.0.0.1:1"], token_file=str(empty))
    with pytest.raises(ValueError, match=f"the token file {empty} is empty"):
        open_connection("127.0.0.1:1", str(empty))
    server = start_server("--classic")
    good = tmp_path / "good"
    good.write_text(f"{server.token}\n")
    with rk.Group([f"127.0.0.1:{server.port}"], token_file=str(good)) as group:
        assert group.eval("1 + 1") == {f"127.0.0.1:{server.port}": 2}


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "rk.sock")
    with rk.Server(rk.ClassicService, unix_path=path):  # serves in the background
        yield path


def test_a_socket_path_opens_the_unix_socket(unix_server: str) -> None:
    with rk.connect(unix_server) as conn:
        assert conn.peer == unix_server and conn.eval("6 * 7") == 42


def test_a_missing_connection_file_path_is_said_at_once_without_ssh(tmp_path: Any) -> None:
    # A path is no host name and no advertised name: nothing else is tried (before: ~2 s of
    # discovery and "ssh: Could not resolve hostname /tmp/...json").
    missing = str(tmp_path / "gone.json")
    started = time.monotonic()
    with pytest.raises(ValueError, match="there is no connection file") as info:
        rk.connect(missing)
    assert "ssh" not in str(info.value)
    assert time.monotonic() - started < 1.0
