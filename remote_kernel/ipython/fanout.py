"""``%%remote a b c``: one cell on several connections at once, each peer's output labelled.

Theory of operation
-------------------
Each peer's cell runs in one task of :func:`remote_kernel.core.group.fan_out`: the task's
thread sends ``run_cell`` and, while it waits, serves that peer's sink callbacks, so output
arrives as it happens, from every peer at once. The task runs in a copy of the cell's
context, so ipykernel publishes what it writes with the cell's parent header (ipykernel's
``OutStream`` and display publisher read it from a ``ContextVar``).

Labels: every stream line starts with the peer's name, padded so that the text of all
peers lines up (``[pi1]  ``). A peer may leave a line open (a progress bar); before another
peer writes on the same stream that line is ended, so lines never mix. A display output or a
rich result comes after a label line (``[pi1] display:``, ``[pi1] Out[3]:``); a plain-text
result is one labelled line. A display id is the peer's own (``pi1:ID``), so
``update_display`` on one peer replaces that peer's output only. ``clear_output`` from a
peer is ignored: it would clear every peer's output.

Errors: one error output per failing peer, each headed by its label; the cell then raises
:class:`~remote_kernel.errors.GroupError` (its traceback is the last failing peer's plus a
summary line), keeping the others' ``-o`` values. Stop interrupts every peer (the fan-out
cancels their requests) and the connections stay usable.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from remote_kernel.core.group import Group, Member, fan_out
from remote_kernel.core.service import exposed
from remote_kernel.errors import GroupError, mark_stop
from remote_kernel.ipython.display import untrusted_bundle
from remote_kernel.ipython.registry import ConnectionRegistry
from remote_kernel.ipython.sink import NotebookSink, display_target
from remote_kernel.ipython.tracebacks import IPYTHON_RENDERING
from remote_kernel.outputs.filter import sanitize_text_stream

_LINE = re.compile(r"(\r\n|\n|\r)")


def _pieces(text: str) -> list[tuple[str, str]]:
    """(content, line ending) pairs; the last ending may be ""."""
    parts = _LINE.split(text)
    return [(parts[i], parts[i + 1] if i + 1 < len(parts) else "")
            for i in range(0, len(parts), 2) if parts[i] or i + 1 < len(parts)]


class LabelledOutput:
    """The output of one fan-out cell: labels each peer's lines, keeps lines whole.

    ``emit(stream_name, text)`` writes to the notebook; it is called under this object's
    lock, so the order of what was written is the order of what is shown."""

    def __init__(self, names: Sequence[str], emit: Callable[[str, str], None]) -> None:
        width = max((len(name) for name in names), default=0) + 2
        self.labels = {name: f"[{name}]".ljust(width) + " " for name in names}
        self._emit = emit
        self._lock = threading.Lock()
        # per stream: the peer whose line is still open, and whether its next text starts
        # a line (after a carriage return)
        self._open: dict[str, tuple[str, bool] | None] = {"stdout": None, "stderr": None}

    def write(self, peer: str, stream: str, text: str) -> None:
        if not text:
            return
        stream = "stderr" if stream == "stderr" else "stdout"
        label = self.labels[peer]
        with self._lock:
            out: list[str] = []
            state = self._open[stream]
            if state is not None and state[0] != peer:
                out.append("\n")  # end the other peer's open line first
                state = None
            at_start = True if state is None else state[1]
            ending = ""
            for content, ending in _pieces(text):
                if at_start:
                    out.append(label)
                out.append(content + ending)
                at_start = bool(ending)
            closed = ending in ("\n", "\r\n")
            self._open[stream] = None if closed else (peer, at_start)
            self._emit(stream, "".join(out))

    def line(self, peer: str, text: str) -> None:
        """One whole labelled line (or lines) on stdout, on a line of its own."""
        self.write(peer, "stdout", text if text.endswith("\n") else text + "\n")


class PeerSink(NotebookSink):
    """A NotebookSink whose output is labelled with its peer's name."""

    def __init__(self, peer: str, output: LabelledOutput, trusted: bool = False) -> None:
        super().__init__(trusted=trusted, peer=peer)
        self.output = output

    @exposed
    def stream(self, name: str, text: str) -> None:
        text = str(text)
        self.output.write(self.peer, name, text if self.trusted else sanitize_text_stream(text))

    @exposed
    def display(self, data: dict[str, Any], metadata: dict[str, Any], display_id: Any = None,
                update: Any = False) -> None:
        # Each peer's display ids are its own: the same cell on two peers makes two outputs
        # that each peer's update_display() replaces, never the other's.
        target = display_target(display_id, update, self.peer, scope=f"{self.peer}:")
        if target is None:
            return
        if not target.get("update"):  # an update replaces an output already labelled
            self.output.line(self.peer, "display:")
        self._publish(data, metadata, target)

    @exposed
    def result(self, data: dict[str, Any], metadata: dict[str, Any], count: int) -> None:
        super().result(data, metadata, count)  # filtered unless trusted
        assert self.value is not None
        data, metadata = self.value.data, self.value.metadata
        text = str(data.get("text/plain", ""))
        if set(data) <= {"text/plain"}:
            self.output.line(self.peer, f"Out[{count}]: {text}")
        else:
            self.output.line(self.peer, f"Out[{count}]:")
            self._publish(data, metadata)

    @exposed
    def clear_output(self, wait: bool = False) -> None:
        """Ignored: one peer must not clear the output of the others."""

    @exposed
    def input(self, prompt: str, password: bool = False) -> str:
        """Refused: the peers run at once, and one prompt box could not say whose it is."""
        from IPython.core.error import StdinNotImplementedError

        raise StdinNotImplementedError(f"input() on {self.peer} refused: a cell that runs on "
                                       f"several peers takes no input; run it on one")

    def _publish(self, data: dict[str, Any], metadata: dict[str, Any],
                 target: dict[str, Any] | None = None) -> None:
        from IPython.display import publish_display_data

        data, metadata = untrusted_bundle(data, metadata, self.trusted, self.peer)
        # Our own key goes on after the filter (which keeps only layout keys of the peer's).
        publish_display_data(data=data, metadata={**metadata,
                                                  "remote_kernel": {"peer": self.peer}},
                             **(target or {}))


class RegistryGroup(Group):
    """A group of the notebook's named connections (``%remote group NAME a b``): members
    are looked up in the registry at each call, so a reconnected member is used as is."""

    def __init__(self, registry: ConnectionRegistry, names: Sequence[str],
                 timeout: float | None = None) -> None:
        super().__init__((), timeout=timeout)
        self._registry = registry
        for name in names:
            entry = registry.entries.get(name)
            self._members[name] = Member(name, entry.conn if entry else None, owned=False)  # type: ignore[arg-type]

    def connection(self, name: str) -> Any:
        if name not in self._members:
            return super().connection(name)
        try:
            return self._registry.get(name).require()
        except KeyError as exc:
            raise KeyError(exc.args[0]) from None


def _stopped(names: Sequence[str]) -> KeyboardInterrupt:
    """The Stop button's KeyboardInterrupt: one short line, as for a single peer."""
    stop = KeyboardInterrupt(f"interrupted on {', '.join(names)}; the connections stay usable")
    return mark_stop(stop, ", ".join(names), IPYTHON_RENDERING)  # type: ignore[return-value]


def running_cell(shell: Any, cell: str) -> dict[str, Any]:
    """What the lab panel shows while a cell runs on a connection: its execution count and
    first line."""
    text = cell.strip()
    return {"count": _running_count(shell), "code": text.splitlines()[0][:80] if text else ""}


def _running_count(shell: Any) -> int:
    """The running cell's In[n].

    IPython hands the displayhook the running cell's ExecutionResult, which carries its
    count (IPython 9 always, IPython 8 when the cell is stored in the history). Otherwise:
    IPython 9 counts a cell before running it (the count minus one), IPython 8 after."""
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    count = getattr(result, "execution_count", None)
    if isinstance(count, int):
        return count
    return max(shell.execution_count - (1 if _IPYTHON_COUNTS_FIRST else 0), 0)


def _ipython_counts_first() -> bool:
    try:
        import IPython
    except ImportError:
        return True
    return IPython.version_info[0] >= 9


_IPYTHON_COUNTS_FIRST = _ipython_counts_first()


def show_peer_error(shell: Any, peer: str, exc: BaseException) -> None:
    """One error output for one peer, headed by its name."""
    render = getattr(exc, "_render_traceback_", None)
    if callable(render):
        lines = render()
    else:
        lines = shell.InteractiveTB.structured_traceback(type(exc), exc, exc.__traceback__)
    shell._showtraceback(type(exc), exc, [f"[{peer}]", *lines])


def run_cell(shell: Any, registry: ConnectionRegistry, names: Sequence[str], cell: str, *,
             inputs: Mapping[str, Any], outputs: Sequence[str],
             send: Callable[[Any, Any], Any], receive: Callable[[Any], Any],
             timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Run ``cell`` on every named connection at once; ``{peer: {output name: value}}``.

    ``inputs`` are sent to every peer (``send(conn, value)`` makes what is sent),
    ``outputs`` fetched from each (``receive(netref)`` makes the local value). Failing peers
    each get an error output and the cell raises GroupError after the others finished."""
    entries = {name: registry.get(name) for name in names}
    # Each PeerSink sanitizes its own peer's text; the writer adds only our labels.
    output = LabelledOutput(names, NotebookSink(trusted=True).stream)

    def task(name: str) -> dict[str, Any]:
        entry = entries[name]
        conn = entry.require()
        if inputs:
            namespace = conn.namespace
            for key, value in inputs.items():
                namespace[key] = send(conn, value)
        sink = PeerSink(name, output, trusted=conn.trust_output)
        conn.call(entry.interpreter, "run_cell", cell, sink, timeout=None)
        values: dict[str, Any] = {}
        if outputs:
            namespace = conn.namespace
            for key in outputs:
                try:
                    values[key] = receive(namespace[key])
                except KeyError:
                    raise NameError(f"-o {key}: {key!r} is not defined on {name}") from None
        return values

    def interrupt(name: str) -> None:
        conn = entries[name].conn
        if conn is not None:
            conn.interrupt()

    registry.set_running(names, running_cell(shell, cell))
    try:
        results, errors = fan_out({name: (lambda name=name: task(name)) for name in names},
                                  interrupt=interrupt, timeout=timeout)
    except KeyboardInterrupt:
        raise _stopped(names) from None
    finally:
        registry.set_running(names, None)
    for key in outputs:
        shell.user_ns[key] = {name: values[key] for name, values in results.items()}
    if errors:
        error = GroupError(errors, results)
        failed = list(errors)
        for name in failed[:-1]:
            show_peer_error(shell, name, errors[name])
            error.shown.add(name)
        raise error
    return results


__all__ = ["LabelledOutput", "PeerSink", "RegistryGroup", "run_cell", "running_cell",
           "show_peer_error"]
