"""Wire revision 2 (issue 21): a relayed handshake, an on-path writer, a replayed frame, a
peer of another protocol version and a downgrading advertisement gain nothing; a relay that
only forwards bytes keeps working. Real server processes on loopback, raw sockets."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import remote_kernel as rk
from remote_kernel.errors import ProtocolError
from remote_kernel.net.auth import PROTOCOL_VERSION, hkdf
from remote_kernel.protocol.codec import HEADER, TAG_SIZE, FrameAuthenticator, FrameDecoder
from remote_kernel.protocol.messages import Op
from tests.hardening.conftest import EchoService
from tests.hardening.rawpeer import RawPeer, frame, packb, peerref
from tests.hardening.wirerelay import FrameRelay, byte_relay

# -- the key derivation and the framer ------------------------------------------------------


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    okm = hkdf(bytes([0x0B] * 22), bytes(range(0x0D)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def _tagged_stream(key: bytes, payloads: list[bytes]) -> list[bytes]:
    sender = FrameAuthenticator(key)
    return [sender.seal(payload) for payload in payloads]


def _decoder(key: bytes, limit: int = 1 << 26) -> FrameDecoder:
    decoder = FrameDecoder(limit)
    decoder.authenticator = FrameAuthenticator(key)
    return decoder


@pytest.mark.parametrize("size", [10, 300_000, 3_000_000])  # shared buffer, and large frames
def test_tagged_frames_round_trip_and_any_change_fails(size: int) -> None:
    key = secrets.token_bytes(32)
    payloads = [secrets.token_bytes(size), b"second"]
    frames = _tagged_stream(key, payloads)
    assert len(frames[0]) == 4 + size + TAG_SIZE
    assert _decoder(key).feed(b"".join(frames)) == payloads
    # Byte by byte too (a large frame's tag arrives after it, in pieces).
    decoder, got = _decoder(key), []
    stream = b"".join(frames)
    for start in range(0, len(stream), 65_521):
        got += decoder.feed(stream[start:start + 65_521])
    assert got == payloads
    for position in (4, 4 + size // 2, 4 + size, len(frames[0]) - 1):  # payload and tag
        changed = bytearray(frames[0])
        changed[position] ^= 1
        with pytest.raises(ProtocolError, match="frame failed authentication"):
            _decoder(key).feed(bytes(changed))
    with pytest.raises(ProtocolError, match="frame failed authentication"):
        _decoder(secrets.token_bytes(32)).feed(frames[0])  # another key


def test_replayed_dropped_and_reordered_frames_fail() -> None:
    key = secrets.token_bytes(32)
    one, two, three = _tagged_stream(key, [b"one", b"two", b"three"])
    for stream in (one + one, one + three, two + one):
        with pytest.raises(ProtocolError, match="frame failed authentication"):
            _decoder(key).feed(stream)
    assert _decoder(key).feed(one + two + three) == [b"one", b"two", b"three"]


def test_an_untagged_frame_is_not_accepted_when_tags_are_due() -> None:
    key = secrets.token_bytes(32)
    with pytest.raises(ProtocolError, match="frame failed authentication"):
        _decoder(key).feed(frame(packb([0, 1, 2])) + bytes(TAG_SIZE))


# -- a real server process with a token ------------------------------------------------------


def _eval_source(path: Path, text: str = "x") -> str:
    return f"open({str(path)!r}, 'a').write({text + chr(10)!r})"


def _read_frame(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise EOFError("closed")
        header += chunk
    (length,) = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise EOFError("closed")
        body += chunk
    return header + body


def test_a_relayed_handshake_gives_the_relay_nothing(start_server: Any, tmp_path: Path) -> None:
    """The attacker relays hello, reply and answer between a real client and the real
    server, then speaks on its own: with revision 1 its eval ran on the server."""
    server = start_server("--classic")
    victim_file = tmp_path / "pwned"
    listener = socket.create_server(("127.0.0.1", 0))
    attacker_port = listener.getsockname()[1]
    result: dict[str, Any] = {}

    def victim() -> None:
        try:
            result["conn"] = rk.connect("127.0.0.1", attacker_port, token=server.token,
                                        timeout=10)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            result["error"] = exc

    thread = threading.Thread(target=victim, daemon=True)
    thread.start()
    client, _ = listener.accept()
    upstream = socket.create_connection(("127.0.0.1", server.port))
    client.settimeout(10)
    upstream.settimeout(10)
    client.sendall(_read_frame(upstream))    # the server's hello
    upstream.sendall(_read_frame(client))    # the client's reply with its mac
    client.sendall(_read_frame(upstream))    # the server's answer
    thread.join(10)
    raw = RawPeer(upstream)
    try:
        ok, root = raw.request(Op.GETROOT, timeout=2)
    except TimeoutError:  # revision 2: the server waits for a tag only the client can make
        raw.send_bytes(secrets.token_bytes(TAG_SIZE))
        closed = raw.closed_by_victim(5)
    except EOFError:
        closed = True
    else:
        assert ok
        raw.request(Op.CALLATTR, peerref(root.oid), "eval", [_eval_source(victim_file)], None,
                    timeout=5)
        closed = raw.closed_by_victim(1)
    time.sleep(0.3)
    assert not victim_file.exists(), "the relay's own request ran on the real server"
    assert closed, "the server kept the relay's connection open"
    with server.connect() as conn:  # the server itself is unharmed
        assert conn.eval("6 * 7") == 42
    if "conn" in result:
        result["conn"].close()
    client.close()
    listener.close()


def test_a_transparent_byte_relay_keeps_working(start_server: Any) -> None:
    server = start_server("--classic")
    relay = byte_relay(("127.0.0.1", server.port))
    try:
        with rk.connect("127.0.0.1", relay.port, token=server.token, timeout=10) as conn:
            assert conn.eval("1 + 1") == 2
            big = conn.eval("b'\\x07' * (3 << 20)")  # a large frame, tag after it
            assert big == b"\x07" * (3 << 20)
            assert conn.eval("len")(b"u" * (2 << 20)) == 2 << 20  # and upwards
            assert conn.session is not None and len(conn.session.id) == 16
    finally:
        relay.close()


def _marked(frame_bytes: bytes, marker: bytes) -> bool:
    return marker in frame_bytes


def _forge(whole: bytes, old: bytes, new: bytes, tag_size: int) -> bytes:
    """The frame with ``old`` replaced by ``new`` in its payload, and a tag guessed."""
    payload = whole[4:len(whole) - tag_size].replace(old, new)
    return HEADER.pack(len(payload)) + payload + secrets.token_bytes(tag_size)


def _tamper(kind: str) -> Any:
    def tamper(direction: str, index: int, whole: bytes, tag_size: int) -> list[bytes]:
        if direction == "c2s" and b"MARKA" in whole:
            if kind == "modify":  # change the request in flight, keep its tag
                return [whole.replace(b"MARKA", b"MARKB")]
            if kind == "inject":  # a whole frame of the attacker's before the real one
                return [_forge(whole, b"MARKA", b"MARKC", tag_size), whole]
            if kind == "duplicate":  # replay: the same frame twice
                return [whole, whole]
            if kind == "drop":
                return []
        if direction == "s2c" and kind == "modify-reply" and b"SECRET" in whole:
            return [whole.replace(b"SECRET", b"FORGED")]
        return [whole]
    return tamper


@pytest.mark.parametrize("kind", ["modify", "inject", "duplicate", "drop", "modify-reply"])
def test_an_on_path_writer_is_cut_off_and_nothing_runs(start_server: Any, tmp_path: Path,
                                                       kind: str) -> None:
    server = start_server("--classic")
    relay = FrameRelay(("127.0.0.1", server.port), _tamper(kind))
    conn = rk.connect("127.0.0.1", relay.port, token=server.token, timeout=10,
                      config={"sync_request_timeout": 3})
    failure: Exception | None = None
    try:
        assert conn.eval("1 + 1") == 2
        try:
            value = conn.eval(_eval_source(tmp_path / "MARKA") + " and 'SECRET'")
            assert value == "SECRET", value
            conn.eval(_eval_source(tmp_path / "MARKD"))  # after the attacked frame
            conn.eval(_eval_source(tmp_path / "MARKD"))
        except (rk.RemoteKernelError, ConnectionError) as exc:
            failure = exc
        time.sleep(0.5)
        lines = (tmp_path / "MARKA").read_text().count("x") if (tmp_path / "MARKA").exists() \
            else 0
        assert lines <= 1, "a replayed request ran twice"
        for forged in ("MARKB", "MARKC"):
            assert not (tmp_path / forged).exists(), f"the attacker's {forged} request ran"
        if kind == "drop":
            assert not (tmp_path / "MARKD").exists(), "a frame after a dropped one ran"
        assert failure is not None, "the tampered connection went on working"
        if kind == "modify-reply":
            assert isinstance(failure, ProtocolError), failure
            assert "frame failed authentication" in str(failure)
        with pytest.raises((rk.RemoteKernelError, ConnectionError)):
            conn.eval("'after'")  # the server closed this connection
        assert conn.closed
    finally:
        conn.close()
        relay.close()
    with server.connect() as fresh:
        assert fresh.eval("'still serving'") == "still serving"


# -- protocol versions -------------------------------------------------------------------------


def _hello(protocol: int) -> bytes:
    return frame(msgpack.packb({"protocol": protocol, "auth": True, "nonce": bytes(32),
                                "service": "Old"}))


@pytest.mark.parametrize("theirs", [1, 3])
def test_a_server_of_another_protocol_is_refused_in_one_line(theirs: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        sock.sendall(_hello(theirs))
        time.sleep(2)
        sock.close()

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(ProtocolError) as info:
        rk.connect("127.0.0.1", listener.getsockname()[1], token="t", timeout=5)
    message = str(info.value)
    assert "\n" not in message
    assert f"protocol {theirs}" in message and f"speaks {PROTOCOL_VERSION}" in message
    listener.close()


def test_a_client_of_protocol_1_is_refused_in_one_line(start_server: Any) -> None:
    server = start_server("--classic")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    hello = msgpack.unpackb(_read_frame(sock)[4:])
    assert hello["protocol"] == 2 and isinstance(hello["version"], str)
    sock.sendall(frame(msgpack.packb({"nonce": os.urandom(32), "mac": os.urandom(32)})))
    answer = msgpack.unpackb(_read_frame(sock)[4:])
    assert answer["ok"] is False
    assert "\n" not in answer["error"]
    assert "protocol 1" in answer["error"] and "speaks 2" in answer["error"]
    sock.close()


@pytest.mark.parametrize("resume, error, unknown", [
    ({"session": b"s" * 16, "received": 0, "proof": b"p" * 32},
     "unknown session: the server restarted or the session ended", True),
    ([b"s" * 16, b"p" * 32], "malformed resume request", False),
    ({"session": b"short", "received": 0, "proof": None}, "malformed resume request", False),
    ({"session": b"s" * 16, "received": -1, "proof": None}, "malformed resume request", False),
])
def test_a_resume_of_no_known_session_is_refused(start_server: Any, resume: Any, error: str,
                                                 unknown: bool) -> None:
    server = start_server("--classic")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    _read_frame(sock)
    sock.sendall(frame(msgpack.packb({"protocol": 2, "version": "x", "nonce": os.urandom(32),
                                      "resume": resume, "mac": None})))
    answer = msgpack.unpackb(_read_frame(sock)[4:])
    assert answer["ok"] is False
    assert answer["error"].startswith(error)
    assert answer["unknown_session"] is unknown
    sock.close()


# -- TLS comes from the user, never from an advertisement ---------------------------------------


@pytest.fixture
def tls_server(pki: dict[str, Any]) -> Any:
    with rk.Server(EchoService, tls={"cert": pki["server"].cert, "key": pki["server"].key},
                   token="the-token") as server:
        yield server


def _impostor_relay(port: int) -> FrameRelay:
    """Plain TCP towards the client, TLS towards the real server; forwards every byte."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return byte_relay(("127.0.0.1", port), upstream_tls=context)


def test_a_plain_relay_to_a_tls_server_is_refused(tls_server: Any, pki: dict[str, Any]) -> None:
    """The downgrade: the client speaks plain TCP to an impostor that relays to the TLS
    server. The handshake binds each side's channel: it fails, in one line."""
    with rk.connect("127.0.0.1", tls_server.port, token="the-token", timeout=5,
                    tls={"ca": pki["ca"]}) as conn:
        assert conn.root.echo("direct") == "direct"
    relay = _impostor_relay(tls_server.port)
    try:
        with pytest.raises(rk.AuthenticationError) as info:
            rk.connect("127.0.0.1", relay.port, token="the-token", timeout=5)
        assert "\n" not in str(info.value)
    finally:
        relay.close()


def test_an_advertised_impostor_with_tls_0_is_refused(tls_server: Any, tmp_path: Path) -> None:
    """`%remote connect NAME --token-file F` falling back to an advertisement that says
    tls=0 for a TLS server (an impostor relaying to it): one line, no session."""
    from remote_kernel.ipython import registry
    from remote_kernel.net import targets
    from remote_kernel.net.discovery import ServerInfo

    relay = _impostor_relay(tls_server.port)
    token_file = tmp_path / "token"
    token_file.write_text("the-token")
    advertised = ServerInfo(name="lab-impostor", host="127.0.0.1", port=relay.port, tls=False,
                            service="EchoService", addresses=("127.0.0.1",), protocol=2)
    original = targets.find_discovered
    targets.find_discovered = lambda name, timeout=2.0: advertised  # type: ignore[assignment]
    try:
        with pytest.raises(rk.AuthenticationError) as info:
            registry.open_connection("lab-impostor", str(token_file))
    finally:
        targets.find_discovered = original  # type: ignore[assignment]
        relay.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"lab-impostor at 127.0.0.1:{relay.port} (advertised) could "
                              "not prove it knows your token; not connected")


def test_the_tls_setting_of_an_advertisement_is_not_used(monkeypatch: Any) -> None:
    from remote_kernel.net import targets
    from remote_kernel.net.discovery import ServerInfo

    seen: dict[str, Any] = {}

    def fake_connect(host: str, port: int, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise rk.AuthenticationError("no")

    monkeypatch.setattr(targets, "connect_tcp", fake_connect)
    for advertised_tls in (False, True):
        info = ServerInfo(name="x", host="127.0.0.1", port=1, tls=advertised_tls,
                          service="S", addresses=("127.0.0.1",), protocol=2)
        for user_tls in (None, {"ca": "ca.pem"}):
            with pytest.raises(rk.AuthenticationError):
                targets.connect_advertised(info, "t", rk.VoidService, ValueError(), user_tls)
            assert seen["tls"] == user_tls


# -- resuming a session takes its secret, not only the token ----------------------------------


def test_a_token_holder_cannot_resume_someone_elses_session(start_server: Any) -> None:
    """The resume proof is an HMAC with the session's own secret (agreed in its first
    handshake), bound to the new nonces: the token alone takes over nothing, and the
    session goes on undisturbed."""
    from remote_kernel.net.auth import Resume, client_handshake
    from remote_kernel.net.transports.sockets import SocketTransport

    server = start_server("--classic")
    with rk.connect("127.0.0.1", server.port, token=server.token) as owner:
        items = owner.eval("[1]")
        session_id = owner._transport.session_id
        attempts = [Resume(session_id, os.urandom(32), 0),  # the token, a guessed secret
                    Resume(session_id, None, 0)]  # no proof at all
        for resume in attempts:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            transport = SocketTransport(sock, "thief")
            try:
                with pytest.raises(rk.AuthenticationError, match="not the owner of that session"):
                    client_handshake(transport, server.token, 10, resume)
            finally:
                transport.close()
        items.append(2)
        assert list(items) == [1, 2] and owner.state == "open"


@pytest.mark.parametrize("size", [10, 3_000_000])  # shared buffer, and a large frame
def test_a_stop_while_a_tag_is_checked_loses_no_frame_and_no_count(size: int) -> None:
    """Stop raises KeyboardInterrupt at any call of the reading thread, the tag check's
    included: the frame and its count are taken together after it, so the interrupted
    read is simply read again (before, the frame was counted and not taken, or taken
    and not counted: every later frame failed authentication)."""
    key = secrets.token_bytes(32)
    payloads = [secrets.token_bytes(size), b"second", b"third"]

    class InterruptedOnce(FrameAuthenticator):
        calls = 0

        def _tag_of(self, length: int, payload: Any) -> bytes:
            InterruptedOnce.calls += 1
            if InterruptedOnce.calls == 1:
                raise KeyboardInterrupt
            return super()._tag_of(length, payload)

    decoder = FrameDecoder(1 << 26)
    decoder.authenticator = InterruptedOnce(key)
    frames = _tagged_stream(key, payloads)
    with pytest.raises(KeyboardInterrupt):  # the first frame is in; its check is stopped
        decoder.feed(frames[0])
    assert decoder.next_frame() == payloads[0]  # read again, checked, taken
    assert decoder.feed(frames[1] + frames[2]) == payloads[1:]
    assert decoder.authenticator.count == 3
