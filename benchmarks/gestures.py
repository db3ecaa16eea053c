"""The notebook gestures on a proxy of a custom class, in a real IPython shell.

    python -m benchmarks.gestures {remote_kernel,rpyc} PORT [--ext] [--reps N]

Prints one JSON object: for each gesture (display, completion with jedi, the same completion
repeated on the same object, ``obj?``) the round trips of the first try and of every try,
the requests sent (releases included) and the times. Round trips are counted with ``conn.stats["requests"]`` for remote_kernel and with a
counting wrapper around RPyC's ``Connection.sync_request`` (round trips) and ``_send``
(every request message, asynchronous releases included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

TIMEOUT = 120.0


class Counter:
    """Round trips and request messages sent so far on one connection."""

    def __init__(self, system: str, conn: Any) -> None:
        self.system = system
        self.conn = conn
        self.rpyc_sync = 0
        self.rpyc_sent = 0
        if system == "rpyc":
            from rpyc.core import consts

            sync_request, send = conn.sync_request, conn._send

            def counting_sync_request(*args: Any, **kwargs: Any) -> Any:
                self.rpyc_sync += 1
                return sync_request(*args, **kwargs)

            def counting_send(msg: Any, *args: Any, **kwargs: Any) -> Any:
                if msg == consts.MSG_REQUEST:
                    self.rpyc_sent += 1
                return send(msg, *args, **kwargs)

            conn.sync_request = counting_sync_request
            conn._send = counting_send

    def read(self) -> tuple[int, int]:
        """(round trips, request messages)."""
        if self.system == "rpyc":
            return self.rpyc_sync, self.rpyc_sent
        stats = self.conn.stats
        return stats["requests"], stats["requests"] + stats["releases"]


def make_shell() -> Any:
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="rk-bench-ipython-"))
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    shell.Completer.use_jedi = True
    return shell


def gestures(shell: Any) -> dict[str, tuple[Callable[[], Any] | None, Callable[[], Any]]]:
    """name -> (an uncounted step before the try, or None; the counted gesture)."""
    from IPython.core.completer import provisionalcompleter

    def display() -> Any:
        data, _metadata = shell.display_formatter.format(shell.user_ns["obj"])
        return data

    def complete() -> Any:
        text = "obj."
        with provisionalcompleter():
            return [c.text for c in shell.Completer.completions(text, len(text))]

    def inspect() -> Any:
        return shell.object_inspect_mime("obj")

    return {"display": (None, display), "completion (jedi)": (None, complete),
            # The same completion again on the same object: what a cache saves.
            "completion (jedi), repeated": (complete, complete), "obj?": (None, inspect)}


def warm_up(shell: Any) -> None:
    """Import and prime jedi, the formatters and the inspector on a local object, so the
    first measured gesture does not pay for IPython's own start-up."""
    shell.user_ns["obj"] = shell  # any local object with attributes
    for _prepare, gesture in gestures(shell).values():
        gesture()
    shell.user_ns.pop("obj", None)


def _size(result: Any) -> int:
    """How much a gesture produced: completions, mime types, or inspect fields."""
    try:
        return len(result)
    except TypeError:
        return 0


def connect(system: str, port: int) -> tuple[Any, Any]:
    if system == "remote_kernel":
        import remote_kernel as rk
        conn = rk.connect("127.0.0.1", port, config={"sync_request_timeout": TIMEOUT})
    else:
        import rpyc

        conn = rpyc.connect("127.0.0.1", port, config={"sync_request_timeout": TIMEOUT,
                                                       "allow_public_attrs": True})
    return conn, conn.root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=["remote_kernel", "rpyc"])
    parser.add_argument("port", type=int)
    parser.add_argument("--ext", action="store_true", help="load the remote_kernel extension")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    shell = make_shell()
    conn, root = connect(args.system, args.port)
    if args.ext:
        shell.run_line_magic("load_ext", "remote_kernel")
    counter = Counter(args.system, conn)
    warm_up(shell)
    out: dict[str, Any] = {"system": args.system, "ext": args.ext, "gestures": {}}
    for name, (prepare, gesture) in gestures(shell).items():
        rows = []
        for _ in range(max(1, args.reps)):
            shell.user_ns["obj"] = root.make_obj()
            if prepare is not None:
                prepare()
            rt0, sent0 = counter.read()
            start = time.perf_counter()
            result = gesture()
            elapsed = time.perf_counter() - start
            rt1, sent1 = counter.read()
            rows.append({"round_trips": rt1 - rt0, "requests": sent1 - sent0,
                         "seconds": elapsed, "result_size": _size(result)})
            shell.user_ns.pop("obj", None)
        out["gestures"][name] = rows
    json.dump(out, sys.stdout)
    sys.stdout.flush()
    conn.close()
    os._exit(0)


if __name__ == "__main__":
    main()
