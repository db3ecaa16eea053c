"""The client side: one adapter per system, all with the same small interface.

Each adapter turns a benchmark operation ("call echo", "download n bytes", ...) into that
system's idiomatic code, through its public API only (``import remote_kernel as rk``).
Where a system cannot do something (Pyro5 has no transparent proxies and no async calls,
RPyC no batches) the method raises :class:`Unsupported` and the cell stays empty, with the
reason as a note.

Like for like: every system sets TCP_NODELAY on both ends (see ``socket_options``);
"pre-bound" means the remote method was looked up once, before the timed calls, on every
system; "one shared connection" means the threads share one connection (and one pre-bound
method) on every system that allows it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from benchmarks.servers import HEADER, OP_BATCH, OP_ECHO, OP_GET, OP_PUT, recv_exactly

TIMEOUT = 300.0  # seconds; every request of every system is bounded by it (or the watchdog)


class Unsupported(Exception):
    """The system has no equivalent of this operation (the message says why)."""


def _nodelay(sock: socket.socket | None) -> int | None:
    if sock is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    except OSError:
        return None


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

    # Issue 26: copies of a remote object the server holds (remote_kernel only; the other
    # systems have no netref-to-value copy, so these cells stay empty without a note).
    def obtain_memoryview(self, nbytes: int) -> int:
        """``rk.obtain`` of a netref of a memoryview of bytes (read in place, no snapshot)."""
        raise Unsupported

    def obtain_bytearray(self, nbytes: int) -> int:
        """``rk.obtain`` of a netref of a bytearray (a snapshot on the server)."""
        raise Unsupported

    def asarray(self, nbytes: int) -> int:
        """``np.asarray`` of a netref of a float64 ndarray."""
        raise Unsupported

    def deliver_bytearray(self, data: bytearray) -> int:
        """``rk.deliver`` of a bytearray (what ``%remote push`` does with one)."""
        raise Unsupported

    def sync_calls(self, n: int) -> None:
        call = self.prebound()
        for _ in range(n):
            call()

    def pipelined(self, n: int) -> None:
        """Send ``n`` echo calls without waiting, then wait for all the replies."""
        raise Unsupported

    def batch(self, n: int) -> None:
        """``n`` echo calls sent as one message, answered in one message."""
        raise Unsupported

    def shared_caller(self) -> Callable[[], Any]:
        """A pre-bound call for one of several threads that share this client's connection."""
        raise Unsupported

    def own_connection_caller(self) -> Callable[[], Any]:
        """A pre-bound call on a new connection of its own (closed by :meth:`close`)."""
        raise Unsupported

    def socket_options(self) -> dict[str, Any]:
        """TCP_NODELAY as read back from the client's socket, and notes."""
        return {}

    def reclaim(self) -> None:
        """Make the main thread the user of this client again after a threaded metric."""

    def close(self) -> None:
        pass


class RemoteKernelClient(Client):
    name = "remote_kernel"

    def __init__(self, port: int) -> None:
        import remote_kernel as rk

        self.rk = rk
        self.port = port
        self.conn = self._connect()
        self.root = self.conn.root
        self._extra: list[Any] = []

    def _connect(self) -> Any:
        config = {"sync_request_timeout": TIMEOUT, "max_message_size": 1 << 30}
        return self.rk.connect("127.0.0.1", self.port, config=config,
                               token=os.environ.get("RK_BENCH_TOKEN") or None)

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

    def obtain_memoryview(self, nbytes: int) -> int:
        return len(self.rk.obtain(self.root.get_memoryview(nbytes)))

    def obtain_bytearray(self, nbytes: int) -> int:
        return len(self.rk.obtain(self.root.get_bytearray(nbytes)))

    def asarray(self, nbytes: int) -> int:
        return np.asarray(self.root.get_array(nbytes)).nbytes

    def deliver_bytearray(self, data: bytearray) -> int:
        return self.root.put_bytes(self.rk.deliver(self.conn, data))

    def pipelined(self, n: int) -> None:
        call = self.rk.async_(self.root.echo)
        results = [call(i) for i in range(n)]
        for result in results:
            result.wait(TIMEOUT)
        assert results[-1].value == n - 1

    def batch(self, n: int) -> None:
        if not hasattr(self.rk, "batch"):
            raise Unsupported("rk.batch does not exist yet")
        echo = self.root.echo
        with self.rk.batch(self.conn) as b:
            results = [b.call(echo, i) for i in range(n)]
        assert results[-1].value == n - 1

    def shared_caller(self) -> Callable[[], Any]:
        return self.prebound()

    def own_connection_caller(self) -> Callable[[], Any]:
        conn = self._connect()
        self._extra.append(conn)
        echo = conn.root.echo
        return lambda: echo(1)

    def socket_options(self) -> dict[str, Any]:
        return {"TCP_NODELAY": "set on both ends by remote_kernel's socket transport "
                "(not readable through the public API)"}

    def close(self) -> None:
        for conn in self._extra:
            conn.close()
        self._extra.clear()
        self.conn.close()


class RPyCClient(Client):
    name = "rpyc"

    def __init__(self, port: int) -> None:
        import rpyc

        self.rpyc = rpyc
        self.port = port
        self.conn = self._connect()
        self.root = self.conn.root
        self._extra: list[Any] = []

    def _connect(self) -> Any:
        # rpyc.connect() leaves Nagle on; connect through a stream with TCP_NODELAY instead
        # (the server's listener sets it too), as every other system here does.
        from rpyc.core.stream import SocketStream
        from rpyc.utils.factory import connect_stream

        stream = SocketStream.connect("127.0.0.1", self.port, nodelay=True)
        return connect_stream(stream, config={"sync_request_timeout": TIMEOUT})

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

    def batch(self, n: int) -> None:
        raise Unsupported("RPyC has no batch API")

    def shared_caller(self) -> Callable[[], Any]:
        return self.prebound()

    def own_connection_caller(self) -> Callable[[], Any]:
        conn = self._connect()
        self._extra.append(conn)
        echo = conn.root.echo
        return lambda: echo(1)

    def socket_options(self) -> dict[str, Any]:
        return {"TCP_NODELAY": _nodelay(self.conn._channel.stream.sock),
                "note": "client via SocketStream.connect(nodelay=True); server listener set"}

    def close(self) -> None:
        for conn in self._extra:
            conn.close()
        self._extra.clear()
        self.conn.close()


class Pyro5Client(Client):
    name = "pyro5_msgpack"

    def __init__(self, port: int) -> None:
        import Pyro5
        import Pyro5.api

        Pyro5.config.SERIALIZER = "msgpack"
        # Pyro5's default COMMTIMEOUT (0): blocking sockets, no poll() before each receive.
        # Hung calls are bounded by the runner's watchdog (it kills the server).
        Pyro5.config.COMMTIMEOUT = 0.0
        Pyro5.config.SOCK_NODELAY = True
        Pyro5.config.MAX_MESSAGE_SIZE = 1 << 30
        self.api = Pyro5.api
        self.uri = f"PYRO:bench@127.0.0.1:{port}"
        self.proxy = self.api.Proxy(self.uri)
        self.proxy._pyroBind()
        self._extra: list[Any] = []
        self._lock = threading.Lock()

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

    def pipelined(self, n: int) -> None:
        raise Unsupported("Pyro5 has no async calls (only oneway and batches)")

    def batch(self, n: int) -> None:
        self.proxy._pyroClaimOwnership()
        batch = self.api.BatchProxy(self.proxy)
        for i in range(n):
            batch.echo(i)
        results = list(batch())
        assert results[-1] == n - 1 and len(results) == n

    def shared_caller(self) -> Callable[[], Any]:
        # A Pyro5 proxy checks that the calling thread owns it; threads may share one by
        # claiming ownership (_pyroClaimOwnership) before each call. The claim and the call
        # must not interleave with another thread's, so a lock holds them together (the
        # connection carries one call at a time anyway).
        proxy, lock = self.proxy, self._lock
        echo = proxy.echo

        def call() -> Any:
            with lock:
                proxy._pyroClaimOwnership()
                return echo(1)

        return call

    def own_connection_caller(self) -> Callable[[], Any]:
        proxy = self.api.Proxy(self.uri)
        proxy._pyroBind()
        self._extra.append(proxy)
        echo = proxy.echo

        def call() -> Any:
            proxy._pyroClaimOwnership()  # created here, called from a worker thread
            return echo(1)

        return call

    def reclaim(self) -> None:
        self.proxy._pyroClaimOwnership()

    def socket_options(self) -> dict[str, Any]:
        conn = getattr(self.proxy, "_pyroConnection", None)
        return {"TCP_NODELAY": _nodelay(getattr(conn, "sock", None)),
                "note": "SOCK_NODELAY=True both ends; COMMTIMEOUT=0 (blocking, no poll mode)"}

    def close(self) -> None:
        for proxy in [self.proxy, *self._extra]:
            proxy._pyroClaimOwnership()
            proxy._pyroRelease()
        self._extra.clear()


class FloorClient(Client):
    """A framed msgpack ping-pong (latency floor) and raw TCP payloads (throughput floor)."""

    name = "floor"

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking, like every other system here: with a timeout Python would poll() before
        # every receive (the watchdog bounds a hung call instead).
        self.sock.settimeout(None)
        self.header = bytearray(4)
        self.packb, self.unpackb = msgpack.packb, msgpack.unpackb
        self._lock = threading.Lock()
        self._extra: list[FloorClient] = []

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

    def batch(self, n: int) -> None:
        results = self.unpackb(self._request(OP_BATCH, list(range(n))))[1]
        assert results[-1] == n - 1 and len(results) == n

    def shared_caller(self) -> Callable[[], Any]:
        # One request in flight per socket: threads take turns under a lock.
        lock, echo = self._lock, self.echo

        def call() -> Any:
            with lock:
                return echo()

        return call

    def own_connection_caller(self) -> Callable[[], Any]:
        other = FloorClient(self.port)
        self._extra.append(other)
        return other.echo

    def socket_options(self) -> dict[str, Any]:
        return {"TCP_NODELAY": _nodelay(self.sock), "note": "set on both ends; blocking"}

    def close(self) -> None:
        for other in self._extra:
            other.close()
        self._extra.clear()
        self.sock.close()


CLIENTS: dict[str, type[Client]] = {
    "remote_kernel": RemoteKernelClient,
    "rpyc": RPyCClient,
    "pyro5_msgpack": Pyro5Client,
    "floor": FloorClient,
}
SERVER_OF = {"remote_kernel": "rk", "rpyc": "rpyc", "pyro5_msgpack": "pyro5", "floor": "floor"}
