"""The connection handshake (wire revision 2): protocol check, token proof, session keys.

    server -> client  hello  {"protocol": 2, "version": package version, "auth": bool,
                              "nonce": 32 bytes, "service": name}
    client -> server  reply  {"protocol": 2, "version": package version, "nonce": 32 bytes,
                              "resume": nil, "mac": 32 bytes or nil}   ("mac" is the LAST key)
    server -> client  answer {"ok": true, "mac": 32 bytes or nil, "session": 16 bytes}
                             or {"ok": false, "error": text}

Keys. With a token, HKDF-SHA256 (RFC 5869) with ikm = the token (UTF-8) and salt =
server nonce + client nonce derives five 32-byte keys, one per ``info`` label (LABELS):
the client's and the server's handshake MAC keys, the client->server and server->client
frame keys, and the session's resume secret (kept on both sides for resuming a session;
a server of this revision refuses any ``resume`` with "unknown session").

Transcript. ``H = sha256(hello payload) + sha256(signed reply) + channel``, where the
hello payload is the exact bytes of the hello frame, the signed reply is the reply
payload without the 32 bytes of its "mac" value (the reply's map ends with "mac", so
these are all of its bytes but the last 32), and ``channel`` is b"tls" or b"plain": how
each side's own transport reaches the other. Then

    client mac = HMAC-SHA256(client handshake key, b"client" + H)
    server mac = HMAC-SHA256(server handshake key, b"server" + H + sha256(reply payload)
                             + session id)

A changed hello (auth flag, service, version, nonce), a changed reply, or a relay that
joins a plain leg to a TLS leg makes the two sides' H differ, so the MACs fail. The token
never crosses the wire; comparisons are constant-time.

Frames after the handshake (when a token is in use) carry a 16-byte tag with the
direction's frame key: see ``FrameAuthenticator`` in protocol/codec.py. A relay that only
forwards bytes keeps working; a relay that sends anything of its own, or an on-path
writer, is cut off at its first frame. Without a token there are no keys and no tags.

A peer of another protocol version is refused at once with one line naming both versions.
The whole exchange has one absolute deadline (bytes trickling in do not extend it). Frames
are size-limited to 4 KiB and read through a buffer of that size.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any

from remote_kernel import __version__
from remote_kernel.core.transport import FrameReader, Transport
from remote_kernel.errors import AuthenticationError, ConnectionClosed, ProtocolError
from remote_kernel.protocol.codec import HEADER_SIZE, FrameAuthenticator, frame, pack, unpack

PROTOCOL_VERSION = 2
HANDSHAKE_LIMIT = 4096
HANDSHAKE_BUFFER = HANDSHAKE_LIMIT + HEADER_SIZE  # what an unauthenticated peer can fill
FAILURE_DELAY = 0.5  # seconds a failed handshake costs the peer
NONCE_SIZE = 32
MAC_SIZE = 32
SESSION_ID_SIZE = 16
LABELS = {
    "client_mac": b"remote_kernel 2 client handshake mac",
    "server_mac": b"remote_kernel 2 server handshake mac",
    "client_frames": b"remote_kernel 2 client->server frames",
    "server_frames": b"remote_kernel 2 server->client frames",
    "resume": b"remote_kernel 2 session resume secret",
}
log = logging.getLogger("remote_kernel.net.auth")


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract a pseudorandom key, expand it for ``info``."""
    prk = hmac.new(salt or bytes(hashlib.sha256().digest_size), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class SessionKeys:
    client_mac: bytes
    server_mac: bytes
    client_frames: bytes
    server_frames: bytes
    resume: bytes  # the session's resume secret (not used by this revision's handshake)


def derive_keys(token: str, server_nonce: bytes, client_nonce: bytes) -> SessionKeys:
    ikm, salt = token.encode(), server_nonce + client_nonce
    return SessionKeys(**{name: hkdf(ikm, salt, label) for name, label in LABELS.items()})


@dataclass
class Session:
    """What a handshake agreed: kept on the connection's reader (``reader.session``)."""

    id: bytes
    peer_version: str
    keys: SessionKeys | None  # None without a token


def channel_binding(transport: Transport) -> bytes:
    """How this side's transport reaches the peer; part of the transcript."""
    return b"tls" if isinstance(getattr(transport, "sock", None), ssl.SSLSocket) else b"plain"


def _transcript(hello: bytes, signed_reply: bytes, channel: bytes) -> bytes:
    return hashlib.sha256(hello).digest() + hashlib.sha256(signed_reply).digest() + channel


def _client_mac(keys: SessionKeys, transcript: bytes) -> bytes:
    return hmac.new(keys.client_mac, b"client" + transcript, hashlib.sha256).digest()


def _server_mac(keys: SessionKeys, transcript: bytes, reply: bytes, session: bytes) -> bytes:
    data = b"server" + transcript + hashlib.sha256(reply).digest() + session
    return hmac.new(keys.server_mac, data, hashlib.sha256).digest()


def _install(reader: FrameReader, keys: SessionKeys | None, server_side: bool) -> None:
    """Frames after the handshake are tagged with the direction's key (see codec.py)."""
    if keys is None:
        return
    mine, theirs = (keys.server_frames, keys.client_frames) if server_side \
        else (keys.client_frames, keys.server_frames)
    reader.authenticate(FrameAuthenticator(mine), FrameAuthenticator(theirs))


def _read(reader: FrameReader, deadline: float) -> tuple[dict[str, Any], bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AuthenticationError("handshake timed out")
    payload = reader.read_frame(remaining)
    if payload is None:
        raise AuthenticationError("handshake timed out")
    message = unpack(payload)
    if not isinstance(message, dict):
        raise ProtocolError("malformed handshake message")
    return message, bytes(payload)


def _send(transport: Transport, payload: bytes, timeout: float | None = None) -> None:
    transport.send(frame(payload, HANDSHAKE_LIMIT), timeout)


def _versions(peer: str, theirs: Any, side: str) -> ProtocolError:
    return ProtocolError(f"{peer} speaks remote_kernel protocol {theirs!r}, this {side} speaks "
                         f"{PROTOCOL_VERSION}; use the same remote_kernel version on both sides")


def server_handshake(transport: Transport, token: str | None, service_name: str,
                     timeout: float = 10.0) -> FrameReader:
    """Run the server side; raises AuthenticationError (after a delay) on failure. The
    reader returned carries the session (``reader.session``) and its frame keys."""
    deadline = time.monotonic() + timeout
    reader = FrameReader(transport, HANDSHAKE_LIMIT, HANDSHAKE_BUFFER)
    nonce = secrets.token_bytes(NONCE_SIZE)
    hello = pack({"protocol": PROTOCOL_VERSION, "version": __version__,
                  "auth": token is not None, "nonce": nonce, "service": service_name})
    try:
        # A peer that reads nothing cannot hold this thread past the deadline either.
        _send(transport, hello, timeout)
        reply, reply_bytes = _read(reader, deadline)
        if reply.get("protocol") != PROTOCOL_VERSION:
            raise _versions(f"the client {transport.peer_name}", reply.get("protocol", 1),
                            "server")
        client_nonce = reply.get("nonce")
        if not isinstance(client_nonce, bytes) or len(client_nonce) != NONCE_SIZE:
            raise ProtocolError("malformed handshake reply")
        if reply.get("resume") is not None:
            raise AuthenticationError("unknown session")
        session_id = secrets.token_bytes(SESSION_ID_SIZE)
        keys = None
        mac_out = None
        if token is not None:
            mac = reply.get("mac")
            if mac is None:
                raise AuthenticationError("authentication failed: missing token")
            if not isinstance(mac, bytes) or len(mac) != MAC_SIZE \
                    or not reply_bytes.endswith(b"\xc4\x20" + mac):
                raise ProtocolError("malformed handshake reply (its last entry must be the mac)")
            keys = derive_keys(token, nonce, client_nonce)
            transcript = _transcript(hello, reply_bytes[:-MAC_SIZE], channel_binding(transport))
            if not hmac.compare_digest(mac, _client_mac(keys, transcript)):
                raise AuthenticationError("authentication failed: wrong token")
            mac_out = _server_mac(keys, transcript, reply_bytes, session_id)
        _send(transport, pack({"ok": True, "mac": mac_out, "session": session_id}),
              max(0.0, deadline - time.monotonic()))
    except (AuthenticationError, ProtocolError) as exc:
        log.warning("failed handshake from %s: %s", transport.peer_name, exc)
        time.sleep(FAILURE_DELAY)
        try:
            _send(transport, pack({"ok": False, "error": str(exc)}), 0)
        except ConnectionClosed:
            pass
        raise
    _install(reader, keys, server_side=True)
    reader.session = Session(session_id, str(reply.get("version", "")), keys)
    return reader


def client_handshake(transport: Transport, token: str | None,
                     timeout: float = 10.0) -> FrameReader:
    """Run the client side. The reader returned may already hold the first frames after
    the handshake; it carries the session (``reader.session``) and its frame keys."""
    deadline = time.monotonic() + timeout
    reader = FrameReader(transport, HANDSHAKE_LIMIT, HANDSHAKE_BUFFER)
    peer = transport.peer_name
    try:
        hello, hello_bytes = _read(reader, deadline)
    except AuthenticationError:  # the deadline passed without a word from the peer
        raise AuthenticationError(
            f"{peer} sent no remote_kernel greeting within {timeout} s "
            "(a TLS server expects tls=...; a busy or stuck server answers late)"
        ) from None
    except ConnectionClosed as exc:
        if isinstance(exc.__cause__, ssl.SSLError):  # a TLS alert: our certificate was refused
            raise AuthenticationError(str(exc)) from exc
        raise
    except ProtocolError as exc:
        raise ProtocolError(f"{peer} does not speak the remote_kernel protocol ({exc})") \
            from exc
    if hello.get("protocol") != PROTOCOL_VERSION:
        raise _versions(peer, hello.get("protocol"), "client")
    server_nonce = hello.get("nonce")
    if not isinstance(server_nonce, bytes) or len(server_nonce) != NONCE_SIZE:
        raise ProtocolError("malformed handshake hello")
    requires_auth = bool(hello.get("auth"))
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    body = {"protocol": PROTOCOL_VERSION, "version": __version__, "nonce": client_nonce,
            "resume": None}
    if requires_auth and not token:
        _send(transport, pack({**body, "mac": None}))
        raise AuthenticationError(f"{peer} requires a token; pass token= or use its "
                                  "connection file")
    if token and not requires_auth:
        raise AuthenticationError(f"{peer} does not check tokens, so it cannot prove it knows "
                                  "yours; refusing to continue")
    keys = transcript = None
    if token:
        keys = derive_keys(token, server_nonce, client_nonce)
        unsigned = pack({**body, "mac": bytes(MAC_SIZE)})
        transcript = _transcript(hello_bytes, unsigned[:-MAC_SIZE], channel_binding(transport))
        reply = unsigned[:-MAC_SIZE] + _client_mac(keys, transcript)
    else:
        reply = pack({**body, "mac": None})
    _send(transport, reply)
    try:
        answer, _ = _read(reader, deadline)
    except ConnectionClosed as exc:
        raise AuthenticationError(f"{peer} closed the handshake: {exc}") from exc
    if not answer.get("ok"):
        raise AuthenticationError(f"{peer} refused the connection: "
                                  f"{answer.get('error', 'no reason')}")
    session_id = answer.get("session")
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_SIZE:
        raise ProtocolError(f"{peer} sent a malformed handshake answer")
    if keys is not None and transcript is not None:
        server_mac = answer.get("mac")
        if not isinstance(server_mac, bytes) or not hmac.compare_digest(
                server_mac, _server_mac(keys, transcript, reply, session_id)):
            raise AuthenticationError(f"{peer} could not prove it knows the token")
    _install(reader, keys, server_side=False)
    reader.session = Session(session_id, str(hello.get("version", "")), keys)
    return reader
