"""A bounded run of the coverage-guided fuzzer (``make fuzz`` runs a million inputs), and of
the load run (``make load`` runs 100 clients x 1000 calls and a million netrefs)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fuzz_smoke(tmp_path: Path) -> None:
    runs = "30000" if HAS_ATHERIS else "1500"
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_protocol.py"), "--runs", runs,
         "--max-time", "60", "--seed", "1"],
        capture_output=True, text=True, timeout=150, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    counts = [int(n) for n in re.findall(r"fuzz: (\d+) inputs", output)]
    counts += [int(n) for n in re.findall(r"stat::number_of_executed_units: (\d+)", output)]
    assert counts, output[-2000:]
    assert max(counts) >= 1000
    print(f"fuzz smoke: {max(counts)} inputs")


def test_fuzz_target_accepts_its_seeds() -> None:
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        import protocol_target
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    for seed in protocol_target.seeds():
        protocol_target.check(seed)
    assert protocol_target.HARNESS.inputs >= len(protocol_target.seeds())


@pytest.mark.timeout(180)
def test_load_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.hardening.load", "--clients", "10", "--calls", "200",
         "--processes", "1", "--netrefs", "20000"],
        capture_output=True, text=True, timeout=170, cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 errors" in result.stdout
