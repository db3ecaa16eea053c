"""The ``remote-kernel`` command: ``serve``, ``discover``, ``kernel install|list|remove``,
``demo``, ``bundle``, ``clean``."""

from __future__ import annotations

import argparse
import logging
import sys

from remote_kernel.errors import RemoteKernelError
from remote_kernel.net.serve_main import (  # noqa: F401  (re-exported: one definition)
    Parser,
    add_serve_arguments,
    cmd_serve,
    port_number,
)


def build_parser(notebook_side: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without ``notebook_side``, nothing of the notebook layers is
    imported (``serve`` runs on a device without them)."""
    parser = Parser(prog="remote-kernel", description=__doc__)
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve this interpreter to notebooks")
    add_serve_arguments(serve)

    discover = sub.add_parser("discover", help="list servers advertised on the local network")
    discover.add_argument("--timeout", type=float, default=2.0,
                          help="seconds to listen (default 2)")
    discover.add_argument("--interface", metavar="IP",
                          help="listen on this address of this host only")
    discover.add_argument("--json", action="store_true", help="print JSON instead of a table")
    discover.set_defaults(func=cmd_discover)

    if notebook_side:
        from remote_kernel.kernel import cli as kernel_cli

        kernel_cli.add_parser(sub)

    demo = sub.add_parser("demo", help="a scripted session against a local classic server")
    demo.set_defaults(func=_cmd_demo)

    bundle = sub.add_parser("bundle", help="write the served side as one file (a zipapp) "
                                           "that any Python 3.10+ runs: python3 FILE serve")
    bundle.add_argument("-o", "--output", metavar="PATH",
                        help="write exactly this file (default: remote-kernel-VERSION.pyz)")
    bundle.set_defaults(func=cmd_bundle)

    clean = sub.add_parser("clean", help="remove what zero-deploy left on an ssh host")
    clean.add_argument("target", metavar="ssh:HOST", help="the host, as ssh names it")
    clean.add_argument("--python", default="python3", help="the host's Python (python3)")
    clean.set_defaults(func=cmd_clean)
    return parser


def cmd_bundle(args: argparse.Namespace) -> int:
    from remote_kernel.net import bundle

    try:
        path = bundle.write(args.output)
    except (OSError, RuntimeError) as exc:
        print(f"remote-kernel bundle: {exc}", file=sys.stderr)
        return 1
    print(f"remote-kernel: wrote {path} ({path.stat().st_size // 1024} KiB); on the device: "
          f"python3 {path.name} serve --help")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from remote_kernel.net import deploy

    host = args.target[4:] if args.target.startswith("ssh:") else args.target
    try:
        print(deploy.clean(host, python=args.python))
    except (ValueError, RemoteKernelError) as exc:
        print(f"remote-kernel clean: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    try:
        from remote_kernel.net import discovery
    except ImportError as exc:
        print(f"remote-kernel discover: discovery is not available ({exc}); "
              f"pip install zeroconf", file=sys.stderr)
        return 2
    try:
        servers = discovery.discover(args.timeout, interface=args.interface)
    except (ValueError, OSError, RemoteKernelError) as exc:
        print(f"remote-kernel discover: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import dataclasses
        import json

        print(json.dumps([dataclasses.asdict(server) for server in servers], indent=2))
        return 0
    if not servers:
        print(f"no servers advertised on the network (listened {args.timeout:g} s)",
              file=sys.stderr)
        return 0
    rows = [("NAME", "ADDRESS", "TLS", "SERVICE")]
    rows += [(server.name, f"{server.host}:{server.port}", "yes" if server.tls else "no",
              server.service) for server in servers]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from remote_kernel.demo.script import run

    return run()


def _command(argv: list[str] | None) -> str | None:
    """The subcommand named on the command line, if any."""
    first = Parser(add_help=False)
    first.add_argument("--log-level")
    first.add_argument("command", nargs="?")
    known, _ = first.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(notebook_side=_command(argv) != "serve")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return int(args.func(args) or 0)
