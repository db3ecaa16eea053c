"""Who may connect: loopback by default, no non-loopback listener without a token or client
certificates, failed handshakes logged with the peer's address and slowed down."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.net import auth
from remote_kernel.net.server import Server
from tests.hardening.conftest import EchoService

NON_LOOPBACK = ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.1", "example.com",
                "::ffff:127.0.0.1", "lab-pc.local"]


@pytest.fixture
def bind_loopback_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the constructor's check run for a non-loopback host, then bind 127.0.0.1: this
    machine has only loopback addresses and the tests must not listen anywhere else."""
    original = Server._bind

    def bind(self: Server, host: str, port: int, unix_path: str | None) -> socket.socket:
        return original(self, "127.0.0.1", port, unix_path)

    monkeypatch.setattr(Server, "_bind", bind)


def test_default_host_is_loopback() -> None:
    with rk.Server(EchoService) as server:
        assert server.host == "127.0.0.1"
        assert server._sock.getsockname()[0] == "127.0.0.1"


@pytest.mark.parametrize("host", NON_LOOPBACK)
def test_non_loopback_without_credentials_is_refused(host: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def never_bind(*args: Any) -> None:
        raise AssertionError("bound a socket before refusing")

    monkeypatch.setattr(Server, "_bind", never_bind)
    with pytest.raises(ValueError, match="non-loopback"):
        rk.Server(EchoService, host=host)


def test_server_tls_without_client_ca_is_not_enough(pki: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Server, "_bind", lambda *a: pytest.fail("bound"))
    with pytest.raises(ValueError, match="non-loopback"):
        rk.Server(EchoService, host="0.0.0.0",
                  tls={"cert": pki["server"].cert, "key": pki["server"].key})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.5", "::1"])
def test_loopback_needs_no_credentials(host: str, bind_loopback_instead: None) -> None:
    rk.Server(EchoService, host=host).close()


def test_non_loopback_with_token_is_allowed(bind_loopback_instead: None) -> None:
    server = rk.Server(EchoService, host="0.0.0.0", token="t0ken")
    with server:
        with rk.connect("127.0.0.1", server.port, token="t0ken", timeout=5) as conn:
            assert conn.root.echo(3) == 3
        with pytest.raises(rk.AuthenticationError):
            rk.connect("127.0.0.1", server.port, timeout=5)


def test_non_loopback_with_client_certificates_is_allowed(pki: dict[str, Any],
                                                          bind_loopback_instead: None) -> None:
    tls = {"cert": pki["server"].cert, "key": pki["server"].key, "client_ca": pki["ca"]}
    with rk.Server(EchoService, host="0.0.0.0", tls=tls) as server:
        client = {"ca": pki["ca"], "cert": pki["client"].cert, "key": pki["client"].key}
        with rk.connect("127.0.0.1", server.port, tls=client, timeout=5) as conn:
            assert conn.root.echo(4) == 4


def test_cli_refuses_non_loopback_no_auth() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "serve", "--host", "0.0.0.0", "--no-auth",
         "--connection-file", "/dev/null/never"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "non-loopback" in result.stderr


# -- failed handshakes ----------------------------------------------------------------------


@pytest.mark.serial
def test_wrong_token_is_slowed_down_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="remote_kernel")
    with rk.Server(EchoService, token="right") as server:
        started = time.monotonic()
        with pytest.raises(rk.AuthenticationError, match="wrong token"):
            rk.connect("127.0.0.1", server.port, token="wrong", timeout=5)
        assert time.monotonic() - started >= auth.FAILURE_DELAY * 0.9
        # the server names the peer's address in its log
        deadline = time.monotonic() + 5
        while not any("failed handshake from 127.0.0.1:" in r.getMessage()
                      for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("failed handshake from 127.0.0.1:" in r.getMessage()
                   for r in caplog.records)


def test_missing_token_is_an_authentication_error() -> None:
    with rk.Server(EchoService, token="right") as server:
        with pytest.raises(rk.AuthenticationError, match="requires a token"):
            rk.connect("127.0.0.1", server.port, timeout=5)


def test_client_refuses_a_server_that_skips_authentication() -> None:
    """A token sent to a server that does not check tokens: it cannot prove it knows the
    token, so it may be an impostor; the client stops."""
    with rk.Server(EchoService) as server:
        with pytest.raises(rk.AuthenticationError, match="cannot prove"):
            rk.connect("127.0.0.1", server.port, token="secret", timeout=5)


@pytest.mark.serial
def test_a_failing_handshake_does_not_delay_others() -> None:
    with rk.Server(EchoService, token="right") as server:
        outcome: dict[str, BaseException] = {}

        def wrong_token() -> None:  # the outcome is checked below: a thread's raise is lost
            try:
                rk.connect("127.0.0.1", server.port, token="wrong", timeout=5)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        bad = threading.Thread(target=wrong_token, daemon=True)
        bad.start()
        time.sleep(0.05)
        started = time.monotonic()
        with rk.connect("127.0.0.1", server.port, token="right", timeout=5) as conn:
            assert conn.root.echo(1) == 1
        assert time.monotonic() - started < auth.FAILURE_DELAY
        bad.join(10)
        assert not bad.is_alive()
        assert isinstance(outcome.get("error"), rk.AuthenticationError), outcome


def test_token_never_crosses_the_wire() -> None:
    """Record every byte both ways through a relay; the token appears in neither."""
    token = "very-secret-token-value-1234567890"
    seen = bytearray()
    with rk.Server(EchoService, token=token) as server:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def relay() -> None:
            client, _ = listener.accept()
            upstream = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            for sock in (client, upstream):
                sock.settimeout(5)

            def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        seen.extend(data)
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            pump(upstream, client)

        thread = threading.Thread(target=relay, daemon=True)
        thread.start()
        with rk.connect("127.0.0.1", port, token=token, timeout=5) as conn:
            assert conn.root.echo("hello") == "hello"
        thread.join(5)
        listener.close()
    assert b"hello" in seen  # the relay did see the traffic
    assert token.encode() not in seen
