"""The proxy kernel: every cell runs on a remote interpreter.

It is an ipykernel ``Kernel`` subclass that talks to the same ``Interpreter`` service the
``%%remote`` magic uses: execute streams through a sink that publishes on iopub, errors are
the remote ones, complete/inspect/is_complete are asked of the remote namespace, interrupt
cancels the remote request, and comms (ipywidgets) are forwarded both ways. An unreachable
target is an error reply naming it; the next execute tries again.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from typing import Any

from ipykernel.kernelbase import Kernel
from traitlets import Bool, Unicode

from remote_kernel import __version__
from remote_kernel.core.connection import Connection
from remote_kernel.core.service import exposed
from remote_kernel.errors import ConnectionClosed, RemoteError, RemoteKernelError
from remote_kernel.ipython.registry import open_connection
from remote_kernel.ipython.tracebacks import IPythonRendering
from remote_kernel.outputs.filter import (
    filter_bundle_report,
    peer_display_id,
    sanitize_text_stream,
)
from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import json_safe

QUICK_TIMEOUT = 5.0  # seconds a completion or inspection may take on the remote
XMODES = ("Plain", "Context", "Verbose", "Minimal", "Docs")  # IPython's %xmode modes
MAX_MATCHES = 2000  # completions kept from one remote reply
MAX_MATCH_LENGTH = 1000  # characters of one completion
_IS_COMPLETE_STATUS = frozenset({"complete", "incomplete", "invalid", "unknown"})
_PAGER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(\?{1,2})\s*$")
DEFAULT_LANGUAGE_INFO = {
    "name": "python",
    "version": ".".join(map(str, sys.version_info[:3])),
    "mimetype": "text/x-python",
    "file_extension": ".py",
    "pygments_lexer": "ipython3",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "nbconvert_exporter": "python",
}


class KernelSink:
    """What the remote interpreter calls to publish a cell's output (and comm messages)."""

    def __init__(self, kernel: RemoteKernel) -> None:
        self.kernel = kernel

    def _publish(self, msg_type: str, content: dict[str, Any], **kwargs: Any) -> None:
        kernel = self.kernel
        # The iopub topic as ipykernel builds it ("kernel.<ident>.<msg_type>"), from public
        # attributes rather than its private _topic().
        kernel.session.send(kernel.iopub_socket, msg_type, content,
                            parent=kernel.get_parent("shell"),
                            ident=f"kernel.{kernel.ident}.{msg_type}".encode(), **kwargs)

    def _bundle(self, data: Any, metadata: Any) -> tuple[dict, dict]:
        if self.kernel.trust_output:
            return dict(data), dict(metadata)
        filtered = filter_bundle_report(data, metadata, trusted=False)
        if filtered.dropped:
            self.kernel.log.warning("withheld from the remote's output: %s (trust_output is "
                                    "off)", ", ".join(filtered.dropped))
        return filtered.data, filtered.metadata

    @exposed
    def stream(self, name: str, text: str) -> None:
        if not self.kernel.trust_output:
            text = sanitize_text_stream(str(text))
        self._publish("stream", {"name": "stderr" if name == "stderr" else "stdout",
                                 "text": text})

    @exposed
    def display(self, data: dict, metadata: dict, display_id: Any = None,
                update: Any = False) -> None:
        """A display output; with ``display_id`` one that ``update`` replaces in place
        (``update_display_data``). An id that is not a valid one is not used, and an
        update under it is dropped: it would otherwise become a new output."""
        transient: dict[str, Any] = {}
        if display_id is not None:
            checked = peer_display_id(display_id)
            if checked is None:
                self.kernel.log.warning("display id %.40r refused from the remote",
                                        display_id)
                if update is True:
                    return
            else:
                transient = {"display_id": checked}
        data, metadata = self._bundle(data, metadata)
        kind = "update_display_data" if transient and update is True else "display_data"
        self._publish(kind, {"data": data, "metadata": metadata, "transient": transient})

    @exposed
    def result(self, data: dict, metadata: dict, count: int) -> None:
        data, metadata = self._bundle(data, metadata)
        self._publish("execute_result", {"data": data, "metadata": metadata,
                                         "execution_count": self.kernel.execution_count})
        self.kernel.record_output(self.kernel.execution_count, str(data.get("text/plain", "")))

    @exposed
    def clear_output(self, wait: bool = False) -> None:
        self._publish("clear_output", {"wait": bool(wait)})

    @exposed
    def page(self, data: dict, start: int = 0) -> None:
        """IPython's pager in a remote cell (``%pinfo``, ``obj?`` inside a cell). JupyterLab
        shows a page payload as the cell's output, so the bundle is filtered like a display."""
        data, _ = self._bundle(data, {})
        self.kernel.pages.append({"source": "page", "data": data, "start": int(start)})

    @exposed
    def input(self, prompt: str, password: bool = False) -> str:
        """``input()``/``getpass()`` in the remote cell: the kernel's own input request (the
        front end's prompt box; StdinNotImplementedError when it allows none, as ipykernel).
        Refused outside a running cell: the remote asks nothing uninvited."""
        kernel = self.kernel
        if not kernel.cell_running:
            from IPython.core.error import StdinNotImplementedError

            raise StdinNotImplementedError("input() refused: only a running cell may ask "
                                           "for input")
        prompt = kernel._text(str(prompt))
        return kernel.getpass(prompt) if password is True else kernel.raw_input(prompt)

    @exposed
    def comm(self, msg_type: str, content: dict, metadata: dict, buffers: tuple) -> None:
        if not self.kernel.trust_output:
            # A widget's model state becomes page HTML (ipywidgets' HTML widget sets
            # innerHTML), so an untrusted peer gets no widgets; say so once per kernel.
            if not self.kernel.warned_widgets:
                self.kernel.warned_widgets = True
                self.stream("stderr", "remote_kernel: widgets from this remote are not shown "
                            "because its output is not trusted; install the kernelspec with "
                            "--trust if you control the remote\n")
            return
        self._publish(msg_type, dict(content), metadata=dict(metadata),
                      buffers=[bytes(b) for b in buffers])


class RemoteKernel(Kernel):
    implementation = "remote_kernel"
    implementation_version = __version__
    banner = "remote_kernel proxy kernel: every cell runs on a remote Python interpreter"
    help_links = ()

    target = Unicode("", config=True, help="what %remote connect accepts: a connection-file "
                                          "name or path, host:port, subprocess, ssh:user@host")
    token_file = Unicode("", config=True, help="file holding the token")
    trust_output = Bool(False, config=True, help="publish the remote's display output and "
                                                 "widgets unfiltered (only for a remote you "
                                                 "control)")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._conn: Connection | None = None
        self._interpreter: Any = None
        self._xmode: str | None = None  # the remote shell's %xmode once a cell changed it
        self._remote_language_info: dict[str, Any] | None = None
        self._tried_info = False
        self._history: list[tuple[int, int, str]] = []
        self._outputs: dict[int, str] = {}
        self._sink = KernelSink(self)
        self.warned_widgets = False
        self.pages: list[dict[str, Any]] = []  # pager payloads of the running cell
        self.cell_running = False  # the remote's input() is answered only then
        self._loop_server: Any = None
        for msg_type in ("comm_open", "comm_msg", "comm_close"):
            self.shell_handlers[msg_type] = self._forward_comm

    def record_output(self, count: int, text: str) -> None:
        """Remember a cell's result text for history requests with ``output=True``."""
        self._outputs[count] = text

    # -- the connection ---------------------------------------------------------------------

    @property
    def language_info(self) -> dict[str, Any]:  # type: ignore[override]
        if self._remote_language_info is None and not self._tried_info:
            self._tried_info = True
            try:
                self._connect()
            except Exception as exc:
                self.log.warning("remote target %s not reachable yet: %s", self.target, exc)
        return self._remote_language_info or DEFAULT_LANGUAGE_INFO

    def _connect(self) -> tuple[Connection, Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn, self._interpreter
        if not self.target:
            raise RemoteKernelError("no target: install the kernelspec with --target")
        try:
            conn = open_connection(self.target, self.token_file or None)
        except Exception as exc:
            raise RemoteKernelError(f"cannot reach {self.target}: {exc}") from exc
        interpreter = conn.root.interpreter
        interpreter.attach_comms(self._sink)
        self._xmode = None  # a new remote shell: IPython's default mode
        self._remote_language_info = dict(interpreter.language_info())
        self._conn, self._interpreter = conn, interpreter
        self._serve_from_loop(conn)
        return conn, interpreter

    def _follow_xmode(self, conn: Connection, interpreter: Any) -> None:
        """``%xmode`` ran on the remote IPython: remote errors here show in its mode, and in
        Verbose mode with the variables of each frame's line (``request_variables``)."""
        try:
            mode = conn.call(interpreter, "eval", "get_ipython().InteractiveTB.mode",
                             timeout=QUICK_TIMEOUT)
            if mode in XMODES:
                self._xmode = mode
                conn.request_variables(mode == "Verbose")
        except RemoteKernelError:
            pass  # no IPython there (%xmode failed too), or the link is gone

    def _serve_from_loop(self, conn: Connection) -> None:
        """Comm messages and callbacks from the remote arrive while the kernel is idle."""
        try:
            from tornado.ioloop import IOLoop

            from remote_kernel.ipython.loop import LoopServer
        except ImportError:
            return
        if self._loop_server is None:
            self._loop_server = LoopServer(IOLoop.current())

        self._loop_server.attach_connection(conn)

    # -- execution --------------------------------------------------------------------------

    def _error(self, ename: str, evalue: str, traceback: list[str]) -> dict[str, Any]:
        if not self.trust_output:  # the remote wrote these lines (messages, source lines)
            traceback = [sanitize_text_stream(str(line)) for line in traceback]
            evalue = sanitize_text_stream(str(evalue))
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    async def do_execute(self, code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict | None = None, allow_stdin: bool = False,
                         *, cell_meta: Any = None, cell_id: Any = None) -> dict[str, Any]:
        if store_history and not silent:
            self._history.append((1, self.execution_count, code))
        payload: list[dict[str, Any]] = []
        self.pages = []
        try:
            conn, interpreter = self._connect()
            pager = _PAGER.match(code)
            if pager is not None:
                payload = self._page(interpreter, pager.group(1), len(pager.group(2)) - 1)
            else:
                self._allow_stdin, self.cell_running = allow_stdin, True  # (KernelSink.input)
                try:
                    conn.call(interpreter, "run_cell", code, self._sink, store_history, silent,
                              timeout=None)
                finally:
                    self._allow_stdin, self.cell_running = False, False
                if "xmode" in code:
                    self._follow_xmode(conn, interpreter)
        except KeyboardInterrupt as exc:  # the Stop button: one line (errors.mark_stop)
            render = getattr(exc, "_render_traceback_", None)
            return self._error("KeyboardInterrupt", str(exc),
                               render() if render else ["KeyboardInterrupt"])
        except RemoteError as exc:  # the chain, each exception with its remote frames
            if "xmode" in code and self._conn is not None:  # the cell may have changed it
                self._follow_xmode(self._conn, self._interpreter)
            return self._error(type(exc).__name__, str(exc),
                               IPythonRendering(self._xmode).remote_error(exc))
        except ConnectionClosed as exc:
            return self._error("ConnectionClosed", str(exc), exc._render_traceback_())
        except RemoteKernelError as exc:
            return self._error(type(exc).__name__, str(exc), [f"{type(exc).__name__}: {exc}"])
        return {"status": "ok", "execution_count": self.execution_count,
                "payload": payload + self.pages, "user_expressions": {}}

    def _page(self, interpreter: Any, name: str, detail: int) -> list[dict[str, Any]]:
        info = interpreter.inspect(name, len(name), detail)
        text = self._text(_format_info(info)) if info else f"Object `{name}` not found."
        return [{"source": "page", "data": {"text/plain": text}, "start": 0}]

    def _ask(self, method: str, *args: Any) -> Any:
        """A quick question to the remote interpreter (completion, inspection): never
        connects (an unreachable target would keep the frontend waiting), never waits long.
        None when there is no live connection or no answer in time."""
        conn, interpreter = self._conn, self._interpreter
        if conn is None or conn.closed or interpreter is None:
            return None
        try:
            return conn.call(interpreter, method, *args, timeout=QUICK_TIMEOUT)
        except Exception as exc:
            self.log.debug("%s on %s failed: %s", method, self.target, exc)
            return None

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        reply = _completion(self._ask("complete", code, cursor_pos), len(code))
        if reply is None:
            reply = {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos}
        return {"status": "ok", "metadata": {}, **reply}

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict[str, Any]:
        info = self._ask("inspect", code, cursor_pos, detail_level)
        if not info:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return {"status": "ok", "found": True, "metadata": {},
                "data": {"text/plain": self._text(_format_info(info))}}

    def _text(self, text: str) -> str:
        """Text the remote wrote, as a terminal-safe string unless the remote is trusted."""
        return text if self.trust_output else sanitize_text_stream(text)

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        reply = self._ask("is_complete", code)
        status = reply.get("status") if type(reply) is dict else None
        if status not in _IS_COMPLETE_STATUS:
            return {"status": "unknown"}
        indent = reply.get("indent")
        if status != "incomplete" or type(indent) is not str or len(indent) > 80 or indent.strip(" \t"):
            return {"status": status}
        return {"status": status, "indent": indent}

    async def do_history(self, hist_access_type: str, output: bool, raw: bool,
                         session: int | None = None, start: int | None = None,
                         stop: int | None = None, n: int | None = None,
                         pattern: str | None = None, unique: bool = False) -> dict[str, Any]:
        entries = list(self._history)
        if hist_access_type == "tail":
            entries = entries[-(n or 10):]
        elif hist_access_type == "range":
            entries = [e for e in entries if (start or 0) <= e[1] < (stop or 1 << 62)]
        elif hist_access_type == "search":
            entries = [e for e in entries if fnmatch.fnmatch(e[2], pattern or "*")]
            if unique:
                seen: set[str] = set()
                entries = [e for e in entries if not (e[2] in seen or seen.add(e[2]))]
            if n:
                entries = entries[-n:]
        if output:
            entries = [(s, n, (code, self._outputs.get(n, ""))) for s, n, code in entries]
        return {"status": "ok", "history": entries}

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        if self._conn is not None:
            self._conn.close("kernel shutting down")
        return {"status": "ok", "restart": restart}

    # -- comms ----------------------------------------------------------------------------------

    def _forward_comm(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        msg_type = parent["header"]["msg_type"]
        try:
            _, interpreter = self._connect()
            interpreter.comm_message(msg_type, ByValue(json_safe(parent["content"])),
                                     ByValue(json_safe(parent.get("metadata") or {})),
                                     tuple(bytes(b) for b in parent.get("buffers") or ()))
        except Exception as exc:
            self.log.warning("forwarding %s to %s failed: %s", msg_type, self.target, exc)

    async def comm_info_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        target = parent["content"].get("target_name")
        comms: dict[str, Any] = {}
        if self.trust_output:  # an untrusted remote's comms are never forwarded
            try:
                _, interpreter = self._connect()
                comms = {str(k): {"target_name": str(dict(v).get("target_name", ""))}
                         for k, v in dict(interpreter.comm_info()).items()}
            except Exception:
                comms = {}
        if target:
            comms = {k: v for k, v in comms.items() if v.get("target_name") == target}
        self.session.send(stream, "comm_info_reply", {"status": "ok", "comms": comms},
                          parent, ident)


def _completion(reply: Any, code_length: int) -> dict[str, Any] | None:
    """The remote's completion reply as the three keys a frontend reads, or None when it is not
    one: exact types, offsets inside the code, at most MAX_MATCHES printable matches of at most
    MAX_MATCH_LENGTH characters (the remote wrote it: nothing else of it reaches the reply)."""
    if type(reply) is not dict:
        return None
    matches, start, end = reply.get("matches"), reply.get("cursor_start"), reply.get("cursor_end")
    if type(matches) not in (list, tuple) or type(start) is not int or type(end) is not int:
        return None
    if not 0 <= start <= end <= code_length:
        return None
    kept = [match for match in matches[:MAX_MATCHES]
            if type(match) is str and 0 < len(match) <= MAX_MATCH_LENGTH and match.isprintable()]
    return {"matches": kept, "cursor_start": start, "cursor_end": end}


def _format_info(info: dict[str, Any]) -> str:
    lines = []
    signature = info.get("signature")
    name = info.get("name") or ""
    if signature:
        lines.append(f"Signature: {name.rsplit('.', 1)[-1]}{signature}")
    lines.append(f"Type:      {info.get('type_name') or info.get('type_qualname')}")
    if info.get("string_form") and not (info.get("isclass") or info.get("simple_callable")):
        lines.append(f"String form: {info['string_form']}")
    if info.get("file"):
        lines.append(f"File:      {info['file']}")
    if info.get("source"):
        lines.append("Source:\n" + info["source"])
    elif info.get("docstring"):
        lines.append("Docstring:\n" + info["docstring"])
    return "\n".join(lines)
