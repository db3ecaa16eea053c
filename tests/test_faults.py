"""Interrupts, dead peers, bad input: nothing hangs and nothing else is lost."""

from __future__ import annotations

import _thread
import os
import signal
import socket
import struct
import threading
import time

import psutil
import pytest

import remote_kernel as rk


def interrupt_main_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.serial
@pytest.mark.timeout(30)
def test_ctrl_c_interrupts_the_remote_sleep(test_server) -> None:
    conn = test_server.connect()
    try:
        interrupt_main_after(0.5)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            conn.root.sleep(30)
        assert time.monotonic() - start < 0.5 + 1.2
        assert conn.ping() < 5
        assert "sleep(30)" in conn.root.interrupted()
    finally:
        conn.close()


@pytest.mark.serial
@pytest.mark.timeout(30)
def test_ctrl_c_interrupts_a_remote_busy_loop(test_server) -> None:
    conn = test_server.connect()
    try:
        interrupt_main_after(0.5)
        with pytest.raises(KeyboardInterrupt):
            conn.root.busy_loop(20)
        assert conn.root.echo("usable") == "usable"
        assert "busy_loop" in conn.root.interrupted()
    finally:
        conn.close()


@pytest.mark.serial
@pytest.mark.timeout(30)
def test_sigkill_of_the_server_fails_the_call_at_once(start_server) -> None:
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    conn = server.connect()
    threading.Timer(0.5, lambda: os.kill(server.pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(rk.ConnectionClosed) as info:
        conn.root.sleep(30)
    assert time.monotonic() - start < 0.5 + 1.0
    assert f"127.0.0.1:{server.port}" in str(info.value)
    with pytest.raises(rk.ConnectionClosed):
        conn.root.echo(1)
    assert isinstance(info.value, EOFError)


@pytest.mark.serial
@pytest.mark.timeout(30)
def test_pending_requests_of_all_threads_fail_when_the_peer_dies(start_server) -> None:
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    conn = server.connect()
    outcomes: list[BaseException] = []

    def call() -> None:
        try:
            conn.root.sleep(30)
        except BaseException as exc:  # noqa: BLE001
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    start = time.monotonic()
    os.kill(server.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(5)
    assert time.monotonic() - start < 2
    assert len(outcomes) == 3 and all(isinstance(e, rk.ConnectionClosed) for e in outcomes)


def _raw_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest.mark.timeout(60)
def test_garbage_and_huge_headers_close_only_that_connection(start_server) -> None:
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    good = server.connect()
    rss_before = psutil.Process(server.pid).memory_info().rss
    for payload in (b"\x00\x00\x00\x05garbage!!", struct.pack(">I", 2**31) + b"x" * 100,
                    os.urandom(4096)):
        sock = _raw_socket(server.port)
        sock.recv(4096)  # the server's hello
        sock.sendall(payload)
        sock.settimeout(5)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
        sock.close()
    # a client that passed the handshake and then claims a 2 GiB frame
    rogue = server.connect()
    rogue._transport.send(struct.pack(">I", 2**31 - 1))
    with pytest.raises((rk.ConnectionClosed, rk.ProtocolError)):
        rogue.root.echo(1)
    assert good.root.echo("still here") == "still here"
    rss_after = psutil.Process(server.pid).memory_info().rss
    assert rss_after - rss_before < 50 * 1024 * 1024
    good.close()


def test_oversized_message_is_refused_before_sending(test_server) -> None:
    conn = test_server.connect(config={"max_message_size": 4096})
    with pytest.raises(rk.ProtocolError):
        conn.root.echo(b"x" * 10_000)
    assert conn.root.echo("fine") == "fine"
    conn.close()


def test_unknown_config_key_and_wrong_type(test_server) -> None:
    with pytest.raises(ValueError, match="allow_public_atrs"):
        test_server.connect(config={"allow_public_atrs": True})
    with pytest.raises(ValueError, match="sync_request_timeout"):
        test_server.connect(config={"sync_request_timeout": "soon"})
    with pytest.raises(ValueError, match="nonsense"):
        rk.Server(rk.VoidService, config={"nonsense": 1})


def test_server_refuses_non_loopback_without_token() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        rk.Server(rk.ClassicService, host="0.0.0.0")
    server = rk.Server(rk.ClassicService, host="0.0.0.0", token="secret")
    assert server.port > 0
    server.close()


def test_server_binds_on_construction_and_serves_in_background() -> None:
    server = rk.Server(rk.ClassicService, port=0)
    assert server.port > 0
    with server:
        with rk.connect(f"127.0.0.1:{server.port}") as conn:
            assert conn.eval("6 * 7") == 42
    with pytest.raises(rk.ConnectionClosed):
        rk.connect("127.0.0.1", server.port, timeout=2)


def test_interrupt_of_a_local_wait_in_a_thread_is_not_needed_for_timeouts(conn) -> None:
    with pytest.raises(rk.RequestTimeout):
        conn.sync_request(__import__("remote_kernel.protocol.messages").protocol.messages.Op.CALLATTR,
                          conn.root, "sleep", (2,), None, timeout=0.2)
    assert conn.root.echo(3) == 3


def test_main_thread_interrupt_helper_is_available() -> None:
    assert callable(_thread.interrupt_main)


def test_message_with_large_buffers_over_the_limit_is_not_sent(test_server) -> None:
    conn = test_server.connect(config={"max_message_size": 200_000})
    with pytest.raises(rk.ProtocolError, match="not sent"):
        conn.root.echo((b"a" * 120_000, b"b" * 120_000))  # each fits, together they do not
    assert conn.root.echo(b"c" * 150_000) == b"c" * 150_000
    conn.close()
