"""Pipe transports: our own stdin/stdout (``serve --stdio``) and a child's pipes
(``connect_subprocess``, ``connect_ssh``)."""

from __future__ import annotations

import os
import select

from remote_kernel.core.transport import Transport
from remote_kernel.errors import ConnectionClosed


class PipeTransport(Transport):
    def __init__(self, read_fd: int, write_fd: int, peer_name: str) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.peer_name = peer_name
        self._poller = select.poll()
        self._poller.register(read_fd, select.POLLIN | select.POLLPRI)
        self._closed = False

    def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.write_fd, view)
                view = view[written:]
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer_name} is closed")
        wait_ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._poller.poll(wait_ms):
            return 0
        try:
            got = os.readv(self.read_fd, [buffer])
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc
        if got == 0:
            raise ConnectionClosed(f"{self.peer_name} closed the connection")
        return got

    def fileno(self) -> int:
        return self.read_fd

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in {self.read_fd, self.write_fd}:
            try:
                os.close(fd)
            except OSError:
                pass
