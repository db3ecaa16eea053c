"""``remote-kernel kernel install|list|remove``."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    kernel = sub.add_parser("kernel", help="manage proxy kernelspecs")
    kernel_sub = kernel.add_subparsers(dest="kernel_command", required=True)
    listing = kernel_sub.add_parser("list", help="list installed proxy kernels")
    listing.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().get_all_specs()
    for name, spec in sorted(specs.items()):
        argv = spec.get("spec", {}).get("argv", [])
        if "remote_kernel.kernel" in " ".join(argv):
            print(f"{name}\t{spec.get('resource_dir', '')}")
    return 0
