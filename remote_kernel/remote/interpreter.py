"""The remote side of cell execution, shared by ``%%remote`` and the proxy kernel.

``Interpreter.run_cell(code, sink)`` runs a cell in this interpreter's namespace with
IPython's semantics: the value of a last expression is displayed, ``display()`` and
``clear_output()`` work, matplotlib figures left open are sent as PNG. Output goes to the
caller's *sink* while the cell runs: ``sink.stream(name, text)`` (line by line, as it is
written), ``sink.display(data, metadata)`` (plus ``display_id, update`` for a display
with an id: ``display(x, display_id=True)``, ``update_display``), ``sink.result(data,
metadata, count)``, ``sink.clear_output(wait)``. The sink lives on the notebook side, so
each is one callback request, served while the notebook waits for ``run_cell`` to return.
Interrupting the request raises ``KeyboardInterrupt`` in the cell. ``capture`` does the same
around other code (an object's own ``_ipython_display_``, remote/selfdisplay.py).

Capturing output patches process-wide names (``sys.stdout``/``sys.stderr``, IPython's
``display``/``clear_output``, ``builtins.display``, ``input``/``getpass``: stdin.py) while
some cell runs; only the thread running a cell has its output captured, into that cell's
sink (cells of two connections running at once never mix); other threads are untouched.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib.util
import io
import itertools
import linecache
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import (
    figure_png,
    is_figure,
    json_safe,
    mimebundle,
)
from remote_kernel.remote import ipyshell, stdin
from remote_kernel.remote.introspection import Introspection

FLUSH_INTERVAL = 0.05  # seconds between flushes of partial lines
_local = threading.local()
_install_lock = threading.Lock()
_running_cells = 0  # cells running in this process (under _install_lock)
_restore: list[Any] = []  # how to undo each patch, while cells run


class _CellStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` replacement: inside a cell the text goes to that cell's
    sink (per thread), anywhere else to the original stream."""

    def __init__(self, name: str, original: Any) -> None:
        self.name = name
        self.original = original

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        cell = getattr(_local, "cell", None)
        if cell is None:
            return self.original.write(text)
        cell.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        cell = getattr(_local, "cell", None)
        if cell is None:
            self.original.flush()
        else:
            cell.flush(self.name)

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def isatty(self) -> bool:
        return False


def _enter_cell() -> None:
    """A cell starts: capture output if none was running."""
    global _running_cells
    with _install_lock:
        if _running_cells == 0:
            _install()
        _running_cells += 1


def _leave_cell() -> None:
    """A cell ended: put everything back if it was the last one."""
    global _running_cells
    with _install_lock:
        _running_cells -= 1
        if _running_cells == 0:
            while _restore:
                _restore.pop()()


def _install() -> None:
    for name in ("stdout", "stderr"):
        stream = _CellStream(name, getattr(sys, name))
        setattr(sys, name, stream)
        _restore.append(lambda name=name, stream=stream: _put_back(sys, name, stream,
                                                                    stream.original))
    _patch_ipython_display()
    previous = getattr(builtins, "display", None)
    _install_builtin_display()
    _restore.append(lambda: _put_back(builtins, "display", _display, previous))
    stdin.install(lambda: getattr(_local, "cell", None), _restore.append)


def _put_back(owner: Any, name: str, ours: Any, original: Any) -> None:
    """Undo one patch, unless someone replaced it in the meantime (theirs stays)."""
    if getattr(owner, name, None) is ours:
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


_outside_cells: list[Any] = [None]  # the display() builtins had before ours (IPython's)


def _install_builtin_display() -> None:
    """As IPython does: display() works in cells without an import, and stays out of the
    namespace the object browser shows. Outside cells it is what it was before."""
    current = getattr(builtins, "display", None)
    if current is not _display:
        _outside_cells[0] = current
        builtins.display = _display  # type: ignore[attr-defined]


def _patch_ipython_display() -> None:
    """Inside a cell, IPython's display()/clear_output() and its pager reach the notebook."""
    try:
        import IPython.core.display_functions as functions
        import IPython.core.page as pager
        import IPython.display as public
    except ImportError:
        return
    original_display = functions.display
    original_clear = functions.clear_output
    original_page = pager.page

    def page(data: Any, start: int = 0, screen_lines: int = 0, pager_cmd: Any = None) -> Any:
        cell = getattr(_local, "cell", None)
        if cell is None:
            return original_page(data, start, screen_lines, pager_cmd)
        cell.page(data if isinstance(data, dict) else {"text/plain": str(data)}, start)
        return None

    def display(*objs: Any, **kwargs: Any) -> Any:
        if getattr(_local, "cell", None) is None:
            return original_display(*objs, **kwargs)
        return _display(*objs, **kwargs)

    def clear_output(wait: bool = False) -> None:
        cell = getattr(_local, "cell", None)
        if cell is None:
            return original_clear(wait)
        cell.clear_output(wait)
        return None

    for module in (functions, public):
        originals = (module.display, module.clear_output)
        module.display = display
        module.clear_output = clear_output
        _restore.append(lambda module=module, originals=originals: (
            _put_back(module, "display", display, originals[0]),
            _put_back(module, "clear_output", clear_output, originals[1])))
    pager.page = page
    _restore.append(lambda: _put_back(pager, "page", page, original_page))


def _display(*objs: Any, include: Any = None, exclude: Any = None, metadata: Any = None,
             transient: Any = None, display_id: Any = None, raw: bool = False,
             clear: bool = False, **kwargs: Any) -> Any:
    """IPython's display() inside a cell: the same arguments, the output to the cell's sink;
    with ``display_id`` a handle whose ``update()`` replaces that output (as IPython's)."""
    cell = getattr(_local, "cell", None)
    if cell is None:
        outside = _outside_cells[0]
        if outside is not None:
            return outside(*objs, include=include, exclude=exclude, metadata=metadata,
                           transient=transient, display_id=display_id, raw=raw, clear=clear,
                           **kwargs)
        print(*objs)
        return None
    if display_id is True:
        display_id = uuid.uuid4().hex  # as IPython's _new_id: random hex
    if not display_id and isinstance(transient, dict):
        display_id = transient.get("display_id")
    update = bool(kwargs.get("update"))
    if update and not display_id:
        raise TypeError("display_id required for update_display")
    if not objs and display_id:
        objs, raw = ({},), True
    if clear:
        cell.clear_output(True)
    for obj in objs:
        if raw:
            data, md = dict(obj), dict(metadata or {})
        elif is_figure(obj) and not display_id and not cell.figure_changed(obj):
            continue  # already sent in this cell as it is now (matplotlib inline's flush)
        else:
            data, md = mimebundle(obj, include, exclude, cell.formatter)
            if metadata:
                md.update(metadata)
        cell.display(data, md, str(display_id) if display_id else None, update)
        if is_figure(obj):
            cell.figure_shown(obj)
    return _DisplayHandle.make(str(display_id)) if display_id else None


class _DisplayHandle:
    """IPython's DisplayHandle where IPython is not installed (its methods call ours)."""

    def __init__(self, display_id: str) -> None:
        self.display_id = display_id

    @staticmethod
    def make(display_id: str) -> Any:
        try:
            from IPython.core.display_functions import DisplayHandle
        except ImportError:
            return _DisplayHandle(display_id)
        return DisplayHandle(display_id)  # its update() reaches ours through the patch

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def display(self, obj: Any, **kwargs: Any) -> None:
        _display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs: Any) -> None:
        _display(obj, display_id=self.display_id, update=True, **kwargs)


class _Cell:
    """Output of one running cell: buffers partial lines, flushes whole lines at once."""

    def __init__(self, sink: Any, formatter: Any = None) -> None:
        self.sink = sink
        self.formatter = formatter  # the interpreter's IPython shell's, once it has one
        self.buffers: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.pending_since = {"stdout": 0.0, "stderr": 0.0}
        self.shown_figures: set[int] = set()
        self.answers_input: bool | None = None  # whether the sink answers input() (stdin.py)

    def figure_shown(self, figure: Any) -> None:
        """A figure was sent as it is now: not again at the end of the cell unless it
        changes (drawing on it marks it stale again)."""
        self.shown_figures.add(id(figure))
        figure.stale = False

    def figure_changed(self, figure: Any) -> bool:
        return id(figure) not in self.shown_figures or bool(figure.stale)

    def write(self, name: str, text: str) -> None:
        buffer = self.buffers[name]
        now = time.monotonic()
        if not buffer:
            self.pending_since[name] = now
        buffer.append(text)
        # Whole lines go at once; a partial line (a progress bar) waits a little for more.
        if "\n" in text or now - self.pending_since[name] > FLUSH_INTERVAL:
            self.flush(name)

    def flush(self, name: str | None = None) -> None:
        for key in (name,) if name else ("stdout", "stderr"):
            buffer = self.buffers[key]
            if buffer:
                text = "".join(buffer)
                buffer.clear()
                if text:
                    self.sink.stream(key, text)

    def display(self, data: dict, metadata: dict, display_id: str | None = None,
                update: bool = False) -> None:
        self.flush()
        if display_id is None:  # the two-argument call every sink answers
            self.sink.display(ByValue(data), ByValue(metadata))
        else:
            self.sink.display(ByValue(data), ByValue(metadata), display_id, update)

    def clear_output(self, wait: bool) -> None:
        self.flush()
        self.sink.clear_output(wait)

    def page(self, data: dict, start: int = 0) -> None:
        """IPython's pager (``obj?`` in a cell): the notebook's pager, or the output."""
        self.flush()
        self.sink.page(ByValue(json_safe(data)), int(start))


def _figures(cell: _Cell) -> list[tuple[dict, dict]]:
    """PNG bundles of the matplotlib figures a cell left open (then closed), as inline;
    a figure the cell already displayed and did not change since is not sent again."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    bundles = []
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        if not cell.figure_changed(figure):
            continue
        png = figure_png(figure)
        if png is None:
            continue
        width, height = figure.get_size_inches() * figure.dpi
        bundles.append(({"image/png": png,
                         "text/plain": f"<Figure size {width:g}x{height:g} with "
                                       f"{len(figure.axes)} Axes>"}, {}))
    pyplot.close("all")
    return bundles


@contextlib.contextmanager
def capture(sink: Any, formatter: Any = None) -> Iterator[_Cell]:
    """What this thread prints or displays meanwhile goes to ``sink``, as in a cell."""
    cell = _Cell(sink, formatter)
    previous = getattr(_local, "cell", None)
    _local.cell = cell
    _enter_cell()
    try:
        yield cell
    finally:
        try:
            cell.flush()
        finally:
            _local.cell = previous
            _leave_cell()


class Interpreter(Introspection):
    """A cell interpreter over one namespace (the classic service's)."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.execution_count = 0
        self._counter = itertools.count(1)
        self._transformer: Any = ipyshell.transformer()  # None without IPython here
        self._shell: Any = None  # IPython's shell over the namespace, made when needed
        self._lock = threading.Lock()
        self._comms: Any = None  # remote_kernel.remote.comms.InterpreterComms, once used
        os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to the notebook, not a window

    def close(self) -> None:
        """The connection this interpreter serves closed."""
        if self._comms is not None:
            self._comms.detach()

    # -- execution ---------------------------------------------------------------------------

    def exposed_run_cell(self, code: str, sink: Any, store_history: bool = True,
                         silent: bool = False) -> int:
        """Run ``code`` (Python, or IPython syntax when IPython is installed here); output
        goes to ``sink`` as it happens. Returns the execution count. Exceptions propagate to
        the caller with this side's traceback."""
        if store_history and not silent:
            self.execution_count += 1
            ipyshell.remember_input(self.namespace, self.execution_count, code)
        count = self.execution_count
        filename = f"<remote-cell-{next(self._counter)}>"
        source = self._transformer.transform_cell(code) if self._transformer else code
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        tree = self._parse(source, code, filename)
        shell = self._ipython_shell() if ipyshell.needs_shell(source) else self._shell
        last_expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not silent:
            last_expr = ast.Expression(tree.body.pop().value)
        with self._output_to(sink, shell) as cell:
            if shell is not None:
                shell.events.trigger("pre_execute")
            try:
                if tree.body:
                    exec(compile(tree, filename, "exec"), self.namespace)  # noqa: S102
                value = None
                if last_expr is not None:
                    value = eval(compile(last_expr, filename, "eval"), self.namespace)  # noqa: S307
                cell.flush()
                if value is not None and not code.rstrip().endswith(";"):
                    self.namespace["_"] = value
                    if store_history:
                        ipyshell.remember_output(self.namespace, count, value)
                    data, metadata = mimebundle(value, formatter=cell.formatter)
                    sink.result(ByValue(data), ByValue(metadata), count)
                    if is_figure(value):
                        cell.figure_shown(value)
            finally:
                if shell is not None:
                    shell.events.trigger("post_execute")  # %matplotlib inline shows figures
                for data, metadata in _figures(cell):
                    cell.display(data, metadata)
        return count

    @contextlib.contextmanager
    def _output_to(self, sink: Any, shell: Any) -> Iterator[_Cell]:
        """Around running the user's code: what it prints or displays goes to ``sink``."""
        with capture(sink, shell.display_formatter if shell is not None else None) as cell:
            comms_before = self._enter_comms()
            try:
                yield cell
            finally:
                self._leave_comms(comms_before)

    def _parse(self, source: str, code: str, filename: str) -> ast.Module:
        try:
            return ast.parse(source, filename, "exec")
        except SyntaxError as exc:
            if self._transformer is None:
                explained = ipyshell.without_ipython(exc, code, platform.node())
                if explained is not None:
                    raise explained from None
            raise exc.with_traceback(None) from None  # the user's mistake: no ast.parse frame

    def _ipython_shell(self) -> Any:
        with self._lock:
            if self._shell is None:
                self._shell = ipyshell.make_shell(self.namespace)
                _install_builtin_display()  # IPython's shell put its own into builtins
            return self._shell

    def exposed_eval(self, expression: str, sink: Any = None) -> Any:
        """Evaluate an expression (``%remote EXPR``); a statement is executed instead.
        A name that is an importable top-level module is imported on first use. With a
        ``sink``, what it prints or displays goes there, as in a cell."""
        if sink is None:
            return self._eval(expression)
        with self._output_to(sink, self._shell):
            return self._eval(expression)

    def _eval(self, expression: str) -> Any:
        filename = f"<remote-expr-{next(self._counter)}>"
        linecache.cache[filename] = (len(expression), None, [expression + "\n"], filename)
        try:
            code = compile(expression, filename, "eval")
        except SyntaxError:
            code = None  # a statement; compiled below, so its own SyntaxError has no context
        if code is None:
            exec(compile(expression, filename, "exec"), self.namespace)  # noqa: S102
            return None
        for _ in range(5):
            try:
                return eval(code, self.namespace)  # noqa: S307
            except NameError as exc:
                name = getattr(exc, "name", None)
                if not name or name in self.namespace or importlib.util.find_spec(name) is None:
                    raise
                self.namespace[name] = importlib.import_module(name)
        return eval(code, self.namespace)  # noqa: S307

    def exposed_reset(self) -> None:
        """A fresh namespace (the proxy kernel's restart on a shared server)."""
        keep = {"__name__": "__main__", "__builtins__": builtins}
        self.namespace.clear()
        self.namespace.update(keep)
        self.execution_count = 0
        with self._lock:
            self._shell = None  # a new IPython shell, if needed, over the fresh namespace

    # -- comms (the proxy kernel forwards ipywidgets) -------------------------------------

    def exposed_attach_comms(self, sink: Any) -> None:
        """Forward comms (ipywidgets) to ``sink``: the proxy kernel, or the notebook's comm
        bridge for ``%%remote`` cells. ModuleNotFoundError without the comm package."""
        from remote_kernel.remote.comms import InterpreterComms

        if self._comms is None:
            self._comms = InterpreterComms()
        self._comms.attach(sink)

    def exposed_comm_message(self, msg_type: str, content: dict, metadata: dict,
                             buffers: tuple) -> None:
        if self._comms is not None:
            self._comms.deliver(msg_type, content, metadata, buffers)

    def exposed_comm_info(self) -> ByValue:
        return ByValue({}) if self._comms is None else self._comms.info()

    def _enter_comms(self) -> Any:
        if self._comms is None:
            return None
        from remote_kernel.remote import comms as remote_comms

        return remote_comms.enter(self._comms)

    def _leave_comms(self, previous: Any) -> None:
        if self._comms is not None:
            from remote_kernel.remote import comms as remote_comms

            remote_comms.leave(previous)

    def exposed_language_info(self) -> ByValue:
        return ByValue({
            "name": "python",
            "version": platform.python_version(),
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "nbconvert_exporter": "python",
        })

    def exposed_host_info(self) -> ByValue:
        return ByValue({"pid": os.getpid(), "host": platform.node(), "python": sys.executable,
                        "version": platform.python_version()})
