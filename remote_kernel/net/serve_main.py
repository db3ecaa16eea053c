"""``serve``: the one definition of the serve command, shared by ``remote-kernel serve``
(cli.py) and the bundle (net/bundle.py, ``python3 remote-kernel.pyz serve``).

It lives in the served layers so that serving never imports the notebook side (IPython,
ipykernel, jupyter_client, nh3); zeroconf is imported only for ``--advertise``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from remote_kernel.errors import RemoteKernelError
from remote_kernel.net import connfile


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line reported in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """``--port``: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535; "
                                         f"0 picks a free one)")
    return port


def _load_service(spec: str | None, classic: bool) -> Any:
    if classic or not spec:
        from remote_kernel.core.service import ClassicService

        return ClassicService
    module_name, _, attr = spec.partition(":")
    if not attr or not module_name:
        raise SystemExit(f"remote-kernel serve: --service must look like "
                         f"'package.module:ClassName', not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise SystemExit(f"remote-kernel serve: --service {spec}: no module named "
                             f"{exc.name!r} here; check the name, or run from the folder "
                             f"that has it (or put it on PYTHONPATH)") from None
        raise SystemExit(_import_failure(spec, exc)) from None
    except Exception as exc:  # the module itself failed: say where, in one line
        raise SystemExit(_import_failure(spec, exc)) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"remote-kernel serve: --service {spec}: module {module_name!r} has "
                         f"no attribute {attr!r}") from None


def _import_failure(spec: str, exc: BaseException) -> str:
    """One line: the error the service's module raised, and the line that raised it."""
    where = ""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in frame.filename]
    if frames:
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return (f"remote-kernel serve: --service {spec}: importing it failed: "
            f"{type(exc).__name__}: {exc}{where}")


def _free_name(base: str) -> str:
    name, n = base, 1
    while True:
        path = connfile.path_for(name)
        if not path.exists():
            return name
        try:
            pid = connfile.read(path).get("pid")
        except (OSError, ValueError):
            pid = None
        if not isinstance(pid, int) or not connfile.pid_alive(pid):
            return name
        n += 1
        name = f"{base}-{n}"


def _serve_stdio(service: Any) -> int:
    from remote_kernel.core.connection import Connection
    from remote_kernel.core.service import make_service
    from remote_kernel.errors import RemoteKernelError
    from remote_kernel.net.auth import server_handshake
    from remote_kernel.net.transports.pipes import PipeTransport

    # The protocol owns the original stdin/stdout; prints go to stderr, input reads nothing.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    transport = PipeTransport(proto_in, proto_out, "stdio")
    instance = make_service(service)
    try:
        reader = server_handshake(transport, None, type(instance).__name__)
    except RemoteKernelError as exc:
        print(f"remote-kernel: handshake failed: {exc}", file=sys.stderr)
        return 1
    conn = Connection(transport, instance, None, reader=reader)
    try:
        conn.serve_all()
    except RemoteKernelError as exc:
        print(f"remote-kernel: {exc}", file=sys.stderr)
        return 1
    return 0


def _tls_from_args(args: argparse.Namespace) -> dict[str, str] | None:
    if not args.tls_cert:
        if args.tls_key or args.tls_client_ca:
            raise SystemExit("--tls-key and --tls-client-ca need --tls-cert")
        return None
    tls = {"cert": args.tls_cert, "key": args.tls_key or args.tls_cert}
    if args.tls_client_ca:
        tls["client_ca"] = args.tls_client_ca
    return tls


def _advertise(args: argparse.Namespace, name: str, port: int, tls: bool, service: str) -> Any:
    """Announce the server on the local network (DNS-SD); never its token."""
    try:
        from remote_kernel.net import discovery
    except ImportError as exc:  # a device without zeroconf (the bundle): serve all the same
        print(f"remote-kernel: note: not advertised: discovery needs zeroconf ({exc})",
              file=sys.stderr, flush=True)
        return None
    # Announce only an address the server listens on: the host it is bound to, unless that
    # is a wildcard (then every address of this machine) or --interface narrows it.
    loopback = ("127.0.0.1", "localhost", "::1")
    interface = args.interface or (None if args.host in ("0.0.0.0", "::", "") else args.host)
    if interface == "localhost":
        interface = "127.0.0.1"
    if args.host in loopback and interface not in loopback:
        raise SystemExit(f"remote-kernel serve: --advertise --interface {interface} announces "
                         f"an address this server does not listen on ({args.host}); use "
                         f"--host {interface} or --host 0.0.0.0")
    if interface in loopback:
        print("remote-kernel: note: advertised on this machine only (loopback); listen on a "
              "network address (--host) to be found by other machines", file=sys.stderr,
              flush=True)
    try:
        advertisement = discovery.advertise(name, port, tls=tls, service=service,
                                            interface=interface)
    except (ValueError, OSError, RemoteKernelError) as exc:  # DiscoveryError: name taken
        raise SystemExit(f"remote-kernel serve: cannot advertise {name!r}: {exc}") from None
    print(f"remote-kernel: advertised as {getattr(advertisement, 'name', name)!r} on the local "
          f"network (DNS-SD, _remote-kernel._tcp)", flush=True)
    return advertisement


def cmd_serve(args: argparse.Namespace) -> int:
    service = _load_service(args.service, args.classic)
    if args.interface and not args.advertise:
        raise SystemExit("remote-kernel serve: --interface goes with --advertise")
    if args.advertise and (args.stdio or args.unix):
        raise SystemExit("remote-kernel serve: --advertise announces a TCP server; "
                         "not with --stdio or --unix")
    if args.stdio:
        return _serve_stdio(service)
    from remote_kernel.net.server import Server

    if args.no_auth:
        token = None
    elif args.token_file:
        from remote_kernel.net.targets import read_token_file

        try:  # an empty file is refused there: never a silent --no-auth
            token = read_token_file(args.token_file)
        except ValueError as exc:
            print(f"remote-kernel serve: --token-file: {exc}", file=sys.stderr)
            return 2
    else:
        token = secrets.token_urlsafe(32)
    tls = _tls_from_args(args)
    try:
        server = Server(service, host=args.host, port=args.port, token=token, tls=tls,
                        unix_path=args.unix)
    except (ValueError, OSError) as exc:
        print(f"remote-kernel serve: {exc}", file=sys.stderr)
        return 2
    default_name = "classic" if args.classic or not args.service else \
        args.service.rpartition(":")[2].lower()
    name = args.name or _free_name(default_name)
    info: dict[str, Any] = {
        "transport": "unix" if args.unix else "tcp",
        "host": args.host, "port": server.port, "path": args.unix,
        "token": token, "tls": bool(tls), "ca": args.tls_ca,
        "service": getattr(service, "__name__", type(service).__name__),
        "pid": os.getpid(),
    }
    path = connfile.write(name, info, Path(args.connection_file) if args.connection_file
                          else None)

    def stop(signum: int, frame: Any) -> None:
        server.close()

    signal.signal(signal.SIGTERM, stop)
    print(f"remote-kernel: serving {info['service']} on {server.address}"
          f"{' with TLS' if tls else ''}{'' if token else ' WITHOUT authentication'}",
          flush=True)
    print(f"remote-kernel: connection file {path}", flush=True)
    # A file written where the user said is found by its path, not by the name.
    target = str(path) if args.connection_file else name
    print(f"remote-kernel: connect with  %remote connect {target}   or   "
          f"remote_kernel.connect({target!r})", flush=True)
    advertisement = None
    try:
        if args.advertise:
            advertisement = _advertise(args, name, server.port, bool(tls), info["service"])
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        if advertisement is not None:  # goodbye packets first: browsers drop us at once
            advertisement.close()
        server.close()
        try:
            path.unlink()
        except OSError:
            pass
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve``, wherever it is offered."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=0,
                        help="port, 0 to 65535 (default 0: any free port)")
    parser.add_argument("--unix", metavar="PATH", help="listen on a unix socket instead")
    parser.add_argument("--stdio", action="store_true",
                        help="speak the protocol on stdin/stdout (used by subprocess and ssh)")
    parser.add_argument("--classic", action="store_true",
                        help="serve the whole interpreter (the default without --service)")
    parser.add_argument("--service", metavar="MODULE:CLASS", help="serve this Service class")
    parser.add_argument("--name", help="connection file name (default: the service's name)")
    parser.add_argument("--connection-file", help="write the connection file here instead")
    parser.add_argument("--no-auth", action="store_true",
                        help="accept connections without a token (loopback only)")
    parser.add_argument("--token-file", help="read the token from this file")
    parser.add_argument("--tls-cert", help="TLS certificate (PEM)")
    parser.add_argument("--tls-key", help="TLS private key (PEM)")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    parser.add_argument("--tls-ca", help="CA clients should trust (recorded in the file)")
    parser.add_argument("--advertise", action="store_true",
                        help="announce this server on the local network (DNS-SD/mDNS) under "
                             "its name; the token is never announced")
    parser.add_argument("--interface", metavar="IP",
                        help="with --advertise: announce on this address of this host only")
    parser.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    """The bundle's command line (net/bundle.py): ``serve``, and what ssh zero-deploy runs
    on the device (net/sshserve.py)."""
    import logging

    from remote_kernel import __version__
    from remote_kernel.net import sshserve

    parser = Parser(prog="remote-kernel.pyz",
                    description=f"remote_kernel {__version__}: serve this interpreter")
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(sub.add_parser("serve", help="serve this interpreter to notebooks"))
    sshserve.add_parsers(sub)
    sub.add_parser("version", help="print the version").set_defaults(
        func=lambda args: print(__version__) or 0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return int(args.func(args) or 0)
