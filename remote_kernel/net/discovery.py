"""Finding remote_kernel servers on the local network with DNS-SD over mDNS (zeroconf).

Theory of operation
-------------------
A server that is asked to (``remote-kernel serve --advertise``) registers one DNS-SD service
instance ``<name>._remote-kernel._tcp.local.`` with python-zeroconf: a PTR record for browsing,
an SRV record (host label and port), A/AAAA records for its addresses and a TXT record with
``txtvers``, ``name``, ``tls`` ("1"/"0"), ``service`` (the served class's name) and ``protocol``
(the wire protocol version). Nothing secret is ever advertised: the token stays in the
connection file, and a client still authenticates with it after finding the server.

Before registering, :func:`advertise` asks the network whether the instance name is taken,
with questions that request *multicast* answers, and then lets zeroconf probe for it as RFC
6762 section 8 says. zeroconf's probes ask for unicast answers, and when several mDNS sockets
share port 5353 on one host (a notebook browsing, a second server, avahi), the kernel gives
each unicast reply to only one of them: alone, the probes miss a defender about half the time.
If the name is taken, :func:`advertise` raises :class:`DiscoveryError` rather than renaming,
because ``%remote connect NAME`` must reach the machine the user means; with
``allow_name_change=True`` it takes the first free of ``name-2`` ... ``name-9`` instead
(``Advertisement.name`` says which). :meth:`Advertisement.close` unregisters, which multicasts
goodbye records (TTL 0) so that browsers drop the server at once instead of when the TTL (two
minutes for SRV, 75 for PTR) runs out; an interpreter that exits normally closes it too
(atexit), but a server must close it on SIGTERM itself.

:func:`discover` browses for ``timeout`` seconds with a fresh zeroconf instance (multicast
questions, for the same reason), resolving each instance it sees (SRV, TXT, addresses; mostly
from the records a responder sends along with its PTR answer) and returns what is still
announced when the time is up, sorted by name, one entry per name. Everything learnt from the
network is untrusted: a host on the LAN may send any name, port, address or TXT bytes. Entries
whose name, port, addresses or TXT values do not look like something :func:`advertise` could
have produced are skipped; sizes are bounded (``net/dnssd.py``: what a record may hold, in
both directions).

Zeroconf runs its own asyncio loop in a thread. It is created from a helper thread so that it
never attaches to an event loop already running in the caller's thread (a Jupyter kernel),
which would deadlock the blocking calls made here.
"""

from __future__ import annotations

import atexit
import ipaddress
import re
import secrets
import socket
import threading
import time
from typing import Any

from remote_kernel.net.dnssd import DiscoveryUnavailable

try:
    import ifaddr
    from zeroconf import (
        DNSQuestionType,
        EventLoopBlocked,
        InterfaceChoice,
        IPVersion,
        NonUniqueNameException,
        ServiceBrowser,
        ServiceInfo,
        ServiceStateChange,
        Zeroconf,
        current_time_millis,
    )
except ImportError as exc:  # a device served from the bundle: one line, not a traceback
    raise DiscoveryUnavailable(f"finding or announcing servers on the network needs the "
                               f"zeroconf package (pip install zeroconf): {exc}") from None

from remote_kernel.net.dnssd import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    DiscoveryError,
    ServerInfo,
    check_announcement,
    check_interface,
    check_timeout,
    instance_name,
    numbered,
    parse_service_info,
    txt_properties,
)

# The public names of discovery (rk.discover, rk.ServerInfo...): some are defined in dnssd.
__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Advertisement",
    "DiscoveryError",
    "ServerInfo",
    "advertise",
    "discover",
    "parse_service_info",
]

MAX_SERVICES = 256  # instances tracked per discover() call
_RESOLVE_SLICE = 0.25  # seconds spent asking for one unresolved instance before the next
# How long advertise() asks for an owner of the name before zeroconf probes for it (another
# ~1.2 s). A responder answers a multicast question within ~0.5 s, but one that multicast the
# record a moment ago may hold its answer back, so the question must be asked twice, a second
# apart (zeroconf re-asks after 1 s), and the second answer awaited.
NAME_CHECK_TIME = 2.0


# ---------------------------------------------------------------------------------------------
# zeroconf plumbing


def _open_zeroconf(interface: str | None) -> Zeroconf:
    """A Zeroconf instance running its own loop thread, on ``interface`` or all of them."""
    result: list[Any] = []

    def create() -> None:  # no event loop runs in this thread, so zeroconf starts its own
        try:
            if interface is None:
                result.append(Zeroconf(interfaces=InterfaceChoice.All,
                                       ip_version=IPVersion.V4Only))
            else:
                version = IPVersion.V6Only if ":" in interface else IPVersion.V4Only
                result.append(Zeroconf(interfaces=[interface], ip_version=version))
        except BaseException as exc:  # handed to the caller's thread below
            result.append(exc)

    thread = threading.Thread(target=create, name="remote-kernel-zeroconf-start", daemon=True)
    thread.start()
    thread.join(10.0)
    if not result:
        raise DiscoveryError("mDNS did not start within 10 s")
    if isinstance(result[0], BaseException):
        exc = result[0]
        where = f"on {interface}" if interface else "on this host's interfaces"
        if isinstance(exc, OSError):
            raise DiscoveryError(f"cannot use mDNS {where}: {exc.strerror or exc}") from exc
        raise exc
    return result[0]


def _local_ipv4_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses (what "all interfaces" advertises)."""
    try:  # ifaddr: zeroconf's own interface enumeration (IPv4 addresses are str, IPv6 tuples)
        found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                 if isinstance(ip.ip, str)]
    except OSError:
        found = []
    if not found:  # the address the multicast route leaves from; no packet is sent
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(("224.0.0.251", 5353))
                found = [probe.getsockname()[0]]
        except OSError:
            found = []
    addresses = []
    for text in found:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_unspecified) and text not in addresses:
            addresses.append(text)
    return sorted(addresses, key=lambda a: ipaddress.ip_address(a).packed)


def _host_label() -> str:
    """A host name for the SRV record, unique per advertisement.

    Not the machine's own ``hostname.local``: many lab machines share a host name
    (``raspberrypi``), and address records of two machines under one name would mix.
    """
    base = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return f"rk-{base[:40] or 'host'}-{secrets.token_hex(4)}"


class Advertisement:
    """A registered DNS-SD announcement; :meth:`close` (or leaving ``with``) withdraws it.

    ``name`` is the instance name actually registered (differs from the requested one only
    with ``allow_name_change=True``), ``addresses`` the addresses announced.
    """

    def __init__(self, zc: Zeroconf, info: ServiceInfo, port: int,
                 addresses: tuple[str, ...]) -> None:
        self._zc = zc
        self._info = info
        self.service_name: str = info.name
        self.name: str = info.name[: -len(SERVICE_TYPE) - 1]
        self.port = port
        self.addresses = addresses
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)  # a normal interpreter exit still says goodbye

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Send goodbye packets and stop zeroconf. Idempotent, bounded in time."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        try:
            self._zc.unregister_service(self._info)
        except (EventLoopBlocked, OSError, RuntimeError):
            pass  # the network or the loop is gone: nothing more we can tell anyone
        try:
            self._zc.close()
        except (EventLoopBlocked, OSError, RuntimeError):
            pass

    def __enter__(self) -> Advertisement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<Advertisement {self.name!r} port {self.port} on "
                f"{', '.join(self.addresses)} ({state})>")


def _name_in_use(zc: Zeroconf, full_name: str) -> bool:
    """Whether a responder on the network answers for ``full_name``.

    zeroconf's own probes ask for a unicast ("QU") answer, as RFC 6762 suggests. But when
    another mDNS socket on this host (a browser in a notebook, a second server, avahi with
    SO_REUSEPORT) shares port 5353, the kernel hands each unicast reply to just one of those
    sockets, so the defending answer is often lost and the name taken twice. Questions asking
    for multicast ("QM") answers reach every socket: one for the instance's records, and a
    browse for the type, whose PTR answers zeroconf's probing also checks if they come late.
    A responder that multicast the record a moment ago (for someone else's question) may not
    answer a question that follows at once (RFC 6762 section 6 rate limit; zeroconf 0.154
    sometimes drops it), hence NAME_CHECK_TIME long enough for zeroconf's second asking.
    """
    taken = threading.Event()
    key = full_name.lower()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if isinstance(name, str) and name.lower() == key \
                and state_change is not ServiceStateChange.Removed:
            taken.set()

    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change],
                                 question_type=DNSQuestionType.QM)
        try:
            probe = ServiceInfo(SERVICE_TYPE, full_name)
            if probe.request(zc, NAME_CHECK_TIME * 1000, question_type=DNSQuestionType.QM):
                return True
        finally:
            browser.cancel()
        now = current_time_millis()
        return taken.is_set() or any(
            not record.is_expired(now) for record in zc.cache.entries_with_name(full_name))
    except (EventLoopBlocked, OSError, RuntimeError, AttributeError):
        return False  # zeroconf's own probing still runs


def _free_name(zc: Zeroconf, name: str, allow_name_change: bool) -> str:
    """``name``, or with ``allow_name_change`` the first free of name-2 ... name-9."""
    candidates = [name]
    if allow_name_change:
        candidates += [numbered(name, number) for number in range(2, 10)]
    for candidate in candidates:
        if not _name_in_use(zc, f"{candidate}.{SERVICE_TYPE}"):
            return candidate
    raise NonUniqueNameException


def advertise(name: str, port: int, *, tls: bool, service: str, interface: str | None = None,
              protocol: int = PROTOCOL_VERSION,
              allow_name_change: bool = False) -> Advertisement:
    """Announce a server listening on ``port`` as ``name`` until the result is closed.

    ``interface`` is one IP address of this host to announce (and send mDNS) on; None means
    every interface, announcing this host's non-loopback IPv4 addresses. ``service`` is the
    served class's name. No token is ever announced. Raises ValueError for bad arguments and
    :class:`DiscoveryError` when the name is in use on the network (unless
    ``allow_name_change``) or mDNS cannot run. Blocks for about 3.5 s: two seconds asking
    whether the name is taken, then zeroconf's probes and announcements.
    """
    check_announcement(name, port, service, protocol)
    iface = check_interface(interface)
    if iface is not None:
        addresses: tuple[str, ...] = (iface,)
    else:
        addresses = tuple(_local_ipv4_addresses())
        if not addresses:
            raise DiscoveryError("this host has no network address to advertise; "
                                 "pass interface= (an address of this host)")
    zc = _open_zeroconf(iface)
    try:
        chosen = _free_name(zc, name, allow_name_change)
        info = ServiceInfo(
            SERVICE_TYPE, f"{chosen}.{SERVICE_TYPE}", port=port,
            properties=txt_properties(chosen, bool(tls), service, protocol),
            server=f"{_host_label()}.local.", parsed_addresses=list(addresses),
        )
        zc.register_service(info, allow_name_change=allow_name_change)
    except NonUniqueNameException:
        zc.close()
        raise DiscoveryError(
            f"a server named {name!r} is already advertised on this network; "
            "choose another name"
        ) from None
    except EventLoopBlocked:
        zc.close()
        raise DiscoveryError(f"advertising {name!r} timed out") from None
    except BaseException:
        zc.close()
        raise
    return Advertisement(zc, info, port, addresses)


# ---------------------------------------------------------------------------------------------
# discovery


class _Seen:
    """Instance names the browser currently sees, bounded; filled from zeroconf's thread."""

    def __init__(self) -> None:
        self._names: dict[str, None] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if instance_name(name) is None:
            return  # not an instance of our type, or a name advertise() would refuse
        with self._lock:
            if state_change is ServiceStateChange.Removed:
                self._names.pop(name, None)
            elif name in self._names or len(self._names) < MAX_SERVICES:
                self._names[name] = None
        self.changed.set()

    def discard(self, name: str) -> None:
        with self._lock:
            self._names.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._names)


def _load(zc: Zeroconf, name: str) -> ServiceInfo | None:
    """The instance's records from zeroconf's cache, if they are complete."""
    try:
        record = ServiceInfo(SERVICE_TYPE, name)
        return record if record.load_from_cache(zc) else None
    except Exception:
        return None


def discover(timeout: float = 2.0, *, interface: str | None = None) -> list[ServerInfo]:
    """Servers advertised on the local network, sorted by name, one per name.

    Browses for ``timeout`` seconds on ``interface`` (an IP address of this host) or on every
    interface, and returns what is announced at the end. Responders answer after a random
    delay of up to half a second, and up to 1.2 s when they answered someone else a moment
    ago, so a timeout under about 1.5 s may miss servers on a busy network. Returns within
    about ``timeout`` seconds plus zeroconf's shutdown. Never includes a token.
    """
    duration = check_timeout(timeout)
    iface = check_interface(interface)
    deadline = time.monotonic() + duration
    zc = _open_zeroconf(iface)
    try:
        seen = _Seen()
        # multicast answers: a unicast one may be handed to another mDNS socket on this host
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[seen.on_change],
                                 question_type=DNSQuestionType.QM)
        try:
            turn = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                unresolved = [name for name in seen.names() if _load(zc, name) is None]
                if not unresolved:
                    seen.changed.clear()
                    seen.changed.wait(min(remaining, 0.1))
                    continue
                # ask for the missing records of one instance at a time, round robin, so a
                # peer announcing names that never resolve cannot starve the others
                name = unresolved[turn % len(unresolved)]
                turn += 1
                try:
                    ServiceInfo(SERVICE_TYPE, name).request(
                        zc, max(1.0, min(remaining, _RESOLVE_SLICE) * 1000),
                        question_type=DNSQuestionType.QM)
                except Exception:  # a name zeroconf cannot query; the others still can
                    seen.discard(name)
        finally:
            browser.cancel()
        if iface is not None:
            local: tuple[str, ...] = (iface,)
            allow_loopback = ipaddress.ip_address(iface).is_loopback
        else:
            local = tuple(_local_ipv4_addresses())
            allow_loopback = False
        found: dict[str, ServerInfo] = {}
        for name in seen.names():
            record = _load(zc, name)
            if record is None:
                continue
            server = parse_service_info(record, allow_loopback=allow_loopback,
                                        local_addresses=local)
            if server is not None:
                found.setdefault(server.name.casefold(), server)
    finally:
        zc.close()
    return sorted(found.values(), key=lambda s: (s.name.casefold(), s.name))
