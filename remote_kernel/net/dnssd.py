"""What the DNS-SD records of a remote_kernel server hold, in both directions (zeroconf-free).

:func:`~remote_kernel.net.discovery.advertise` announces one instance
``<name>._remote-kernel._tcp.local.`` (SRV, A/AAAA and a TXT record: ``txtvers``, ``name``,
``tls``, ``service``, ``protocol``); :func:`~remote_kernel.net.discovery.discover` reads such
records from the network, where anyone may send anything. This module is what both sides
agree on: the names, ports, interfaces and TXT values that are acceptable, and
:func:`parse_service_info`, which turns a resolved record into a :class:`ServerInfo` or
rejects it, ranking the server's addresses nearest to this host's first.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remote_kernel.errors import RemoteKernelError

if TYPE_CHECKING:
    from zeroconf import ServiceInfo

SERVICE_TYPE = "_remote-kernel._tcp.local."
TXT_VERSION = "1"
PROTOCOL_VERSION = 2  # the handshake's version (net/auth.py); advertised, never enforced here

MAX_NAME_BYTES = 63  # one DNS label
MAX_SERVICE_CHARS = 128
MAX_TXT_BYTES = 1024  # ours is under 100 bytes; anything far larger is not one of ours
MAX_ADDRESSES = 16  # addresses kept per instance
MAX_TIMEOUT = 300.0

_SERVICE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:]*")
_PROTOCOL_RE = re.compile(r"[0-9]{1,6}")
_FORBIDDEN_IN_NAME = frozenset("./\\:")


class DiscoveryError(RemoteKernelError):
    """Advertising failed: the name is taken on the network, or mDNS cannot run here."""


class DiscoveryUnavailable(DiscoveryError, ImportError):
    """zeroconf is not installed here (a device served from the bundle): nothing can be
    found or announced on the network."""


@dataclass(frozen=True)
class ServerInfo:
    """A server found on the network. Connect with ``rk.connect(info.host, info.port, ...)``.

    ``name`` is the DNS-SD instance name (unique on the network), ``host`` the preferred of its
    ``addresses``, ``tls`` whether it expects TLS, ``service`` the served class's name and
    ``protocol`` the protocol version it announced (None if it did not). Never a token.
    """

    name: str
    host: str
    port: int
    tls: bool
    service: str
    addresses: tuple[str, ...] = ()
    protocol: int | None = None


# ---------------------------------------------------------------------------------------------
# what an advertised record may say


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an instance name, or None if it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name != name.strip():
        return "must not start or end with whitespace"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode"
    if size > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes in UTF-8"
    if not name.isprintable() or "\ufffd" in name:
        return "must not contain control, invisible or undecodable characters"
    bad = sorted(set(name) & _FORBIDDEN_IN_NAME)
    if bad:
        return f"must not contain {' '.join(repr(c) for c in bad)}"
    return None


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535, not {port!r}")
    return port


def check_interface(interface: object) -> str | None:
    if interface is None:
        return None
    if not isinstance(interface, str):
        raise ValueError(f"interface must be an IP address of this host, not {interface!r}")
    try:
        address = ipaddress.ip_address(interface.strip())
    except ValueError:
        raise ValueError(
            f"interface must be an IP address of this host (like 192.168.1.20), "
            f"not {interface!r}"
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(
            f"interface must be one address of this host, not {interface!r}; "
            "leave it out to use every interface"
        )
    return str(address)


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], "
                         f"not {timeout!r}")
    return float(timeout)


def check_announcement(name: str, port: int, service: str, protocol: int) -> None:
    """ValueError unless these are what an advertised record may say."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"server name {name!r} {problem}")
    check_port(port)
    if not isinstance(service, str) or not service \
            or len(service) > MAX_SERVICE_CHARS or not _SERVICE_RE.fullmatch(service):
        raise ValueError(f"service must be a class name like 'ClassicService', not {service!r}")
    if isinstance(protocol, bool) or not isinstance(protocol, int) \
            or not _PROTOCOL_RE.fullmatch(str(protocol)):
        raise ValueError(f"protocol must be a small non-negative integer, not {protocol!r}")


def numbered(name: str, number: int) -> str:
    """``name-N``, shortened so that it still fits one DNS label."""
    suffix = f"-{number}"
    room = MAX_NAME_BYTES - len(suffix)
    base = name.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return f"{base}{suffix}"


def txt_properties(name: str, tls: bool, service: str, protocol: int) -> dict[str, str]:
    return {"txtvers": TXT_VERSION, "name": name, "tls": "1" if tls else "0",
            "service": service, "protocol": str(protocol)}


# ---------------------------------------------------------------------------------------------
# records read from the network (untrusted)


def _text(value: bytes | None, limit: int) -> str | None:
    """A TXT value as text, or None if absent, too long or not clean UTF-8."""
    if not isinstance(value, bytes) or len(value) > limit:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _prefix_length(address: str, local: list[ipaddress.IPv4Address]) -> int:
    """Leading bits ``address`` shares with the closest local IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return 0
    if not isinstance(ip, ipaddress.IPv4Address):
        return 0
    best = 0
    for mine in local:
        differing = int(ip) ^ int(mine)
        best = max(best, 32 - differing.bit_length())
    return best


def _clean_addresses(raw: list[str], allow_loopback: bool,
                     local: list[ipaddress.IPv4Address]) -> tuple[str, ...]:
    """Valid unicast addresses, best first: IPv4 nearest to ours, then IPv6."""
    kept: list[str] = []
    for text in raw[: MAX_ADDRESSES * 4]:
        if not isinstance(text, str) or len(text) > 64:
            continue
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_unspecified or address.is_multicast or address.is_reserved \
                or (address.is_loopback and not allow_loopback):
            continue
        if text not in kept:
            kept.append(text)
        if len(kept) >= MAX_ADDRESSES:
            break

    def rank(text: str) -> tuple[int, int, int]:
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv4Address):
            return (0, -_prefix_length(text, local), 0)
        return (1, 0, 1 if address.is_link_local else 0)

    return tuple(sorted(kept, key=rank))


def parse_service_info(info: ServiceInfo, *, allow_loopback: bool = False,
                       local_addresses: tuple[str, ...] = ()) -> ServerInfo | None:
    """A :class:`ServerInfo` from a resolved zeroconf record, or None if it is not usable.

    The record comes from the network and is untrusted: the instance name must be one
    :func:`advertise` would accept, the port in range, at least one address valid, ``tls``
    exactly "0" or "1", ``service`` a class name, the TXT record small and clean UTF-8.
    ``local_addresses`` (this host's, or the interface browsed on) rank the server's addresses.
    """
    try:
        name = instance_name(info.name)
        if name is None:
            return None
        port = info.port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return None
        if len(info.text or b"") > MAX_TXT_BYTES:
            return None
        properties = info.properties
        if not isinstance(properties, Mapping):
            return None
        tls_text = _text(properties.get(b"tls"), 1)
        if tls_text not in ("0", "1"):
            return None
        service = _text(properties.get(b"service"), MAX_SERVICE_CHARS)
        if service is None or not _SERVICE_RE.fullmatch(service):
            return None
        protocol_text = _text(properties.get(b"protocol"), 6)
        protocol = int(protocol_text) if protocol_text and _PROTOCOL_RE.fullmatch(
            protocol_text) else None
        local = []
        for text in local_addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address):
                local.append(address)
        addresses = _clean_addresses(list(info.parsed_scoped_addresses()), allow_loopback,
                                     local)
        if not addresses:
            return None
    except Exception:  # a record malformed in a way zeroconf itself chokes on
        return None
    return ServerInfo(name=name, host=addresses[0], port=port, tls=tls_text == "1",
                      service=service, addresses=addresses, protocol=protocol)


def instance_name(full: object) -> str | None:
    """The instance part of ``<instance>._remote-kernel._tcp.local.``, if it is acceptable."""
    suffix = "." + SERVICE_TYPE
    if not isinstance(full, str) or len(full) > 255 or not full.lower().endswith(suffix):
        return None
    name = full[: -len(suffix)]
    return None if name_problem(name) else name
