"""The server side of every benchmarked system, one process per system.

    python -m benchmarks.servers {rk,rpyc,pyro5,floor} [--cpu N]

Binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout and serves until stdin closes
(so a dead runner never leaves a server behind). Every system exposes the same workload:
``echo``, an attribute ``value``, bytes and numpy payloads each way, a custom ``Widget``
for the notebook gestures and ``make_objects(n)`` for the per-proxy memory test.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import threading
from typing import Any

import msgpack
import numpy as np

_PAYLOADS: dict[int, bytes] = {}
_ARRAYS: dict[int, np.ndarray] = {}
_BYTEARRAYS: dict[int, bytearray] = {}
_LOCK = threading.Lock()


def payload(nbytes: int) -> bytes:
    """Incompressible bytes, cached so that producing them is not part of the timing."""
    with _LOCK:
        data = _PAYLOADS.get(nbytes)
        if data is None:
            data = _PAYLOADS[nbytes] = np.random.default_rng(nbytes).bytes(nbytes)
        return data


def mutable_payload(nbytes: int) -> bytearray:
    """A bytearray of incompressible bytes (cached; nobody changes it)."""
    data = payload(nbytes)
    with _LOCK:
        buffer = _BYTEARRAYS.get(nbytes)
        if buffer is None:
            buffer = _BYTEARRAYS[nbytes] = bytearray(data)
        return buffer


def array(nbytes: int) -> np.ndarray:
    """A float64 array of ``nbytes`` bytes (cached)."""
    with _LOCK:
        arr = _ARRAYS.get(nbytes)
        if arr is None:
            arr = _ARRAYS[nbytes] = np.random.default_rng(nbytes).random(nbytes // 8)
        return arr


class Widget:
    """A lab instrument stand-in: a custom class the notebook gestures run on.

    It has methods, properties and data attributes like a real driver object.
    """

    def __init__(self, name: str = "scope-1") -> None:
        self.name = name
        self.channels = 4
        self.sample_rate = 1.0e9
        self.settings = {"gain": 2, "offset": 0.0}

    def __repr__(self) -> str:
        return f"Widget({self.name!r}, channels={self.channels})"

    def _repr_html_(self) -> str:
        return f"<b>Widget</b> {self.name}"

    @property
    def status(self) -> str:
        """The instrument's state."""
        return "idle"

    def measure(self, channel: int = 1, samples: int = 1000) -> list:
        """Take ``samples`` readings on ``channel``."""
        return [0.0] * samples

    def configure(self, *, gain: int = 1, offset: float = 0.0) -> None:
        """Set the front-end gain and offset."""
        self.settings.update(gain=gain, offset=offset)

    def reset(self) -> None:
        """Back to defaults."""

    def trigger(self, level: float = 0.5, edge: str = "rising") -> bool:
        """Arm the trigger."""
        return True


class Holder:
    """A tiny object, held by the thousand for the memory test."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


class Workload:
    """The methods every system exposes (each framework wraps them its own way)."""

    value = 42

    def echo(self, x: Any) -> Any:
        return x

    def get_bytes(self, nbytes: int) -> bytes:
        return payload(nbytes)

    def put_bytes(self, data: Any) -> int:
        return len(data)

    def get_array(self, nbytes: int) -> np.ndarray:
        return array(nbytes)

    def put_array(self, arr: Any) -> int:
        return int(arr.nbytes)

    def get_bytearray(self, nbytes: int) -> bytearray:
        return mutable_payload(nbytes)

    def get_memoryview(self, nbytes: int) -> memoryview:
        return memoryview(payload(nbytes))

    def get_array_raw(self, nbytes: int) -> tuple:
        """For peers without numpy support: (bytes, dtype, shape)."""
        arr = array(nbytes)
        return (arr.tobytes(), arr.dtype.str, arr.shape)

    def put_array_raw(self, data: bytes, dtype: str, shape: Any) -> int:
        arr = np.frombuffer(data, dtype=dtype).reshape(tuple(shape))
        return int(arr.nbytes)

    def make_obj(self) -> Widget:
        return Widget()

    def make_objects(self, n: int) -> tuple:
        return tuple(Holder(i) for i in range(n))


# -- remote_kernel -------------------------------------------------------------------------

def serve_rk(sock_ready: Any) -> None:
    import remote_kernel as rk
    workload = Workload()

    class BenchService(rk.Service):
        exposed_value = 42

        def exposed_echo(self, x: Any) -> Any:
            return x

        def exposed_get_bytes(self, nbytes: int) -> bytes:
            return workload.get_bytes(nbytes)

        def exposed_put_bytes(self, data: Any) -> int:
            return workload.put_bytes(data)

        def exposed_get_array(self, nbytes: int) -> Any:
            return workload.get_array(nbytes)

        def exposed_put_array(self, arr: Any) -> int:
            return workload.put_array(arr)

        def exposed_get_bytearray(self, nbytes: int) -> Any:  # by reference, for obtain
            return workload.get_bytearray(nbytes)

        def exposed_get_memoryview(self, nbytes: int) -> Any:  # by reference, for obtain
            return workload.get_memoryview(nbytes)

        def exposed_make_obj(self) -> Widget:
            return workload.make_obj()

        def exposed_make_objects(self, n: int) -> tuple:
            return workload.make_objects(n)

    config = {"allow_public_attrs": True, "sync_request_timeout": 300.0,
              "max_message_size": 1 << 30}
    # RK_BENCH_TOKEN: measure with token auth (and, from wire revision 2, per-frame MACs).
    server = rk.Server(BenchService, host="127.0.0.1", port=0, config=config,
                       token=os.environ.get("RK_BENCH_TOKEN") or None)
    sock_ready(server.port)
    server.start()


# -- RPyC ------------------------------------------------------------------------------------

def serve_rpyc(sock_ready: Any) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    workload = Workload()

    class BenchService(rpyc.Service):
        exposed_value = 42

        def exposed_echo(self, x: Any) -> Any:
            return x

        def exposed_get_bytes(self, nbytes: int) -> bytes:
            return workload.get_bytes(nbytes)

        def exposed_put_bytes(self, data: Any) -> int:
            return workload.put_bytes(data)

        def exposed_get_array_raw(self, nbytes: int) -> tuple:
            return workload.get_array_raw(nbytes)

        def exposed_put_array_raw(self, data: bytes, dtype: str, shape: Any) -> int:
            return workload.put_array_raw(data, dtype, shape)

        def exposed_make_obj(self) -> Widget:
            return workload.make_obj()

        def exposed_make_objects(self, n: int) -> tuple:
            return workload.make_objects(n)

    config = {"allow_public_attrs": True, "sync_request_timeout": 300}
    server = ThreadedServer(BenchService, hostname="127.0.0.1", port=0,
                            protocol_config=config)
    # RPyC leaves Nagle on; every other system here turns it off. Accepted sockets inherit
    # TCP_NODELAY from the listener on Linux, so this makes the comparison like for like.
    server.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock_ready(server.port)
    server.start()


# -- Pyro5 -------------------------------------------------------------------------------------

def serve_pyro5(sock_ready: Any) -> None:
    import Pyro5
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"
    # COMMTIMEOUT 0 (Pyro5's default): blocking sockets. A timeout would put every receive
    # through poll() first; the runner's watchdog bounds a hung call instead.
    Pyro5.config.COMMTIMEOUT = 0.0
    Pyro5.config.SOCK_NODELAY = True
    Pyro5.config.MAX_MESSAGE_SIZE = 1 << 30

    workload = Workload()

    @Pyro5.api.expose
    @Pyro5.api.behavior(instance_mode="single")
    class Bench:
        @property
        def value(self) -> int:
            return 42

        def echo(self, x: Any) -> Any:
            return x

        def get_bytes(self, nbytes: int) -> bytes:
            return workload.get_bytes(nbytes)

        def put_bytes(self, data: Any) -> int:
            return workload.put_bytes(data)

        def get_array_raw(self, nbytes: int) -> tuple:
            return workload.get_array_raw(nbytes)

        def put_array_raw(self, data: bytes, dtype: str, shape: Any) -> int:
            return workload.put_array_raw(data, dtype, shape)

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    daemon.register(Bench(), "bench")
    sock_ready(daemon.locationStr.rsplit(":", 1)[1])
    daemon.requestLoop()


# -- the floor: framed msgpack ping-pong and raw TCP payloads ---------------------------------

HEADER = struct.Struct(">I")
OP_ECHO, OP_GET, OP_PUT, OP_BATCH = 0, 1, 2, 3


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` (recv_into a preallocated buffer, no copies)."""
    got, total = 0, len(view)
    while got < total:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("peer closed")
        got += n


def recv_frame(sock: socket.socket, header: bytearray) -> bytearray:
    recv_exactly(sock, memoryview(header))
    (length,) = HEADER.unpack(header)
    body = bytearray(length)
    recv_exactly(sock, memoryview(body))
    return body


def send_frame(sock: socket.socket, data: bytes | memoryview) -> None:
    sock.sendall(HEADER.pack(len(data)))
    sock.sendall(data)


def echo(x: Any) -> Any:
    return x


def _floor_client(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(4)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    try:
        while True:
            op, arg = unpackb(recv_frame(conn, header))
            if op == OP_ECHO:
                body = packb((OP_ECHO, arg))
                conn.sendall(HEADER.pack(len(body)) + body)
            elif op == OP_GET:
                send_frame(conn, memoryview(payload(arg)))
            elif op == OP_BATCH:  # n echo calls in one frame, n replies in one frame
                body = packb((OP_BATCH, [echo(x) for x in arg]))
                conn.sendall(HEADER.pack(len(body)) + body)
            elif op == OP_PUT:
                buf = bytearray(arg)
                recv_exactly(conn, memoryview(buf))
                body = packb((OP_PUT, len(buf)))
                conn.sendall(HEADER.pack(len(body)) + body)
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def serve_floor(sock_ready: Any) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    sock_ready(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_floor_client, args=(conn,), daemon=True).start()


SERVERS = {"rk": serve_rk, "rpyc": serve_rpyc, "pyro5": serve_pyro5, "floor": serve_floor}


def _exit_when_stdin_closes() -> None:
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=sorted(SERVERS))
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()

    def ready(port: Any) -> None:
        print(f"PORT {int(port)}", flush=True)

    SERVERS[args.system](ready)


if __name__ == "__main__":
    main()
