"""The benchmark runner: remote_kernel, RPyC, Pyro5 (msgpack) and the floor, side by side.

    python -m benchmarks.run [--quick] [--rounds N] [--out benchmarks/results]

Every server runs in its own process on 127.0.0.1, pinned to one CPU; this client is pinned
to the other. Measurements are interleaved: in each round every metric runs for every
system back to back (in a rotating order), so all share the machine's conditions. A cell
reports the median of the rounds and their min-max. Every loop is bounded by a count and,
for throughput, by a duration; every request by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.clients import CLIENTS, SERVER_OF, Client, Unsupported

SYSTEMS = ["remote_kernel", "rpyc", "pyro5_msgpack", "floor"]
MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    quick: bool
    rounds: int
    latency_calls: int  # timed calls per round for a latency cell
    throughput_seconds: float  # per round, per system, for a calls/s cell
    threads: int = 8
    small_reps: int = 5  # 1 MiB transfers per round
    big_reps: int = 1  # 64 MiB transfers per round
    rpyc_big_rounds: int = 0  # RPyC moves 64 MiB at ~5 MiB/s: cap its rounds
    pipelined: int = 1000
    memory_n: dict[str, int] = field(default_factory=dict)
    gesture_reps: int = 5


def settings_for(quick: bool, rounds: int | None) -> Settings:
    if quick:
        return Settings(quick=True, rounds=rounds or 3, latency_calls=300,
                        throughput_seconds=0.4, small_reps=3, rpyc_big_rounds=0,
                        memory_n={"remote_kernel": 100_000, "rpyc": 2_000}, gesture_reps=3)
    return Settings(quick=False, rounds=rounds or 7, latency_calls=1000,
                    throughput_seconds=1.0, small_reps=7, big_reps=1, rpyc_big_rounds=1,
                    memory_n={"remote_kernel": 100_000, "rpyc": 10_000}, gesture_reps=7)


# -- metrics -------------------------------------------------------------------------------

@dataclass
class Metric:
    name: str
    unit: str
    lower_is_better: bool
    measure: Callable[[Client, Settings], float]
    rounds_cap: dict[str, int] = field(default_factory=dict)


def per_call_median_us(call: Callable[[], Any], n: int) -> float:
    clock = time.perf_counter_ns
    times = []
    for _ in range(n):
        start = clock()
        call()
        times.append(clock() - start)
    return statistics.median(times) / 1000.0


def m_echo(client: Client, s: Settings) -> float:
    return per_call_median_us(client.echo, s.latency_calls)


def m_prebound(client: Client, s: Settings) -> float:
    return per_call_median_us(client.prebound(), s.latency_calls)


def m_attr(client: Client, s: Settings) -> float:
    return per_call_median_us(client.attr, s.latency_calls)


def m_calls_1(client: Client, s: Settings) -> float:
    call = client.prebound()
    deadline = time.perf_counter() + s.throughput_seconds
    count = 0
    start = time.perf_counter()
    while count < 10_000_000:  # bounded; the deadline ends it long before
        for _ in range(50):
            call()
        count += 50
        if time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - start)


def m_calls_threads(client: Client, s: Settings) -> float:
    callers = [client.thread_caller() for _ in range(s.threads)]
    counts = [0] * s.threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(s.threads + 1, timeout=30)
    stop = threading.Event()

    def worker(i: int) -> None:
        call = callers[i]
        try:
            barrier.wait()
            n = 0
            while not stop.is_set() and n < 10_000_000:
                call()
                n += 1
            counts[i] = n
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(s.threads)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(s.throughput_seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a benchmark thread did not finish within 60 s")
    return sum(counts) / elapsed


def _transfer(fn: Callable[[], int], nbytes: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - start)
        if got != nbytes:
            raise RuntimeError(f"moved {got} bytes, expected {nbytes}")
    return nbytes / MiB / statistics.median(times)


_DATA: dict[int, bytes] = {}
_ARRAYS: dict[int, np.ndarray] = {}


def _data(nbytes: int) -> bytes:
    if nbytes not in _DATA:
        _DATA[nbytes] = np.random.default_rng(nbytes + 1).bytes(nbytes)
    return _DATA[nbytes]


def _array(nbytes: int) -> np.ndarray:
    if nbytes not in _ARRAYS:
        _ARRAYS[nbytes] = np.random.default_rng(nbytes + 2).random(nbytes // 8)
    return _ARRAYS[nbytes]


def transfer_metric(kind: str, direction: str, nbytes: int) -> Callable[[Client, Settings], float]:
    def measure(client: Client, s: Settings) -> float:
        reps = s.small_reps if nbytes <= MiB else s.big_reps
        if kind == "bytes":
            if direction == "down":
                return _transfer(lambda: client.get_bytes(nbytes), nbytes, reps)
            data = _data(nbytes)
            return _transfer(lambda: client.put_bytes(data), nbytes, reps)
        if direction == "down":
            return _transfer(lambda: client.get_array(nbytes), nbytes, reps)
        arr = _array(nbytes)
        return _transfer(lambda: client.put_array(arr), nbytes, reps)

    return measure


def m_sync_1000(client: Client, s: Settings) -> float:
    start = time.perf_counter()
    client.sync_calls(s.pipelined)
    return (time.perf_counter() - start) * 1000


def m_async_1000(client: Client, s: Settings) -> float:
    start = time.perf_counter()
    client.pipelined(s.pipelined)
    return (time.perf_counter() - start) * 1000


def metrics(s: Settings) -> list[Metric]:
    big_cap = {"rpyc": s.rpyc_big_rounds}
    out = [
        Metric("root.echo(1) latency", "µs", True, m_echo),
        Metric("pre-bound call latency", "µs", True, m_prebound),
        Metric("attribute read latency", "µs", True, m_attr),
        Metric("calls/s, 1 thread", "calls/s", False, m_calls_1),
        Metric(f"calls/s, {s.threads} threads", "calls/s", False, m_calls_threads),
        Metric(f"{s.pipelined} sync calls", "ms", True, m_sync_1000),
        Metric(f"{s.pipelined} pipelined async calls", "ms", True, m_async_1000),
    ]
    for kind in ("bytes", "numpy"):
        for size, label in ((MiB, "1 MiB"), (64 * MiB, "64 MiB")):
            for direction, arrow in (("down", "server→client"), ("up", "client→server")):
                cap = big_cap if size > MiB else {}
                out.append(Metric(f"{label} {kind} {arrow}", "MiB/s", False,
                                  transfer_metric(kind, direction, size), cap))
    return out


# -- servers -------------------------------------------------------------------------------

class ServerProcess:
    def __init__(self, system: str, cpu: int | None, cmd: list[str] | None = None) -> None:
        cmd = cmd or [sys.executable, "-m", "benchmarks.servers", SERVER_OF[system]]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=_env())
        self.port = 0

    def wait_port(self, timeout: float = 30.0) -> int:
        assert self.proc.stdout is not None
        done = threading.Event()
        line: list[bytes] = []

        def read() -> None:
            line.append(self.proc.stdout.readline())  # type: ignore[union-attr]
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or not line[0].startswith(b"PORT "):
            self.stop()
            raise RuntimeError(f"server {self.proc.args} did not start")
        self.port = int(line[0].split()[1])
        return self.port

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the server exits when its stdin closes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def pin_plan(mode: str) -> tuple[int | None, int | None]:
    """(client CPU, server CPU)."""
    if mode == "none" or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "same" or len(cpus) < 2:
        return cpus[0], cpus[0]
    return cpus[0], cpus[1]


# -- the run -------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_rounds(clients: dict[str, Client], s: Settings) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, str] = {}
    by_round: dict[str, dict[str, dict[int, float]]] = {}  # for paired (same-round) ratios
    ms = metrics(s)
    # Warm up every path once (imports, caches, connection buffers, proxy classes).
    warm = Settings(**{**s.__dict__, "latency_calls": 50, "throughput_seconds": 0.05})
    for metric in ms[:4]:
        for client in clients.values():
            try:
                metric.measure(client, warm)
            except Unsupported:
                pass
    for r in range(s.rounds):
        t0 = time.perf_counter()
        order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[:r % len(SYSTEMS)]
        for metric in ms:
            cells = samples.setdefault(metric.name, {})
            for system in order:
                client = clients.get(system)
                if client is None or f"{metric.name}/{system}" in errors:
                    continue
                cap = metric.rounds_cap.get(system)
                if cap is not None and r >= cap:
                    continue
                try:
                    value = metric.measure(client, s)
                except Unsupported:
                    continue
                except Exception as exc:  # noqa: BLE001 - one cell fails, the run goes on
                    errors[f"{metric.name}/{system}"] = f"{type(exc).__name__}: {exc}"
                    log(f"  {metric.name} / {system}: {type(exc).__name__}: {exc}")
                    continue
                cells.setdefault(system, []).append(value)
                by_round.setdefault(metric.name, {}).setdefault(system, {})[r] = value
        log(f"round {r + 1}/{s.rounds} done in {time.perf_counter() - t0:.1f} s")
    samples["_errors"] = errors  # type: ignore[assignment]
    samples["_by_round"] = by_round  # type: ignore[assignment]
    return samples


def run_subprocess(module: str, args: list[str], timeout: float) -> dict[str, Any] | None:
    cmd = [sys.executable, "-m", module, *args]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  {module} {' '.join(args)}: timed out after {timeout:.0f} s")
        return None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        log(f"  {module} {' '.join(args)} failed: {' | '.join(tail)}")
        return None
    return json.loads(done.stdout)


def extension_available() -> bool:
    try:
        import remote_kernel.ipython as ext
    except ImportError:
        return False
    return callable(getattr(ext, "load", None))


def run_side_tests(ports: dict[str, int], s: Settings,
                   client_cpu: int | None) -> dict[str, Any]:
    cpu = [] if client_cpu is None else ["--cpu", str(client_cpu)]
    out: dict[str, Any] = {"memory": {}, "gestures": {}}
    for system in ("remote_kernel", "rpyc"):
        if system not in ports:
            continue
        n = s.memory_n[system]
        res = run_subprocess("benchmarks.memory",
                             [system, str(ports[system]), "--n", str(n), *cpu], 240)
        if res:
            out["memory"][system] = res
        log(f"memory per proxy, {system}: {res and round(res['tracemalloc_bytes_per_proxy'])} B")
    variants = [("remote_kernel", False), ("rpyc", False)]
    if extension_available():
        variants.insert(1, ("remote_kernel", True))
    for system, ext in variants:
        if system not in ports:
            continue
        args = [system, str(ports[system]), "--reps", str(s.gesture_reps), *cpu]
        res = run_subprocess("benchmarks.gestures", args + (["--ext"] if ext else []), 180)
        key = system + ("+ext" if ext else "")
        if res:
            out["gestures"][key] = res["gestures"]
        log(f"gestures, {key}: {'ok' if res else 'failed'}")
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("remote_kernel", "rpyc", "Pyro5", "msgpack", "numpy", "ipython", "jedi"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "remote_kernel"], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        out["remote_kernel commit"] = commit + (" (+uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cpus": os.cpu_count(), "os": platform.platform(),
            "loadavg_at_start": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the under-2-minutes variant")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--pin", choices=["split", "same", "none"], default="same",
                        help="same: client and servers share one CPU, as ANCHORS.md (default); "
                        "split: client on one CPU, servers on the other")
    parser.add_argument("--no-side", action="store_true", help="skip memory and gestures")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    s = settings_for(args.quick, args.rounds)
    systems = [x for x in args.systems.split(",") if x]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    started = time.time()
    workarounds: list[str] = []  # patches applied to the core for a run (none today)
    for w in workarounds:
        log(f"WORKAROUND: {w}")
    client_cpu, server_cpu = pin_plan(args.pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    servers = {sys_: ServerProcess(sys_, server_cpu) for sys_ in systems}
    clients: dict[str, Client] = {}
    try:
        ports = {sys_: srv.wait_port() for sys_, srv in servers.items()}
        for sys_ in systems:
            clients[sys_] = CLIENTS[sys_](ports[sys_])
        log(f"servers up on {ports}; {s.rounds} rounds ({'quick' if s.quick else 'full'})")
        samples = run_rounds(clients, s)
        for client in clients.values():
            client.close()
        clients.clear()
        side = {"memory": {}, "gestures": {}} if args.no_side else run_side_tests(
            ports, s, client_cpu)
    finally:
        for client in clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        for srv in servers.values():
            srv.stop()
    from benchmarks import report

    errors = samples.pop("_errors", {})
    by_round = samples.pop("_by_round", {})
    meta = {
        "mode": "quick" if s.quick else "full",
        "rounds": s.rounds,
        "pinning": {"mode": args.pin, "client_cpu": client_cpu, "server_cpu": server_cpu},
        "machine": machine(),
        "versions": versions(),
        "workarounds": workarounds,
        "errors": errors,
        "duration_s": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {k: v for k, v in s.__dict__.items()},
    }
    result = report.build(samples, side, meta, [m.__dict__ for m in metrics(s)], by_round)
    paths = report.write(result, Path(args.out))
    print(report.markdown(result))
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
