"""The notebook side of a remote cell's output: what the peer's Interpreter calls while a
``%%remote`` cell runs (each call is one callback request served by the waiting cell)."""

from __future__ import annotations

import sys
from typing import Any

from remote_kernel.core.service import exposed


class RemoteResult:
    """The value of a remote cell's last expression, displayed from the peer's bundle."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote result>"))


class NotebookSink:
    """Writes a remote cell's streams and displays into the current notebook cell."""

    def __init__(self) -> None:
        self.value: RemoteResult | None = None

    @exposed
    def stream(self, name: str, text: str) -> None:
        stream = sys.stderr if name == "stderr" else sys.stdout
        stream.write(text)
        stream.flush()

    @exposed
    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        from IPython.display import publish_display_data

        publish_display_data(data=dict(data), metadata=dict(metadata))

    @exposed
    def result(self, data: dict[str, Any], metadata: dict[str, Any], count: int) -> None:
        self.value = RemoteResult(dict(data), dict(metadata))

    @exposed
    def clear_output(self, wait: bool = False) -> None:
        from IPython.display import clear_output

        clear_output(wait)

    @exposed
    def page(self, data: dict[str, Any], start: int = 0) -> None:
        """IPython's pager of the remote cell (``%pinfo x``): the notebook's pager."""
        from IPython.core import page

        page.page(dict(data), start)
