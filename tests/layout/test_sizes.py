"""No module of the package is over MAX_LINES lines (issue 22): past that, a module holds
more than one concern, and it splits along them (as protocol/boxing.py and unboxing.py)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "remote_kernel"
MAX_LINES = 600


def test_no_module_is_over_the_bound() -> None:
    sizes = {path.relative_to(PACKAGE).as_posix(): len(path.read_text("utf-8").splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert len(sizes) > 50  # the package was found
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}
