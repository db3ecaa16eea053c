"""Completion of remote objects: ``obj.<TAB>`` is ONE request (cached for a moment),
jedi on or off; ``d["<TAB>`` asks the remote mapping for its keys; inside ``%%remote``
cells the remote interpreter completes from its own namespace.

The token is resolved without running user code: names are looked up in ``user_ns``, and
only netrefs (or a Connection's ``root``) are followed; anything local is left to IPython.
"""

from __future__ import annotations

import re
import time
from typing import Any

from IPython.core.completer import SimpleCompletion, context_matcher

from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import BaseNetref
from remote_kernel.errors import RemoteKernelError

CACHE_SECONDS = 2.0
TIMEOUT = 5.0  # seconds a completion may take on the peer
_KEY_EXPRESSION = re.compile(r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\[\s*(['\"]?)([^'\"\]]*)$")
_MAGIC_LINE = re.compile(r"^\s*%remote\s+(\w*)(?:\s+([\w.-]*))?$")
_ATTRIBUTE_TOKEN = re.compile(r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\.(\w*)$")


class RemoteCompleter:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._cache: dict[Any, tuple[float, tuple]] = {}

    def _cached(self, key: Any, fetch: Any) -> tuple:
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        value = tuple(fetch())
        self._cache[key] = (now, value)
        if len(self._cache) > 256:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < CACHE_SECONDS}
        return value

    def _resolve(self, dotted: str) -> tuple[Any, tuple[str, ...]] | None:
        """The first netref along ``dotted`` and the attribute path after it."""
        parts = dotted.split(".")
        obj = self.shell.user_ns.get(parts[0], _MISSING)
        if obj is _MISSING:
            return None
        rest = parts[1:]
        if isinstance(obj, Connection):
            if not rest or rest[0] != "root":
                return None
            if obj.closed:
                return _DEAD, ()
            obj, rest = obj.root, rest[1:]
        if not isinstance(obj, BaseNetref):
            return None
        return obj, tuple(rest)

    def attribute_names(self, dotted: str) -> tuple[str, ...] | None:
        """Names after ``dotted.``; None when it is not remote, () when the connection is
        dead or does not answer in time (nothing to offer, and nothing else may ask)."""
        resolved = self._resolve(dotted)
        if resolved is None:
            return None
        obj, path = resolved
        return self._ask(obj, ("dir", path), lambda conn: conn.completions(
            obj, path, timeout=TIMEOUT))

    def keys(self, dotted: str) -> tuple | None:
        resolved = self._resolve(dotted)
        if resolved is None or resolved[1]:
            return None
        obj = resolved[0]
        return self._ask(obj, ("keys",), lambda conn: conn.key_completions(
            obj, timeout=TIMEOUT))

    def _ask(self, obj: Any, what: tuple, fetch: Any) -> tuple:
        if obj is _DEAD or obj._rk_conn.closed:
            return ()
        conn = obj._rk_conn
        try:
            return self._cached((*what, id(conn), obj._rk_oid), lambda: fetch(conn))
        except RemoteKernelError:  # lost meanwhile, or too slow: no completions
            return ()

    def cell_completions(self, context: Any) -> dict[str, Any] | None:
        text = context.full_text
        if not text.startswith("%%remote"):
            return None
        first_line, _, code = text.partition("\n")
        offset = len(first_line) + 1
        lines = text.split("\n")
        cursor = sum(len(line) + 1 for line in lines[:context.cursor_line]) + \
            context.cursor_position
        if cursor < offset:
            return None
        from remote_kernel.ipython.registry import get_registry

        parts = first_line.split()
        name = parts[1] if len(parts) > 1 and not parts[1].startswith("-") else None
        try:
            entry = get_registry().get(name)
        except KeyError:
            return None
        try:
            reply = entry.require().call(entry.interpreter, "complete", code,
                                         cursor - offset, timeout=TIMEOUT)
        except RemoteKernelError:  # a dead or silent peer: nothing to offer, at once
            return {"completions": [], "suppress": True}
        start = reply["cursor_start"]
        fragment = code[start:cursor - offset]
        return {"completions": [SimpleCompletion(m, type="remote") for m in reply["matches"]],
                "suppress": True, "matched_fragment": fragment}

    def magic_completions(self, line: str) -> dict[str, Any] | None:
        """``%remote <TAB>``: subcommands; ``%remote connect <TAB>``: live connection files
        and ``subprocess``; ``%remote use|close|ping|reconnect <TAB>``: connection names.
        All local: no request."""
        match = _MAGIC_LINE.match(line)
        if match is None:
            return None
        from remote_kernel.ipython.magics import SUBCOMMANDS
        from remote_kernel.ipython.registry import get_registry
        from remote_kernel.net import connfile

        command, argument = match.group(1), match.group(2)
        if argument is None:
            choices: list[str] = list(SUBCOMMANDS)
            prefix = command
        elif command == "connect":
            choices = [str(info.get("name")) for info in connfile.available()] + ["subprocess"]
            prefix = argument
        elif command in ("use", "close", "ping", "reconnect"):
            choices = list(get_registry().entries)
            prefix = argument
        else:
            return None
        found = [c for c in choices if c.startswith(prefix)]
        return {"completions": [SimpleCompletion(c, type="magic") for c in found],
                "suppress": bool(found), "matched_fragment": prefix}

    # -- the matcher --------------------------------------------------------------------------

    def matcher(self, context: Any) -> dict[str, Any]:
        empty: dict[str, Any] = {"completions": [], "suppress": False}
        cell = self.cell_completions(context)
        if cell is not None:
            return cell
        line = context.line_with_cursor
        magic = self.magic_completions(line)
        if magic is not None:
            return magic
        key_match = _KEY_EXPRESSION.search(line)
        if key_match is not None:
            keys = self.keys(key_match.group(1))
            if keys is None:
                return empty
            quote, prefix = key_match.group(2) or '"', key_match.group(3)
            found = [k for k in keys if isinstance(k, str) and k.startswith(prefix)]
            completions = [SimpleCompletion(f"{key}{quote}", type="key") for key in found]
            return {"completions": completions, "suppress": True, "matched_fragment": prefix}
        attr_match = _ATTRIBUTE_TOKEN.search(line)
        if attr_match is None:
            return empty
        base, prefix = attr_match.group(1), attr_match.group(2)
        names = self.attribute_names(base)
        if names is None:
            return empty
        show_private = prefix.startswith("_")
        completions = [SimpleCompletion(f"{base}.{name}", type="remote")
                       for name in names if name.startswith(prefix)
                       and (show_private or not name.startswith("_"))]
        return {"completions": completions, "suppress": True,
                "matched_fragment": f"{base}.{prefix}"}


_MISSING = object()
_DEAD = object()  # the root of a closed connection


def install(shell: Any) -> RemoteCompleter:
    completer = RemoteCompleter(shell)

    @context_matcher(priority=100, identifier="remote_kernel")
    def remote_matcher(context: Any) -> dict[str, Any]:
        return completer.matcher(context)

    remote_matcher.matcher_priority = 100  # type: ignore[attr-defined]
    remote_matcher._rk_matcher = True  # type: ignore[attr-defined]
    shell.Completer.custom_matchers.append(remote_matcher)
    return completer


def uninstall(shell: Any) -> None:
    matchers = shell.Completer.custom_matchers
    matchers[:] = [m for m in matchers if not getattr(m, "_rk_matcher", False)]
