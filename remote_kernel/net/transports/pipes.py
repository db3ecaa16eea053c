"""Pipe transports: our own stdin/stdout (``serve --stdio``) and a child's pipes
(``connect_subprocess``, ``connect_ssh``)."""

from __future__ import annotations

import os
import select
import time

from remote_kernel.core.transport import PeerClosed, StopMidRead, Transport
from remote_kernel.errors import ConnectionClosed


class PipeTransport(Transport):
    def __init__(self, read_fd: int, write_fd: int, peer_name: str) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.peer_name = peer_name
        self._poller = select.poll()
        self._poller.register(read_fd, select.POLLIN | select.POLLPRI)
        # Writes never block: a full pipe is waited on with poll(), so a send has a timeout.
        os.set_blocking(write_fd, False)
        self._out_poller = select.poll()
        self._out_poller.register(write_fd, select.POLLOUT | select.POLLERR | select.POLLHUP)
        self._closed = False

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        view = memoryview(data).cast("B")
        limit = self.send_timeout if timeout is None else timeout
        progress_at = time.monotonic()
        while view:
            if self._closed:
                raise ConnectionClosed(f"connection to {self.peer_name} is closed")
            try:
                written = os.write(self.write_fd, view)
            except BlockingIOError:
                written = 0
            except (OSError, ValueError) as exc:
                raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc
            if written:
                view = view[written:]
                progress_at = time.monotonic()
                continue
            left = limit - (time.monotonic() - progress_at)
            if left <= 0:
                raise ConnectionClosed(f"{self.peer_name} stopped reading: nothing could be "
                                       f"sent for {limit:g} s")
            self._out_poller.poll(min(left, 1.0) * 1000)

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer_name} is closed")
        wait_ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._poller.poll(wait_ms):
            return 0
        try:
            got = os.readv(self.read_fd, [buffer])
        except KeyboardInterrupt:  # bytes may have been taken: the stream cannot go on
            raise StopMidRead(f"a Stop landed while reading from {self.peer_name}") from None
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc
        if got == 0:
            raise PeerClosed(f"{self.peer_name} closed the connection")
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
