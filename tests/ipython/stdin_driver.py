"""A front end that answers a kernel's input requests (the stdin channel), as JupyterLab's
prompt box does: each ``input_request`` of the cell is recorded and answered in turn."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from tests.ipython.kernel_client import CellRun, Kernel

STOP = object()  # an answer that presses Stop at the prompt instead of typing


@dataclass
class InputRun:
    run: CellRun
    requests: list[dict[str, Any]] = field(default_factory=list)  # input_request contents

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def reply(self) -> dict[str, Any]:
        return self.run.reply["content"]


def run_answering(kernel: Kernel, code: str, answers: list[Any], *, allow_stdin: bool = True,
                  timeout: float = 60.0) -> InputRun:
    """Run ``code``; answer its input requests with ``answers`` in order (``STOP``: interrupt
    the kernel instead). Returns the cell's outputs, reply and the requests it made."""
    client = kernel.client
    msg_id = client.execute(code, allow_stdin=allow_stdin)
    result = InputRun(CellRun(reply={}, started=time.monotonic()))
    pending = list(answers)
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell did not finish in {timeout} s: {code!r}")
        try:
            request = client.get_stdin_msg(timeout=0.02)
        except queue.Empty:
            pass
        else:
            if request["parent_header"].get("msg_id") == msg_id \
                    and request["msg_type"] == "input_request":
                result.requests.append(request["content"])
                answer = pending.pop(0) if pending else ""
                if answer is STOP:
                    kernel.manager.interrupt_kernel()
                else:
                    client.input(answer)
        try:
            message = client.get_iopub_msg(timeout=0.02)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "status" and message["content"]["execution_state"] == "idle":
            idle = True
        elif kind not in ("status", "execute_input"):
            result.run.outputs.append((time.monotonic(), message))
    result.run.ended = time.monotonic()
    while True:
        reply = client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            result.run.reply = reply
            return result
