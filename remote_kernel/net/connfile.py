"""Connection files: what ``remote-kernel serve`` writes so clients can connect by name.

A JSON file ``remote-kernel-NAME.json`` in Jupyter's runtime directory, mode 0600 like
Jupyter's own kernel files. A file that group or others can read is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

PREFIX = "remote-kernel-"


def runtime_dir() -> Path:
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:  # a device served from the bundle: Jupyter's default place
        return _default_runtime_dir()
    return Path(jupyter_runtime_dir())


def _default_runtime_dir() -> Path:
    """jupyter_core's runtime directory without jupyter_core (its rules for the usual
    cases: JUPYTER_RUNTIME_DIR, JUPYTER_DATA_DIR, then the platform's data directory)."""
    import sys

    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return Path(os.environ["JUPYTER_RUNTIME_DIR"])
    if os.environ.get("JUPYTER_DATA_DIR"):
        return Path(os.environ["JUPYTER_DATA_DIR"]) / "runtime"
    home = Path.home()
    if sys.platform == "darwin":
        data = home / "Library" / "Jupyter"
    elif sys.platform == "win32":
        data = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "jupyter"
    else:
        data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "jupyter"
    return data / "runtime"


def path_for(name: str) -> Path:
    return runtime_dir() / f"{PREFIX}{name}.json"


def write(name: str, info: dict[str, Any], path: Path | None = None) -> Path:
    """Write the file atomically. The temporary file is a new one (O_EXCL, O_NOFOLLOW,
    mode 0600, a random name): a file or symlink planted where it would go cannot receive
    the token."""
    path = path or path_for(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"name": name, **info}, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def find(target: str) -> Path | None:
    """The connection file ``target`` names: a path, or a name in the runtime directory."""
    if target.endswith(".json") or os.sep in target:
        candidate = Path(target).expanduser()
        if candidate.is_file():
            return candidate
    if "/" not in target:
        candidate = path_for(target)
        if candidate.is_file():
            return candidate
    return None


def read(path: Path) -> dict[str, Any]:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"connection file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); it holds a token: run 'chmod 600 {path}'"
        )
    with open(path) as handle:
        info = json.load(handle)
    if not isinstance(info, dict):
        raise ValueError(f"connection file {path} is not a JSON object")
    return info


def available() -> list[dict[str, Any]]:
    """Connection files in the runtime directory whose server process is alive."""
    found = []
    try:
        paths = sorted(runtime_dir().glob(f"{PREFIX}*.json"))
    except OSError:
        return found
    for path in paths:
        try:
            info = read(path)
        except (OSError, ValueError):
            continue
        pid = info.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            continue
        info["file"] = str(path)
        found.append(info)
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
