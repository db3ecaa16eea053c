"""Profile remote_kernel on both ends for echo latency and 64 MiB transfers.

    python -m benchmarks.profile_rk [echo|transfer|all] [--calls N] [--top K] [--out DIR]

The server runs in its own process with its connection thread under cProfile; the client
profiles its own calls. Both profiles are printed (sorted by own time) and saved as
``.prof`` files for snakeviz / pstats. Client and server share one CPU, as in the runner.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import ServerProcess, pin_plan

MiB = 1 << 20


def serve_profiled(path: str, cpu_args: list[str]) -> None:
    """The server side: every connection thread's ``serve_all`` runs under cProfile."""
    import remote_kernel as rk

    Connection = rk.Connection  # the public name: the module it lives in may move
    original = Connection.serve_all

    def serve_all(self: Any) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()
            profile.dump_stats(path)

    Connection.serve_all = serve_all  # type: ignore[method-assign]
    from benchmarks.servers import main as servers_main

    servers_main(["rk", *cpu_args])


def show(path: Path, title: str, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    body = text[text.find("   ncalls"):] if "   ncalls" in text else text
    return f"\n=== {title} ===\n{body}"


def client_echo(port: int, calls: int, prof: Path) -> float:
    import remote_kernel as rk

    conn = rk.connect("127.0.0.1", port, config={"sync_request_timeout": 60.0})
    root = conn.root
    for _ in range(200):
        root.echo(1)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for _ in range(calls):
        root.echo(1)
    profile.disable()
    elapsed = time.perf_counter() - start
    profile.dump_stats(str(prof))
    conn.close()
    return elapsed / calls * 1e6


def client_transfer(port: int, prof: Path) -> dict[str, float]:
    import numpy as np

    import remote_kernel as rk

    conn = rk.connect("127.0.0.1", port,
                      config={"sync_request_timeout": 120.0, "max_message_size": 1 << 30})
    root = conn.root
    data = np.random.default_rng(1).bytes(64 * MiB)
    arr = np.random.default_rng(2).random(8 * MiB)
    root.get_bytes(64 * MiB)  # the server builds its payloads once, outside the profile
    rk.obtain(root.get_array(64 * MiB))
    cases = {
        "bytes server→client": lambda: len(root.get_bytes(64 * MiB)),
        "bytes client→server": lambda: root.put_bytes(data),
        "numpy server→client": lambda: rk.obtain(root.get_array(64 * MiB)).nbytes,
        "numpy client→server": lambda: root.put_array(rk.deliver(conn, arr)),
    }
    rates = {}
    profile = cProfile.Profile()
    for name, fn in cases.items():
        start = time.perf_counter()
        profile.enable()
        got = fn()
        profile.disable()
        rates[name] = 64 / (time.perf_counter() - start)
        assert got == 64 * MiB, got
    profile.dump_stats(str(prof))
    conn.close()
    return rates


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split(calls: int) -> None:
    """Wall time and CPU per echo call on each side, without a profiler, for every system:
    on one shared CPU the latency is (nearly) client CPU + server CPU."""
    from benchmarks.clients import CLIENTS

    client_cpu, server_cpu = pin_plan("same")
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    print(f"{'system':16} {'wall µs':>8} {'client CPU µs':>14} {'server CPU µs':>14}")
    for system in ("floor", "pyro5_msgpack", "remote_kernel", "rpyc"):
        server = ServerProcess(system, server_cpu)
        try:
            client = CLIENTS[system](server.wait_port())
            for _ in range(300):
                client.echo()
            rows = []
            for _ in range(3):
                c0, s0, t0 = time.process_time(), proc_cpu(server.proc.pid), time.perf_counter()
                for _ in range(calls):
                    client.echo()
                t1, c1, s1 = time.perf_counter(), time.process_time(), proc_cpu(server.proc.pid)
                rows.append(((t1 - t0), (c1 - c0), (s1 - s0)))
            client.close()
        finally:
            server.stop()
        wall, ccpu, scpu = (sorted(r[i] for r in rows)[1] / calls * 1e6 for i in range(3))
        print(f"{system:16} {wall:8.1f} {ccpu:14.1f} {scpu:14.1f}")


def run(kind: str, calls: int, top: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    client_cpu, server_cpu = pin_plan("same")
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    server_prof = out / f"{kind}-server.prof"
    client_prof = out / f"{kind}-client.prof"
    server_prof.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.profile_rk", "_serve", str(server_prof)]
    server = ServerProcess("remote_kernel", server_cpu, cmd)
    try:
        port = server.wait_port()
        if kind == "echo":
            us = client_echo(port, calls, client_prof)
            summary = f"echo under cProfile: {us:.0f} µs per call ({calls} calls)"
        else:
            rates = client_transfer(port, client_prof)
            summary = "64 MiB under cProfile: " + ", ".join(
                f"{k} {v:.0f} MiB/s" for k, v in rates.items())
        for _ in range(100):  # the server dumps its profile when the connection closes
            if server_prof.exists() and server_prof.stat().st_size > 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        server.stop()
    print(summary)
    print(show(client_prof, f"{kind}: client", top))
    if server_prof.exists():
        print(show(server_prof, f"{kind}: server (connection thread)", top))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_serve":
        serve_profiled(argv[1], argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", nargs="?", default="all", choices=["echo", "transfer", "cpu", "all"])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "profiles"))
    args = parser.parse_args(argv)
    if args.kind in ("cpu", "all"):
        cpu_split(args.calls)
    kinds = ["echo", "transfer"] if args.kind == "all" else [args.kind]
    for kind in (k for k in kinds if k != "cpu"):
        run(kind, args.calls, args.top, Path(args.out))


if __name__ == "__main__":
    main()
