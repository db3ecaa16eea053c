"""Comms (ipywidgets) of a remote interpreter, forwarded to the notebook.

On the remote side, the ``comm`` package's two hooks (``create_comm``,
``get_comm_manager``) are pointed at comms whose messages go to a *sink* on the notebook
side: the proxy kernel's (it publishes them on its iopub channel) or, for ``%%remote``
cells, the extension's comm bridge (it opens a matching comm in the notebook's kernel). A
comm keeps the sink that was current when it was created: the sink attached to the
interpreter whose cell created it (so a proxy kernel and a notebook on one server each get
their own widgets), else the one attached last. The frontend's ``comm_open``/``comm_msg``/
``comm_close`` come back through :func:`deliver` to the widgets here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import json_safe

_lock = threading.Lock()
_state: dict[str, Any] = {"sink": None, "manager": None}
_current = threading.local()  # the sink of the cell running in this thread


def _make_classes() -> tuple[type, Any]:
    from comm.base_comm import BaseComm, CommManager

    class ForwardedComm(BaseComm):
        """A comm whose messages travel to the notebook side's sink."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._rk_sink = current_sink()  # before the base class publishes comm_open
            super().__init__(*args, **kwargs)

        def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                        buffers: Any = None, **keys: Any) -> None:
            sink = self._rk_sink
            if sink is None:
                return
            content = json_safe({"data": {} if data is None else data, "comm_id": self.comm_id,
                                 **keys})
            payload = [bytes(buffer) for buffer in (buffers or [])]
            sink.comm(msg_type, ByValue(content), ByValue(json_safe(metadata or {})),
                      ByValue(tuple(payload)))

    return ForwardedComm, CommManager()


_UNSET = object()


def current_sink() -> Any:
    """The sink of the cell running in this thread (None: that cell's notebook takes no
    widgets), else, outside any cell, the sink attached last."""
    sink = getattr(_current, "sink", _UNSET)
    return _state["sink"] if sink is _UNSET else sink


@contextlib.contextmanager
def using(sink: Any) -> Iterator[None]:
    """Comms created in this thread meanwhile (a cell's widgets) go to ``sink``; with None
    they go nowhere, never to another notebook's sink."""
    previous = getattr(_current, "sink", _UNSET)
    _current.sink = sink
    try:
        yield
    finally:
        if previous is _UNSET:
            del _current.sink
        else:
            _current.sink = previous


def attach(sink: Any) -> None:
    """Route this interpreter's comms to ``sink`` (a proxy kernel or a comm bridge)."""
    import comm

    with _lock:
        if _state["manager"] is None:
            comm_class, manager = _make_classes()
            _state["manager"] = manager
            _state["class"] = comm_class
            comm.create_comm = lambda *args, **kwargs: comm_class(*args, **kwargs)
            comm.get_comm_manager = lambda: manager
        _state["sink"] = sink


def deliver(msg_type: str, content: dict[str, Any], metadata: dict[str, Any],
            buffers: tuple) -> None:
    """A comm message from the frontend, for the comms of this interpreter."""
    manager = _state["manager"]
    if manager is None:
        return
    message = {"content": dict(content), "metadata": dict(metadata or {}),
               "buffers": [memoryview(bytes(b)) for b in buffers or ()],
               "header": {"msg_type": msg_type}, "parent_header": {}}
    handler = {"comm_open": manager.comm_open, "comm_msg": manager.comm_msg,
               "comm_close": manager.comm_close}.get(msg_type)
    if handler is not None:
        handler(None, None, message)


def comm_info() -> ByValue:
    manager = _state["manager"]
    comms = {} if manager is None else {
        comm_id: {"target_name": c.target_name} for comm_id, c in manager.comms.items()}
    return ByValue(comms)
