"""Fan-out on a Dask cluster: rk.Group.from_dask vs ``client.run``, the same trivial
function on the same workers.

    python -m benchmarks.fanout_dask [--workers 4] [--reps N] [--out DIR] [--no-merge]

One ``distributed.LocalCluster`` of worker processes on 127.0.0.1 (one thread each). The
trivial function is ``def trivial(): return None``: remote_kernel defines it in each
worker's namespace once and calls the pre-bound netref on every member at once
(``Group.map``); Dask sends it with every ``client.run`` (which pickles it, runs it in each
worker's event loop and pickles the result back). Rows: one worker, then all of them. Each
cell is the median of many calls after a warm-up. Also run by ``benchmarks.fanout`` (``make
bench-fanout``) when ``distributed`` is installed.

Writes ``fanout_dask.json`` in ``--out`` and, unless ``--no-merge``, merges it into
``latest.{json,md,png}`` there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.fanout import RESULTS, _stats, log, timed_ms

GROUP = "fan-out (Dask)"
SYSTEMS = ["remote_kernel", "dask_client_run"]
DEFINE = "def trivial():\n    return None\n"


def call_name(n: int) -> str:
    return f"Dask: one trivial call to {n} worker{'s' if n > 1 else ''}"


def measure(n_workers: int, reps: int) -> dict[str, dict[str, list[float]]]:
    """{metric: {system: [ms per call]}} for one worker and for all ``n_workers``."""
    import distributed

    import remote_kernel as rk

    def trivial() -> None:
        return None

    out: dict[str, dict[str, list[float]]] = {}
    with distributed.LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(n_workers, timeout=120)
        addresses = sorted(client.scheduler_info()["workers"])
        for chosen in (addresses[:1], addresses):
            name = call_name(len(chosen))
            with rk.Group.from_dask(client, workers=chosen, poll=0) as group:
                assert len(group) == len(chosen), group
                group.execute(DEFINE)
                bound = {id(conn): conn.namespace["trivial"]
                         for conn in group.connections.values()}

                def ours(group: Any = group, bound: dict[int, Any] = bound) -> None:
                    group.map(lambda member: bound[id(member)]())

                def theirs(chosen: list[str] = chosen) -> None:
                    client.run(trivial, workers=chosen)

                out[name] = {"remote_kernel": timed_ms(ours, reps, warm=10),
                             "dask_client_run": timed_ms(theirs, reps, warm=10)}
                for system, values in out[name].items():
                    log(f"  {name}, {system}: {statistics.median(values):.2f} ms")
    return out


def build_group(raw: dict[str, dict[str, list[float]]], meta: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, per_system in raw.items():
        entry: dict[str, Any] = {"unit": "ms", "lower_is_better": True, "group": GROUP,
                                 "stats": {}}
        for system in SYSTEMS:
            values = per_system.get(system)
            entry[system] = statistics.median(values) if values else None
            if values:
                entry["stats"][system] = _stats(values)
        ours, theirs = entry["remote_kernel"], entry["dask_client_run"]
        entry["paired_ratio_to_ours"] = \
            {"dask_client_run": theirs / ours} if ours and theirs else {}
        metrics[name] = entry
    return {"group": GROUP, "metrics": metrics, "meta": meta}


def run(out_dir: Path, n_workers: int, reps: int, merge: bool) -> dict[str, Any]:
    from benchmarks.run import git_commit, loadavg, source_digest, versions

    started = time.time()
    load_start = loadavg()
    digest, commit = source_digest(), git_commit()
    errors: dict[str, str] = {}
    raw: dict[str, dict[str, list[float]]] = {}
    try:
        raw = measure(n_workers, reps)
    except Exception as exc:  # noqa: BLE001 - reported in the results
        errors[f"dask/{n_workers}"] = f"{type(exc).__name__}: {exc}"
        log(f"  dask: {type(exc).__name__}: {exc}")
    try:
        from importlib.metadata import version

        dask_version = version("distributed")
    except Exception:  # noqa: BLE001
        dask_version = "-"
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "started": started,
            "duration_s": round(time.time() - started, 1), "commit": commit,
            "source_changed_during_run": source_digest() != digest,
            "versions": {**versions(), "distributed": dask_version}, "workers": n_workers,
            "reps": reps, "loadavg": {"start": load_start, "end": loadavg()},
            "errors": errors,
            "how": f"a LocalCluster of {n_workers} worker processes (1 thread each) on "
                   "127.0.0.1; remote_kernel: rk.Group.from_dask, Group.map of a pre-bound "
                   "trivial() on each worker; Dask: client.run(trivial, workers=...) on the "
                   "same workers; median of the timed calls (min–max)."}
    group = build_group(raw, meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fanout_dask.json").write_text(json.dumps(group, indent=1) + "\n")
    from benchmarks import report

    print(report.dask_markdown(group))
    if merge:
        paths = report.merge_group_into_latest(out_dir)
        log("merged into " + ", ".join(str(p) for p in paths))
    return group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-merge", action="store_true")
    args = parser.parse_args(argv)
    run(Path(args.out), args.workers, args.reps, not args.no_merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
