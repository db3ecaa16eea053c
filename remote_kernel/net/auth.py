"""The connection handshake: protocol check and token challenge-response.

    server -> client  {"protocol": 1, "auth": bool, "nonce": 32 bytes, "service": name}
    client -> server  {"nonce": 32 bytes, "mac": HMAC-SHA256(token, "client"|sn|cn) or nil}
    server -> client  {"ok": true, "mac": HMAC-SHA256(token, "server"|cn|sn)}
                      or {"ok": false, "error": text}

Both sides prove they know the token; it never crosses the wire. Comparisons are
constant-time and the whole exchange has one absolute deadline (bytes trickling in do not
extend it). Frames are size-limited to 4 KiB and read through a buffer of that size.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import ssl
import time
from typing import Any

from remote_kernel.core.transport import FrameReader, Transport
from remote_kernel.errors import AuthenticationError, ConnectionClosed, ProtocolError
from remote_kernel.protocol.codec import HEADER_SIZE, frame, pack, unpack

PROTOCOL_VERSION = 1
HANDSHAKE_LIMIT = 4096
HANDSHAKE_BUFFER = HANDSHAKE_LIMIT + HEADER_SIZE  # what an unauthenticated peer can fill
FAILURE_DELAY = 0.5  # seconds a failed handshake costs the peer
log = logging.getLogger("remote_kernel.net.auth")


def _mac(token: str, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token.encode(), label + first + second, hashlib.sha256).digest()


def _read(reader: FrameReader, deadline: float) -> dict[str, Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AuthenticationError("handshake timed out")
    payload = reader.read_frame(remaining)
    if payload is None:
        raise AuthenticationError("handshake timed out")
    message = unpack(payload)
    if not isinstance(message, dict):
        raise ProtocolError("malformed handshake message")
    return message


def _send(transport: Transport, message: dict[str, Any], timeout: float | None = None) -> None:
    transport.send(frame(pack(message), HANDSHAKE_LIMIT), timeout)


def server_handshake(transport: Transport, token: str | None, service_name: str,
                     timeout: float = 10.0) -> FrameReader:
    """Run the server side; raises AuthenticationError (after a delay) on failure."""
    deadline = time.monotonic() + timeout
    reader = FrameReader(transport, HANDSHAKE_LIMIT, HANDSHAKE_BUFFER)
    nonce = secrets.token_bytes(32)
    try:
        # A peer that reads nothing cannot hold this thread past the deadline either.
        _send(transport, {"protocol": PROTOCOL_VERSION, "auth": token is not None,
                          "nonce": nonce, "service": service_name}, timeout)
        reply = _read(reader, deadline)
        client_nonce = reply.get("nonce")
        if not isinstance(client_nonce, bytes) or len(client_nonce) != 32:
            raise ProtocolError("malformed handshake reply")
        if token is not None:
            mac = reply.get("mac")
            expected = _mac(token, b"client", nonce, client_nonce)
            if not isinstance(mac, bytes) or not hmac.compare_digest(mac, expected):
                reason = "missing token" if mac is None else "wrong token"
                raise AuthenticationError(f"authentication failed: {reason}")
            _send(transport, {"ok": True, "mac": _mac(token, b"server", client_nonce, nonce)},
                  max(0.0, deadline - time.monotonic()))
        else:
            _send(transport, {"ok": True, "mac": None}, max(0.0, deadline - time.monotonic()))
    except (AuthenticationError, ProtocolError) as exc:
        log.warning("failed handshake from %s: %s", transport.peer_name, exc)
        time.sleep(FAILURE_DELAY)
        try:
            _send(transport, {"ok": False, "error": str(exc)}, 0)
        except ConnectionClosed:
            pass
        raise
    return reader


def client_handshake(transport: Transport, token: str | None, timeout: float = 10.0) -> str:
    """Run the client side; returns the server's service name."""
    deadline = time.monotonic() + timeout
    reader = FrameReader(transport, HANDSHAKE_LIMIT, HANDSHAKE_BUFFER)
    try:
        hello = _read(reader, deadline)
    except AuthenticationError:  # the deadline passed without a word from the peer
        raise AuthenticationError(
            f"{transport.peer_name} sent no remote_kernel greeting within {timeout} s "
            "(a TLS server expects tls=...; a busy or stuck server answers late)"
        ) from None
    except ConnectionClosed as exc:
        if isinstance(exc.__cause__, ssl.SSLError):  # a TLS alert: our certificate was refused
            raise AuthenticationError(str(exc)) from exc
        raise
    except ProtocolError as exc:
        raise ProtocolError(
            f"{transport.peer_name} does not speak the remote_kernel protocol ({exc})"
        ) from exc
    if hello.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{transport.peer_name} speaks protocol {hello.get('protocol')!r}, "
            f"this client speaks {PROTOCOL_VERSION}"
        )
    server_nonce = hello.get("nonce")
    if not isinstance(server_nonce, bytes) or len(server_nonce) != 32:
        raise ProtocolError("malformed handshake hello")
    requires_auth = bool(hello.get("auth"))
    if requires_auth and not token:
        _send(transport, {"nonce": secrets.token_bytes(32), "mac": None})
        raise AuthenticationError(
            f"{transport.peer_name} requires a token; pass token= or use its connection file"
        )
    if token and not requires_auth:
        raise AuthenticationError(
            f"{transport.peer_name} does not check tokens, so it cannot prove it knows yours; "
            "refusing to continue"
        )
    client_nonce = secrets.token_bytes(32)
    mac = _mac(token, b"client", server_nonce, client_nonce) if token else None
    _send(transport, {"nonce": client_nonce, "mac": mac})
    try:
        answer = _read(reader, deadline)
    except ConnectionClosed as exc:
        raise AuthenticationError(f"{transport.peer_name} closed the handshake: {exc}") from exc
    if not answer.get("ok"):
        raise AuthenticationError(
            f"{transport.peer_name} refused the connection: {answer.get('error', 'no reason')}"
        )
    if token:
        expected = _mac(token, b"server", client_nonce, server_nonce)
        server_mac = answer.get("mac")
        if not isinstance(server_mac, bytes) or not hmac.compare_digest(server_mac, expected):
            raise AuthenticationError(f"{transport.peer_name} could not prove it knows the token")
    return str(hello.get("service", ""))
