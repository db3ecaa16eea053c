"""Fixtures of the hardening suite: a throwaway CA, small in-process services, and a real
client connection whose peer is spoken to by hand (a hostile server)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.transports.sockets import SocketTransport
from tests.hardening.rawpeer import RawPeer


class EchoService(rk.Service):
    """A tiny service for the in-process servers of this suite."""

    def exposed_echo(self, value: Any) -> Any:
        return value


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two CAs; a server and a client certificate from the first, one of each from the
    second (the wrong CA), and an expired client certificate."""
    certs = pytest.importorskip("tests.hardening.certs", reason="needs cryptography")
    directory: Path = tmp_path_factory.mktemp("pki")
    ca = certs.CertificateAuthority(directory, "rk-ca")
    other = certs.CertificateAuthority(directory, "other-ca")
    yield {
        "ca": ca.ca,
        "other_ca": other.ca,
        "server": ca.issue("server"),
        "client": ca.issue("client", server=False),
        "expired_client": ca.issue("expired-client", server=False, expired=True),
        "foreign_client": other.issue("foreign-client", server=False),
        "foreign_server": other.issue("foreign-server"),
        "localhost_only": ca.issue("localhost-only", hosts=("localhost",)),
    }


@pytest.fixture
def hostile() -> Iterator[tuple[Connection, RawPeer]]:
    """(victim, raw): a real client connection whose peer (its server) is spoken to by
    hand, as a hostile server would."""
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    serving = victim.serve_in_background()
    yield victim, RawPeer(right)
    victim.close()
    serving.stop(5)
    right.close()
