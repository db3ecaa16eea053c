"""TLS and mutual TLS with a CA and certificates generated for the test."""

from __future__ import annotations

import json
import os
import ssl
import stat
from typing import Any

import pytest

import remote_kernel as rk
from tests.hardening.conftest import EchoService


def _server_tls(pki: dict[str, Any], client_ca: bool = False) -> dict[str, str]:
    tls = {"cert": pki["server"].cert, "key": pki["server"].key}
    if client_ca:
        tls["client_ca"] = pki["ca"]
    return tls


def _client_tls(pki: dict[str, Any], which: str | None = "client", ca: str = "ca") -> dict:
    tls: dict[str, Any] = {"ca": pki[ca]}
    if which:
        tls["cert"], tls["key"] = pki[which].cert, pki[which].key
    return tls


@pytest.fixture
def tls_server(pki: dict[str, Any]) -> Any:
    with rk.Server(EchoService, tls=_server_tls(pki)) as server:
        yield server


@pytest.fixture
def mtls_server(pki: dict[str, Any]) -> Any:
    with rk.Server(EchoService, tls=_server_tls(pki, client_ca=True)) as server:
        yield server


def _assert_works(server: rk.Server, **kwargs: Any) -> None:
    with rk.connect("127.0.0.1", server.port, timeout=5, **kwargs) as conn:
        assert conn.root.echo("over tls") == "over tls"
        sock = conn._transport.link.sock  # type: ignore[attr-defined]
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")


# -- server authentication ----------------------------------------------------------------


def test_tls_round_trip(tls_server: rk.Server, pki: dict[str, Any]) -> None:
    _assert_works(tls_server, tls={"ca": pki["ca"]})


def test_large_bytes_over_tls_arrive_as_bytes(tls_server: rk.Server,
                                              pki: dict[str, Any]) -> None:
    """Large bytes are received in place through TLS records too (both directions)."""
    data = os.urandom(3 * 1024 * 1024 + 7)
    with rk.connect("127.0.0.1", tls_server.port, timeout=10, tls={"ca": pki["ca"]}) as conn:
        back = conn.root.echo(data)
    assert type(back) is bytes and back == data


def test_tls_accepts_an_ssl_context(pki: dict[str, Any]) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["server"].cert, pki["server"].key)
    client_ctx = ssl.create_default_context(cafile=pki["ca"])
    with rk.Server(EchoService, tls=server_ctx) as server:
        _assert_works(server, tls=client_ctx)


def test_wrong_ca_fails_clearly(tls_server: rk.Server, pki: dict[str, Any]) -> None:
    with pytest.raises(rk.AuthenticationError, match="certificate is not trusted") as info:
        rk.connect("127.0.0.1", tls_server.port, tls={"ca": pki["other_ca"]}, timeout=5)
    assert f"127.0.0.1:{tls_server.port}" in str(info.value)
    # The server is unaffected by the failed handshake.
    _assert_works(tls_server, tls={"ca": pki["ca"]})


def test_system_trust_store_refuses_a_private_ca(tls_server: rk.Server) -> None:
    with pytest.raises(rk.AuthenticationError, match="not trusted"):
        rk.connect("127.0.0.1", tls_server.port, tls=True, timeout=5)


def test_hostname_is_checked(pki: dict[str, Any]) -> None:
    tls = {"cert": pki["localhost_only"].cert, "key": pki["localhost_only"].key}
    with rk.Server(EchoService, tls=tls) as server:
        with pytest.raises(rk.AuthenticationError, match="not trusted"):
            rk.connect("127.0.0.1", server.port, tls={"ca": pki["ca"]}, timeout=5)
        _assert_works(server, tls={"ca": pki["ca"], "server_hostname": "localhost"})


def test_plain_client_to_tls_server_fails_clearly(tls_server: rk.Server) -> None:
    with pytest.raises(rk.AuthenticationError, match="no remote_kernel greeting.*tls="):
        rk.connect("127.0.0.1", tls_server.port, timeout=1.0)


def test_tls_client_to_plain_server_fails_clearly(pki: dict[str, Any]) -> None:
    with rk.Server(EchoService) as server:
        with pytest.raises(rk.AuthenticationError, match="does not speak TLS"):
            rk.connect("127.0.0.1", server.port, tls={"ca": pki["ca"]}, timeout=5)
        with rk.connect("127.0.0.1", server.port, timeout=5) as conn:
            assert conn.root.echo(1) == 1


def test_tls_and_token_together(pki: dict[str, Any]) -> None:
    with rk.Server(EchoService, tls=_server_tls(pki), token="s3cret") as server:
        _assert_works(server, tls={"ca": pki["ca"]}, token="s3cret")
        with pytest.raises(rk.AuthenticationError):
            rk.connect("127.0.0.1", server.port, tls={"ca": pki["ca"]}, token="wrong",
                       timeout=5)


def test_unknown_tls_key_is_refused(pki: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown tls key"):
        rk.Server(EchoService, tls={**_server_tls(pki), "cafile": pki["ca"]})


# -- mutual TLS ---------------------------------------------------------------------------


def test_mtls_with_a_client_certificate(mtls_server: rk.Server, pki: dict[str, Any]) -> None:
    _assert_works(mtls_server, tls=_client_tls(pki))


def test_mtls_missing_client_certificate(mtls_server: rk.Server, pki: dict[str, Any]) -> None:
    with pytest.raises(rk.AuthenticationError, match="requires a client certificate"):
        with rk.connect("127.0.0.1", mtls_server.port, tls={"ca": pki["ca"]}, timeout=5) as c:
            c.root.echo(1)
    _assert_works(mtls_server, tls=_client_tls(pki))


def test_mtls_client_certificate_from_another_ca(mtls_server: rk.Server,
                                                 pki: dict[str, Any]) -> None:
    with pytest.raises(rk.AuthenticationError, match="does not trust our certificate"):
        with rk.connect("127.0.0.1", mtls_server.port, tls=_client_tls(pki, "foreign_client"),
                        timeout=5) as conn:
            conn.root.echo(1)


def test_mtls_expired_client_certificate(mtls_server: rk.Server, pki: dict[str, Any]) -> None:
    with pytest.raises(rk.AuthenticationError, match="certificate"):
        with rk.connect("127.0.0.1", mtls_server.port, tls=_client_tls(pki, "expired_client"),
                        timeout=5) as conn:
            conn.root.echo(1)


def test_mtls_server_certificate_checked_too(pki: dict[str, Any]) -> None:
    tls = {"cert": pki["foreign_server"].cert, "key": pki["foreign_server"].key,
           "client_ca": pki["ca"]}
    with rk.Server(EchoService, tls=tls) as server:
        with pytest.raises(rk.AuthenticationError, match="not trusted"):
            rk.connect("127.0.0.1", server.port, tls=_client_tls(pki), timeout=5)


# -- the command line and the connection file ----------------------------------------------


def test_cli_serve_tls_records_ca_in_connection_file(start_server: Any,
                                                     pki: dict[str, Any]) -> None:
    server = start_server("--classic", "--tls-cert", pki["server"].cert,
                          "--tls-key", pki["server"].key, "--tls-ca", pki["ca"])
    assert server.info["tls"] is True
    assert server.info["ca"] == pki["ca"]
    assert stat.S_IMODE(os.stat(server.file).st_mode) == 0o600
    with rk.connect(str(server.file), timeout=5) as conn:
        assert isinstance(conn._transport.link.sock, ssl.SSLSocket)  # type: ignore[attr-defined]
        assert conn.eval("6 * 7") == 42
    with pytest.raises(rk.AuthenticationError):  # the token is still required
        rk.connect("127.0.0.1", server.port, tls={"ca": pki["ca"]}, timeout=5)


def test_cli_serve_mtls(start_server: Any, pki: dict[str, Any]) -> None:
    server = start_server("--classic", "--tls-cert", pki["server"].cert,
                          "--tls-key", pki["server"].key, "--tls-client-ca", pki["ca"],
                          "--tls-ca", pki["ca"])
    info = json.loads(server.file.read_text())
    assert info["tls"] is True
    with server.connect(tls=_client_tls(pki), timeout=5) as conn:
        assert conn.eval("1 + 1") == 2
    with pytest.raises(rk.AuthenticationError, match="client certificate"):
        with server.connect(tls={"ca": pki["ca"]}, timeout=5) as conn:
            conn.eval("1")
