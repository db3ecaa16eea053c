"""A fan-out that gave up on a member (timeout or Stop) leaves nothing that keeps the process
alive: the member's thread may still wait, but the interpreter exits without it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import threading
from remote_kernel.core.group import fan_out
never = threading.Event()
results, errors = fan_out({"stuck": never.wait, "quick": lambda: 1}, timeout=0.3, grace=0.1)
print(sorted(results), {name: type(exc).__name__ for name, exc in errors.items()})
"""


@pytest.mark.timeout(60)
def test_a_member_that_never_ends_does_not_keep_the_process_alive() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=30, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['quick'] {'stuck': 'RequestTimeout'}"
    assert time.monotonic() - started < 20  # a joined thread would wait forever
