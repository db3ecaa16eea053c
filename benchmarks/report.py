"""Turn the runner's samples into latest.json, a Markdown report and a PNG chart.

JSON shape (``benchmarks/results/latest.json``)::

    {"metrics": {NAME: {"remote_kernel": x, "rpyc": y, "pyro5_msgpack": z, "floor": w,
                        "unit": u, "lower_is_better": bool, "group": g (optional),
                        "stats": {SYSTEM: {"median", "min", "max", "n", ...}},
                        "paired_ratio_to_ours": {PEER: r}}},
     "targets": [{"target", "now", "goal", "measured", "value", "ok"}],
     "meta": {...}, "by_round": {NAME: {SYSTEM: {ROUND: value}}}}

A system that cannot do something has ``null``. Units: µs, ms, calls/s, MiB/s, B/proxy,
round trips, and ``instructions`` (group "instructions", from ``benchmarks.instructions``);
the fan-out group (``benchmarks.fanout``) has an ``ipyparallel`` column, the Dask fan-out
(``benchmarks.fanout_dask``) a ``dask_client_run`` one. Ratios in the
tables are peer / ours: for a time or a count (lower is better) a ratio above 1 means we
are better, for a rate (higher is better) it means the peer is.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

SYSTEMS = ["remote_kernel", "rpyc", "pyro5_msgpack", "floor"]
LABELS = {"remote_kernel": "remote_kernel", "rpyc": "RPyC", "pyro5_msgpack": "Pyro5 (msgpack)",
          "floor": "floor (msgpack / raw TCP)", "remote_kernel+ext": "remote_kernel + %load_ext",
          "ipyparallel": "ipyparallel", "dask_client_run": "Dask client.run"}
GESTURE_SYSTEMS = ["remote_kernel", "remote_kernel+ext", "rpyc"]
GROUP_FILES = {"instructions": "instructions.json", "fan-out": "fanout.json",
               "fan-out (Dask)": "fanout_dask.json"}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _entry(unit: str, lower: bool, per_system: dict[str, list[float]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"unit": unit, "lower_is_better": lower, "stats": {}}
    for system in [*SYSTEMS, *(k for k in per_system if k not in SYSTEMS)]:
        st = _stats(per_system.get(system, []))
        if system in SYSTEMS or st is not None:
            entry[system] = None if st is None else st["median"]
        if st is not None:
            entry["stats"][system] = st
    return entry


def paired(by_round: dict[str, dict[str, dict[Any, float]]], num: tuple[str, str],
           den: tuple[str, str]) -> float | None:
    """The median over rounds of num/den, each ratio taken within one round (metric,
    system pairs measured seconds apart), which cancels most of a shared machine's drift."""
    a = by_round.get(num[0], {}).get(num[1], {})
    b = by_round.get(den[0], {}).get(den[1], {})
    ratios = [a[r] / b[r] for r in a if r in b and b[r]]
    return statistics.median(ratios) if ratios else None


BY_VALUE = "64 MiB bytes server→client"  # issue 26's reference: bytes returned by value
BY_VALUE_UP = "64 MiB bytes client→server"  # ... and bytes passed by value


def copies_of_remote_objects(metrics: dict[str, Any]) -> list[str]:
    """Issue 26's rows: rk.obtain / np.asarray of a netref, rk.deliver, 64 MiB."""
    return [name for name in metrics if name in ("64 MiB numpy server→client",
                                                  "64 MiB numpy client→server")
            or name.startswith(("64 MiB rk.obtain(", "64 MiB np.asarray(",
                                "64 MiB rk.deliver("))]


def build(samples: dict[str, dict[str, list[float]]], side: dict[str, Any], meta: dict[str, Any],
          metric_defs: list[dict[str, Any]],
          by_round: dict[str, dict[str, dict[int, float]]] | None = None) -> dict[str, Any]:
    by_round = by_round or {}
    out: dict[str, dict[str, Any]] = {}
    for m in metric_defs:
        entry = out[m["name"]] = _entry(m["unit"], m["lower_is_better"],
                                        samples.get(m["name"], {}))
        entry["paired_ratio_to_ours"] = {
            p: paired(by_round, (m["name"], p), (m["name"], "remote_kernel"))
            for p in SYSTEMS[1:] if p in entry["stats"] and "remote_kernel" in entry["stats"]}

    suffixes = [""]
    if meta.get("second_pass"):
        suffixes.append(meta["second_pass"]["suffix"])
    for suffix in suffixes:
        sync = next((k for k in out if k.endswith(" sync calls (pre-bound)" + suffix)), None)
        pipe = next((k for k in out if k.endswith(" pipelined async calls" + suffix)), None)
        if not (sync and pipe):
            continue
        speedup: dict[str, list[float]] = {}
        for system in SYSTEMS:
            a = by_round.get(sync, {}).get(system, {})
            b = by_round.get(pipe, {}).get(system, {})
            ratios = [a[r] / b[r] for r in a if r in b and b[r]]
            if ratios:
                speedup[system] = ratios
        out["pipelining speed-up (sync time / async time)" + suffix] = _entry(
            "×", False, speedup)

    # Issue 26: each way of copying a remote 64 MiB object as a share of bytes by value,
    # both measured in the same round.
    for name in copies_of_remote_objects(out):
        reference = BY_VALUE if name.endswith("server→client") else BY_VALUE_UP
        shares = [a * 100 / b for r, a in by_round.get(name, {}).get("remote_kernel", {}).items()
                  if (b := by_round.get(reference, {}).get("remote_kernel", {}).get(r))]
        if shares:
            out[f"{name}: % of bytes by value"] = _entry("%", False, {"remote_kernel": shares})

    memory = side.get("memory", {})
    for key, label in (("tracemalloc_bytes_per_proxy", "Python heap"),
                       ("rss_bytes_per_proxy", "RSS")) if memory else ():
        per = {s: [r[key]] for s, r in memory.items()}
        entry = _entry("B/proxy", True, per)
        entry["n_proxies"] = {s: r["n"] for s, r in memory.items()}
        out[f"client memory per held proxy ({label})"] = entry

    for system, gestures in side.get("gestures", {}).items():
        for gesture, rows in gestures.items():
            rt = out.setdefault(f"{gesture}: round trips", _entry("round trips", True, {}))
            first = rows[0]["round_trips"]
            rt[system] = first
            rt["stats"][system] = {"median": first, "min": min(r["round_trips"] for r in rows),
                                   "max": max(r["round_trips"] for r in rows), "n": len(rows),
                                   "requests_incl_releases": rows[0]["requests"],
                                   "result_size": rows[0].get("result_size")}
            tm = out.setdefault(f"{gesture}: time", _entry("ms", True, {}))
            st = _stats([r["seconds"] * 1000 for r in rows])
            tm[system] = st and st["median"]
            if st:
                tm["stats"][system] = st
    result = {"metrics": out, "meta": meta, "by_round": by_round}
    result["targets"] = targets(result)
    return result


# -- groups measured by other modules ------------------------------------------------------------

def attach_groups(result: dict[str, Any], out_dir: Path) -> None:
    """Add the instruction counts and the fan-out (their own JSON files) to ``result``;
    results older than this run are marked as carried over."""
    metrics = result["metrics"]
    for name in [n for n, e in metrics.items() if e.get("group") in GROUP_FILES]:
        del metrics[name]
    groups = result["meta"].setdefault("groups", {})
    started = result["meta"].get("started")
    for group, filename in GROUP_FILES.items():
        path = out_dir / filename
        if not path.exists():
            groups.pop(group, None)
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        gmeta = data.get("meta", {})
        carried = started is not None and gmeta.get("started", 0) < started
        groups[group] = {**gmeta, "carried_over": carried}
        metrics.update(data.get("metrics", {}))
    result["targets"] = targets(result)


def merge_group_into_latest(out_dir: Path) -> list[Path]:
    """Re-render latest.* with the current group files (after a stand-alone group run)."""
    path = out_dir / "latest.json"
    if path.exists():
        result = json.loads(path.read_text())
    else:
        result = {"metrics": {}, "targets": [], "by_round": {},
                  "meta": {"mode": "groups only", "started": None, "errors": {}}}
    result.setdefault("by_round", {})
    attach_groups(result, out_dir)
    return write(result, out_dir, copy_full=False)


# -- targets ------------------------------------------------------------------------------------------

def _med(metrics: dict[str, Any], name: str | None, system: str) -> float | None:
    entry = metrics.get(name) if name else None
    return None if entry is None else entry.get(system)


def _find(metrics: dict[str, Any], start: str, end: str = "") -> str | None:
    return next((k for k in metrics if k.startswith(start) and k.endswith(end)), None)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's targets, as ratios measured in this run: same-round (paired) ratios where
    the rounds were recorded, else ratios of the medians."""
    metrics = result["metrics"]
    meta = result.get("meta", {})
    by_round = result.get("by_round") or {}
    rows: list[dict[str, Any]] = []
    main_mode = meta.get("pinning", {}).get("mode")
    second = meta.get("second_pass") or {}

    def in_mode(name: str | None, mode: str) -> str | None:
        """The metric's name in the pass with the given pinning, if there was one."""
        if name is None:
            return None
        if main_mode == mode:
            return name
        if second.get("mode") == mode:
            return name + second["suffix"]
        return None

    def add(target: str, now: str, goal: str, value: float | None, ok: Any, fmt: str,
            note: str = "") -> None:
        rows.append({"target": target, "now": now, "goal": goal,
                     "measured": None if value is None else fmt.format(value) + note,
                     "value": value, "ok": None if value is None or ok is None
                     else bool(ok(value))})

    def ratio(num: tuple[str | None, str], den: tuple[str | None, str]) -> float | None:
        if num[0] is None or den[0] is None:
            return None
        value = paired(by_round, (num[0], num[1]), (den[0], den[1]))
        if value is not None:
            return value
        a, b = _med(metrics, *num), _med(metrics, *den)
        return None if a is None or b is None or b == 0 else a / b

    echo = _find(metrics, "root.echo(1) latency")
    pre = _find(metrics, "pre-bound call latency")
    calls1 = _find(metrics, "calls/s, 1 thread", ")")
    shared = _find(metrics, "calls/s, ", "one shared connection (pre-bound)")
    sync = _find(metrics, "", " sync calls (pre-bound)")
    pipe = _find(metrics, "", " pipelined async calls")
    batch = _find(metrics, "", " calls in one batch")
    rk = "remote_kernel"
    add("`root.echo(1)` vs msgpack floor", "2.75×", "≤ 1.5×",
        ratio((echo, rk), (echo, "floor")), lambda v: v <= 1.5, "{:.2f}×")
    add("pre-bound call vs msgpack floor", "~2.7×", "≤ 1.3×",
        ratio((pre, rk), (pre, "floor")), lambda v: v <= 1.3, "{:.2f}×")
    instr = metrics.get("instructions per call: root.echo(1)", {})
    ins_ratio = (instr[rk] / instr["floor"]) if instr.get(rk) and instr.get("floor") else None
    add("instructions per echo (client + server) vs floor", "not measured", "≤ 2×",
        ins_ratio, lambda v: v <= 2, "{:.2f}×",
        f" ({instr[rk] / 1000:.0f}k vs {instr['floor'] / 1000:.0f}k)" if ins_ratio else "")
    add("pre-bound call vs Pyro5 (msgpack), like for like", "1.3× faster", "≥ 2× faster",
        ratio((pre, "pyro5_msgpack"), (pre, rk)), lambda v: v >= 2,
        "{:.2f}× (Pyro5's time / ours)")
    for mode, goal, ok in (("split", "≥ 1.5×", lambda v: v >= 1.5),
                           ("same", "≥ 1×", lambda v: v >= 1.0)):
        where = "`--pin split` (2 CPUs)" if mode == "split" else "one CPU"
        add(f"8 threads on one connection vs 1 thread, {where}", "1.28×", goal,
            ratio((in_mode(shared, mode), rk), (in_mode(calls1, mode), rk)), ok,
            "{:.2f}× the 1-thread rate")
    for mode, goal, ok in (("split", "≥ 5×", lambda v: v >= 5), ("same", "(reported)", None)):
        where = "`--pin split`" if mode == "split" else "one CPU"
        add(f"1000 pipelined async vs 1000 sync, {where}", "2.40×", goal,
            ratio((in_mode(sync, mode), rk), (in_mode(pipe, mode), rk)), ok, "{:.2f}×")
    batch_note = ""
    if batch and _med(metrics, batch, rk) is None:
        batch_note = (result["meta"].get("notes", {}).get(f"{batch}/{rk}")
                      or "not measured")
    add("1000 calls in one batch vs Pyro5 `BatchProxy`", "no batch API",
        "≥ 1× Pyro5's calls/s", ratio((batch, "pyro5_msgpack"), (batch, rk)),
        lambda v: v >= 1, "{:.2f}× Pyro5's calls/s")
    if batch_note:
        rows[-1]["measured"] = batch_note
    for kind, nows, goal, floor_ in (("bytes", ("75%", "58%"), "≥ 85%", 0.85),
                                     ("numpy", ("94%", "100%"), "≥ 90%", 0.90)):
        for arrow, now in zip(("server→client", "client→server"), nows, strict=True):
            name = f"64 MiB {kind} {arrow}"
            add(f"64 MiB {kind} {arrow} vs raw TCP", now, goal,
                ratio((name, rk), (f"64 MiB bytes {arrow}", "floor")),
                lambda v, f=floor_: v >= f, "{:.0%}")
    for name, now in (("64 MiB rk.obtain(bytearray) server→client", "34%"),
                      ("64 MiB numpy server→client", "34%"),
                      ("64 MiB np.asarray(ndarray netref) server→client", "33%")):
        what = name[len("64 MiB "):-len(" server→client")]
        if what == "numpy":
            what = "rk.obtain(ndarray)"
        add(f"64 MiB {what} vs bytes by value, one CPU (issue 26)", now, "≥ 60%",
            ratio((name if name in metrics else None, rk), (BY_VALUE, rk)),
            lambda v: v >= 0.6, "{:.0%}")
    add("client memory per held proxy", "232 B", "≤ 250 B",
        _med(metrics, "client memory per held proxy (Python heap)", rk),
        lambda v: v <= 250, "{:.0f} B")
    who = rk + "+ext" if any(rk + "+ext" in e.get("stats", {}) for n, e in metrics.items()
                             if n.endswith(": round trips")) else rk
    label = " (with `%load_ext remote_kernel`)" if who.endswith("+ext") else ""
    for gesture, now, goal, limit in (("display", "1", "1", 1),
                                      ("completion (jedi)", "1", "1", 1),
                                      ("completion (jedi), repeated", "–", "0", 0),
                                      ("obj?", "1", "1", 1)):
        add(f"{gesture} round trips{label}", now, goal,
            _med(metrics, f"{gesture}: round trips", who),
            lambda v, lim=limit: v <= lim, "{:.0f}")
    return rows


# -- rendering ---------------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit in ("round trips",):
        return f"{value:.0f}"
    if unit == "calls/s":
        return f"{value / 1000:.1f}k"
    if unit == "instructions":
        return f"{value / 1000:.1f}k" if value < 1e6 else f"{value / 1e6:.2f}M"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(entry: dict[str, Any], system: str) -> str:
    st = entry["stats"].get(system)
    if st is None:
        return "–"
    unit = entry["unit"]
    text = _fmt(st["median"], unit)
    if st.get("n", 1) > 1 and st["min"] != st["max"]:
        text += f" ({_fmt(st['min'], unit)}–{_fmt(st['max'], unit)})"
    return text


def _ratio(entry: dict[str, Any], system: str) -> str:
    value = entry.get("paired_ratio_to_ours", {}).get(system)
    if value is None:
        ours, peer = entry.get("remote_kernel"), entry.get(system)
        if ours in (None, 0) or peer is None:
            return ""
        value = peer / ours
    return f"×{value:.2g}" if value < 10 else f"×{value:.0f}"


def _is_timing(name: str, entry: dict[str, Any]) -> bool:
    return (not entry.get("group") and not name.endswith(": round trips")
            and not name.endswith(": time"))


def instructions_markdown(result: dict[str, Any]) -> str:
    """The instruction-count table (a group result or a whole result)."""
    metrics = {n: e for n, e in result["metrics"].items() if e.get("group") == "instructions"}
    if not metrics:
        return ""
    meta = result["meta"] if result.get("group") else result["meta"].get("groups", {}).get(
        "instructions", {})
    peers = ["rpyc", "pyro5_msgpack", "floor"]
    head = ["row", LABELS["remote_kernel"]]
    for p in peers:
        head += [LABELS[p], f"{LABELS[p].split()[0]}/ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    spreads = []
    for name, entry in metrics.items():
        row = [name[len("instructions per call: "):]]
        for system in ["remote_kernel", *peers]:
            st = entry["stats"].get(system)
            if st is None:
                cell = "–"
            else:
                cell = (f"{_fmt(st['median'], 'instructions')} (client "
                        f"{_fmt(st['client'], 'instructions')} + server "
                        f"{_fmt(st['server'], 'instructions')})")
                if st.get("spread") is not None and st["n"] > 1:
                    spreads.append((st["spread"], system, row[0]))
            row.append(cell)
            if system != "remote_kernel":
                row.append(_ratio(entry, system))
        lines.append("| " + " | ".join(row) + " |")
    carried = " **Carried over from an earlier run.**" if meta.get("carried_over") else ""
    if meta.get("source_changed_during_run"):
        carried += (" **remote_kernel's source changed during this measurement**: repeats "
                    "may differ for that reason.")
    pin = meta.get("pinning", {})
    lines += ["", f"Instructions per call (valgrind callgrind, both processes, user space): "
              f"(Ir(N2 calls) − Ir(N1 calls)) / (N2 − N1), client + server; median of "
              f"{meta.get('repeat', '?')} repeat(s). {meta.get('date', '?')}, commit "
              f"{meta.get('commit', '?')}, {meta.get('valgrind', 'valgrind')}, pin "
              f"{pin.get('mode', '?')}, PYTHONMALLOC {meta.get('pythonmalloc', '?')}, "
              f"PYTHONHASHSEED 0, load {meta.get('loadavg', {}).get('start', '?')} → "
              f"{meta.get('loadavg', {}).get('end', '?')}.{carried}"]
    if spreads:
        worst = max(spreads)
        lines.append(f"Repeatability: the largest spread between repeats is {worst[0]:.2%} "
                     f"({LABELS[worst[1]]}, {worst[2]}); median spread "
                     f"{statistics.median(s for s, _, _ in spreads):.2%}.")
    top = meta.get("top_remote_kernel_echo") or {}
    for side in ("server", "client"):
        own = (top.get(side) or {}).get("self") or []
        incl = (top.get(side) or {}).get("inclusive") or []
        if own or incl:
            lines += ["", f"remote_kernel {side}, `root.echo(1)`: the C functions whose "
                      "instructions grow most per call (callgrind_annotate of the N2 and N1 "
                      "runs; inclusive costs leave out the interpreter's generic call path):",
                      "", "| own cost | per call | inclusive | per call |", "|---|---|---|---|"]
            for i in range(max(len(own), len(incl))):
                a = own[i] if i < len(own) else ("", None)
                b = incl[i] if i < len(incl) else ("", None)
                lines.append(f"| `{a[0]}` | {'' if a[1] is None else f'{a[1]:,}'} | "
                             f"`{b[0]}` | {'' if b[1] is None else f'{b[1]:,}'} |")
    for cell, err in meta.get("errors", {}).items():
        lines.append(f"Failed: {cell}: {err}")
    return "\n".join(lines) + "\n"


def fanout_markdown(result: dict[str, Any]) -> str:
    metrics = {n: e for n, e in result["metrics"].items() if e.get("group") == "fan-out"}
    if not metrics:
        return ""
    meta = result["meta"] if result.get("group") else result["meta"].get("groups", {}).get(
        "fan-out", {})
    lines = ["| metric | unit | remote_kernel | ipyparallel | ipyparallel/ours |",
             "|---|---|---|---|---|"]
    for name, entry in metrics.items():
        lines.append(f"| {name} | {entry['unit']}{' ↓' if entry['lower_is_better'] else ' ↑'}"
                     f" | {_cell(entry, 'remote_kernel')} | {_cell(entry, 'ipyparallel')} | "
                     f"{_ratio(entry, 'ipyparallel')} |")
    carried = " **Carried over from an earlier run.**" if meta.get("carried_over") else ""
    lines += ["", f"Fan-out: {meta.get('how', '')} {meta.get('date', '?')}, commit "
              f"{meta.get('commit', '?')}, pin {meta.get('pinning', '?')}, load "
              f"{meta.get('loadavg', {}).get('start', '?')} → "
              f"{meta.get('loadavg', {}).get('end', '?')}.{carried}"]
    for cell, err in meta.get("errors", {}).items():
        lines.append(f"Failed: {cell}: {err}")
    return "\n".join(lines) + "\n"


def dask_markdown(result: dict[str, Any]) -> str:
    """The Dask fan-out rows (benchmarks.fanout_dask): ours vs client.run."""
    group = "fan-out (Dask)"
    metrics = {n: e for n, e in result["metrics"].items() if e.get("group") == group}
    if not metrics:
        return ""
    meta = result["meta"] if result.get("group") else result["meta"].get("groups", {}).get(
        group, {})
    lines = ["| metric | unit | remote_kernel | Dask client.run | client.run/ours |",
             "|---|---|---|---|---|"]
    for name, entry in metrics.items():
        lines.append(f"| {name} | {entry['unit']}{' ↓' if entry['lower_is_better'] else ' ↑'}"
                     f" | {_cell(entry, 'remote_kernel')} | {_cell(entry, 'dask_client_run')}"
                     f" | {_ratio(entry, 'dask_client_run')} |")
    carried = " **Carried over from an earlier run.**" if meta.get("carried_over") else ""
    lines += ["", f"Dask: {meta.get('how', '')} {meta.get('date', '?')}, commit "
              f"{meta.get('commit', '?')}, distributed "
              f"{meta.get('versions', {}).get('distributed', '?')}, load "
              f"{meta.get('loadavg', {}).get('start', '?')} → "
              f"{meta.get('loadavg', {}).get('end', '?')}.{carried}"]
    for cell, err in meta.get("errors", {}).items():
        lines.append(f"Failed: {cell}: {err}")
    return "\n".join(lines) + "\n"


def conditions(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    lines = []
    pin = meta.get("pinning")
    if pin:
        text = (f"main pass `--pin {pin['mode']}` (client CPU {pin['client_cpu']}, servers CPU "
                f"{pin['server_cpu']})")
        second = meta.get("second_pass")
        if second:
            text += (f"; second pass `--pin {second['mode']}` (client CPU "
                     f"{second['client_cpu']}, servers CPU {second['server_cpu']}, "
                     f"{second['rounds']} rounds), rows marked `{second['suffix'].strip()}`")
        lines.append(f"- Pinning: {text}.")
    load = meta.get("loadavg")
    if load:
        lines.append(f"- Load average (/proc/loadavg, 1/5/15 min): {load['start']} at the "
                     f"start, {load.get('end_of_rounds', '?')} after the timed rounds, "
                     f"{load['end']} at the end.")
    m = meta.get("machine")
    if m:
        lines.append(f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['os']}.")
    v = meta.get("versions")
    if v:
        lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()
                                                if k != "remote_kernel commit") + ".")
        lines.append(f"- remote_kernel commit: {v.get('remote_kernel commit', '?')}.")
    if meta.get("source_changed_during_run"):
        lines.append("- **remote_kernel's source changed during the timed run** (another "
                     "engineer's edit): rows may mix two versions.")
    for group, g in meta.get("groups", {}).items():
        lines.append(f"- {group}: measured {g.get('date', '?')} at commit "
                     f"{g.get('commit', '?')}" + (" (carried over from an earlier run)"
                                                  if g.get("carried_over") else "")
                     + (", **remote_kernel's source changed during it**"
                        if g.get("source_changed_during_run") else "") + ".")
    return lines


def markdown(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    meta = result["meta"]
    peers = ["rpyc", "pyro5_msgpack", "floor"]
    lines: list[str] = []
    timing = {n: e for n, e in metrics.items() if _is_timing(n, e)}
    if timing:
        head = ["metric", "unit", LABELS["remote_kernel"]]
        for p in peers:
            head += [LABELS[p], f"{LABELS[p].split()[0]}/ours"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, entry in timing.items():
            row = [name, entry["unit"] + (" ↓" if entry["lower_is_better"] else " ↑"),
                   _cell(entry, "remote_kernel")]
            for p in peers:
                row += [_cell(entry, p), _ratio(entry, p)]
            lines.append("| " + " | ".join(row) + " |")

    ins = instructions_markdown(result)
    if ins:
        lines += ["", "Instructions per call:", "", ins.rstrip("\n")]
    fan = fanout_markdown(result)
    if fan:
        lines += ["", "Fan-out to many peers (issue 16):", "", fan.rstrip("\n")]
    fan = dask_markdown(result)
    if fan:
        lines += ["", "Fan-out to the workers of a Dask cluster (issue 27):", "",
                  fan.rstrip("\n")]

    gesture_rows = [n for n in metrics if n.endswith(": round trips")]
    if gesture_rows:
        present = [s for s in GESTURE_SYSTEMS
                   if any(s in metrics[n]["stats"] for n in gesture_rows)]
        lines += ["", "Notebook gestures on a proxy of a custom class (IPython "
                  f"{meta.get('versions', {}).get('ipython', '?')}, jedi on). Round trips of "
                  "the first try (min–max over tries) · median time in ms (min–max):", "",
                  "| gesture | " + " | ".join(LABELS[s] for s in present) + " |",
                  "|---|" + "---|" * len(present)]
        for n in gesture_rows:
            g = n[: -len(": round trips")]
            rt, tm = metrics[n], metrics.get(f"{g}: time", {"stats": {}, "unit": "ms"})
            cells = []
            for s in present:
                st = rt["stats"].get(s)
                if st is None:
                    cells.append("–")
                    continue
                span = f" ({st['min']}–{st['max']})" if st["min"] != st["max"] else ""
                size = st.get("result_size")
                note = " (no completions)" if g.startswith("completion") and size == 0 else ""
                cells.append(f"{st['median']}{span} rt · {_cell(tm, s)} ms{note}")
            lines.append(f"| {g} | " + " | ".join(cells) + " |")

    lines += ["", "Targets of issues 15 and 26 (same-round ratios, median over rounds):", "",
              "| metric | now (issue) | target | measured | met? |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        ok = "–" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
        lines.append(f"| {t['target']} | {t.get('now', '')} | {t.get('goal', '')} | "
                     f"{t['measured'] or 'not measured'} | {ok} |")
    lines += ["", "Conditions:", *conditions(result)]

    if timing:
        lines += [
            "",
            f"{meta['mode']} run, {meta.get('rounds', '?')} interleaved rounds (each metric "
            f"warmed up first), {meta.get('date', '?')}, {meta.get('duration_s', '?')} s. "
            "Medians of the rounds (min–max). ↓ lower is better, ↑ higher is better; "
            "\"X/ours\" is the median over rounds of the peer's value divided by ours in the "
            "same round.",
            "Like for like: every system has TCP_NODELAY on both ends and blocking sockets "
            "(Pyro5 with its default COMMTIMEOUT=0; no poll before a receive); \"pre-bound\" "
            "rows look the method up once on every system; in \"one shared connection\" every "
            "system's threads share one connection (Pyro5 threads take turns claiming the one "
            "proxy, `_pyroClaimOwnership()` under a lock; the floor's threads take turns on "
            "one socket); \"a connection each\" opens one per thread for every system.",
            "RPyC and Pyro5 move numpy arrays as (bytes, dtype, shape) tuples (neither has a "
            "pickle-free numpy path); the floor is a framed msgpack ping-pong for calls (its "
            "batch: one frame of n arguments, one frame of n results) and raw TCP "
            "(sendall / recv_into) for payloads.",
        ]
        sockopts = meta.get("socket_options") or {}
        if sockopts:
            lines.append("Socket options read back: " + "; ".join(
                f"{LABELS.get(s, s)}: " + ", ".join(f"{k} {v}" for k, v in o.items())
                for s, o in sockopts.items()) + ".")
    mem = metrics.get("client memory per held proxy (Python heap)", {})
    if mem.get("n_proxies"):
        held = ", ".join(f"{LABELS.get(s, s)} {n:,}" for s, n in mem["n_proxies"].items())
        lines.append(f"Proxies held for the memory test: {held} (RPyC is slow to build "
                     "them; its per-proxy cost is flat in n).")
    for cell, note in meta.get("notes", {}).items():
        lines.append(f"Not measured: {cell}: {note}.")
    for w in meta.get("workarounds", []):
        lines.append(f"**Workaround applied to remote_kernel for this run:** {w}.")
    for label in meta.get("watchdog", []):
        lines.append(f"Watchdog fired: {label} (its server was killed).")
    for cell, err in meta.get("errors", {}).items():
        lines.append(f"Failed: {cell}: {err}")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result["metrics"]
    peers = [("rpyc", "#d62728"), ("pyro5_msgpack", "#1f77b4"), ("floor", "#7f7f7f"),
             ("ipyparallel", "#2ca02c"), ("dask_client_run", "#9467bd")]
    names = [n for n, e in metrics.items()
             if not n.endswith(": time") and e.get("remote_kernel")
             and any(e.get(p) for p, _ in peers)]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(names) + 1.8))
    height = 0.8 / len(peers)
    for i, (peer, color) in enumerate(peers):
        ys, xs = [], []
        for j, n in enumerate(names):
            e = metrics[n]
            ours, other = e.get("remote_kernel"), e.get(peer)
            if not ours or not other:
                continue
            adv = other / ours if e["lower_is_better"] else ours / other
            ys.append(j + (i - (len(peers) - 1) / 2) * height)
            xs.append(adv)
        # Bars grow from 1 (a tie) to the right (we are better) or the left (we are worse).
        ax.barh(ys, [x - 1 for x in xs], height=height, color=color, label=LABELS[peer],
                left=1)
        for y, x in zip(ys, xs, strict=True):
            ax.text(x * (1.04 if x >= 1 else 0.96), y, f"{x:.2g}×", va="center",
                    ha="left" if x >= 1 else "right", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    finite = [1.0]
    for n in names:
        for p, _ in peers:
            e = metrics[n]
            if e.get(p) and e.get("remote_kernel"):
                finite.append(e[p] / e["remote_kernel"])
    lo = min(min(finite), 1 / max(finite))
    ax.set_xlim(max(lo / 2, 1e-4), max(max(finite), 1 / min(finite)) * 2)
    ax.set_xlabel("remote_kernel's advantage (× better; < 1 means the other is better), log")
    meta = result["meta"]
    ax.set_title(f"remote_kernel vs RPyC, Pyro5, ipyparallel and the floor ({meta['mode']} "
                 f"run, {meta.get('date', '')})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write(result: dict[str, Any], out_dir: Path, copy_full: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(_clean(result), indent=1, ensure_ascii=False) + "\n")
    paths[1].write_text(markdown(result))
    chart(result, paths[2])
    if copy_full and result["meta"]["mode"] == "full":  # the README shows the last full run
        for src in list(paths):
            dst = out_dir / src.name.replace("latest", "full")
            dst.write_bytes(src.read_bytes())
            paths.append(dst)
    return paths
