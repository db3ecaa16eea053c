"""A real ipykernel started with jupyter_client, and a helper that runs a cell and
collects what the kernel publishes (with arrival times)."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class CellRun:
    reply: dict[str, Any]
    outputs: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    def streams(self, name: str = "stdout") -> list[tuple[float, str]]:
        return [(t, m["content"]["text"]) for t, m in self.outputs
                if m["msg_type"] == "stream" and m["content"]["name"] == name]

    def text(self, name: str = "stdout") -> str:
        return "".join(text for _, text in self.streams(name))

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for _, m in self.outputs if m["msg_type"] == msg_type]


class Kernel:
    def __init__(self, kernel_name: str = "python3", env: dict[str, str] | None = None) -> None:
        self.manager = KernelManager(kernel_name=kernel_name)
        import os

        self.manager.start_kernel(cwd=str(ROOT), env={**os.environ, **(env or {})})
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60.0, interrupt_after: float | None = None,
            on_started: Any = None) -> CellRun:
        msg_id = self.client.execute(code)
        run = CellRun(reply={}, started=time.monotonic())
        deadline = time.monotonic() + timeout
        interrupted = False
        idle = False
        while not idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cell did not finish in {timeout} s: {code!r}")
            if (interrupt_after is not None and not interrupted
                    and time.monotonic() - run.started > interrupt_after):
                self.manager.interrupt_kernel()
                interrupted = True
            try:
                message = self.client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
            elif kind not in ("status", "execute_input"):
                run.outputs.append((time.monotonic(), message))
                if on_started is not None and kind == "stream":
                    on_started()
                    on_started = None
        run.ended = time.monotonic()
        while True:
            reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                run.reply = reply
                return run

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
