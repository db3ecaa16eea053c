"""Coverage-guided fuzzing of the frame decoder, message decoder and handlers.

    python fuzz/fuzz_protocol.py --runs 1000000            # atheris if installed
    python fuzz/fuzz_protocol.py --engine hypothesis --runs 20000

Exit status 0 when every input ended in a value or a ProtocolError; 1 on a finding (the
input is printed, and atheris also writes it to a crash-* file in the working directory).
The last line is ``fuzz: N inputs, 0 findings, ...``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _report(engine: str, started: float) -> None:
    import protocol_target as target

    elapsed = time.monotonic() - started
    known = ", ".join(f"{name}: {count}" for name, count in target.KNOWN.items()) or "none"
    rate = target.HARNESS.inputs / elapsed if elapsed else 0.0
    print(f"fuzz: {target.HARNESS.inputs} inputs in {elapsed:.1f} s ({rate:.0f}/s) with "
          f"{engine}; known core bugs hit: {known}", flush=True)


def _write_seeds(directory: Path) -> None:
    import protocol_target as target

    for n, seed in enumerate(target.seeds()):
        (directory / f"seed-{n:03d}").write_bytes(seed)


def run_atheris(runs: int, max_time: int, max_len: int, seed: int) -> int:
    import atheris

    with atheris.instrument_imports(include=["remote_kernel", "protocol_target"]):
        import protocol_target as target

    started = time.monotonic()
    atexit.register(_report, "atheris", started)
    corpus = Path(tempfile.mkdtemp(prefix="rk-fuzz-corpus-"))
    _write_seeds(corpus)

    def one_input(data: bytes) -> None:
        target.check(data)
        count = target.HARNESS.inputs
        # libFuzzer ends the process with exit(), past Python's atexit: report as we go.
        if count % 100_000 == 0 or count == runs or (
                max_time and count % 1000 == 0 and time.monotonic() - started > max_time - 1):
            _report("atheris", started)

    artifacts = Path(tempfile.mkdtemp(prefix="rk-fuzz-findings-"))
    print(f"fuzz: findings, if any, are written to {artifacts}", flush=True)
    args = [sys.argv[0], f"-runs={runs}", f"-max_len={max_len}", "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            "-rss_limit_mb=4096", "-timeout=20"]
    if seed:
        args.append(f"-seed={seed}")
    if max_time:
        args.append(f"-max_total_time={max_time}")
    atheris.Setup(args + [str(corpus)], one_input)
    atheris.Fuzz()  # exits the process
    return 0


def run_hypothesis(runs: int, max_time: int, max_len: int, seed: int) -> int:
    import protocol_target as target
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    started = time.monotonic()
    seeds = target.seeds()

    def mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
        data = bytearray(seed)
        for position, value in edits:
            if data:
                data[position % len(data)] = value
        return bytes(data)

    mutated = st.builds(mutate, st.sampled_from(seeds),
                        st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)),
                                 max_size=4))
    truncated = st.builds(lambda seed, n: seed[:n], st.sampled_from(seeds),
                          st.integers(0, 200))
    spliced = st.builds(lambda a, b, n: a[:n] + b[n:], st.sampled_from(seeds),
                        st.sampled_from(seeds), st.integers(0, 200))
    inputs = st.one_of(st.binary(max_size=max_len), mutated, truncated, spliced)
    deadline = time.monotonic() + max_time if max_time else None

    @settings(max_examples=runs, deadline=None, database=None, derandomize=bool(seed),
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def fuzz(data: bytes) -> None:
        if deadline is not None and time.monotonic() > deadline:
            return
        target.check(data)

    try:
        for seed in seeds:
            target.check(seed)
        fuzz()
    except target.Finding as finding:
        _report("hypothesis", started)
        print(f"fuzz: FINDING: {finding}", flush=True)
        return 1
    _report("hypothesis", started)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--max-time", type=int, default=0, help="seconds; 0 = no limit")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--seed", type=int, default=0,
                        help="fixed seed for a repeatable run (0: random)")
    parser.add_argument("--strict", action="store_true",
                        help="known core bugs are findings too")
    args = parser.parse_args(argv)
    if args.strict:
        os.environ["RK_FUZZ_STRICT"] = "1"
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    if engine == "atheris":
        return run_atheris(args.runs, args.max_time, args.max_len, args.seed)
    return run_hypothesis(args.runs, args.max_time, args.max_len, args.seed)


if __name__ == "__main__":
    sys.exit(main())
