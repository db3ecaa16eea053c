"""Completion of remote objects: ``obj.<TAB>`` is ONE request (cached for a moment),
jedi on or off; ``d["<TAB>`` asks the remote mapping for its keys; inside ``%%remote``
cells the remote interpreter completes from its own namespace.

The token is resolved without running user code: a chain of names, attributes and constant
subscripts (``s1.namespace['sensor'].<TAB>``, ``s1.modules.os.ge<TAB>``) whose first name in
``user_ns`` is a netref or a Connection (its ``root``, ``modules``, ``namespace``,
``builtins``); nothing is ever called. The attribute names after the last subscript go in the
completion request itself (one request); what a subscript reaches is fetched once and kept
for a moment. Anything local is left to IPython.
"""

from __future__ import annotations

import ast
import re
import time
import weakref
from typing import Any

from IPython.core.completer import SimpleCompletion, context_matcher

from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import BaseNetref
from remote_kernel.errors import RemoteKernelError
from remote_kernel.ipython import subcommands

CACHE_SECONDS = 2.0
TIMEOUT = 5.0  # seconds a completion may take on the peer
# A chain of names, attributes and constant subscripts, not preceded by anything that would
# make it part of a longer expression (``f().x`` is not ``x``).
_CHAIN = (r"(?<![\w.)\]])[A-Za-z_]\w*"
          r"(?:\.[A-Za-z_]\w*|\[\s*(?:'[^'\\\n]*'|\"[^\"\\\n]*\"|\d+)\s*\])*")
_KEY_EXPRESSION = re.compile(rf"({_CHAIN})\[\s*(['\"]?)([^'\"\]]*)$")
_MAGIC_LINE = re.compile(r"^\s*(%%?)remote[ \t]+(.*)$")
_ATTRIBUTE_TOKEN = re.compile(rf"({_CHAIN})\.(\w*)$")
# What a Connection reaches on its peer's root, as Connection's own shortcuts do.
_CONNECTION_ATTRIBUTES = {"root": None, "modules": "modules", "namespace": "namespace",
                          "builtins": "builtins", "builtin": "builtins"}


class RemoteCompleter:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._cache: dict[Any, tuple[float, tuple]] = {}
        # conn.modules/.namespace/.builtins: the same objects for a connection's life
        self._shortcuts: weakref.WeakKeyDictionary[Connection, dict[str, Any]] = \
            weakref.WeakKeyDictionary()

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

    def _resolve(self, chain: str) -> tuple[Any, tuple[str, ...]] | None:
        """The netref that ``chain`` reaches up to its last subscript, and the attribute
        names after it; None when the chain does not start at a netref or a Connection."""
        steps = _steps(chain)
        if not steps:
            return None
        obj = self.shell.user_ns.get(steps[0][1], _MISSING)
        rest = steps[1:]
        if isinstance(obj, Connection):
            if not rest or rest[0][0] != "attr" or rest[0][1] not in _CONNECTION_ATTRIBUTES:
                return None
            if obj.closed:
                return _DEAD, ()
            attribute, rest = _CONNECTION_ATTRIBUTES[rest[0][1]], rest[1:]
            if attribute is None:
                obj = obj.root
            elif any(kind == "item" for kind, _ in rest):
                obj = self._shortcut(obj, attribute)  # reached once, then 0 requests
            else:
                obj, rest = obj.root, [("attr", attribute), *rest]  # in the one request
        if obj is _DEAD:
            return _DEAD, ()
        if not isinstance(obj, BaseNetref):
            return None
        items = [i for i, (kind, _) in enumerate(rest) if kind == "item"]
        head, tail = (rest[:items[-1] + 1], rest[items[-1] + 1:]) if items else ([], rest)
        if head:
            obj = self._reach(obj, tuple(head))
        return obj, tuple(name for _, name in tail)

    def _shortcut(self, conn: Connection, attribute: str) -> Any:
        known = self._shortcuts.setdefault(conn, {})
        if attribute not in known:
            reached = self._reach(conn.root, (("attr", attribute),))
            if reached is _DEAD:
                return _DEAD
            known[attribute] = reached
        return known[attribute]

    def _reach(self, obj: Any, steps: tuple) -> Any:
        """What ``steps`` reach from the netref ``obj`` (getattr and constant subscripts,
        one request each, kept for CACHE_SECONDS); _DEAD when it cannot be reached. A
        subscript waits at most TIMEOUT; an attribute as any attribute of the connection
        does (the Connection has no getattr with a timeout of its own)."""
        conn = obj._rk_conn
        if conn.closed:
            return _DEAD
        key = ("reach", id(conn), obj._rk_oid, steps)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1][0]
        try:
            for kind, name in steps:
                if kind == "attr":
                    obj = getattr(obj, name)
                else:
                    obj = conn.call(obj, "__getitem__", name, timeout=TIMEOUT)
        except Exception:  # noqa: BLE001 - not there, not allowed, lost, too slow: nothing
            return _DEAD
        self._cache[key] = (time.monotonic(), (obj,))
        return obj

    def attribute_names(self, dotted: str) -> tuple[str, ...] | None:
        """Names after ``dotted.``; None when it is not remote, () when the connection is
        dead or does not answer in time (nothing to offer, and nothing else may ask)."""
        resolved = self._resolve(dotted)
        if resolved is None:
            return None
        obj, path = resolved
        if obj is not _DEAD and not isinstance(obj, BaseNetref):  # a value a subscript got
            if path:
                return ()
            return tuple(dir(obj))
        return self._ask(obj, ("dir", path), lambda conn: conn.completions(
            obj, path, timeout=TIMEOUT))

    def keys(self, dotted: str) -> tuple | None:
        resolved = self._resolve(dotted)
        if resolved is None:
            return None
        obj, path = resolved
        if path and obj is not _DEAD:
            obj = self._reach(obj, tuple(("attr", name) for name in path))
        if obj is not _DEAD and not isinstance(obj, BaseNetref):
            return ()
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
        """``%remote <TAB>``: the subcommands; after one, its options (``--<TAB>``), an
        option's choices, and by the metavar of the argument being typed: live connection
        files and ``subprocess`` (TARGET), connection names (NAME), group names (GROUP) or
        both (MEMBER). ``%%remote <TAB>`` on the cell's first line likewise. All local: no
        request."""
        match = _MAGIC_LINE.match(line)
        if match is None:
            return None
        from remote_kernel.ipython.magics import CELL_PARSER, SUBCOMMANDS

        words = re.split(r"[ \t]", match.group(2))
        if match.group(1) == "%%":
            parser = CELL_PARSER
        elif len(words) == 1:
            if not re.fullmatch(r"\w*", words[0]):
                return None
            return _offer(list(SUBCOMMANDS), words[0])
        elif words[0] in SUBCOMMANDS:
            parser = SUBCOMMANDS[words[0]].parser
            words = words[1:]
        else:
            return None  # an expression: attribute completion may apply
        *before, prefix = [word for word in words[:-1] if word] + [words[-1]]
        if prefix.startswith("-"):
            return _offer(subcommands.options(parser), prefix)
        option = subcommands.option_action(parser, before[-1]) if before else None
        if option is not None:
            metavar = str(option.metavar or "")
            if option.choices:
                return _offer([str(choice) for choice in option.choices], prefix)
        else:
            metavar = subcommands.positional_metavar(parser, before) or ""
            if parser is CELL_PARSER and metavar == "NAME":
                metavar = "MEMBER"  # a cell runs on connections and groups
        choices = _metavar_choices(metavar)
        return None if choices is None else _offer(choices, prefix)

    # -- the matcher --------------------------------------------------------------------------

    def matcher(self, context: Any) -> dict[str, Any]:
        empty: dict[str, Any] = {"completions": [], "suppress": False}
        now = time.monotonic()  # what expired goes (a reached netref holds its object)
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < CACHE_SECONDS}
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


def _offer(choices: list[str], prefix: str) -> dict[str, Any]:
    found = [choice for choice in choices if choice.startswith(prefix)]
    return {"completions": [SimpleCompletion(choice, type="magic") for choice in found],
            "suppress": bool(found), "matched_fragment": prefix}


def _metavar_choices(metavar: str) -> list[str] | None:
    """What completes where the magics' parsers say TARGET, NAME, GROUP or MEMBER."""
    from remote_kernel.ipython.registry import get_registry
    from remote_kernel.net import connfile

    registry = get_registry()
    if metavar == "TARGET":
        return [str(info.get("name")) for info in connfile.available()] + ["subprocess"]
    if metavar == "NAME":
        return list(registry.entries)
    if metavar == "GROUP":
        return list(registry.groups)
    if metavar == "MEMBER":
        return [*registry.entries, *registry.groups]
    return None


def _steps(chain: str) -> list[tuple[str, Any]] | None:
    """``a.b['c'][0]`` as [("name", "a"), ("attr", "b"), ("item", "c"), ("item", 0)], or
    None for anything else (a call, an expression in a subscript)."""
    try:
        node = ast.parse(chain, mode="eval").body
    except SyntaxError:
        return None
    steps: list[tuple[str, Any]] = []
    while not isinstance(node, ast.Name):
        if isinstance(node, ast.Attribute):
            steps.append(("attr", node.attr))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and type(node.slice.value) in (str, int):
            steps.append(("item", node.slice.value))
        else:
            return None
        node = node.value
    steps.append(("name", node.id))
    return steps[::-1]


_MISSING = object()
_DEAD = object()  # the root of a closed connection, or what could not be reached


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
