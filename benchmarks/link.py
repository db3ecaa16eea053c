"""Links that fail, measured on a real link: two network namespaces joined by a veth pair
(the server in A, the client in B), as tests/net/test_links.py builds them.

    python -m benchmarks.link [--rounds 5] [--mib 64] [--rate 8mbit] [--no-bulk]

- resume: the link is cut under an idle session (`ip link set down` on the server's side),
  a call is made while it is down, the link comes back; the time from the link's return to
  that call's result (the session resumed and the call ran), median of the rounds.
- bulk: ``rk.obtain`` of N MiB of random bytes through a `tc ... tbf` link of the given
  rate, against the rate itself (with ``unreachable_after=4``: a busy slow link is alive).

Needs root and iproute2; writes ``benchmarks/results/link.json`` and prints a table. The
loopback echo's instructions with the session bookkeeping come from ``make
bench-instructions`` (the echo row).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from tests.net.test_links import Link  # noqa: E402 (the namespaces the tests build)

RATE_MBIT = {"kbit": 1e-3, "mbit": 1.0, "gbit": 1e3}


def _rate_mib_s(rate: str) -> float:
    for suffix, factor in RATE_MBIT.items():
        if rate.endswith(suffix):
            return float(rate[: -len(suffix)]) * factor * 1e6 / 8 / (1 << 20)
    raise ValueError(f"rate {rate!r}: use e.g. 8mbit")


def measure_resume(link: Link, rounds: int) -> list[float]:
    """Seconds from the link's return to the result of a call made while it was down."""
    _, info = link.start_server()
    client = link.start_client(info, unreachable_after=3)
    client.execute("items = conn.eval('[]')")
    times = []
    for i in range(rounds):
        link.cut()
        cut_at = time.monotonic()
        pending = client.send(eval=f"items.append({i}) or len(items)")
        client.state("unreachable", 15, after=cut_at)
        time.sleep(1.0)
        link.heal()
        healed = time.monotonic()
        answer = client.result(pending, 30)
        if not answer["ok"] or answer["value"] != str(i + 1):
            raise RuntimeError(f"round {i}: {answer}")
        times.append(answer["t"] - healed)
        client.state("open", 10, after=healed)
    return times


def measure_bulk(link: Link, mib: int, rate: str) -> dict[str, float]:
    tc = shutil.which("tc")
    if tc is None:
        raise RuntimeError("tc (iproute2) is needed")
    _, info = link.start_server()
    client = link.start_client(info, unreachable_after=4)
    subprocess.run([tc, "-n", link.ns_a, "qdisc", "add", "dev", link.veth_a, "root", "tbf",
                    "rate", rate, "burst", "32kbit", "latency", "400ms"],
                   check=True, capture_output=True, timeout=20)
    try:
        client.execute(f"conn.execute('import os\\ndata = os.urandom({mib} << 20)')")
        answer = client.eval("len(rk.obtain(conn.namespace['data']))", timeout=mib * 4 + 60)
        if not answer["ok"] or answer["value"] != str(mib << 20):
            raise RuntimeError(f"bulk copy: {answer}")
    finally:
        subprocess.run([tc, "-n", link.ns_a, "qdisc", "del", "dev", link.veth_a, "root"],
                       capture_output=True, timeout=20)
    seconds = answer["elapsed"]
    return {"seconds": seconds, "mib_s": mib / seconds, "link_mib_s": _rate_mib_s(rate)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rate", default="8mbit")
    parser.add_argument("--no-bulk", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("benchmarks.link needs root and iproute2 (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        link = Link(Path(tmp))
        link.create()
        try:
            resume = measure_resume(link, args.rounds)
            bulk = None if args.no_bulk else measure_bulk(link, args.mib, args.rate)
        finally:
            link.destroy()
    result: dict[str, Any] = {
        "resume_after_link_returns_s": {"median": statistics.median(resume),
                                        "min": min(resume), "max": max(resume),
                                        "rounds": resume},
        "bulk": bulk and {"mib": args.mib, "rate": args.rate, **bulk},
        "meta": {"load": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                          capture_output=True, text=True).stdout.strip()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "link.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"resume after the link returns: median {statistics.median(resume):.2f} s "
          f"(min {min(resume):.2f}, max {max(resume):.2f}, {len(resume)} rounds)")
    if bulk:
        print(f"{args.mib} MiB over a {args.rate} tbf link: {bulk['seconds']:.1f} s, "
              f"{bulk['mib_s']:.3f} MiB/s = {bulk['mib_s'] / bulk['link_mib_s']:.0%} of the "
              f"link's {bulk['link_mib_s']:.3f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
