"""The IPython shell with the extension loaded, shared by the modules of this folder that
need nothing more (one per module: a module may still define its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    yield shell
    shell.run_line_magic("unload_ext", "remote_kernel")
