"""The connection handshake (wire revision 2): protocol check, token proof, session keys.

    server -> client  hello  {"protocol": 2, "version": package version, "auth": bool,
                              "nonce": 32 bytes, "service": name}
    client -> server  reply  {"protocol": 2, "version": package version, "nonce": 32 bytes,
                              "resume": nil | {"session": id, "received": n,
                                               "proof": 32 bytes or nil},
                              "mac": 32 bytes or nil}   ("mac" is the LAST key)
    server -> client  answer {"ok": true, "mac": 32 bytes or nil, "session": 16 bytes,
                              "received": n (a resume only)}
                             or {"ok": false, "error": text, "unknown_session": bool}

Keys. With a token, HKDF-SHA256 (RFC 5869) with ikm = the token (UTF-8) and salt =
server nonce + client nonce derives five 32-byte keys, one per ``info`` label (LABELS):
the client's and the server's handshake MAC keys, the client->server and server->client
frame keys, and the session's resume secret.

Resume (net/session.py). A client whose link died opens a new one and runs this handshake
again with ``resume``: the session id, how many bytes of the server's stream it received,
and a proof that it owns the session, HMAC-SHA256(resume secret, b"resume" + both new
nonces + session id + received), so a proof seen on the wire is worth nothing later. The
token is proven afresh as for a new session. The server answers with how many bytes of
the client's stream it received (covered by its MAC); then each side re-sends the rest,
and the frames go on under the session's first keys and counters. A server that does not
know the session (it restarted, or the session ended) refuses with ``unknown_session``.
Without a token a session resumes by its id alone (16 random bytes; anyone who can reach
such a server can do anything there anyway).

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
import threading
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
    peer_received: int = 0  # a resume: bytes of this side's stream the peer received


@dataclass(frozen=True)
class Resume:
    """A client's request to continue a session on a new link."""

    session_id: bytes
    secret: bytes | None  # the session's resume secret (None without a token)
    received: int  # bytes of the server's stream this side received


class SessionTable:
    """The server's live sessions by id, for resumes (net/session.ResumableTransport)."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, Any] = {}
        self._lock = threading.Lock()

    def add(self, session_id: bytes, session: Any) -> None:
        with self._lock:
            self._sessions[session_id] = session

    def remove(self, session_id: bytes) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def get(self, session_id: bytes) -> Any:
        with self._lock:
            return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)


def resume_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes,
                 session_id: bytes, received: int) -> bytes:
    data = b"resume" + server_nonce + client_nonce + session_id + received.to_bytes(8, "big")
    return hmac.new(secret, data, hashlib.sha256).digest()


def channel_binding(transport: Transport) -> bytes:
    """How this side's transport reaches the peer; part of the transcript."""
    return b"tls" if isinstance(getattr(transport, "sock", None), ssl.SSLSocket) else b"plain"


def _transcript(hello: bytes, signed_reply: bytes, channel: bytes) -> bytes:
    return hashlib.sha256(hello).digest() + hashlib.sha256(signed_reply).digest() + channel


def _client_mac(keys: SessionKeys, transcript: bytes) -> bytes:
    return hmac.new(keys.client_mac, b"client" + transcript, hashlib.sha256).digest()


def _server_mac(keys: SessionKeys, transcript: bytes, reply: bytes, session: bytes,
                received: int | None = None) -> bytes:
    data = b"server" + transcript + hashlib.sha256(reply).digest() + session
    if received is not None:  # a resume: how much the server received is covered too
        data += received.to_bytes(8, "big")
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
                     timeout: float = 10.0, sessions: SessionTable | None = None
                     ) -> FrameReader:
    """Run the server side; raises AuthenticationError (after a delay) on failure. The
    reader returned carries the session (``reader.session``) and its frame keys; after a
    resume of one of ``sessions`` it carries ``reader.resumed``, that session, with
    ``reader.session.peer_received`` (the caller attaches the transport to it)."""
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
        resume = reply.get("resume")
        resumed = None
        if resume is not None:
            resumed, session_id, client_received = _find_session(resume, sessions)
        else:
            session_id = secrets.token_bytes(SESSION_ID_SIZE)
        keys = None
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
        answer: dict[str, Any] = {"ok": True, "mac": None, "session": session_id}
        server_received = None
        if resumed is not None:
            _check_proof(resume, resumed, nonce, client_nonce, session_id, client_received)
            try:
                server_received = resumed.take_over(transport)
            except ConnectionClosed:  # it ended meanwhile
                raise UnknownSession("unknown session: the session ended, and its objects "
                                     "are gone") from None
            answer["received"] = server_received
        if keys is not None:
            answer["mac"] = _server_mac(keys, transcript, reply_bytes, session_id,
                                        server_received)
        _send(transport, pack(answer), max(0.0, deadline - time.monotonic()))
    except (AuthenticationError, ProtocolError) as exc:
        log.warning("failed handshake from %s: %s", transport.peer_name, exc)
        time.sleep(FAILURE_DELAY)
        try:
            _send(transport, pack({"ok": False, "error": str(exc),
                                   "unknown_session": isinstance(exc, UnknownSession)}), 0)
        except ConnectionClosed:
            pass
        raise
    version = str(reply.get("version", ""))
    if resumed is not None:  # the session goes on under its first keys and counters
        reader.session = Session(session_id, version, None, client_received)
        reader.resumed = resumed
        return reader
    _install(reader, keys, server_side=True)
    reader.session = Session(session_id, version, keys)
    return reader


class UnknownSession(AuthenticationError):
    """A resume of a session this server does not have (it restarted, or it ended)."""


def _find_session(resume: Any, sessions: SessionTable | None) -> tuple[Any, bytes, int]:
    if not isinstance(resume, dict):
        raise ProtocolError("malformed resume request")
    session_id, received = resume.get("session"), resume.get("received")
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_SIZE \
            or type(received) is not int or received < 0:
        raise ProtocolError("malformed resume request")
    session = sessions.get(session_id) if sessions is not None else None
    if session is None:
        raise UnknownSession("unknown session: the server restarted or the session ended, "
                             "and its objects are gone")
    return session, session_id, received


def _check_proof(resume: dict, session: Any, server_nonce: bytes, client_nonce: bytes,
                 session_id: bytes, received: int) -> None:
    secret = session.secret
    if secret is None:
        return  # a session without a token resumes by its id (see the module docstring)
    proof = resume.get("proof")
    expected = resume_proof(secret, server_nonce, client_nonce, session_id, received)
    if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
        raise AuthenticationError("authentication failed: not the owner of that session")


def client_handshake(transport: Transport, token: str | None, timeout: float = 10.0,
                     resume: Resume | None = None) -> FrameReader:
    """Run the client side. The reader returned may already hold the first frames after
    the handshake; it carries the session (``reader.session``) and its frame keys. With
    ``resume``, the session goes on (``reader.session.peer_received``: where to re-send
    from) and no keys are installed: the session's first ones stay in use."""
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
    request = None
    if resume is not None:
        request = {"session": resume.session_id, "received": resume.received, "proof": None}
        if resume.secret is not None:
            request["proof"] = resume_proof(resume.secret, server_nonce, client_nonce,
                                            resume.session_id, resume.received)
    body = {"protocol": PROTOCOL_VERSION, "version": __version__, "nonce": client_nonce,
            "resume": request}
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
        error = f"{peer} refused the connection: {answer.get('error', 'no reason')}"
        if answer.get("unknown_session") is True and resume is not None:
            from remote_kernel.net.session import SessionRefused

            raise SessionRefused(f"{peer} no longer has this session (it restarted, or it "
                                 f"ended the session): its objects are gone")
        raise AuthenticationError(error)
    session_id = answer.get("session")
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_SIZE:
        raise ProtocolError(f"{peer} sent a malformed handshake answer")
    peer_received = answer.get("received") if resume is not None else None
    if resume is not None and (session_id != resume.session_id
                               or type(peer_received) is not int or peer_received < 0):
        raise ProtocolError(f"{peer} sent a malformed resume answer")
    if keys is not None and transcript is not None:
        server_mac = answer.get("mac")
        if not isinstance(server_mac, bytes) or not hmac.compare_digest(
                server_mac, _server_mac(keys, transcript, reply, session_id, peer_received)):
            raise AuthenticationError(f"{peer} could not prove it knows the token")
    version = str(hello.get("version", ""))
    if resume is not None:
        reader.session = Session(session_id, version, None, peer_received or 0)
        return reader
    _install(reader, keys, server_side=False)
    reader.session = Session(session_id, version, keys)
    return reader
