"""The client side: one adapter per system, all with the same small interface.

Each adapter turns a benchmark operation ("call echo", "download n bytes", ...) into that
system's idiomatic code. Where a system cannot do something (Pyro5 has no transparent
proxies, no async calls) the method raises :class:`Unsupported` and the cell stays empty.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from benchmarks.servers import HEADER, OP_ECHO, OP_GET, OP_PUT, recv_exactly

TIMEOUT = 300.0  # seconds; every request of every system is bounded by it


class Unsupported(Exception):
    """The system has no equivalent of this operation."""


class Client:
    """The interface; every operation returns something small to check."""

    name = "?"

    def echo(self) -> Any:
        """``root.echo(1)`` including the attribute lookup."""
        raise Unsupported

    def prebound(self) -> Callable[[], Any]:
        """A zero-argument callable that calls an already bound remote ``echo(1)``."""
        raise Unsupported

    def attr(self) -> Any:
        """Read a plain attribute of the remote service."""
        raise Unsupported

    def get_bytes(self, nbytes: int) -> int:
        raise Unsupported

    def put_bytes(self, data: bytes) -> int:
        raise Unsupported

    def get_array(self, nbytes: int) -> int:
        raise Unsupported

    def put_array(self, arr: np.ndarray) -> int:
        raise Unsupported

    def sync_calls(self, n: int) -> None:
        call = self.prebound()
        for _ in range(n):
            call()

    def pipelined(self, n: int) -> None:
        """Send ``n`` echo calls without waiting, then wait for all the replies."""
        raise Unsupported

    def thread_caller(self) -> Callable[[], Any]:
        """A callable for one of several threads sharing this client."""
        return self.echo

    def close(self) -> None:
        pass


class RemoteKernelClient(Client):
    name = "remote_kernel"

    def __init__(self, port: int) -> None:
        import remote_kernel as rk

        self.rk = rk
        config = {"sync_request_timeout": TIMEOUT, "max_message_size": 1 << 30}
        self.conn = rk.connect("127.0.0.1", port, config=config)
        self.root = self.conn.root

    def echo(self) -> Any:
        return self.root.echo(1)

    def prebound(self) -> Callable[[], Any]:
        echo = self.root.echo
        return lambda: echo(1)

    def attr(self) -> Any:
        return self.root.value

    def get_bytes(self, nbytes: int) -> int:
        return len(self.root.get_bytes(nbytes))

    def put_bytes(self, data: bytes) -> int:
        return self.root.put_bytes(data)

    def get_array(self, nbytes: int) -> int:
        return self.rk.obtain(self.root.get_array(nbytes)).nbytes

    def put_array(self, arr: np.ndarray) -> int:
        return self.root.put_array(self.rk.deliver(self.conn, arr))

    def pipelined(self, n: int) -> None:
        call = self.rk.async_(self.root.echo)
        results = [call(i) for i in range(n)]
        for result in results:
            result.wait(TIMEOUT)
        assert results[-1].value == n - 1

    def close(self) -> None:
        self.conn.close()


class RPyCClient(Client):
    name = "rpyc"

    def __init__(self, port: int) -> None:
        import rpyc

        self.rpyc = rpyc
        self.conn = rpyc.connect("127.0.0.1", port,
                                 config={"sync_request_timeout": TIMEOUT})
        self.root = self.conn.root

    def echo(self) -> Any:
        return self.root.echo(1)

    def prebound(self) -> Callable[[], Any]:
        echo = self.root.echo
        return lambda: echo(1)

    def attr(self) -> Any:
        return self.root.value

    def get_bytes(self, nbytes: int) -> int:
        return len(self.root.get_bytes(nbytes))

    def put_bytes(self, data: bytes) -> int:
        return self.root.put_bytes(data)

    def get_array(self, nbytes: int) -> int:
        # No numpy by value without pickle: ship (bytes, dtype, shape) and rebuild.
        data, dtype, shape = self.root.get_array_raw(nbytes)
        return np.frombuffer(data, dtype=dtype).reshape(tuple(shape)).nbytes

    def put_array(self, arr: np.ndarray) -> int:
        return self.root.put_array_raw(arr.tobytes(), arr.dtype.str, arr.shape)

    def pipelined(self, n: int) -> None:
        call = self.rpyc.async_(self.root.echo)
        results = [call(i) for i in range(n)]
        for result in results:
            result.wait()
        assert results[-1].value == n - 1

    def close(self) -> None:
        self.conn.close()


class Pyro5Client(Client):
    name = "pyro5_msgpack"

    def __init__(self, port: int) -> None:
        import Pyro5
        import Pyro5.api

        Pyro5.config.SERIALIZER = "msgpack"
        Pyro5.config.COMMTIMEOUT = TIMEOUT
        Pyro5.config.MAX_MESSAGE_SIZE = 1 << 30
        self.api = Pyro5.api
        self.uri = f"PYRO:bench@127.0.0.1:{port}"
        self.proxy = self.api.Proxy(self.uri)
        self.proxy._pyroBind()
        self._extra: list[Any] = []

    def echo(self) -> Any:
        return self.proxy.echo(1)

    def prebound(self) -> Callable[[], Any]:
        echo = self.proxy.echo
        return lambda: echo(1)

    def attr(self) -> Any:
        return self.proxy.value

    def get_bytes(self, nbytes: int) -> int:
        return len(self.proxy.get_bytes(nbytes))

    def put_bytes(self, data: bytes) -> int:
        return self.proxy.put_bytes(data)

    def get_array(self, nbytes: int) -> int:
        data, dtype, shape = self.proxy.get_array_raw(nbytes)
        return np.frombuffer(data, dtype=dtype).reshape(tuple(shape)).nbytes

    def put_array(self, arr: np.ndarray) -> int:
        return self.proxy.put_array_raw(arr.tobytes(), arr.dtype.str, list(arr.shape))

    def thread_caller(self) -> Callable[[], Any]:
        # A Pyro5 proxy belongs to one thread: each thread gets its own (own connection).
        proxy = self.api.Proxy(self.uri)
        proxy._pyroBind()
        self._extra.append(proxy)

        def call() -> Any:
            proxy._pyroClaimOwnership()
            return proxy.echo(1)

        return call

    def close(self) -> None:
        for proxy in [self.proxy, *self._extra]:
            proxy._pyroClaimOwnership()
            proxy._pyroRelease()
        self._extra.clear()


class FloorClient(Client):
    """A framed msgpack ping-pong (latency floor) and raw TCP payloads (throughput floor)."""

    name = "floor"

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.header = bytearray(4)
        self.packb, self.unpackb = msgpack.packb, msgpack.unpackb

    def _request(self, op: int, arg: Any) -> bytes:
        body = self.packb((op, arg))
        self.sock.sendall(HEADER.pack(len(body)) + body)
        return self._frame()

    def _frame(self) -> bytearray:
        recv_exactly(self.sock, memoryview(self.header))
        (length,) = HEADER.unpack(self.header)
        body = bytearray(length)
        recv_exactly(self.sock, memoryview(body))
        return body

    def echo(self) -> Any:
        return self.unpackb(self._request(OP_ECHO, 1))[1]

    def prebound(self) -> Callable[[], Any]:
        return self.echo

    def attr(self) -> Any:
        return self.echo()

    def get_bytes(self, nbytes: int) -> int:
        return len(self._request(OP_GET, nbytes))

    def put_bytes(self, data: bytes | memoryview) -> int:
        body = self.packb((OP_PUT, len(data)))
        self.sock.sendall(HEADER.pack(len(body)) + body)
        self.sock.sendall(data)
        return self.unpackb(self._frame())[1]

    def get_array(self, nbytes: int) -> int:
        return np.frombuffer(self._request(OP_GET, nbytes), dtype=np.float64).nbytes

    def put_array(self, arr: np.ndarray) -> int:
        return self.put_bytes(memoryview(arr).cast("B"))

    def pipelined(self, n: int) -> None:
        packb = self.packb
        for i in range(n):
            body = packb((OP_ECHO, i))
            self.sock.sendall(HEADER.pack(len(body)) + body)
        for _ in range(n):
            last = self._frame()
        assert self.unpackb(last)[1] == n - 1

    def thread_caller(self) -> Callable[[], Any]:
        raise Unsupported

    def close(self) -> None:
        self.sock.close()


CLIENTS: dict[str, type[Client]] = {
    "remote_kernel": RemoteKernelClient,
    "rpyc": RPyCClient,
    "pyro5_msgpack": Pyro5Client,
    "floor": FloorClient,
}
SERVER_OF = {"remote_kernel": "rk", "rpyc": "rpyc", "pyro5_msgpack": "pyro5", "floor": "floor"}
