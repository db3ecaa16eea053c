"""The benchmark runner: remote_kernel, RPyC, Pyro5 (msgpack) and the floor, side by side.

    python -m benchmarks.run [--quick] [--rounds N] [--pin same|split|none] [--out DIR]
                             [--no-instructions] [--no-fanout] [--no-second-pass]

Every server runs in its own process on 127.0.0.1. Pinning, ``--pin same`` (the default):
the client and every server share one CPU, because on this VM a wake-up across CPUs costs
~100 µs, which would swamp every latency; ``--pin split``: the client on one CPU, the
servers on another, the setting where threads and pipelining can overlap client and
server work; ``--pin none``: no pinning. A shorter second pass with the other of
same/split measures the rows whose targets name both (threads, pipelining).

Measurements are interleaved: in each round every metric runs for every system back to
back (in a rotating order), so all share the machine's conditions. Every metric is warmed
up once per system before the first round, and a cell is the median of the rounds (their
min-max beside it). Every loop is bounded by a count and, for throughput, by a duration;
every cell by a watchdog that kills a hung server.

A full run also counts instructions per call under valgrind (``benchmarks.instructions``)
and times the fan-out to 1, 8 and 32 peers against ipyparallel (``benchmarks.fanout``);
a quick run skips both and shows their last results, labelled with their date.
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
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Settings:
    quick: bool
    rounds: int
    latency_calls: int  # timed calls per round for a latency cell
    throughput_seconds: float  # per round, per system, for a calls/s cell
    threads: int = 8
    small_reps: int = 5  # 1 MiB transfers per round
    big_reps: int = 1  # 64 MiB transfers per round
    rpyc_big_rounds: int = 0  # RPyC moves 64 MiB at ~5 MiB/s: cap its rounds ...
    capped_budget_s: float = 300.0  # ... and the time they may take in all
    pipelined: int = 1000
    batch: int = 1000
    memory_n: dict[str, int] = field(default_factory=dict)
    gesture_reps: int = 5
    cell_timeout_s: float = 300.0  # the watchdog's limit for one cell
    second_pass_rounds: int = 3


def settings_for(quick: bool, rounds: int | None) -> Settings:
    if quick:
        return Settings(quick=True, rounds=rounds or 3, latency_calls=300,
                        throughput_seconds=0.4, small_reps=3, rpyc_big_rounds=0,
                        memory_n={"remote_kernel": 100_000, "rpyc": 2_000}, gesture_reps=3,
                        second_pass_rounds=rounds or 3)
    return Settings(quick=False, rounds=rounds or 7, latency_calls=1000,
                    throughput_seconds=1.0, small_reps=7, big_reps=1, rpyc_big_rounds=3,
                    memory_n={"remote_kernel": 100_000, "rpyc": 10_000}, gesture_reps=7,
                    second_pass_rounds=5)


# -- metrics -------------------------------------------------------------------------------

@dataclass
class Metric:
    name: str
    unit: str
    lower_is_better: bool
    measure: Callable[[Client, Settings], float]
    rounds_cap: dict[str, int] = field(default_factory=dict)
    second_pass: bool = False  # also measured with the other pinning


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


def _calls_threads(callers: list[Callable[[], Any]], s: Settings) -> float:
    n_threads = len(callers)
    counts = [0] * n_threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads + 1, timeout=30)
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
               for i in range(n_threads)]
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


def m_calls_shared(client: Client, s: Settings) -> float:
    """Threads share one connection and one pre-bound method."""
    try:
        return _calls_threads([client.shared_caller() for _ in range(s.threads)], s)
    finally:
        client.reclaim()


def m_calls_own(client: Client, s: Settings) -> float:
    """Each thread has its own connection (opened once, outside the timing; the client
    closes them with its own)."""
    callers: list[Callable[[], Any]] = client.__dict__.setdefault("_bench_own_callers", [])
    while len(callers) < s.threads:
        callers.append(client.own_connection_caller())
    try:
        return _calls_threads(callers[: s.threads], s)
    finally:
        client.reclaim()


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


# Issue 26: the ways a large object the server holds is copied to the client, each beside
# "64 MiB bytes server→client" (bytes by value, the reference) in the same round.
OBTAIN_ROWS = {
    "64 MiB rk.obtain(memoryview of bytes) server→client": "obtain_memoryview",
    "64 MiB rk.obtain(bytearray) server→client": "obtain_bytearray",
    "64 MiB np.asarray(ndarray netref) server→client": "asarray",
}


def obtain_metric(method: str, nbytes: int) -> Callable[[Client, Settings], float]:
    def measure(client: Client, s: Settings) -> float:
        copy = getattr(client, method)
        return _transfer(lambda: copy(nbytes), nbytes, s.big_reps)

    return measure


def m_deliver_bytearray(client: Client, s: Settings) -> float:
    data = bytearray(_data(64 * MiB))
    return _transfer(lambda: client.deliver_bytearray(data), 64 * MiB, s.big_reps)


def _timed_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def m_sync(client: Client, s: Settings) -> float:
    return _timed_ms(lambda: client.sync_calls(s.pipelined))


def m_async(client: Client, s: Settings) -> float:
    return _timed_ms(lambda: client.pipelined(s.pipelined))


def m_batch(client: Client, s: Settings) -> float:
    return _timed_ms(lambda: client.batch(s.batch))


def metric_names(s: Settings) -> dict[str, str]:
    """Short keys for the metrics the targets and the report refer to."""
    return {
        "echo": "root.echo(1) latency",
        "prebound": "pre-bound call latency",
        "attr": "attribute read latency",
        "calls1": "calls/s, 1 thread (pre-bound)",
        "shared": f"calls/s, {s.threads} threads, one shared connection (pre-bound)",
        "own": f"calls/s, {s.threads} threads, a connection each (pre-bound)",
        "sync": f"{s.pipelined} sync calls (pre-bound)",
        "async": f"{s.pipelined} pipelined async calls",
        "batch": f"{s.batch} calls in one batch",
        "speedup": "pipelining speed-up (sync time / async time)",
    }


def metrics(s: Settings) -> list[Metric]:
    names = metric_names(s)
    big_cap = {"rpyc": s.rpyc_big_rounds}
    out = [
        Metric(names["echo"], "µs", True, m_echo),
        Metric(names["prebound"], "µs", True, m_prebound),
        Metric(names["attr"], "µs", True, m_attr),
        Metric(names["calls1"], "calls/s", False, m_calls_1, second_pass=True),
        Metric(names["shared"], "calls/s", False, m_calls_shared, second_pass=True),
        Metric(names["own"], "calls/s", False, m_calls_own, second_pass=True),
        Metric(names["sync"], "ms", True, m_sync, second_pass=True),
        Metric(names["async"], "ms", True, m_async, second_pass=True),
        Metric(names["batch"], "ms", True, m_batch),
    ]
    for kind in ("bytes", "numpy"):
        for size, label in ((MiB, "1 MiB"), (64 * MiB, "64 MiB")):
            for direction, arrow in (("down", "server→client"), ("up", "client→server")):
                cap = big_cap if size > MiB else {}
                out.append(Metric(f"{label} {kind} {arrow}", "MiB/s", False,
                                  transfer_metric(kind, direction, size), cap))
    for name, method in OBTAIN_ROWS.items():
        out.append(Metric(name, "MiB/s", False, obtain_metric(method, 64 * MiB)))
    out.append(Metric("64 MiB rk.deliver(bytearray) client→server", "MiB/s", False,
                      m_deliver_bytearray))
    return out


def selected(ms: list[Metric], spec: str | None) -> list[Metric]:
    """The metrics whose names contain one of the comma-separated parts of ``spec``."""
    if not spec:
        return ms
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    return [m for m in ms if any(part in m.name for part in parts)]


def pass_suffix(mode: str) -> str:
    return f" [pin {mode}]"


# -- servers -------------------------------------------------------------------------------

class ServerProcess:
    def __init__(self, system: str, cpu: int | None, cmd: list[str] | None = None,
                 env: dict[str, str] | None = None, stderr: Any = None) -> None:
        cmd = cmd or [sys.executable, "-m", "benchmarks.servers", SERVER_OF[system]]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.system = system
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr,
                                     env=env or _env())
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

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # the server exits when its stdin closes
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
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


class Watchdog:
    """Kills the server of a cell that runs past its limit, so a hung call (Pyro5 runs with
    blocking sockets, without a timeout) fails instead of stalling the run."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._label = ""
        self._victim: ServerProcess | None = None
        self.fired: list[str] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def arm(self, seconds: float, label: str, victim: ServerProcess | None) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._label, self._victim = label, victim
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._victim = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._deadline is None:
                    self._cond.wait(5.0)
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(min(left, 5.0))
                    continue
                victim, label = self._victim, self._label
                self._deadline, self._victim = None, None
            self.fired.append(label)
            log(f"  WATCHDOG: {label} ran past its limit; killing its server")
            if victim is not None:
                victim.proc.kill()


# -- the run -------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Pass:
    """One set of servers and clients with one pinning."""

    mode: str
    client_cpu: int | None
    server_cpu: int | None
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, systems: list[str]) -> None:
        self.servers = {sys_: ServerProcess(sys_, self.server_cpu) for sys_ in systems}
        self.ports = {sys_: srv.wait_port() for sys_, srv in self.servers.items()}
        for sys_ in systems:
            self.clients[sys_] = CLIENTS[sys_](self.ports[sys_])

    def close_clients(self) -> None:
        for client in self.clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a dead server's client may fail to close
                pass
        self.clients.clear()

    def stop(self) -> None:
        self.close_clients()
        for srv in self.servers.values():
            srv.stop()


@dataclass
class Samples:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    by_round: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def run_rounds(p: Pass, ms: list[Metric], s: Settings, rounds: int, watchdog: Watchdog,
               out: Samples, suffix: str = "") -> None:
    dead: set[str] = set()
    capped_time: dict[str, float] = {}

    def cell(metric: Metric, system: str, settings: Settings, r: int | None) -> None:
        name = metric.name + suffix
        client = p.clients.get(system)
        key = f"{name}/{system}"
        if client is None or key in out.errors or system in dead:
            return
        cap = metric.rounds_cap.get(system)
        if cap is not None:
            if r is not None and r >= cap or cap == 0:
                out.notes.setdefault(key, f"{cap} round(s) at most" if cap else
                                     "skipped in a quick run (RPyC moves 64 MiB at ~5 MiB/s); "
                                     "a full run takes 3 samples after a warm-up")
                return
            if capped_time.get(system, 0.0) > s.capped_budget_s:
                out.notes[key] = f"stopped after {s.capped_budget_s:.0f} s of capped cells"
                return
        watchdog.arm(s.cell_timeout_s, key, p.servers.get(system))
        t0 = time.perf_counter()
        try:
            value = metric.measure(client, settings)
        except Unsupported as exc:
            if str(exc):
                out.notes[key] = str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - one cell fails, the run goes on
            out.errors[key] = f"{type(exc).__name__}: {exc}"
            log(f"  {name} / {system}: {type(exc).__name__}: {exc}")
            if key in watchdog.fired:
                dead.add(system)
            return
        finally:
            watchdog.disarm()
            if cap is not None:
                capped_time[system] = capped_time.get(system, 0.0) + time.perf_counter() - t0
        if r is None:
            return
        out.values.setdefault(name, {}).setdefault(system, []).append(value)
        out.by_round.setdefault(name, {}).setdefault(system, {})[r] = value

    # Warm up every metric for every system once (imports, caches, connection buffers,
    # proxy classes, the servers' cached payloads) with shorter loops.
    warm = Settings(**{**s.__dict__, "latency_calls": 50, "throughput_seconds": 0.05,
                       "small_reps": 1, "big_reps": 1})
    t0 = time.perf_counter()
    for metric in ms:
        for system in SYSTEMS:
            cell(metric, system, warm, None)
    log(f"warm-up{suffix} done in {time.perf_counter() - t0:.1f} s")
    for r in range(rounds):
        t0 = time.perf_counter()
        order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[:r % len(SYSTEMS)]
        for metric in ms:
            out.values.setdefault(metric.name + suffix, {})
            for system in order:
                cell(metric, system, s, r)
        log(f"round {r + 1}/{rounds}{suffix} done in {time.perf_counter() - t0:.1f} s")


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
    import remote_kernel as rk

    return callable(getattr(rk, "load_ipython_extension", None))


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
    for dist in ("remote_kernel", "rpyc", "Pyro5", "msgpack", "numpy", "ipython", "jedi",
                 "ipyparallel"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    out["remote_kernel commit"] = git_commit()
    return out


def git_commit() -> str:
    """HEAD's short hash, and whether remote_kernel/ differs from it (read-only git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "remote_kernel"], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (commit or "?") + (" (+uncommitted changes)" if dirty else "")


def source_digest() -> str:
    """A digest of remote_kernel's source files, to tell whether the package changed while
    it was being measured (other engineers work in the same tree)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "remote_kernel").rglob("*.py")):
        try:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:16]


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


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
    return {"cpu": model, "cpus": os.cpu_count(), "os": platform.platform(),
            "loadavg_at_start": loadavg()}


def run_group(module: str, out_dir: Path, args: list[str], timeout: float) -> None:
    """Run benchmarks.instructions or benchmarks.fanout into its own JSON file."""
    log(f"running {module} (at most {timeout:.0f} s)")
    cmd = [sys.executable, "-m", module, "--out", str(out_dir), "--no-merge", *args]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), timeout=timeout,
                              stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            log(f"  {module} failed with exit status {done.returncode}")
    except subprocess.TimeoutExpired:
        log(f"  {module} timed out after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the few-minutes variant")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--pin", choices=["split", "same", "none"], default="same",
                        help="same: the client and every server share one CPU (default; a "
                        "wake-up across CPUs costs ~100 µs on this VM); split: client on one "
                        "CPU, servers on another; none: no pinning")
    parser.add_argument("--no-second-pass", action="store_true",
                        help="skip the pass with the other pinning (threads, pipelining)")
    parser.add_argument("--no-side", action="store_true", help="skip memory and gestures")
    parser.add_argument("--instructions", action=argparse.BooleanOptionalAction, default=None,
                        help="count instructions per call under valgrind (default: full run "
                        "only; otherwise the last results are shown)")
    parser.add_argument("--fanout", action=argparse.BooleanOptionalAction, default=None,
                        help="fan-out vs ipyparallel (default: full run only)")
    parser.add_argument("--metrics", default=None,
                        help="run only the metrics whose names contain one of these "
                        "comma-separated parts, e.g. --metrics '64 MiB' (the 64 MiB "
                        "transfers and the obtain rows of issue 26)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    s = settings_for(args.quick, args.rounds)
    systems = [x for x in args.systems.split(",") if x]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    out_dir = Path(args.out)
    started = time.time()
    load_start = loadavg()
    digest_start = source_digest()
    workarounds: list[str] = []  # patches applied to the core for a run (none today)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    client_cpu, server_cpu = pin_plan(args.pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    watchdog = Watchdog()
    samples = Samples()
    ms = selected(metrics(s), args.metrics)
    if not ms:
        parser.error(f"no metric name contains any of {args.metrics!r}")
    main_pass = Pass(args.pin, client_cpu, server_cpu)
    second: Pass | None = None
    if not args.no_second_pass and args.pin in ("same", "split") and len(cpus) >= 2:
        other = "split" if args.pin == "same" else "same"
        second = Pass(other, client_cpu, cpus[1] if other == "split" else client_cpu)
    side: dict[str, Any] = {"memory": {}, "gestures": {}}
    sockopts: dict[str, Any] = {}
    try:
        main_pass.start(systems)
        sockopts = {name: c.socket_options() for name, c in main_pass.clients.items()}
        log(f"servers up on {main_pass.ports}; {s.rounds} rounds "
            f"({'quick' if s.quick else 'full'}), pin {args.pin}")
        run_rounds(main_pass, ms, s, s.rounds, watchdog, samples)
        main_pass.close_clients()
        if not args.no_side:
            side = run_side_tests(main_pass.ports, s, client_cpu)
        main_pass.stop()
        if second is not None:
            second.start(systems)
            log(f"second pass, pin {second.mode}: servers on CPU {second.server_cpu}")
            run_rounds(second, [m for m in ms if m.second_pass], s, s.second_pass_rounds,
                       watchdog, samples, pass_suffix(second.mode))
            second.stop()
    finally:
        main_pass.stop()
        if second is not None:
            second.stop()
    load_end_rounds = loadavg()
    full = not s.quick
    if cpus:  # the groups choose their own pinning: give them every CPU back
        os.sched_setaffinity(0, set(cpus))
    if args.instructions if args.instructions is not None else full:
        run_group("benchmarks.instructions", out_dir, ["--pin", args.pin], 3600)
    if args.fanout if args.fanout is not None else full:
        run_group("benchmarks.fanout", out_dir, ["--quick"] if s.quick else [], 1200)
    from benchmarks import report

    meta = {
        "mode": "quick" if s.quick else "full",
        "rounds": s.rounds,
        "pinning": {"mode": args.pin, "client_cpu": client_cpu, "server_cpu": server_cpu},
        "second_pass": None if second is None else {
            "mode": second.mode, "client_cpu": second.client_cpu,
            "server_cpu": second.server_cpu, "rounds": s.second_pass_rounds,
            "suffix": pass_suffix(second.mode)},
        "machine": machine(),
        "loadavg": {"start": load_start, "end_of_rounds": load_end_rounds, "end": loadavg()},
        "versions": versions(),
        "source_changed_during_run": source_digest() != digest_start,
        "socket_options": sockopts,
        "workarounds": workarounds,
        "errors": samples.errors,
        "notes": samples.notes,
        "watchdog": watchdog.fired,
        "duration_s": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "started": started,
        "settings": {k: v for k, v in s.__dict__.items()},
    }
    meta["machine"]["loadavg_at_start"] = load_start
    defs = [{"name": m.name + suffix, "unit": m.unit, "lower_is_better": m.lower_is_better}
            for m in ms for suffix in [""] + (
                [pass_suffix(second.mode)] if second is not None and m.second_pass else [])]
    result = report.build(samples.values, side, meta, defs, samples.by_round)
    report.attach_groups(result, out_dir)
    paths = report.write(result, out_dir)
    print(report.markdown(result))
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
