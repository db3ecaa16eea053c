"""The notebook side of a remote cell's output: what the peer's Interpreter calls while a
``%%remote`` cell runs (each call is one callback request served by the waiting cell)."""

from __future__ import annotations

import builtins
import logging
import sys
from typing import Any

from remote_kernel.core.service import exposed
from remote_kernel.ipython.display import untrusted_bundle
from remote_kernel.outputs.filter import peer_display_id, sanitize_text_stream

log = logging.getLogger(__name__)


def display_target(display_id: Any, update: Any, peer: str,
                   scope: str = "") -> dict[str, Any] | None:
    """How a peer's display with an id is published: the keyword arguments of IPython's
    ``publish_display_data`` ({} for a plain display), or None when it must not be (an
    update whose id is not a valid one: it would otherwise become a new output). ``scope``
    goes before the id (a fan-out cell keeps each peer's ids apart)."""
    if display_id is None:
        return {}
    checked = peer_display_id(display_id)
    if checked is None:
        log.warning("output of %s: display id %.40r refused (letters, digits and _.:/- only, "
                    "at most 128)", peer, display_id)
        return None if update is True else {}
    return {"transient": {"display_id": scope + checked}, "update": update is True}


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
    """Writes a remote cell's streams and displays into the current notebook cell; what an
    untrusted peer sends is filtered first (outputs/filter.py)."""

    def __init__(self, trusted: bool = False, peer: str = "peer", stdin: bool = False) -> None:
        self.value: RemoteResult | None = None
        self.trusted = trusted
        self.peer = peer
        self.stdin = stdin  # input() is answered while the cell runs (the magic's switch)

    @exposed
    def stream(self, name: str, text: str) -> None:
        stream = sys.stderr if name == "stderr" else sys.stdout
        stream.write(text if self.trusted else sanitize_text_stream(str(text)))
        stream.flush()

    @exposed
    def display(self, data: dict[str, Any], metadata: dict[str, Any], display_id: Any = None,
                update: Any = False) -> None:
        """A display output; with ``display_id`` one that ``update`` replaces in place."""
        from IPython.display import publish_display_data

        target = display_target(display_id, update, self.peer)
        if target is None:
            return
        data, metadata = untrusted_bundle(data, metadata, self.trusted, self.peer)
        publish_display_data(data=data, metadata=metadata, **target)

    @exposed
    def result(self, data: dict[str, Any], metadata: dict[str, Any], count: int) -> None:
        self.value = RemoteResult(*untrusted_bundle(data, metadata, self.trusted, self.peer))

    @exposed
    def clear_output(self, wait: bool = False) -> None:
        from IPython.display import clear_output

        clear_output(wait)

    @exposed
    def input(self, prompt: str, password: bool = False) -> str:
        """``input()``/``getpass()`` in the remote cell: this side's own (ipykernel's prompt
        box, StdinNotImplementedError where the front end allows none; a terminal's line).
        Refused when the cell is not running any more: a peer asks nothing uninvited."""
        if not self.stdin:
            from IPython.core.error import StdinNotImplementedError

            raise StdinNotImplementedError(f"input() of {self.peer} refused: only a running "
                                           f"remote cell may ask for input")
        prompt = str(prompt) if self.trusted else sanitize_text_stream(str(prompt))
        if password is True:
            import getpass

            return getpass.getpass(prompt)
        return builtins.input(prompt)

    @exposed
    def page(self, data: dict[str, Any], start: int = 0) -> None:
        """IPython's pager of the remote cell (``%pinfo x``): the notebook's pager. JupyterLab
        shows a page payload as the cell's output, so the bundle is filtered like a display."""
        from IPython.core import page

        data, _ = untrusted_bundle(data, {}, self.trusted, self.peer)
        page.page(data, int(start))


def replay(outputs: Any, trusted: bool, peer: str) -> None:
    """Publish, in order and through the output filter, the outputs an object that displays
    itself made on the peer (remote/selfdisplay.py); anything malformed is left out."""
    sink = NotebookSink(trusted, peer)
    for output in outputs if isinstance(outputs, (list, tuple)) else ():
        if not isinstance(output, (list, tuple)) or not output:
            continue
        kind, args = output[0], tuple(output[1:])
        if kind == "stream" and len(args) == 2 and isinstance(args[1], str):
            sink.stream(args[0], args[1])
        elif kind == "display" and len(args) == 4 and isinstance(args[0], dict):
            sink.display(args[0], args[1] if isinstance(args[1], dict) else {}, args[2],
                         args[3])
        elif kind == "clear_output" and len(args) == 1:
            sink.clear_output(args[0] is True)
