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
"""

from __future__ import annotations

import difflib
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from remote_kernel.core.api import deliver, obtain
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import is_netref
from remote_kernel.ipython.registry import ConnectionEntry, get_registry
from remote_kernel.ipython.sink import NotebookSink
from remote_kernel.ipython.widgets import bridge_for

SUBCOMMANDS = ("connect", "list", "use", "close", "ping", "reconnect", "pull", "push")

USAGE = """\
%remote connect TARGET [--name NAME] [--token-file F] [--service classic|void]
%remote list | use NAME | close [NAME|--all] | ping [NAME] | reconnect [NAME]
%remote pull NAME... | push NAME... | %remote EXPR
%%remote [NAME] [-i a,b] [-o c,d] [--timeout S]"""


@magic_arguments()
@argument("target", help="a connection-file name or path, host:port, a unix socket path, "
                         "'subprocess' (a local child interpreter) or ssh:user@host")
@argument("--name", help="the variable the connection is bound to (default: from TARGET)")
@argument("--token-file", help="read the token from this file")
@argument("--service", choices=("void", "classic"), default="void",
          help="what this notebook exposes to the peer: nothing (void, the default) or "
               "its whole interpreter (classic)")
def _connect_args(line: str) -> None:
    """%remote connect TARGET: connect and bind the connection to a variable."""


@magic_arguments()
@argument("name", nargs="?", help="connection name (default: the current connection)")
@argument("--all", action="store_true", help="close every connection")
def _close_args(line: str) -> None:
    """%remote close [NAME|--all]"""


@magic_arguments()
@argument("name", nargs="?", help="connection name (default: the current one)")
def _name_args(line: str) -> None:
    """%remote use|ping|reconnect [NAME]"""


@magic_arguments()
@argument("names", nargs="+", help="variable names")
@argument("--on", dest="connection", help="connection name (default: the current one)")
def _names_args(line: str) -> None:
    """%remote pull|push NAME..."""


@magic_arguments()
@argument("name", nargs="?", help="connection name (default: the current one)")
@argument("-i", "--inputs", default="", help="local variables to send in, comma separated")
@argument("-o", "--outputs", default="", help="remote variables to bring back")
@argument("--timeout", type=float, default=None,
          help="seconds before the cell is abandoned (default: none; Stop interrupts)")
def _cell_args(line: str) -> None:
    """%%remote [NAME] [-i a,b] [-o c,d] [--timeout S]"""


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

        Usage::

            %remote connect TARGET [--name NAME] [--token-file F] [--service classic|void]
                TARGET is a connection-file name (from `remote-kernel serve --name NAME`)
                or path, host:port, a unix socket path, `subprocess` (a local child
                interpreter) or ssh:user@host. The connection is bound to NAME in the
                notebook and becomes the current one.
            %remote list                 table of connections: state, latency, traffic
            %remote use NAME             make NAME the current connection
            %remote close [NAME|--all]   close one (default: the current) or all
            %remote ping [NAME]          round-trip time
            %remote reconnect [NAME]     connect again to the same target
            %remote pull x y             copy remote variables here (by value if possible)
            %remote push x y             copy local variables there
            %remote EXPR                 evaluate EXPR remotely and return the result

        Example::

            In [1]: %remote connect subprocess --name sub
            In [2]: %remote sum(range(10))
            Out[2]: 45
        """
        line = line.strip()
        if not line:
            raise UsageError(f"%remote needs a subcommand or an expression\n{USAGE}")
        command, _, rest = line.partition(" ")
        handler = getattr(self, f"_do_{command}", None) if command in SUBCOMMANDS else None
        if handler is not None:
            return handler(rest.strip())
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

    # -- subcommands ------------------------------------------------------------------------

    def _parse(self, func: Any, rest: str) -> Any:
        return parse_argstring(func, rest)

    def _do_connect(self, rest: str) -> None:
        args = self._parse(_connect_args, rest)
        if args.name is not None and not args.name.isidentifier():
            raise UsageError(f"--name must be a valid variable name, not {args.name!r}")
        entry = self.registry.connect(args.target, name=args.name, token_file=args.token_file,
                                      service=args.service)
        self.shell.user_ns[entry.name] = entry.conn
        print(f"connected to {entry.name} ({entry.conn.peer}), bound to `{entry.name}`")

    def _do_list(self, rest: str) -> None:
        if rest:
            raise UsageError(f"%remote list takes no arguments\n{USAGE}")
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
                         entry.target, entry.state, latency, str(stats["requests"]),
                         str(stats["bytes_in"]), str(stats["bytes_out"])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    def _do_use(self, rest: str) -> None:
        args = self._parse(_name_args, rest)
        if not args.name:
            raise UsageError(f"%remote use needs a connection name\n{USAGE}")
        entry = self._entry(args.name)
        self.registry.current = entry.name
        self.registry.changed()

    def _do_close(self, rest: str) -> None:
        args = self._parse(_close_args, rest)
        if args.all:
            for name in list(self.registry.entries):
                self.registry.close(name)
            return
        entry = self._entry(args.name)
        self.registry.close(entry.name)

    def _do_ping(self, rest: str) -> float:
        args = self._parse(_name_args, rest)
        entry = self._entry(args.name)
        latency = self.registry.ping(entry.name)
        print(f"{entry.name}: {latency * 1e3:.3f} ms")
        return latency

    def _do_reconnect(self, rest: str) -> None:
        args = self._parse(_name_args, rest)
        entry = self.registry.reconnect(self._entry(args.name).name)
        self.shell.user_ns[entry.name] = entry.conn
        print(f"reconnected {entry.name} ({entry.conn.peer})")

    def _do_pull(self, rest: str) -> None:
        args = self._parse(_names_args, rest)
        conn = self._entry(args.connection).require()
        names = _split_names(" ".join(args.names))
        namespace = conn.namespace
        for name in names:
            try:
                value = namespace[name]
            except KeyError:
                raise UsageError(f"{name!r} is not defined on {conn.peer}") from None
            self.shell.user_ns[name] = _local_copy(value)

    def _do_push(self, rest: str) -> None:
        args = self._parse(_names_args, rest)
        conn = self._entry(args.connection).require()
        names = _split_names(" ".join(args.names))
        namespace = conn.namespace
        for name in names:
            if name not in self.shell.user_ns:
                raise UsageError(f"{name!r} is not defined here")
            namespace[name] = _copy_or_reference(conn, self.shell.user_ns[name])

    def _eval(self, expression: str) -> Any:
        entry = self._entry()
        entry.require()
        return entry.interpreter.eval(expression)

    # -- the cell magic -----------------------------------------------------------------------

    @cell_magic("remote")
    def remote_cell(self, line: str, cell: str) -> Any:
        """Run the cell on a remote interpreter.

        Usage::

            %%remote [NAME] [-i a,b] [-o c,d] [--timeout S]

        The cell runs in the remote namespace with IPython's semantics: its output streams
        here while it runs, display() and the last expression arrive as rich output
        computed remotely. -i sends local variables in (by value where possible), -o brings
        remote variables back. The Stop button interrupts the remote code.

        Example::

            In [5]: %%remote lab -i n -o total
               ...: total = sum(range(n))
               ...: total
            Out[5]: 4950
        """
        try:
            args = parse_argstring(_cell_args, line)
        except UsageError as exc:
            raise UsageError(f"{exc}\n{USAGE}") from None
        entry = self._entry(args.name)
        conn = entry.require()
        inputs, outputs = _split_names(args.inputs), _split_names(args.outputs)
        if inputs:
            namespace = conn.namespace
            for name in inputs:
                if name not in self.shell.user_ns:
                    raise UsageError(f"-i {name}: {name!r} is not defined here")
                namespace[name] = _copy_or_reference(conn, self.shell.user_ns[name])
        bridge_for(entry, self.shell)  # widgets the cell creates stay live here
        sink = NotebookSink()
        from remote_kernel.protocol.messages import Op

        conn.sync_request(Op.CALLATTR, entry.interpreter, "run_cell", (cell, sink), None,
                          timeout=args.timeout)
        if outputs:
            namespace = conn.namespace
            for name in outputs:
                try:
                    self.shell.user_ns[name] = _local_copy(namespace[name])
                except KeyError:
                    raise UsageError(f"-o {name}: not defined on {conn.peer}") from None
        return sink.value


__all__ = ["USAGE", "RemoteMagics"]
