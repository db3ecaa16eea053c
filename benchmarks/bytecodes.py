"""Bytecodes executed per call, per function, on the client and on the server.

    python -m benchmarks.bytecodes [--calls 200] [--top 25] [--row prebound|echo|attr]

Callgrind (``benchmarks.instructions``) says how many instructions a call costs and in which
C functions; it cannot say which Python function runs them. This does: a server thread and
a client in one process, each traced with ``f_trace_opcodes``, every executed bytecode
counted against its function. Like the instruction counts, the figures do not depend on the
machine's load, and a run takes seconds. The server runs in a thread here (the same code
path as ``remote-kernel serve``'s connection threads); only the timed calls are counted.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

Tracer = Callable[[FrameType, str, Any], Any]


class OpcodeCounter:
    """Counts executed bytecodes per ``file:function`` while ``on`` is set."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.on = False

    def tracer(self) -> Tracer:
        counts = self.counts

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode" and self.on:
                code = frame.f_code
                counts[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
            return local

        def start(frame: FrameType, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            return local

        return start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--row", choices=["prebound", "echo", "attr"], default="prebound")
    args = parser.parse_args(argv)
    import remote_kernel as rk

    class BenchService(rk.Service):
        exposed_value = 42

        def exposed_echo(self, x: Any) -> Any:
            return x

    config = {"allow_public_attrs": True, "sync_request_timeout": 60.0}
    server_side, client_side = OpcodeCounter(), OpcodeCounter()
    threading.settrace(server_side.tracer())  # the server's threads, started below
    server = rk.Server(BenchService, host="127.0.0.1", port=0, config=config)
    threading.Thread(target=server.start, daemon=True).start()
    conn = rk.connect("127.0.0.1", server.port, config=config)
    threading.settrace(None)  # type: ignore[arg-type]
    root = conn.root
    echo = root.echo
    call = {"prebound": lambda: echo(1), "echo": lambda: root.echo(1),
            "attr": lambda: root.value}[args.row]
    for _ in range(50):
        call()
    sys.settrace(client_side.tracer())
    server_side.on = client_side.on = True
    for _ in range(args.calls):
        call()
    server_side.on = client_side.on = False
    sys.settrace(None)
    for side, counter in (("client", client_side), ("server", server_side)):
        total = sum(counter.counts.values()) / args.calls
        print(f"{side}: {total:.0f} bytecodes per call ({args.row})")
        for name, count in counter.counts.most_common(args.top):
            print(f"  {count / args.calls:8.1f}  {name}")
    conn.close()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
