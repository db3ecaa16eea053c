"""``%remote`` and ``%%remote``.

Example session::

    In [1]: %load_ext remote_kernel
    In [2]: %remote connect lab            # a connection file written by `remote-kernel serve`
    connected to lab (127.0.0.1:40123), bound to `lab`
    In [3]: %remote os.getpid()            # evaluate on the current connection
    Out[3]: 4242
    In [4]: %%remote -i x -o y
       ...: y = x * 2
       ...: print("remote says", y)
    remote says 42
    In [5]: %remote connect pi1 pi2        # several at once
    In [6]: %%remote pi1 pi2 -o host       # the cell runs on both at the same time
       ...: import socket; host = socket.gethostname(); print(host)
    [pi1] raspberrypi-1
    [pi2] raspberrypi-2
"""

from __future__ import annotations

import contextlib
import difflib
from argparse import Namespace
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument

from remote_kernel.core.api import deliver, obtain
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import is_netref
from remote_kernel.errors import RemoteKernelError, RequestTimeout
from remote_kernel.ipython import fanout, subcommands
from remote_kernel.ipython.registry import ConnectionEntry, get_registry
from remote_kernel.ipython.sink import NotebookSink
from remote_kernel.ipython.subcommands import build_parser, subcommand
from remote_kernel.ipython.tracebacks import remote_frames_only
from remote_kernel.ipython.widgets import bridge_for

# Arguments several subcommands share (each `argument` may decorate many handlers). The
# metavars also say what completes there (completion.py): NAME a connection, TARGET a target.
_connection_name = argument("name", nargs="?", metavar="NAME",
                            help="connection name (default: the current one)")
_variables = argument("names", nargs="+", metavar="VARIABLE", help="variable names")
_on_connection = argument("--on", dest="connection", metavar="NAME",
                          help="connection name (default: the current one)")


@argument("names", nargs="*", metavar="NAME",
          help="connection or group names (default: the current connection); with several, "
               "the cell runs on each at the same time")
@argument("--all", action="store_true", help="run on every open connection at once")
@argument("-i", "--inputs", default="", metavar="a,b",
          help="local variables to send in, comma separated")
@argument("-o", "--outputs", default="", metavar="c,d",
          help="remote variables to bring back (from several peers: {peer: value} each)")
@argument("--timeout", type=float, default=None, metavar="S",
          help="seconds before the cell is abandoned (default: none; Stop interrupts)")
def _cell_arguments() -> None:
    """The arguments of %%remote (its parser is CELL_PARSER)."""


CELL_PARSER = build_parser("%remote", None, _cell_arguments)


class RoundTrip(float):
    """``%remote ping``: the round trip in seconds, shown in milliseconds."""

    name: str

    def __new__(cls, seconds: float, name: str) -> RoundTrip:
        value = super().__new__(cls, seconds)
        value.name = name
        return value

    def __repr__(self) -> str:
        return f"{self.name}: round trip {self * 1e3:.3f} ms"


@contextlib.contextmanager
def _mistakes_as_usage_errors(prefix: str = "") -> Iterator[None]:
    """A target that is not one, a refused or failed connect, a token file that cannot be
    read: one line saying so (IPython shows a UsageError without a traceback)."""
    try:
        yield
    except (ValueError, OSError, RemoteKernelError) as exc:
        raise UsageError(f"{prefix}{exc}") from None


def _split_names(text: str) -> list[str]:
    names = [name.strip() for name in text.replace(" ", ",").split(",") if name.strip()]
    for name in names:
        if not name.isidentifier():
            raise UsageError(f"{name!r} is not a variable name\n{USAGE}")
    return names


def _copy_or_reference(conn: Connection, value: Any) -> Any:
    """Values go by value where possible, anything else by reference."""
    if is_netref(value):
        return value
    try:
        return deliver(conn, value)
    except TypeError:
        return value


def _local_copy(value: Any) -> Any:
    if not is_netref(value):
        return value
    try:
        return obtain(value)
    except TypeError:
        return value


@magics_class
class RemoteMagics(Magics):
    """Magics that drive remote interpreters."""

    @property
    def registry(self) -> Any:
        return get_registry()

    @line_magic
    def remote(self, line: str) -> Any:
        """Drive remote interpreters.

        Example::

            In [1]: %remote connect subprocess --name sub
            In [2]: %remote sum(range(10))
            Out[2]: 45
        """
        line = line.strip()
        if not line:
            raise UsageError(f"%remote needs a subcommand or an expression\n{USAGE}")
        command, _, rest = line.partition(" ")
        found = SUBCOMMANDS.get(command)
        if found is not None:
            return found.handler(self, found.parse(rest.strip()))
        self._reject_typo(command, line)
        return self._eval(line)

    def _reject_typo(self, command: str, line: str) -> None:
        try:
            compile(line, "<%remote>", "eval")
            return
        except SyntaxError:
            pass
        try:
            compile(line, "<%remote>", "exec")
        except SyntaxError as exc:
            close = difflib.get_close_matches(command, SUBCOMMANDS, n=1)
            hint = f"unknown subcommand {command!r}; did you mean {close[0]!r}?" if close \
                else f"not a subcommand nor valid Python: {exc.msg}"
            raise UsageError(f"{hint}\n{USAGE}") from None

    def _entry(self, name: str | None = None) -> ConnectionEntry:
        try:
            return self.registry.get(name)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None

    # -- subcommands: each handler takes the arguments its parser made ---------------------

    @subcommand("connect", "connect to each TARGET and bind the connection to a variable; "
                           "the last becomes the current one")
    @argument("targets", nargs="+", metavar="TARGET",
              help="a connection-file name (from `remote-kernel serve --name NAME`) or path, "
                   "host:port, a unix socket path, 'subprocess' (a local child interpreter), "
                   "ssh:user@host, dask:ADDRESS (every worker, as a group), or the name of a "
                   "server advertised on the network (`remote-kernel serve --advertise`; it "
                   "still needs its token: --token-file); several connect at once")
    @argument("--name", help="the variable the connection is bound to (default: from TARGET)")
    @argument("--token-file", metavar="FILE", help="read the token from this file")
    @argument("--service", choices=("void", "classic"), default="void",
              help="what this notebook exposes to the peer: nothing (void, the default) or "
                   "its whole interpreter (classic)")
    @argument("--trust", action="store_true",
              help="publish the peer's display output unfiltered (HTML scripts, JavaScript); "
                   "only for a peer you control")
    def _do_connect(self, args: Namespace) -> None:
        if args.name is not None and not args.name.isidentifier():
            raise UsageError(f"--name must be a valid variable name, not {args.name!r}")
        if any(target.startswith("dask:") for target in args.targets):
            return self._connect_dask(args)  # issue 27: remote_kernel/ipython/dask.py
        if len(args.targets) > 1:
            if args.name is not None:
                raise UsageError(f"--name names one connection; with several targets each "
                                 f"is named after its target\n{USAGE}")
            with _mistakes_as_usage_errors():
                fresh = [target for target in dict.fromkeys(args.targets)
                         if self._keep_connected(target, None) is None]
            if fresh:
                self._connect_many(fresh, args.token_file, args.service, args.trust)
            return
        with _mistakes_as_usage_errors():
            if self._keep_connected(args.targets[0], args.name) is not None:
                return
            entry = self.registry.connect(args.targets[0], name=args.name,
                                          token_file=args.token_file, service=args.service,
                                          trusted=args.trust)
        self.shell.user_ns[entry.name] = entry.conn
        print(f"connected to {entry.name} ({entry.conn.peer}), bound to `{entry.name}`")

    def _keep_connected(self, target: str, name: str | None) -> ConnectionEntry | None:
        """The live connection to ``target`` a new one would duplicate, bound and kept (and
        said so), or None."""
        kept = self.registry.connected(target, name)
        if kept is not None:
            self.shell.user_ns[kept.name] = kept.conn
            print(f"{kept.name} is already connected to {kept.conn.peer}: kept it "
                  f"(--name NAME opens a second connection)")
        return kept

    def _connect_dask(self, args: Any) -> None:
        """%remote connect dask:ADDRESS|dask:CLIENT_VARIABLE: every worker, as a group."""
        from remote_kernel.ipython import dask

        if len(args.targets) > 1:
            raise UsageError(f"a dask: target connects on its own\n{USAGE}")
        with _mistakes_as_usage_errors():
            try:
                group = dask.connect(self.registry, args.targets[0], args.name,
                                     self.shell.user_ns)
            except ImportError as exc:
                raise ValueError(str(exc)) from None
        self.shell.user_ns[group.name] = group
        print(dask.describe(group))

    def _connect_many(self, targets: list[str], token_file: str | None,
                      service: str = "void", trusted: bool = False) -> list[ConnectionEntry]:
        """Connect several targets at once; bind each that connected, then raise
        GroupError naming those that did not."""
        from remote_kernel.errors import GroupError

        try:
            entries = self.registry.connect_many(targets, token_file=token_file,
                                                 service=service, trusted=trusted)
        except GroupError as exc:
            entries = list(exc.results.values())
            self._bind_connected(entries)
            raise
        self._bind_connected(entries)
        return entries

    def _bind_connected(self, entries: list[ConnectionEntry]) -> None:
        for entry in entries:
            self.shell.user_ns[entry.name] = entry.conn
            print(f"connected to {entry.name} ({entry.conn.peer}), bound to `{entry.name}`")

    @subcommand("list", "table of connections: name, target, state, latency, requests, "
                        "bytes in/out (* = the current one)")
    def _do_list(self, args: Namespace) -> None:
        entries = list(self.registry.entries.values())
        if not entries:
            print("no connections; use %remote connect TARGET")
            return
        header = ("", "name", "target", "state", "latency", "requests", "bytes in", "bytes out")
        rows = [header]
        for entry in entries:
            stats = entry.stats()
            latency = f"{entry.latency * 1e3:.2f} ms" if entry.latency is not None else "-"
            rows.append(("*" if entry.name == self.registry.current else "", entry.name,
                         entry.target, entry.state_text, latency, str(stats["requests"]),
                         str(stats["bytes_in"]), str(stats["bytes_out"])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        for group, members in self.registry.groups.items():
            print(f"group {group}: {' '.join(members)}")

    @subcommand("use", "make NAME the current connection")
    @argument("name", metavar="NAME", help="connection name")
    def _do_use(self, args: Namespace) -> None:
        entry = self._entry(args.name)
        self.registry.current = entry.name
        self.registry.changed()

    @subcommand("close", "close one connection (default: the current one) or all, and say "
                         "which")
    @_connection_name
    @argument("--all", action="store_true", help="close every connection")
    def _do_close(self, args: Namespace) -> None:
        names = list(self.registry.entries) if args.all else [self._entry(args.name).name]
        closed = []
        for name in names:
            entry = self.registry.entries[name]
            closed.append(f"{name} ({entry.conn.peer if entry.conn else entry.target})")
            self.registry.close(name)
        print(f"closed {', '.join(closed)}" if closed else "no connections to close")

    @subcommand("ping", "the round-trip time, returned (in seconds; shown in ms)")
    @_connection_name
    def _do_ping(self, args: Namespace) -> RoundTrip:
        entry = self._entry(args.name)
        return RoundTrip(self.registry.ping(entry.name), entry.name)

    @subcommand("reconnect", "connect again to the same target (re-reads its connection file)")
    @_connection_name
    def _do_reconnect(self, args: Namespace) -> None:
        name = self._entry(args.name).name
        with _mistakes_as_usage_errors(f"cannot reconnect {name}: "):
            entry = self.registry.reconnect(name)
        self.shell.user_ns[entry.name] = entry.conn
        print(f"reconnected {entry.name} ({entry.conn.peer})")

    @subcommand("pull", "copy remote variables here: by value where possible, else by "
                        "reference")
    @_variables
    @_on_connection
    def _do_pull(self, args: Namespace) -> None:
        conn = self._entry(args.connection).require()
        names = _split_names(" ".join(args.names))
        namespace = conn.namespace
        for name in names:
            try:
                value = namespace[name]
            except KeyError:
                raise UsageError(f"{name!r} is not defined on {conn.peer}") from None
            self.shell.user_ns[name] = _local_copy(value)

    @subcommand("push", "copy local variables there: by value where possible, else by "
                        "reference")
    @_variables
    @_on_connection
    def _do_push(self, args: Namespace) -> None:
        conn = self._entry(args.connection).require()
        names = _split_names(" ".join(args.names))
        namespace = conn.namespace
        for name in names:
            if name not in self.shell.user_ns:
                raise UsageError(f"{name!r} is not defined here")
            namespace[name] = _copy_or_reference(conn, self.shell.user_ns[name])

    @subcommand("group", "a named group of connections, bound to GROUP (an rk.Group): "
                         "`%%remote GROUP` runs on its members; without a MEMBER, the group; "
                         "without arguments, every group")
    @argument("name", nargs="?", metavar="GROUP",
              help="the group's name (a variable bound to the group)")
    @argument("members", nargs="*", metavar="MEMBER",
              help="connection names, group names or targets (those are connected)")
    @argument("--token-file", metavar="FILE", help="token for the members this connects")
    def _do_group(self, args: Namespace) -> None:
        registry = self.registry
        if args.name is None:
            if not registry.groups:
                print("no groups; use %remote group NAME MEMBER...")
            for group, members in registry.groups.items():
                print(f"{group}: {' '.join(members)}")
            return
        name = args.name
        if not args.members:
            if name not in registry.groups:
                raise UsageError(f"no group named {name!r} (known: "
                                 f"{', '.join(registry.groups) or 'none'})")
            print(f"{name}: {' '.join(registry.groups[name])}")
            return
        if not name.isidentifier():
            raise UsageError(f"a group name must be a valid variable name, not {name!r}")
        if name in registry.entries:
            raise UsageError(f"{name!r} is a connection; choose another name for the group")
        members: list[str] = []
        targets: list[str] = []
        for member in args.members:
            if member in registry.groups:
                members += registry.groups[member]
            elif member in registry.entries:
                members.append(member)
            else:
                targets.append(member)
                members.append(member)
        if targets:
            entries = self._connect_many(targets, args.token_file)
            connected = dict(zip(targets, (entry.name for entry in entries), strict=True))
            members = [connected.get(member, member) for member in members]
        members = list(dict.fromkeys(members))  # each once, in the order given
        registry.groups[name] = members
        registry.changed()
        self.shell.user_ns[name] = fanout.RegistryGroup(registry, members)
        print(f"group {name}: {' '.join(members)}, bound to `{name}`")

    @subcommand("discover", "table of the servers advertised on the local network")
    @argument("--timeout", type=float, default=2.0, metavar="S",
              help="seconds to listen (default 2)")
    @argument("--interface", metavar="IP", help="listen on this address of this host only")
    def _do_discover(self, args: Namespace) -> None:
        from remote_kernel.ipython.registry import discovery_module

        discovery = discovery_module()
        if discovery is None:
            raise UsageError("discovery is not available here: it needs the zeroconf package "
                             "(pip install zeroconf)")
        try:
            servers = discovery.discover(args.timeout, interface=args.interface)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not servers:
            print(f"no servers advertised on the network (listened {args.timeout:g} s; "
                  f"servers announce themselves with `remote-kernel serve --advertise`)")
            return
        rows = [("name", "address", "tls", "service")]
        rows += [(server.name, f"{server.host}:{server.port}", "yes" if server.tls else "no",
                  server.service) for server in servers]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(width)
                            for cell, width in zip(row, widths, strict=True)).rstrip())
        print("connect with  %remote connect NAME --token-file FILE")

    def _eval(self, expression: str) -> Any:
        entry = self._entry()
        conn = entry.require()
        # As %%remote: what the expression prints or displays appears in this cell.
        sink = NotebookSink(trusted=conn.trust_output, peer=entry.name, stdin=True)
        try:
            with remote_frames_only():
                return entry.interpreter.eval(expression, sink)
        finally:
            sink.stdin = False

    # -- the cell magic -----------------------------------------------------------------------

    @cell_magic("remote")
    def remote_cell(self, line: str, cell: str) -> Any:
        """Run the cell on a remote interpreter.

        The cell runs in the remote namespace with IPython's semantics: its output streams
        here while it runs, display() and the last expression arrive as rich output
        computed remotely. -i sends local variables in (by value where possible), -o brings
        remote variables back. The Stop button interrupts the remote code.

        With several names, a group's name (`%remote group`) or --all, the cell runs on
        every peer at the same time; each line of output is labelled with its peer as it
        arrives, -i sends the same values to all, -o x binds x to {peer: value}, each
        failing peer gives its own error and the others' results are kept. Stop
        interrupts every peer.

        Example::

            In [5]: %%remote lab -i n -o total
               ...: total = sum(range(n))
               ...: total
            Out[5]: 4950
            In [6]: %%remote pi1 pi2 -o t
               ...: t = sensor.read()
               ...: print(t)
            [pi1] 21.4
            [pi2] 22.0
            In [7]: t
            Out[7]: {'pi1': 21.4, 'pi2': 22.0}
        """
        try:
            args = CELL_PARSER.parse_argstring(line)
        except (UsageError, ValueError) as exc:  # ValueError: an unclosed quote
            raise UsageError(f"{exc}\n{USAGE}") from None
        inputs, outputs = _split_names(args.inputs), _split_names(args.outputs)
        peers = self._cell_peers(args.names, args.all)
        if peers is not None:
            return self._fan_out_cell(peers, cell, inputs, outputs, args.timeout)
        entry = self._entry(args.names[0] if args.names else None)
        conn = entry.require()
        if inputs:
            namespace = conn.namespace
            for name in inputs:
                if name not in self.shell.user_ns:
                    raise UsageError(f"-i {name}: {name!r} is not defined here")
                namespace[name] = _copy_or_reference(conn, self.shell.user_ns[name])
        if conn.trust_output:
            bridge_for(entry, self.shell)  # widgets the cell creates stay live here
        sink = NotebookSink(trusted=conn.trust_output, peer=entry.name, stdin=True)

        self.registry.set_running([entry.name], fanout.running_cell(self.shell, cell))
        try:
            with remote_frames_only():
                conn.call(entry.interpreter, "run_cell", cell, sink, timeout=args.timeout)
        except RequestTimeout:
            if args.timeout is None:
                raise  # a request the cell made timed out, not the cell
            raise UsageError(f"the cell did not finish on {entry.name} within {args.timeout:g} s "
                             f"(--timeout) and may still be running there: give it a longer "
                             f"--timeout, or none and stop it with the Stop button") from None
        finally:
            sink.stdin = False
            self.registry.set_running([entry.name], None)
        if outputs:
            namespace = conn.namespace
            for name in outputs:
                try:
                    self.shell.user_ns[name] = _local_copy(namespace[name])
                except KeyError:
                    raise UsageError(f"-o {name}: not defined on {conn.peer}") from None
        return sink.value

    def _cell_peers(self, names: list[str], every: bool) -> list[str] | None:
        """The connections a fan-out cell runs on, or None for the single-peer cell."""
        registry = self.registry
        if every:
            if names:
                raise UsageError(f"--all takes no connection names\n{USAGE}")
            peers = [name for name, entry in registry.entries.items()
                     if entry.state != "closed"]
            if not peers:
                raise UsageError("no open connections; use %remote connect TARGET")
            return peers
        if len(names) <= 1 and not (names and names[0] in registry.groups):
            return None
        peers = []
        for name in names:
            members = registry.groups.get(name, [name])
            for member in members:
                if member not in registry.entries:
                    known = ", ".join([*registry.entries, *registry.groups]) or "none"
                    raise UsageError(f"no connection or group named {member!r} "
                                     f"(known: {known})")
                peers.append(member)
        return list(dict.fromkeys(peers))

    def _fan_out_cell(self, peers: list[str], cell: str, inputs: list[str],
                      outputs: list[str], timeout: float | None) -> None:
        values = {}
        for name in inputs:
            if name not in self.shell.user_ns:
                raise UsageError(f"-i {name}: {name!r} is not defined here")
            values[name] = self.shell.user_ns[name]
        fanout.run_cell(self.shell, self.registry, peers, cell, inputs=values, outputs=outputs,
                        send=_copy_or_reference, receive=_local_copy, timeout=timeout)


SUBCOMMANDS = subcommands.collect(RemoteMagics)
USAGE = subcommands.usage(SUBCOMMANDS, CELL_PARSER)
# %remote? and %%remote? show usages generated from the parsers, around the prose written here
RemoteMagics.remote.__doc__ = subcommands.docstring(SUBCOMMANDS, CELL_PARSER,
                                                    RemoteMagics.remote.__doc__)
RemoteMagics.remote_cell.__doc__ = subcommands.cell_docstring(CELL_PARSER,
                                                              RemoteMagics.remote_cell.__doc__)

__all__ = ["SUBCOMMANDS", "USAGE", "RemoteMagics"]
