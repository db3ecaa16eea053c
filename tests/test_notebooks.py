"""`make demo CHECK=1`: every notebook runs against the simulated bench without error."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_notebook_runs(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "remote_kernel.demo.launcher", "--check"],
                            capture_output=True, text=True, timeout=590)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for name in ("01-getting-started", "02-instrument-control", "03-proxy-kernel",
                 "04-async-and-callbacks", "05-security", "06-many-instruments",
                 "07-dask"):
        assert f"ok     {name}.ipynb" in result.stdout


def test_scripted_demo_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "remote_kernel", "demo"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "remote exceptions keep their type" in result.stdout
    assert "Done: connection closed." in result.stdout
