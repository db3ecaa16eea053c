"""Serving from the kernel's loop never spins and never starves the loop: while another
thread holds the reader role the descriptor is left alone, and a flood of messages is
served in bounded batches."""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.ipython.loop import LoopServer
from remote_kernel.net.transports import memory_pair
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.codec import frame, pack
from remote_kernel.protocol.messages import Kind

UNKNOWN_NOTIFY = 99  # a notification nobody answers: cheap to serve, safe to flood


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Connection]]:
    left, right = memory_pair("kernel", "device")
    kernel = Connection(left, rk.VoidService, name="device")
    device = Connection(right, rk.VoidService, name="kernel")
    yield kernel, device
    kernel.close()
    device.close()


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


class _KernelLoop:
    """A tornado IOLoop in its own thread, like the kernel's main thread when idle."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.loop: Any = None
        self.cpu: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        from tornado.ioloop import IOLoop

        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = IOLoop.current()
        self.loop.add_callback(self.ready.set)
        self.loop.start()

    def call(self, fn: Any, *args: Any) -> Any:
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            box["value"] = fn(*args)
            done.set()

        self.loop.add_callback(run)
        assert done.wait(10)
        return box.get("value")

    def stop(self) -> None:
        self.loop.add_callback(self.loop.stop)
        self._thread.join(10)


def test_the_idle_loop_does_not_spin_while_another_thread_reads(
        pair: tuple[Connection, Connection]) -> None:
    kernel, device = pair
    loop = _KernelLoop()
    try:
        server = loop.call(LoopServer, loop.loop)
        loop.call(server.attach_connection, kernel)
        assert kernel._recv_lock.acquire(timeout=5)  # another thread holds the reader role
        try:
            device._send_message(Kind.NOTIFY, None, UNKNOWN_NOTIFY, ())  # data waits
            time.sleep(0.2)
            before = loop.call(_thread_cpu)
            started = time.monotonic()
            time.sleep(2.0)
            used = loop.call(_thread_cpu) - before
            share = used / (time.monotonic() - started)
        finally:
            kernel._recv_lock.release()
        print(f"idle loop while another thread holds the reader role: {share:.1%} of a core")
        assert share < 0.05
        # Once the role is free, the loop serves what waited.
        deadline = time.monotonic() + 5
        while kernel.stats["messages_in"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert kernel.stats["messages_in"] >= 1
        loop.call(server.close)
    finally:
        loop.stop()


@pytest.mark.serial
def test_poll_all_returns_under_a_flood() -> None:
    left, right = socket.socketpair()
    kernel = Connection(SocketTransport(left, "device"), rk.VoidService, name="device")
    burst = frame(pack([Kind.NOTIFY, UNKNOWN_NOTIFY]), 1 << 20) * 10_000
    stop = threading.Event()

    def flood() -> None:  # far faster than anyone can serve: written as raw bytes
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                right.sendall(burst)
            except OSError:
                return

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        returned = threading.Event()
        outcome: dict[str, Any] = {}

        def poll() -> None:
            outcome["served"] = kernel.poll_all(0)
            returned.set()

        threading.Thread(target=poll, daemon=True).start()
        assert returned.wait(10), "poll_all(0) did not return while the flood went on"
        took = time.monotonic() - started
        print(f"poll_all(0) under a flood returned after {took * 1000:.1f} ms")
        assert outcome["served"] is True
        assert took < 1.0
    finally:
        stop.set()
        kernel.close()
        right.close()
        thread.join(10)
