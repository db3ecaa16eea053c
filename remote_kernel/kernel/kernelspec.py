"""Kernelspecs for the proxy kernel, through jupyter_client's kernelspec machinery."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

METADATA_KEY = "remote_kernel"


def kernel_json(target: str, display_name: str | None = None,
                token_file: str | None = None, python: str = sys.executable,
                trust: bool = False) -> dict[str, Any]:
    argv = [python, "-m", "remote_kernel.kernel", "-f", "{connection_file}",
            f"--RemoteKernel.target={target}"]
    if token_file:
        argv.append(f"--RemoteKernel.token_file={token_file}")
    if trust:
        argv.append("--RemoteKernel.trust_output=True")
    return {
        "argv": argv,
        "display_name": display_name or f"Python on {target}",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {METADATA_KEY: {"target": target}},
    }


def install(name: str, target: str, display_name: str | None = None, *,
            user: bool = False, prefix: str | None = None, token_file: str | None = None,
            trust: bool = False) -> str:
    """Install the spec; returns the directory it went to. ``trust``: the remote's display
    output and widgets reach the notebook unfiltered (only for a remote you control)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"kernel name {name!r} may only hold letters, digits, - _ and .")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(
            json.dumps(kernel_json(target, display_name, token_file, trust=trust), indent=2))
        return KernelSpecManager().install_kernel_spec(tmp, kernel_name=name, user=user,
                                                       prefix=prefix)


def installed() -> dict[str, dict[str, Any]]:
    """Proxy kernelspecs: name -> {target, display_name, resource_dir}."""
    found = {}
    for name, spec in KernelSpecManager().get_all_specs().items():
        body = spec.get("spec", {})
        meta = (body.get("metadata") or {}).get(METADATA_KEY)
        if meta is not None:
            found[name] = {"target": meta.get("target", ""),
                           "display_name": body.get("display_name", name),
                           "resource_dir": spec.get("resource_dir", "")}
    return found


def remove(name: str) -> str:
    if name not in installed():
        raise NoSuchKernel(name)
    return KernelSpecManager().remove_kernel_spec(name)
