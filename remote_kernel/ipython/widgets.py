"""ipywidgets created in ``%%remote`` cells: their comms forwarded through this kernel.

The remote interpreter's comms send their messages to a :class:`CommBridge` (one per
connection, handed over before the first ``%%remote`` cell). For each remote comm the bridge
opens a comm of the same id in this kernel, so the frontend's widget manager sees an
ordinary widget; what the frontend sends to that comm (a slider moved) goes back to the
remote interpreter, and what the remote widget sends (a value changed there) goes out on
this kernel's iopub channel. The proxy kernel does the same in ``kernel/kernel.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from remote_kernel.core.service import exposed
from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import json_safe

log = logging.getLogger("remote_kernel.ipython.widgets")


class CommBridge:
    """The notebook side of one remote interpreter's comms."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.comms: dict[str, Any] = {}

    @exposed
    def comm(self, msg_type: str, content: dict, metadata: dict, buffers: tuple) -> None:
        content = dict(content)
        comm_id = str(content.get("comm_id", ""))
        data = content.get("data") or {}
        buffers = [bytes(buffer) for buffer in buffers or ()]
        if msg_type == "comm_open":
            self._open(comm_id, content, data, dict(metadata or {}), buffers)
            return
        local = self.comms.get(comm_id)
        if local is None:
            return
        if msg_type == "comm_msg":
            local.send(data=data, metadata=dict(metadata or {}), buffers=buffers)
        elif msg_type == "comm_close":
            self.comms.pop(comm_id, None)
            local.close(data=data, metadata=dict(metadata or {}), buffers=buffers)

    def _open(self, comm_id: str, content: dict, data: Any, metadata: dict,
              buffers: list[bytes]) -> None:
        from comm import create_comm

        local = create_comm(comm_id=comm_id, target_name=str(content.get("target_name", "")),
                            target_module=content.get("target_module"), data=data,
                            metadata=metadata, buffers=buffers)
        local.on_msg(lambda message: self._to_remote("comm_msg", message))
        local.on_close(lambda message: self._closed_here(comm_id, message))
        self.comms[comm_id] = local

    def _closed_here(self, comm_id: str, message: dict) -> None:
        self.comms.pop(comm_id, None)
        self._to_remote("comm_close", message)

    def _to_remote(self, msg_type: str, message: dict) -> None:
        """A message the frontend sent to a bridged comm, for the remote widget."""
        try:
            self.interpreter.comm_message(
                msg_type, ByValue(json_safe(message.get("content") or {})),
                ByValue(json_safe(message.get("metadata") or {})),
                tuple(bytes(buffer) for buffer in message.get("buffers") or ()))
        except Exception as exc:  # the connection went away: the widget is dead
            log.warning("forwarding %s to the remote widget failed: %s", msg_type, exc)


def bridge_for(entry: Any, shell: Any) -> CommBridge | None:
    """The connection's comm bridge, attached to its interpreter on first use; None outside
    a kernel (no frontend to show widgets) or without the comm package on either side."""
    if getattr(shell, "kernel", None) is None:
        return None
    conn = entry.require()
    bridge = getattr(entry, "comm_bridge", None)
    if bridge is not None and bridge[0] is conn:
        return bridge[1]
    try:
        import comm  # noqa: F401
    except ImportError:
        return None
    interpreter = entry.interpreter
    created = CommBridge(interpreter)
    try:
        interpreter.attach_comms(created)
    except ImportError:
        created = None  # the remote side has no comm package: no widgets there
    entry.comm_bridge = (conn, created)
    return created
