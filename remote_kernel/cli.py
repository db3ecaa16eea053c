"""The ``remote-kernel`` command: ``serve``, ``kernel install|list|remove``, ``demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from remote_kernel.net import connfile


def _load_service(spec: str | None, classic: bool) -> Any:
    if classic or not spec:
        from remote_kernel.core.service import ClassicService

        return ClassicService
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--service must look like 'package.module:ClassName', not {spec!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"module {module_name!r} has no attribute {attr!r}") from None


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


def cmd_serve(args: argparse.Namespace) -> int:
    service = _load_service(args.service, args.classic)
    if args.stdio:
        return _serve_stdio(service)
    from remote_kernel.net.server import Server

    if args.no_auth:
        token = None
    elif args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:  # never a silent --no-auth
            print(f"remote-kernel serve: the token file {args.token_file} is empty",
                  file=sys.stderr)
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
    print(f"remote-kernel: connect with  %remote connect {name}   or   "
          f"remote_kernel.connect({name!r})", flush=True)
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        try:
            path.unlink()
        except OSError:
            pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remote-kernel", description=__doc__)
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve this interpreter to notebooks")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    serve.add_argument("--unix", metavar="PATH", help="listen on a unix socket instead")
    serve.add_argument("--stdio", action="store_true",
                       help="speak the protocol on stdin/stdout (used by subprocess and ssh)")
    serve.add_argument("--classic", action="store_true",
                       help="serve the whole interpreter (the default without --service)")
    serve.add_argument("--service", metavar="MODULE:CLASS", help="serve this Service class")
    serve.add_argument("--name", help="connection file name (default: the service's name)")
    serve.add_argument("--connection-file", help="write the connection file here instead")
    serve.add_argument("--no-auth", action="store_true",
                       help="accept connections without a token (loopback only)")
    serve.add_argument("--token-file", help="read the token from this file")
    serve.add_argument("--tls-cert", help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", help="TLS private key (PEM)")
    serve.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    serve.add_argument("--tls-ca", help="CA clients should trust (recorded in the file)")
    serve.set_defaults(func=cmd_serve)

    from remote_kernel.kernel import cli as kernel_cli

    kernel_cli.add_parser(sub)

    demo = sub.add_parser("demo", help="a scripted session against a local classic server")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from remote_kernel.demo.script import run

    return run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return int(args.func(args) or 0)
