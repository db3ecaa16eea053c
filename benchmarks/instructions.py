"""Instructions per call, counted with valgrind's callgrind in both processes.

    python -m benchmarks.instructions [--systems a,b] [--rows echo,prebound,attr,numpy,batch]
                                      [--repeat 2] [--pin same|split|none] [--top K]
                                      [--out DIR] [--no-merge]

Wall times on a shared 2-CPU machine swing with the load; the instructions a call executes
do not. For each system the server (``python -m benchmarks.servers``) and the client run
under ``valgrind --tool=callgrind --trace-children=no``, each writing its own output file.
A base run makes every row's N1 calls; then, for each row, a run that makes N2 calls of
that row (N1 of the others); the 1 MiB row has a base run of its own, because its own
count varies by a few percent from run to run. A row's instructions per call are

    (Ir(run with the row at N2) - Ir(base run)) / (N2 - N1),   client + server

so start-up, imports, connecting and the warm-up cancel out. ``--repeat`` runs everything
again and reports the spread. User-space instructions only (valgrind does not see the
kernel's side of a syscall); what a process does while it waits (a timer, a poll slice)
counts in proportion to wall time, which valgrind stretches ~50x.

Rows (the same client code as the timed runner, ``benchmarks.clients``): ``root.echo(1)``
with its lookup, a pre-bound call, an attribute read, and a 1 MiB numpy array to the client
(remote_kernel ``rk.obtain``; RPyC and Pyro5 ``(bytes, dtype, shape)``; the floor raw TCP),
and a batch of 1000 calls counted per call (``rk.batch``, Pyro5's ``BatchProxy``, the floor's
one-message batch; RPyC has none).

Writes ``instructions.json`` in ``--out`` and, unless ``--no-merge``, merges it into
``latest.{json,md,png}`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MiB = 1 << 20
SYSTEMS = ["remote_kernel", "rpyc", "pyro5_msgpack", "floor"]
ROW_LABELS = {"echo": "root.echo(1)", "prebound": "pre-bound call",
              "attr": "attribute read", "numpy": "1 MiB numpy to the client",
              "batch": "a call in a batch of 1000"}
COUNTS = {"echo": (200, 1200), "prebound": (200, 1200), "attr": (200, 1200),
          "numpy": (10, 60), "batch": (2, 12)}
BATCH = 1000  # calls per batch: the batch row counts per call (per batch / BATCH)
CALLS_PER_RUN = {"batch": BATCH}
# Systems without the operation (the row stays empty for them, as in the timed runs).
UNSUPPORTED = {("rpyc", "batch")}
# RPyC moves 1 MiB slowly (it copies the rest of the buffer on every partial send).
COUNT_OVERRIDES = {("rpyc", "numpy"): (3, 13)}
WARM = {"echo": 30, "prebound": 30, "attr": 30, "numpy": 3, "batch": 2}
METRIC_PREFIX = "instructions per call: "
CLIENT_TIMEOUT = 1200.0
SERVER_START_TIMEOUT = 180.0


def metric_name(row: str) -> str:
    return METRIC_PREFIX + ROW_LABELS[row]


def counts(system: str, row: str) -> tuple[int, int]:
    return COUNT_OVERRIDES.get((system, row), COUNTS[row])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the client, run under valgrind ----------------------------------------------------------

def row_call(client: Any, row: str) -> Callable[[], Any]:
    if row == "echo":
        return client.echo
    if row == "prebound":
        return client.prebound()
    if row == "attr":
        return client.attr
    if row == "numpy":
        return lambda: client.get_array(MiB)
    if row == "batch":
        return lambda: client.batch(BATCH)
    raise ValueError(row)


def client_main(argv: list[str]) -> None:
    """``_client SYSTEM PORT row=n,row=n [--cpu N]``: warm every row up, then make the calls."""
    parser = argparse.ArgumentParser(prog="benchmarks.instructions _client")
    parser.add_argument("system")
    parser.add_argument("port", type=int)
    parser.add_argument("spec")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    from benchmarks.clients import CLIENTS

    client = CLIENTS[args.system](args.port)
    plan = [(row, int(n)) for row, n in (item.split("=") for item in args.spec.split(","))]
    calls = {row: row_call(client, row) for row, _ in plan}
    for row, _ in plan:
        for _ in range(WARM[row]):
            calls[row]()
    for row, n in plan:
        call = calls[row]
        for _ in range(n):
            call()
    client.close()
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: the same in every run, but long under valgrind


# -- the driver ----------------------------------------------------------------------------------

def callgrind_cmd(out_file: Path, log_file: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
            "--trace-children=no", f"--log-file={log_file}"]


def total_ir(path: Path) -> int:
    """The total from a callgrind output file's ``totals:`` (or ``summary:``) line."""
    text = path.read_text(errors="replace")
    for key in ("totals:", "summary:"):
        m = re.search(rf"^{key}\s+(\d+)", text, re.M)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no totals in {path}")


def run_env(malloc: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run
    # numpy's OpenBLAS starts worker threads that spin at start-up: tens of millions of
    # instructions that vary from run to run. No BLAS is used here; one thread suffices.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    if malloc:
        env["PYTHONMALLOC"] = malloc
    else:
        env.pop("PYTHONMALLOC", None)
    return env


def one_run(system: str, spec: dict[str, int], work: Path, tag: str,
            cpus: tuple[int | None, int | None], malloc: str) -> tuple[int, int]:
    """Server and client under callgrind; returns (client Ir, server Ir)."""
    from benchmarks.clients import SERVER_OF
    from benchmarks.run import ServerProcess

    client_cpu, server_cpu = cpus
    env = run_env(malloc)
    s_out, c_out = work / f"{tag}.server.out", work / f"{tag}.client.out"
    for p in (s_out, c_out):
        p.unlink(missing_ok=True)
    server_cmd = [*callgrind_cmd(s_out, work / f"{tag}.server.log"), sys.executable, "-m",
                  "benchmarks.servers", SERVER_OF[system]]
    server = ServerProcess(system, server_cpu, server_cmd, env=env)
    try:
        port = server.wait_port(SERVER_START_TIMEOUT)
        spec_arg = ",".join(f"{row}={n}" for row, n in spec.items())
        cmd = [*callgrind_cmd(c_out, work / f"{tag}.client.log"), sys.executable, "-m",
               "benchmarks.instructions", "_client", system, str(port), spec_arg]
        if client_cpu is not None:
            cmd += ["--cpu", str(client_cpu)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=CLIENT_TIMEOUT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{system} client failed: {' | '.join(tail)}")
    finally:
        server.stop(timeout=180)
    return total_ir(c_out), total_ir(s_out)


# Rows that share a base run. A bulk transfer's count varies from run to run (how the
# payload arrives in chunks decides how often the receive loop turns and how buffers grow),
# so it gets a base of its own instead of adding its noise to the small calls' difference.
ROW_GROUPS = [["echo", "prebound", "attr"], ["numpy"], ["batch"]]


def measure_system(system: str, rows: list[str], work: Path, rep: int,
                   cpus: tuple[int | None, int | None], malloc: str) -> dict[str, Any]:
    """Per row: (client, server) instructions per call, and the raw totals."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"base": {}, "rows": {}}
    for gi, group in enumerate(ROW_GROUPS):
        members = [row for row in group if row in rows and (system, row) not in UNSUPPORTED]
        if not members:
            continue
        base_spec = {row: counts(system, row)[0] for row in members}
        base = one_run(system, base_spec, work, f"{system}.r{rep}.base{gi or ''}", cpus,
                       malloc)
        out["base"]["+".join(members)] = base
        for row in members:
            n1, n2 = counts(system, row)
            spec = {**base_spec, row: n2}
            tot = one_run(system, spec, work, f"{system}.r{rep}.{row}", cpus, malloc)
            calls = (n2 - n1) * CALLS_PER_RUN.get(row, 1)
            client = (tot[0] - base[0]) / calls
            server = (tot[1] - base[1]) / calls
            out["rows"][row] = {"client": client, "server": server, "n1": n1, "n2": n2,
                                "totals": tot, "base": base}
            log(f"  {system} {row}: {client + server:,.0f} instructions per call "
                f"(client {client:,.0f}, server {server:,.0f})")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# -- where the instructions go --------------------------------------------------------------------

_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.+?)\s*$")


def by_function(path: Path, inclusive: bool = False) -> dict[str, int]:
    """Instructions per function (self cost, or inclusive) from callgrind_annotate."""
    cmd = ["callgrind_annotate", "--threshold=100"]
    if inclusive:
        cmd.append("--inclusive=yes")
    done = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=300)
    out: dict[str, int] = {}
    started = False
    for line in done.stdout.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = _ANNOTATE_LINE.match(line)
        if m and ":" in m.group(2):
            # "fn'2" is callgrind's name for a recursion level of fn: count them together.
            name = re.sub(r"'\d+$", "", m.group(2).split(" [", 1)[0])
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out


# The interpreter's own call machinery: inclusive costs of these say nothing specific.
GENERIC = re.compile(
    r"^(_?PyEval_|_PyFunction_Vectorcall|_?PyObject_Call$|_?PyObject_Vectorcall|method_vectorcall"
    r"|thread_run|pythread_wrapper|start_thread|0x|PyVectorcall_Call|cfunction_|main$|\(below"
    r"|__libc_start|Py_BytesMain|pymain_|Py_RunMain|builtin_exec|_PyObject_MakeTpCall"
    r"|_PyObject_Call_Prepend|_PyObject_FastCallDictTstate|__Pyx_CyFunction_Vectorcall"
    r"|_PyObject_CallFunction|PyObject_CallOneArg|PyObject_CallFunction|_PyObject_FastCall)")


def top_functions(base: Path, more: Path, calls: int, k: int,
                  inclusive: bool = False) -> list[tuple[str, float]]:
    """The functions whose cost grows most per call between two runs (for inclusive
    costs, leaving out the interpreter's generic call path)."""
    a, b = by_function(base, inclusive), by_function(more, inclusive)
    diff = {name: (b.get(name, 0) - a.get(name, 0)) / calls for name in set(a) | set(b)}
    if inclusive:
        diff = {n: v for n, v in diff.items() if not GENERIC.match(n.rpartition(":")[2])}
    best: dict[str, tuple[str, float]] = {}
    for name, value in diff.items():  # one line per function (inlined copies share a name)
        fn = name.rpartition(":")[2]
        if fn not in best or value > best[fn][1]:
            best[fn] = (name, value)
    return sorted(best.values(), key=lambda kv: -kv[1])[:k]


def short(name: str) -> str:
    file, _, fn = name.rpartition(":")
    return f"{fn}  ({Path(file).name})" if file and file != "???" else fn


# -- results ---------------------------------------------------------------------------------------

def build_group(raw: dict[str, list[dict[str, Any]]], rows: list[str],
                meta: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"unit": "instructions", "lower_is_better": True,
                                 "group": "instructions", "stats": {}}
        for system in SYSTEMS:
            runs = [r["rows"][row] for r in raw.get(system, []) if row in r.get("rows", {})]
            if not runs:
                entry[system] = None
                continue
            totals = [r["client"] + r["server"] for r in runs]
            med = statistics.median(totals)
            entry[system] = med
            entry["stats"][system] = {
                "median": med, "min": min(totals), "max": max(totals), "n": len(totals),
                "client": statistics.median(r["client"] for r in runs),
                "server": statistics.median(r["server"] for r in runs),
                "spread": (max(totals) - min(totals)) / med if med else None,
                "runs": [[round(r["client"]), round(r["server"])] for r in runs],
                "n1": runs[0]["n1"], "n2": runs[0]["n2"]}
        ours = entry.get("remote_kernel")
        entry["paired_ratio_to_ours"] = {
            p: entry[p] / ours for p in SYSTEMS[1:] if entry.get(p) and ours}
        metrics[metric_name(row)] = entry
    return {"group": "instructions", "metrics": metrics, "meta": meta}


def valgrind_version() -> str:
    try:
        return subprocess.run(["valgrind", "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_client":
        client_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rows", default=",".join(ROW_LABELS))
    parser.add_argument("--repeat", type=int, default=2,
                        help="run everything this many times and report the spread")
    parser.add_argument("--pin", choices=["same", "split", "none"], default="same",
                        help="same: client and server on one CPU (default; the most "
                        "repeatable interleaving)")
    parser.add_argument("--malloc", default="",
                        help="PYTHONMALLOC for both processes (default: unset, pymalloc)")
    parser.add_argument("--top", type=int, default=15,
                        help="list the K functions that grow most per echo call for "
                        "remote_kernel (0: skip)")
    parser.add_argument("--keep", default=str(RESULTS / "callgrind"),
                        help="where to keep remote_kernel's callgrind files")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-merge", action="store_true",
                        help="write instructions.json only, not latest.*")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        log("valgrind not found: no instruction counts")
        return 1
    systems = [s for s in args.systems.split(",") if s]
    rows = [r for r in args.rows.split(",") if r]
    from benchmarks.run import git_commit, loadavg, pin_plan, source_digest, versions

    cpus = pin_plan(args.pin)
    started = time.time()
    load_start = loadavg()
    digest_start, commit_start = source_digest(), git_commit()
    raw: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    keep = Path(args.keep)
    with tempfile.TemporaryDirectory(prefix="rk-callgrind-") as tmp:
        work = Path(tmp)
        for rep in range(max(1, args.repeat)):
            for system in systems:
                log(f"{system}, repeat {rep + 1}/{args.repeat}")
                try:
                    raw.setdefault(system, []).append(
                        measure_system(system, rows, work, rep, cpus, args.malloc))
                except Exception as exc:  # noqa: BLE001 - one system fails, the rest go on
                    errors[f"{system}/repeat {rep + 1}"] = f"{type(exc).__name__}: {exc}"
                    log(f"  {system}: {type(exc).__name__}: {exc}")
        top: dict[str, Any] = {}
        if "remote_kernel" in raw and "echo" in rows and args.top > 0:
            keep.mkdir(parents=True, exist_ok=True)
            n1, n2 = counts("remote_kernel", "echo")
            for side in ("server", "client"):
                base = work / f"remote_kernel.r0.base.{side}.out"
                more = work / f"remote_kernel.r0.echo.{side}.out"
                if not (base.exists() and more.exists()):
                    continue
                for src in (base, more):
                    shutil.copy(src, keep / src.name)
                top[side] = {
                    "self": [[short(n), round(v)] for n, v in
                             top_functions(base, more, n2 - n1, args.top)],
                    "inclusive": [[short(n), round(v)] for n, v in
                                  top_functions(base, more, n2 - n1, args.top, True)]}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "started": started,
            "duration_s": round(time.time() - started, 1), "commit": commit_start,
            "source_changed_during_run": source_digest() != digest_start,
            "versions": versions(), "valgrind": valgrind_version(),
            "pinning": {"mode": args.pin, "client_cpu": cpus[0], "server_cpu": cpus[1]},
            "loadavg": {"start": load_start, "end": loadavg()},
            "repeat": args.repeat, "pythonmalloc": args.malloc or "default (pymalloc)",
            "pythonhashseed": "0",
            "counts": {f"{s}/{r}": counts(s, r) for s in systems for r in rows},
            "errors": errors, "top_remote_kernel_echo": top,
            "seconds_per_system": {s: [r["seconds"] for r in v] for s, v in raw.items()}}
    group = build_group(raw, rows, meta)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "instructions.json").write_text(json.dumps(group, indent=1) + "\n")
    from benchmarks import report

    print(report.instructions_markdown(group))
    if not args.no_merge:
        paths = report.merge_group_into_latest(out_dir)
        log("merged into " + ", ".join(str(p) for p in paths))
    return 1 if errors and not raw else 0


if __name__ == "__main__":
    sys.exit(main())
