"""Load, loopback only: many concurrent clients against a server in another process, and
netref create/drop churn with the resident memory of both sides before and after.

    python -m tests.hardening.load --clients 100 --calls 1000 --netrefs 1000000

Prints one line per figure and exits 1 if any call failed, returned the wrong value, or the
object table did not drain. ``make load`` runs the full size; ``make test`` a small one.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import remote_kernel as rk  # noqa: E402


class LoadService(rk.Service):
    """What the load runs call: an echo, and fresh objects to make netrefs of."""

    def exposed_echo(self, value: Any) -> Any:
        return value

    def exposed_fresh(self, n: int) -> tuple:
        return tuple(Widget() for _ in range(n))

    def exposed_table_size(self) -> int:
        return self._conn.local_object_count

    def exposed_rss(self) -> int:
        import psutil

        gc.collect()
        return psutil.Process().memory_info().rss

    def on_connect(self, conn: rk.Connection) -> None:
        self._conn = conn


class Widget:
    __slots__ = ("__weakref__",)


class ServerProcess:
    """``remote-kernel serve`` with LoadService, in a child process, on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.file = directory / "load-server.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remote_kernel", "serve", "--host", "127.0.0.1",
             "--service", "tests.hardening.load:LoadService", "--no-auth",
             "--connection-file", str(self.file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + 30
        while not self.file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the load server did not start")
            time.sleep(0.02)
        self.port = int(json.loads(self.file.read_text())["port"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stderr:
            self.process.stderr.close()


def _client(port: int, calls: int, latencies: array.array, errors: list[str],
            lock: threading.Lock, start: threading.Event) -> None:
    mine = array.array("d")
    try:
        conn = rk.connect("127.0.0.1", port, timeout=60, config={"sync_request_timeout": 60.0})
    except Exception as exc:  # noqa: BLE001 - counted as an error
        with lock:
            errors.append(f"connect: {exc}")
        return
    try:
        echo = conn.root.echo
        start.wait(60)
        clock = time.perf_counter
        for i in range(calls):
            began = clock()
            try:
                value = echo(i)
            except Exception as exc:  # noqa: BLE001 - counted as an error
                with lock:
                    errors.append(f"call: {type(exc).__name__}: {exc}")
                continue
            mine.append(clock() - began)
            if value != i:
                with lock:
                    errors.append(f"wrong value {value!r} for {i}")
    finally:
        conn.close()
        with lock:
            latencies.extend(mine)


def worker(port: int, clients: int, calls: int, out: Path) -> int:
    """One client process: ``clients`` threads, each with its own connection."""
    latencies: array.array = array.array("d")
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Event()
    threads = [threading.Thread(target=_client, args=(port, calls, latencies, errors, lock,
                                                      start), daemon=True)
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # let the connections finish their handshakes
    began = time.perf_counter()
    start.set()
    for thread in threads:
        thread.join(600)
    elapsed = time.perf_counter() - began
    alive = sum(thread.is_alive() for thread in threads)
    with open(out, "wb") as handle:
        latencies.tofile(handle)
    out.with_suffix(".json").write_text(json.dumps(
        {"errors": errors[:20], "error_count": len(errors) + alive, "elapsed": elapsed}))
    return 0


def run_calls(port: int, clients: int, calls: int, processes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rk-load-") as tmp:
        children = []
        per = [clients // processes + (1 if n < clients % processes else 0)
               for n in range(processes)]
        for n, count in enumerate(per):
            if count == 0:
                continue
            out = Path(tmp) / f"worker{n}.bin"
            children.append((out, subprocess.Popen(
                [sys.executable, "-m", "tests.hardening.load", "--worker", str(port),
                 str(count), str(calls), str(out)], cwd=str(ROOT),
                env=dict(os.environ, PYTHONPATH=str(ROOT)))))
        latencies = array.array("d")
        errors: list[str] = []
        error_count = 0
        elapsed = 0.0
        for out, child in children:
            try:
                child.wait(900)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
                error_count += 1
                errors.append("a worker process timed out")
                continue
            if not out.exists():
                error_count += 1
                errors.append(f"worker exited {child.returncode} without results")
                continue
            with open(out, "rb") as handle:
                latencies.frombytes(handle.read())
            summary = json.loads(out.with_suffix(".json").read_text())
            error_count += summary["error_count"]
            errors += summary["errors"]
            elapsed = max(elapsed, summary["elapsed"])
    ordered = sorted(latencies)

    def percentile(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

    return {"calls": len(ordered), "errors": error_count, "error_samples": errors[:5],
            "elapsed": elapsed, "calls_per_s": len(ordered) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(0.50) * 1e3, "p99_ms": percentile(0.99) * 1e3,
            "max_ms": ordered[-1] * 1e3 if ordered else 0.0}


def run_netrefs(port: int, total: int, batch: int = 1000) -> dict[str, Any]:
    """``total`` netrefs created and dropped, ``batch`` per call; RSS after a warm-up."""
    import psutil

    me = psutil.Process()
    conn = rk.connect("127.0.0.1", port, timeout=30)
    try:
        root = conn.root
        rounds = max(1, total // batch)
        warmup = max(1, rounds // 10)

        def cycle() -> None:
            refs = root.fresh(batch)
            assert len(refs) == batch
            del refs

        for _ in range(warmup):
            cycle()
        gc.collect()
        root.echo(None)  # flush queued releases
        before = (me.memory_info().rss, root.rss())
        began = time.perf_counter()
        for _ in range(rounds - warmup):
            cycle()
        elapsed = time.perf_counter() - began
        gc.collect()
        root.echo(None)
        after = (me.memory_info().rss, root.rss())
        table = root.table_size()
        proxies = conn.proxy_count
    finally:
        conn.close()
    return {"netrefs": rounds * batch, "elapsed": elapsed,
            "netrefs_per_s": (rounds - warmup) * batch / elapsed if elapsed else 0.0,
            "client_rss_mib": (before[0] / 2**20, after[0] / 2**20),
            "server_rss_mib": (before[1] / 2**20, after[1] / 2**20),
            "server_table_after": table, "client_proxies_after": proxies}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        port, clients, calls, out = argv[1:5]
        return worker(int(port), int(clients), int(calls), Path(out))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2,
                        help="client processes the clients are spread over")
    parser.add_argument("--netrefs", type=int, default=1_000_000)
    parser.add_argument("--max-rss-growth-mib", type=float, default=50.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rk-load-server-") as tmp:
        server = ServerProcess(Path(tmp))
        try:
            calls = run_calls(server.port, args.clients, args.calls, args.processes)
            print(f"load: {args.clients} clients x {args.calls} calls: {calls['calls']} calls, "
                  f"{calls['errors']} errors, {calls['calls_per_s']:.0f} calls/s, "
                  f"p50 {calls['p50_ms']:.2f} ms, p99 {calls['p99_ms']:.2f} ms, "
                  f"max {calls['max_ms']:.1f} ms", flush=True)
            for sample in calls["error_samples"]:
                print(f"load: error: {sample}")
            churn = run_netrefs(server.port, args.netrefs)
            client_rss, server_rss = churn["client_rss_mib"], churn["server_rss_mib"]
            print(f"load: {churn['netrefs']} netrefs created and dropped "
                  f"({churn['netrefs_per_s']:.0f}/s); client RSS {client_rss[0]:.1f} -> "
                  f"{client_rss[1]:.1f} MiB, server RSS {server_rss[0]:.1f} -> "
                  f"{server_rss[1]:.1f} MiB; server table {churn['server_table_after']}, "
                  f"client proxies {churn['client_proxies_after']}", flush=True)
        finally:
            server.stop()
    growth = max(client_rss[1] - client_rss[0], server_rss[1] - server_rss[0])
    ok = (calls["errors"] == 0 and calls["calls"] == args.clients * args.calls
          and churn["server_table_after"] <= 1 and growth < args.max_rss_growth_mib)
    print(f"load: {'ok' if ok else 'FAILED'} (largest RSS growth {growth:.1f} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
