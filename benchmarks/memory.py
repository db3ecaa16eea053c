"""Client memory per held proxy, in a fresh process.

    python -m benchmarks.memory {remote_kernel,rpyc} PORT [--n 100000]

Fetches ``n`` proxies at once (a tuple travels by value with its items by reference, in
both protocols) and holds them. Prints JSON with the growth of the Python heap
(tracemalloc) and of the resident set (RSS) per proxy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tracemalloc
from typing import Any

TIMEOUT = 300.0


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=["remote_kernel", "rpyc"])
    parser.add_argument("port", type=int)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.system == "remote_kernel":
        import remote_kernel as rk
        conn: Any = rk.connect("127.0.0.1", args.port,
                               config={"sync_request_timeout": TIMEOUT,
                                       "max_message_size": 1 << 30})
    else:
        import rpyc

        conn = rpyc.connect("127.0.0.1", args.port, config={"sync_request_timeout": TIMEOUT})
    root = conn.root
    # Warm up: the proxy class of Holder, the connection's buffers.
    warm = root.make_objects(100)
    del warm
    gc.collect()

    # 1) RSS without tracemalloc's overhead in the way.
    before = rss()
    held = root.make_objects(args.n)
    gc.collect()
    rss_delta = rss() - before
    assert len(held) == args.n
    del held
    gc.collect()

    # 2) The Python heap, object by object.
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    held = root.make_objects(args.n)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(held) == args.n
    json.dump({"system": args.system, "n": args.n,
               "tracemalloc_bytes_per_proxy": (current - base) / args.n,
               "tracemalloc_peak_bytes_per_proxy": (peak - base) / args.n,
               "rss_bytes_per_proxy": rss_delta / args.n}, sys.stdout)
    sys.stdout.flush()
    os._exit(0)  # do not wait for 100k releases


if __name__ == "__main__":
    main()
