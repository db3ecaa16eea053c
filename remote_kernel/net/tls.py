"""TLS contexts from a small config or an ``ssl.SSLContext`` given as is.

``tls=`` accepts an ``ssl.SSLContext``, or a dict with ``cert``, ``key`` (our certificate),
``ca`` (whom to trust) and, on a server, ``client_ca`` (require client certificates signed by
it), or True on a client for the system's default trust store.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

_KEYS = {"cert", "key", "ca", "client_ca", "server_hostname", "check_hostname"}


def _validate(tls: Mapping[str, Any]) -> None:
    unknown = set(tls) - _KEYS
    if unknown:
        raise ValueError(f"unknown tls key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")


def server_context(tls: Any) -> ssl.SSLContext | None:
    if tls is None or tls is False:
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not isinstance(tls, Mapping):
        raise ValueError("tls must be an ssl.SSLContext or a dict with cert and key")
    _validate(tls)
    if not tls.get("cert"):
        raise ValueError("a TLS server needs tls={'cert': ..., 'key': ...}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls["cert"], tls.get("key"))
    if tls.get("client_ca"):
        context.load_verify_locations(tls["client_ca"])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def requires_client_certificates(context: ssl.SSLContext | None) -> bool:
    return context is not None and context.verify_mode == ssl.CERT_REQUIRED


def client_context(tls: Any) -> tuple[ssl.SSLContext | None, str | None]:
    """The context and the server name to check (None: do not check the name)."""
    if tls is None or tls is False:
        return None, None
    if tls is True:
        return ssl.create_default_context(), None
    if isinstance(tls, ssl.SSLContext):
        return tls, None
    if not isinstance(tls, Mapping):
        raise ValueError("tls must be True, an ssl.SSLContext or a dict")
    _validate(tls)
    context = ssl.create_default_context(cafile=tls.get("ca"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("cert"):
        context.load_cert_chain(tls["cert"], tls.get("key"))
    check = tls.get("check_hostname", True)
    context.check_hostname = bool(check)
    return context, tls.get("server_hostname")


# What the OpenSSL reason codes mean for a user, and what to do about them.
_REASONS: dict[str, str] = {
    "CERTIFICATE_VERIFY_FAILED": "the certificate is not trusted",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "the server requires a client certificate: pass tls={'cert': ..., 'key': ...}"),
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": (
        "the peer sent no client certificate, and one is required"),
    "TLSV1_ALERT_UNKNOWN_CA": (
        "the peer does not trust our certificate (it is signed by a CA the peer does not know)"),
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer rejected our certificate: it has expired",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer rejected our certificate",
    "WRONG_VERSION_NUMBER": (
        "the peer does not speak TLS (is it a plain server? then connect without tls=)"),
    "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the TLS handshake",
    "NO_SHARED_CIPHER": "no cipher or TLS version in common with the peer",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common with the peer (TLS 1.2 or newer needed)",
}


def explain_ssl_error(exc: BaseException) -> str:
    """A sentence saying why a TLS handshake failed, for error messages and logs."""
    verify = getattr(exc, "verify_message", None)
    reason = getattr(exc, "reason", None)
    if verify:
        return (f"the peer's certificate is not trusted: {verify} (is the CA given as "
                "tls={'ca': ...} the one that signed it, and does it name this host?)")
    text = _REASONS.get(str(reason)) if reason else None
    if text:
        return f"{text} [{reason}]"
    return str(exc) or type(exc).__name__
