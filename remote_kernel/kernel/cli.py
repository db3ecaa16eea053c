"""``remote-kernel kernel install|list|remove``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    kernel = sub.add_parser("kernel", help="manage proxy kernelspecs (a notebook whose cells "
                                           "all run on a remote interpreter)")
    kernel_sub = kernel.add_subparsers(dest="kernel_command", required=True)

    install = kernel_sub.add_parser("install", help="install a proxy kernelspec")
    install.add_argument("--name", required=True, help="kernelspec name, e.g. pi")
    install.add_argument("--target", required=True,
                         help="anything %%remote connect accepts: a connection-file name or "
                              "path, host:port, subprocess, ssh:user@host")
    install.add_argument("--display-name", help="name shown in the launcher")
    install.add_argument("--token-file", help="file holding the server's token")
    install.add_argument("--trust", action="store_true",
                         help="show the remote's output unfiltered, widgets included (only "
                              "for a remote you control)")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user")
    where.add_argument("--sys-prefix", action="store_true",
                       help="install into this Python environment")
    where.add_argument("--prefix", help="install under this prefix")
    install.set_defaults(func=cmd_install)

    listing = kernel_sub.add_parser("list", help="list installed proxy kernels")
    listing.set_defaults(func=cmd_list)

    remove = kernel_sub.add_parser("remove", help="remove a proxy kernelspec")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_remove)


def cmd_install(args: argparse.Namespace) -> int:
    from remote_kernel.kernel.kernelspec import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(args.name, args.target, args.display_name, user=args.user, prefix=prefix,
                   token_file=args.token_file, trust=args.trust)
    trusted = ", output trusted" if args.trust else ""
    print(f"installed kernelspec {args.name!r} ({args.target}{trusted}) in {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from remote_kernel.kernel.kernelspec import installed

    specs = installed()
    if not specs:
        print("no proxy kernels installed")
    for name, info in sorted(specs.items()):
        print(f"{name}\t{info['target']}\t{info['resource_dir']}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import NoSuchKernel

    from remote_kernel.kernel.kernelspec import remove

    try:
        path = remove(args.name)
    except NoSuchKernel:
        print(f"no proxy kernelspec named {args.name!r}", file=sys.stderr)
        return 1
    print(f"removed {path}")
    return 0
