"""Comms (ipywidgets) of a remote interpreter, forwarded through the proxy kernel.

Each :class:`~remote_kernel.remote.interpreter.Interpreter` (one per connection, so one per
proxy kernel) has its own :class:`InterpreterComms`: its sink (the proxy kernel, which
publishes on its iopub channel) and its own ``CommManager``. The ``comm`` package's two
hooks (``create_comm``, ``get_comm_manager``) are pointed at a dispatcher while at least one
interpreter forwards comms, and put back when none does: inside a cell (or a comm message)
of an interpreter they give that interpreter's comms; anywhere else, the originals. So two
proxy kernels on one server never see each other's widgets, and nothing stays patched after
the last one leaves. The frontend's ``comm_open``/``comm_msg``/``comm_close`` come back
through :meth:`InterpreterComms.deliver` to the widgets of that interpreter.
"""

from __future__ import annotations

import threading
from typing import Any

from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import json_safe

_lock = threading.Lock()
_current = threading.local()  # .comms: the interpreter whose code runs in this thread
_attached: set[InterpreterComms] = set()
_saved: tuple[Any, Any] | None = None  # comm's own hooks while ours are in place


class InterpreterComms:
    """The forwarded comms of one interpreter."""

    def __init__(self) -> None:
        self.sink: Any = None
        self.manager: Any = None
        self.comm_class: type | None = None

    def attach(self, sink: Any) -> None:
        """Route this interpreter's comms to ``sink`` (a proxy kernel)."""
        if self.manager is None:
            self.comm_class, self.manager = _make_classes(self)
        self.sink = sink
        _hook(self)

    def detach(self) -> None:
        """The interpreter's connection closed: its widgets can reach nobody."""
        self.sink = None
        _unhook(self)

    def deliver(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any],
                buffers: tuple) -> None:
        """A comm message from the frontend, for the comms of this interpreter."""
        manager = self.manager
        if manager is None:
            return
        message = {"content": dict(content), "metadata": dict(metadata or {}),
                   "buffers": [memoryview(bytes(b)) for b in buffers or ()],
                   "header": {"msg_type": msg_type}, "parent_header": {}}
        handler = {"comm_open": manager.comm_open, "comm_msg": manager.comm_msg,
                   "comm_close": manager.comm_close}.get(msg_type)
        if handler is not None:
            previous = enter(self)
            try:
                handler(None, None, message)
            finally:
                leave(previous)

    def info(self) -> ByValue:
        manager = self.manager
        comms = {} if manager is None else {
            comm_id: {"target_name": c.target_name} for comm_id, c in manager.comms.items()}
        return ByValue(comms)


def enter(comms: InterpreterComms | None) -> InterpreterComms | None:
    """This thread now runs code of ``comms``'s interpreter; returns what it ran before."""
    previous = getattr(_current, "comms", None)
    _current.comms = comms
    return previous


def leave(previous: InterpreterComms | None) -> None:
    _current.comms = previous


def _make_classes(owner: InterpreterComms) -> tuple[type, Any]:
    from comm.base_comm import BaseComm, CommManager

    class ForwardedComm(BaseComm):
        """A comm whose messages travel to its interpreter's proxy kernel."""

        def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                        buffers: Any = None, **keys: Any) -> None:
            sink = owner.sink
            if sink is None:
                return
            content = json_safe({"data": {} if data is None else data, "comm_id": self.comm_id,
                                 **keys})
            payload = [bytes(buffer) for buffer in (buffers or [])]
            sink.comm(msg_type, ByValue(content), ByValue(json_safe(metadata or {})),
                      ByValue(tuple(payload)))

    return ForwardedComm, CommManager()


def _create_comm(*args: Any, **kwargs: Any) -> Any:
    comms = getattr(_current, "comms", None)
    if comms is None or comms.comm_class is None or _saved is None:
        return (_saved[0] if _saved else _original_create)(*args, **kwargs)
    return comms.comm_class(*args, **kwargs)


def _get_comm_manager() -> Any:
    comms = getattr(_current, "comms", None)
    if comms is None or comms.manager is None or _saved is None:
        return (_saved[1] if _saved else _original_manager)()
    return comms.manager


def _original_create(*args: Any, **kwargs: Any) -> Any:
    from comm.base_comm import BaseComm

    return BaseComm(*args, **kwargs)


def _original_manager() -> Any:
    return None


def _hook(comms: InterpreterComms) -> None:
    global _saved
    import comm

    with _lock:
        _attached.add(comms)
        if _saved is None:
            _saved = (comm.create_comm, comm.get_comm_manager)
            comm.create_comm = _create_comm
            comm.get_comm_manager = _get_comm_manager


def _unhook(comms: InterpreterComms) -> None:
    global _saved
    import sys

    with _lock:
        _attached.discard(comms)
        if _attached or _saved is None:
            return
        comm = sys.modules.get("comm")
        if comm is not None:
            if comm.create_comm is _create_comm:
                comm.create_comm = _saved[0]
            if comm.get_comm_manager is _get_comm_manager:
                comm.get_comm_manager = _saved[1]
        _saved = None


def hooked() -> bool:
    """True while the ``comm`` package's hooks are ours (some interpreter forwards comms)."""
    return _saved is not None
