"""Fan-out: one trivial call to many peers at once, remote_kernel vs ipyparallel.

    python -m benchmarks.fanout [--sizes 1,8,32] [--reps N] [--quick] [--pin none|same]
                                [--out DIR] [--no-merge]

remote_kernel: N server processes (``python -m benchmarks.servers rk``) on 127.0.0.1, one
connection each; a trivial call is the pre-bound ``echo(None)`` sent to all N at once,
through ``rk.Group.map`` when the package has it, else a ThreadPoolExecutor with one
thread per connection (the report says which). ipyparallel: ``ipp.Cluster(n=N,
engines="local")`` on 127.0.0.1, started once per size with a bounded start-up; a trivial
call is ``DirectView.apply_sync(lambda: None)`` over all engines. The 1 MiB row returns a
float64 array from each of 8 peers: ``rk.obtain(root.get_array(1 MiB))`` per peer, and
``view.pull`` of an array the engines hold. Each cell is the median of many calls after a
warm-up. Pinning: none by default (fan-out is about using both CPUs); ``--pin same`` pins
this process and, by inheritance, every server, controller and engine to one CPU.

Writes ``fanout.json`` in ``--out`` and, unless ``--no-merge``, merges it into
``latest.{json,md,png}`` there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MiB = 1 << 20
TIMEOUT = 120.0
SYSTEMS = ["remote_kernel", "ipyparallel"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_ms(fn: Callable[[], Any], reps: int, warm: int) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def call_name(n: int) -> str:
    return f"fan-out: one trivial call to {n} peer{'s' if n > 1 else ''}"


ARRAY_NAME = "fan-out: 1 MiB numpy from each of 8 peers"
GROWTH_NAME = "fan-out: growth from 8 to 32 peers (time ratio)"


# -- remote_kernel ---------------------------------------------------------------------------

def measure_rk(n: int, reps: int, with_array: bool) -> tuple[dict[str, list[float]], str]:
    import remote_kernel as rk
    from benchmarks.run import ServerProcess

    servers = [ServerProcess("remote_kernel", None) for _ in range(n)]
    conns: list[Any] = []
    out: dict[str, list[float]] = {}
    try:
        ports = [srv.wait_port(60) for srv in servers]
        config = {"sync_request_timeout": TIMEOUT, "max_message_size": 1 << 30}
        conns = [rk.connect("127.0.0.1", port, config=config) for port in ports]
        echos = {id(c): c.root.echo for c in conns}

        def one(conn: Any) -> Any:
            return echos[id(conn)](None)

        def one_array(conn: Any) -> int:
            return rk.obtain(conn.root.get_array(MiB)).nbytes

        group: Any = None
        pool: ThreadPoolExecutor | None = None
        if hasattr(rk, "Group"):
            group = rk.Group(conns)
            how = "rk.Group.map"

            def fan(fn: Callable[[Any], Any]) -> list[Any]:
                return list(group.map(fn).values())
        else:
            pool = ThreadPoolExecutor(max_workers=n)
            how = "a ThreadPoolExecutor, one thread per connection (rk.Group does not exist yet)"

            def fan(fn: Callable[[Any], Any]) -> list[Any]:
                assert pool is not None
                return list(pool.map(fn, conns, timeout=TIMEOUT))

        try:
            out[call_name(n)] = timed_ms(lambda: fan(one), reps, warm=10)
            if with_array:
                def arrays() -> None:
                    got = fan(one_array)
                    assert got == [MiB] * len(conns), got

                out[ARRAY_NAME] = timed_ms(arrays, max(5, reps // 4), warm=3)
        finally:
            if group is not None and hasattr(group, "close"):
                group.close()
            if pool is not None:
                pool.shutdown(wait=False)
    finally:
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        for srv in servers:
            srv.stop()
    return out, how


# -- ipyparallel -----------------------------------------------------------------------------------

def measure_ipp(n: int, reps: int, with_array: bool, start_timeout: float,
                profile_dir: str) -> dict[str, list[float]]:
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=n, engines="local", controller_ip="127.0.0.1",
                          profile_dir=profile_dir, engine_timeout=int(start_timeout),
                          log_level=logging.WARNING)
    started: dict[str, Any] = {}

    def start() -> None:
        try:
            started["rc"] = cluster.start_and_connect_sync()
        except BaseException as exc:  # noqa: BLE001 - reported below
            started["error"] = exc

    t0 = time.perf_counter()
    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(start_timeout + 30)
    out: dict[str, list[float]] = {}
    rc = started.get("rc")
    try:
        if rc is None:
            raise RuntimeError(f"ipyparallel cluster of {n} did not start within "
                               f"{start_timeout + 30:.0f} s: {started.get('error')!r}")
        log(f"  ipyparallel: {n} engines up in {time.perf_counter() - t0:.1f} s")
        view = rc[:]
        view.block = True

        def trivial() -> None:
            view.apply_sync(lambda: None)

        out[call_name(n)] = timed_ms(trivial, reps, warm=10)
        if with_array:
            view.execute("import numpy as np; a = np.random.default_rng(1).random(131072)",
                         block=True)

            def arrays() -> None:
                got = view.pull("a", block=True)
                assert [x.nbytes for x in got] == [MiB] * n

            out[ARRAY_NAME] = timed_ms(arrays, max(5, reps // 4), warm=3)
    finally:
        if rc is not None:
            rc.close()
        stopper = threading.Thread(target=cluster.stop_cluster_sync, daemon=True)
        stopper.start()
        stopper.join(60)
    return out


# -- the run ------------------------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def build_group(raw: dict[str, dict[str, list[float]]], sizes: list[int],
                meta: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    names = [call_name(n) for n in sizes] + ([ARRAY_NAME] if 8 in sizes else [])
    for name in names:
        entry: dict[str, Any] = {"unit": "ms", "lower_is_better": True, "group": "fan-out",
                                 "stats": {}}
        for system in SYSTEMS:
            values = raw.get(system, {}).get(name)
            entry[system] = statistics.median(values) if values else None
            if values:
                entry["stats"][system] = _stats(values)
        ours, theirs = entry["remote_kernel"], entry["ipyparallel"]
        entry["paired_ratio_to_ours"] = {"ipyparallel": theirs / ours} if ours and theirs else {}
        metrics[name] = entry
    if 8 in sizes and 32 in sizes:
        entry = {"unit": "×", "lower_is_better": True, "group": "fan-out", "stats": {}}
        for system in SYSTEMS:
            a, b = metrics[call_name(32)].get(system), metrics[call_name(8)].get(system)
            entry[system] = a / b if a and b else None
            if entry[system] is not None:
                entry["stats"][system] = {"median": entry[system], "min": entry[system],
                                          "max": entry[system], "n": 1}
        ours, theirs = entry["remote_kernel"], entry["ipyparallel"]
        entry["paired_ratio_to_ours"] = {"ipyparallel": theirs / ours} if ours and theirs else {}
        metrics[GROWTH_NAME] = entry
    return {"group": "fan-out", "metrics": metrics, "meta": meta}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed calls per cell (default 100, 40 with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--pin", choices=["none", "same"], default="none")
    parser.add_argument("--start-timeout", type=float, default=180.0,
                        help="seconds an ipyparallel cluster may take to start")
    parser.add_argument("--budget", type=float, default=900.0,
                        help="seconds for the whole run; later sizes are skipped after it")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-merge", action="store_true")
    parser.add_argument("--no-dask", action="store_true",
                        help="skip the Dask rows (benchmarks.fanout_dask; run when "
                             "distributed is installed)")
    parser.add_argument("--dask-workers", type=int, default=4)
    args = parser.parse_args(argv)
    sizes = sorted(int(x) for x in args.sizes.split(",") if x)
    systems = [s for s in args.systems.split(",") if s]
    reps = args.reps or (40 if args.quick else 100)
    from benchmarks.run import git_commit, loadavg, source_digest, versions

    if args.pin == "same" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    # No BLAS runs here; one thread per process keeps 2×32 processes light.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    started = time.time()
    load_start = loadavg()
    digest_start, commit_start = source_digest(), git_commit()
    raw: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    errors: dict[str, str] = {}
    how = ""
    with tempfile.TemporaryDirectory(prefix="rk-fanout-ipp-") as profile_dir:
        os.environ["IPYTHONDIR"] = profile_dir  # no files in the user's ~/.ipython
        for n in sizes:
            for system in systems:
                if time.time() - started > args.budget:
                    errors[f"{system}/{n}"] = f"skipped: over the {args.budget:.0f} s budget"
                    continue
                log(f"{system}: {n} peer(s)")
                try:
                    if system == "remote_kernel":
                        got, how = measure_rk(n, reps, n == 8)
                    else:
                        got = measure_ipp(n, reps, n == 8, args.start_timeout,
                                          str(Path(profile_dir) / "profile_bench"))
                except Exception as exc:  # noqa: BLE001 - one cell fails, the run goes on
                    errors[f"{system}/{n}"] = f"{type(exc).__name__}: {exc}"
                    log(f"  {system}/{n}: {type(exc).__name__}: {exc}")
                    continue
                raw[system].update(got)
                for name, values in got.items():
                    log(f"  {name}: {statistics.median(values):.2f} ms")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "started": started,
            "duration_s": round(time.time() - started, 1), "commit": commit_start,
            "source_changed_during_run": source_digest() != digest_start,
            "versions": versions(), "pinning": args.pin, "sizes": sizes, "reps": reps,
            "loadavg": {"start": load_start, "end": loadavg()}, "errors": errors,
            "how": f"remote_kernel through {how or '?'}, pre-bound echo(None) per peer; "
                   "ipyparallel DirectView.apply_sync(lambda: None) and view.pull of a held "
                   "array; median of the timed calls (min–max).",
            "rk_method": how}
    group = build_group(raw, sizes, meta)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fanout.json").write_text(json.dumps(group, indent=1) + "\n")
    from benchmarks import report

    print(report.fanout_markdown(group))
    if not args.no_merge:
        paths = report.merge_group_into_latest(out_dir)
        log("merged into " + ", ".join(str(p) for p in paths))
    if not args.no_dask and importlib.util.find_spec("distributed") is not None:
        from benchmarks import fanout_dask

        log(f"Dask: {args.dask_workers} workers, rk.Group.from_dask vs client.run")
        fanout_dask.run(out_dir, args.dask_workers, reps, not args.no_merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
