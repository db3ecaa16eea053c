"""Turn the runner's samples into latest.json, a Markdown table and a PNG chart.

JSON shape (``benchmarks/results/latest.json``)::

    {"metrics": {NAME: {"remote_kernel": x, "rpyc": y, "pyro5_msgpack": z, "floor": w,
                        "unit": u, "lower_is_better": bool,
                        "stats": {SYSTEM: {"median", "min", "max", "n"}}}},
     "targets": [{"target", "measured", "ok"}], "meta": {...}}

A system that cannot do something has ``null``. Ratios in the table are peer / ours: for a
time (lower is better) a ratio above 1 means we are faster, for a rate (higher is better)
it means the peer is.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

SYSTEMS = ["remote_kernel", "rpyc", "pyro5_msgpack", "floor"]
LABELS = {"remote_kernel": "remote_kernel", "rpyc": "RPyC", "pyro5_msgpack": "Pyro5 (msgpack)",
          "floor": "floor (msgpack / raw TCP)", "remote_kernel+ext": "remote_kernel + %load_ext"}
GESTURE_SYSTEMS = ["remote_kernel", "remote_kernel+ext", "rpyc"]


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


def paired(by_round: dict[str, dict[str, dict[int, float]]], num: tuple[str, str],
           den: tuple[str, str]) -> float | None:
    """The median over rounds of num/den, each ratio taken within one round (metric,
    system pairs measured seconds apart), which cancels most of a shared machine's drift."""
    a = by_round.get(num[0], {}).get(num[1], {})
    b = by_round.get(den[0], {}).get(den[1], {})
    ratios = [a[r] / b[r] for r in a if r in b and b[r]]
    return statistics.median(ratios) if ratios else None


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

    sync = next((k for k in out if k.endswith(" sync calls")), None)
    pipe = next((k for k in out if k.endswith(" pipelined async calls")), None)
    if sync and pipe:
        speedup: dict[str, list[float]] = {}
        for system in SYSTEMS:
            a = by_round.get(sync, {}).get(system, {})
            b = by_round.get(pipe, {}).get(system, {})
            ratios = [a[r] / b[r] for r in a if r in b and b[r]]
            if ratios:
                speedup[system] = ratios
        out["pipelining speed-up (sync time / async time)"] = _entry("×", False, speedup)

    memory = side.get("memory", {})
    for key, label in (("tracemalloc_bytes_per_proxy", "Python heap"),
                       ("rss_bytes_per_proxy", "RSS")):
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
    result = {"metrics": out, "meta": meta}
    result["targets"] = targets(out, by_round)
    return result


def _med(metrics: dict[str, Any], name: str, system: str) -> float | None:
    entry = metrics.get(name)
    return None if entry is None else entry.get(system)


def targets(metrics: dict[str, Any],
            by_round: dict[str, dict[str, dict[int, float]]] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, as ratios measured in this run: same-round (paired) ratios
    where the rounds were recorded, else ratios of the medians."""
    rows: list[dict[str, Any]] = []
    by_round = by_round or {}

    def add(target: str, value: float | None, ok: Any, fmt: str) -> None:
        rows.append({"target": target, "measured": None if value is None else fmt.format(value),
                     "value": value, "ok": None if value is None else bool(ok(value))})

    def ratio(num: tuple[str, str], den: tuple[str, str]) -> float | None:
        value = paired(by_round, num, den)
        if value is not None:
            return value
        a, b = _med(metrics, *num), _med(metrics, *den)
        return None if a is None or b is None or b == 0 else a / b

    echo = "root.echo(1) latency"
    ours = (echo, "remote_kernel")
    add("echo ≤ 1.5× the msgpack floor", ratio(ours, (echo, "floor")),
        lambda v: v <= 1.5, "{:.2f}× the floor")
    add("echo ≥ 3× faster than RPyC", ratio((echo, "rpyc"), ours),
        lambda v: v >= 3, "{:.2f}× faster")
    add("echo ≥ 1.2× faster than Pyro5", ratio((echo, "pyro5_msgpack"), ours),
        lambda v: v >= 1.2, "{:.2f}× faster")
    threads = next((k for k in metrics if k.startswith("calls/s, ") and "threads" in k), "")
    add("8 threads ≥ 1-thread throughput",
        ratio((threads, "remote_kernel"), ("calls/s, 1 thread", "remote_kernel")),
        lambda v: v >= 1.0, "{:.2f}× the 1-thread rate")
    add("pipelined async ≥ 5× sync",
        _med(metrics, "pipelining speed-up (sync time / async time)", "remote_kernel"),
        lambda v: v >= 5, "{:.2f}×")
    for kind in ("bytes", "numpy"):
        for arrow in ("server→client", "client→server"):
            name = f"64 MiB {kind} {arrow}"
            raw = (f"64 MiB bytes {arrow}", "floor")
            add(f"{name} ≥ 60% of raw TCP", ratio((name, "remote_kernel"), raw),
                lambda v: v >= 0.6, "{:.1%} of raw TCP")
    add("≤ 1 KB client memory per held proxy",
        _med(metrics, "client memory per held proxy (Python heap)", "remote_kernel"),
        lambda v: v <= 1000, "{:.0f} B")
    return rows


# -- rendering -------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit in ("round trips",):
        return f"{value:.0f}"
    if unit == "calls/s":
        return f"{value / 1000:.1f}k"
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


def markdown(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    meta = result["meta"]
    peers = ["rpyc", "pyro5_msgpack", "floor"]
    head = ["metric", "unit", LABELS["remote_kernel"]]
    for p in peers:
        head += [LABELS[p], f"{LABELS[p].split()[0]}/ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in metrics.items():
        if name.endswith(": round trips") or name.endswith(": time"):
            continue
        row = [name, entry["unit"] + (" ↓" if entry["lower_is_better"] else " ↑"),
               _cell(entry, "remote_kernel")]
        for p in peers:
            row += [_cell(entry, p), _ratio(entry, p)]
        lines.append("| " + " | ".join(row) + " |")

    gesture_rows = [n for n in metrics if n.endswith(": round trips")]
    if gesture_rows:
        present = [s for s in GESTURE_SYSTEMS
                   if any(s in metrics[n]["stats"] for n in gesture_rows)]
        lines += ["", "Notebook gestures on a proxy of a custom class (IPython "
                  f"{meta['versions'].get('ipython', '?')}, jedi on). Round trips of the "
                  "first try (min–max over tries) · median time in ms (min–max):", "",
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

    lines += ["", "Targets of issue 8, as same-round (paired) ratios, median over rounds:", "",
              "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        ok = "–" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured'] or 'not measured'} | {ok} |")

    v = meta["versions"]
    m = meta["machine"]
    pin = meta["pinning"]
    lines += [
        "",
        f"{meta['mode']} run, {meta['rounds']} interleaved rounds, {meta['date']}, "
        f"{meta['duration_s']} s. Medians of the rounds (min–max). ↓ lower is better, ↑ higher "
        "is better; \"X/ours\" is the median over rounds of the peer's value divided by ours "
        "in the same round.",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['os']}, load {m['loadavg_at_start']}. "
        f"Client on CPU {pin['client_cpu']}, servers on CPU {pin['server_cpu']}, loopback.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "RPyC and Pyro5 move numpy arrays as (bytes, dtype, shape) tuples (neither has a "
        "pickle-free numpy path); Pyro5 uses one proxy (connection) per thread; the floor is "
        "a framed msgpack ping-pong for calls and raw TCP (sendall / recv_into) for payloads.",
    ]
    mem = metrics.get("client memory per held proxy (Python heap)", {})
    if mem.get("n_proxies"):
        held = ", ".join(f"{LABELS.get(s, s)} {n:,}" for s, n in mem["n_proxies"].items())
        lines.append(f"Proxies held for the memory test: {held} (RPyC is slow to build "
                     "them; its per-proxy cost is flat in n).")
    for w in meta.get("workarounds", []):
        lines.append(f"**Workaround applied to remote_kernel for this run:** {w}.")
    for cell, err in meta.get("errors", {}).items():
        lines.append(f"Failed: {cell}: {err}")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result["metrics"]
    peers = [("rpyc", "#d62728"), ("pyro5_msgpack", "#1f77b4"), ("floor", "#7f7f7f")]
    names = [n for n, e in metrics.items()
             if not n.endswith(": time") and e.get("remote_kernel")
             and any(e.get(p) for p, _ in peers)]
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
            ys.append(j + (i - 1) * height)
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
    ax.set_yticklabels(names, fontsize=8)
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
    ax.set_title(f"remote_kernel vs RPyC, Pyro5 and the floor ({meta['mode']} run, "
                 f"{meta['date']})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(_clean(result), indent=1, ensure_ascii=False) + "\n")
    paths[1].write_text(markdown(result))
    chart(result, paths[2])
    if result["meta"]["mode"] == "full":  # the README shows the last full run
        for src in list(paths):
            dst = out_dir / src.name.replace("latest", "full")
            dst.write_bytes(src.read_bytes())
            paths.append(dst)
    return paths
