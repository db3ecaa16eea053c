"""How remote errors look in IPython and the notebook.

One renderer, built on IPython's own traceback formatters (``IPython.core.ultratb``), so
``%xmode`` (Minimal, Plain, Context, Verbose) and ``%colors`` (NoColor included) apply to a
remote error as to a local one. Each exception of the chain is one section, as Python prints
it (the innermost first, joined by "The above exception was the direct cause of the
following exception:"); a section shows the local frames that led to the call (the cell;
machinery left out by module), then the remote frames, outermost first, with a label line
where the call crossed a connection ("[on 127.0.0.1:40123]", and "[here]" for a callback of
this notebook that the peer called). Remote frames have no Python frame objects: in Context
and Verbose modes they show the source lines the peer sent, without variables.

A ``SyntaxError`` shows its file, line and caret; a Stop (Ctrl-C while waiting for the
peer) and a closed connection are one line each. An exception group (or a chain holding one)
shows as the standard library prints it, sub-exceptions boxed, their remote frames as notes:
IPython's formatters do not show sub-exceptions, and IPython prints a local group so too
(without ``%colors``); its local frames are the user's only, as for other remote errors. Without a shell (the proxy kernel) the
look is IPython's default: Context mode, the "linux" colors.

IPython 9 colors through themes (``IPython.utils.PyColorize.theme_table``, pygments tokens);
IPython 8 (the newest on Python 3.10) through color schemes (``Colors`` of escape codes).
``_ThemeLook`` and ``_SchemeLook`` paint the same pieces for each; the formatters' own
methods used here (``_format_list``, ``get_records``, ``format_record``,
``prepare_header``, ``format_exception``, ``get_exception_only``) are the same in both.
"""

from __future__ import annotations

import builtins
import contextlib
import linecache
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any

from pygments.token import Token

from remote_kernel import errors
from remote_kernel.core.hooks import PROCESS_HOOKS
from remote_kernel.errors import (
    ErrorRendering,
    RemoteError,
    RemoteFrame,
    chain_of,
    traceback_note_hidden,
)
from remote_kernel.outputs.filter import sanitize_text_stream
from remote_kernel.protocol.frames import user_tracebacks

DEFAULT_MODE, DEFAULT_THEME = "Context", "linux"
MAIN_CONTEXT, CHAINED_CONTEXT = 5, 3  # source lines around a frame, as IPython shows them
_CONTEXT_MODES = ("Context", "Verbose", "Docs")
_LINK_CAUSE = {"cause": True, "context": None}
_GROUP: type | None = vars(builtins).get("BaseExceptionGroup")  # Python 3.11+


def _shell_settings() -> tuple[str, str]:
    """The current shell's ``%xmode`` and ``%colors``, or IPython's defaults."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    formatter = getattr(shell, "InteractiveTB", None)
    mode = getattr(formatter, "mode", None) or DEFAULT_MODE
    theme = str(getattr(shell, "colors", None) or DEFAULT_THEME).lower()  # what %colors sets
    return mode, theme


class RemoteTracebackFormatter:
    """Structured tracebacks (IPython's list of strings) for remote errors."""

    def __init__(self, mode: str | None = None, theme: str | None = None) -> None:
        shell_mode, shell_theme = _shell_settings()
        self.mode = mode or shell_mode
        self.look = _look(theme or shell_theme)
        plain_mode = self.mode if self.mode in ("Plain", "Minimal") else "Plain"
        self.tb = self.look.formatter(plain_mode)
        self.context_mode = self.mode in _CONTEXT_MODES

    # -- the whole traceback ------------------------------------------------------------

    def structured(self, exc: BaseException) -> list[str]:
        if self.mode != "Minimal" and holds_group(exc):
            return self._group_lines(exc)
        with traceback_note_hidden():  # the frames are shown here, not as a note
            if self.mode == "Minimal":
                return self._exception_lines(exc)
            parts: list[str] = []
            sections = [(linked, link, self._frames(linked)) for linked, link in chain_of(exc)]
            if self.context_mode and any(entries or remote for _, _, (entries, remote)
                                         in sections):
                parts.append(self._paint([(Token.Topline, self.look.top_line * 75)]))
            for linked, link, (entries, remote) in sections:
                context = MAIN_CONTEXT if linked is exc else CHAINED_CONTEXT
                if self.context_mode:
                    parts.extend(self._context_section(linked, entries, remote, context))
                else:
                    parts.extend(self._plain_section(linked, entries, remote))
                if link:
                    parts.extend(self.tb.prepare_chained_exception_message(
                        _LINK_CAUSE[link])[0])  # type: ignore[arg-type]
            return parts

    def _group_lines(self, exc: BaseException) -> list[str]:
        """The standard library's printout (the remote frames are notes there), with the
        user's local frames only."""
        entries, _ = self._frames(exc)
        printed = traceback.TracebackException(type(exc), exc, _traceback_of(entries),
                                               compact=True).format()
        return "".join(printed).splitlines()

    # -- one exception of the chain -----------------------------------------------------

    def _frames(self, exc: BaseException) -> tuple[list[types.TracebackType],
                                                    list[RemoteFrame]]:
        """The local entries that led to the call (none when a magic made the call) and
        the remote frames of one exception of the chain."""
        local = [] if exc.__dict__.get("_rk_hide_local", False) else \
            user_tracebacks(exc.__traceback__)
        remote = list(getattr(exc, "remote_frames", None) or []) \
            if isinstance(exc, RemoteError) else []
        return local, remote

    def _plain_section(self, exc: BaseException, entries: list[types.TracebackType],
                       remote: list[RemoteFrame]) -> list[str]:
        local_frames = [(entry.tb_frame.f_code.co_filename, entry.tb_lineno,
                         entry.tb_frame.f_code.co_name,
                         linecache.getline(entry.tb_frame.f_code.co_filename, entry.tb_lineno,
                                           entry.tb_frame.f_globals).strip())
                        for entry in entries]
        lines: list[str] = []
        if local_frames or remote:
            lines.append(self._paint([(Token, "Traceback"), (Token, " "),
                                      (Token.NormalEm, "(most recent call last)"),
                                      (Token, ":"), (Token, "\n")]))
        formatted = self.tb._format_list([*local_frames, *(tuple(f) for f in remote)])
        lines.extend(formatted[:len(local_frames)])
        where: str | None = "" if local_frames else None
        for frame, entry in zip(remote, formatted[len(local_frames):], strict=True):
            if frame.where != where:
                lines.append(self._label(frame.where, indent="  ") + "\n")
                where = frame.where
            lines.append(entry)
        lines.extend(self._exception_lines(exc))
        return lines

    def _context_section(self, exc: BaseException, entries: list[types.TracebackType],
                         remote: list[RemoteFrame], context: int) -> list[str]:
        parts = [self.tb.prepare_header(type(exc).__name__, False)] if entries or remote \
            else []
        if entries:
            parts.extend(self._local_records(entries, context))
        where: str | None = "" if entries else None
        for frame in remote:
            if frame.where != where:
                parts.append(self._label(frame.where))
                where = frame.where
            parts.append(self._remote_record(frame, context))
        if isinstance(exc, SyntaxError):
            parts.extend(line.rstrip("\n") for line in self._exception_lines(exc))
        else:
            parts.extend(self.tb.format_exception(type(exc).__name__, exc))
        return parts

    def _local_records(self, entries: list[types.TracebackType], context: int) -> list[str]:
        """The real frames that led to the call, through IPython's VerboseTB."""
        tb = _traceback_of(entries)
        if tb is None:
            return []
        self.tb.include_vars = self.mode == "Verbose"
        records = self.tb.get_records(tb, context, 0)
        return [self.tb.format_record(record) for record in records]

    def _remote_record(self, frame: RemoteFrame, context: int) -> str:
        """A remote frame the way VerboseTB shows a local one: file, function, source."""
        function = frame.function if frame.function and frame.function != "<module>" else None
        if function and self.mode == "Verbose":
            function += frame.arguments  # "divide(a=3, b=0)", as VerboseTB writes a call
        text = self.look.frame_line(frame.filename, frame.lineno, function) + "\n"
        if frame.context:
            first, lines = frame.context_start, list(frame.context)
        else:
            first, lines = frame.lineno, [frame.line] if frame.line else []
        before, after = (context - 1) - (context - 1) // 2, (context - 1) // 2
        window = [(first + i, line) for i, line in enumerate(lines)
                  if frame.lineno - before <= first + i <= frame.lineno + after]
        variables = frame.variables if self.mode == "Verbose" else ()
        if not any(number == frame.lineno for number, _ in window):
            return text + self.look.variable_lines(variables)
        index = [number for number, _ in window].index(frame.lineno)
        return text + self.look.source_lines(frame.lineno, index, [line for _, line in window],
                                             variables)

    # -- pieces ---------------------------------------------------------------------------

    def _exception_lines(self, exc: BaseException) -> list[str]:
        """``Type: message`` (with the file, line and caret of a SyntaxError, and the peer's
        notes) through IPython's ListTB."""
        if not isinstance(exc, SyntaxError) or not isinstance(exc.filename, str):
            return self.tb.get_exception_only(type(exc), exc)
        with _no_local_source(exc.filename):
            return self.tb.get_exception_only(type(exc), exc)

    def _label(self, where: str, indent: str = "") -> str:
        return self._paint([(Token, indent),
                            (Token.NormalEm, f"[{errors.where_label(where)}]")])

    def _paint(self, tokens: list[tuple[Any, str]]) -> str:
        return self.look.paint(tokens)


@contextlib.contextmanager
def _no_local_source(filename: str) -> Iterator[None]:
    """ListTB reads a SyntaxError's line from linecache, else takes the error's ``text``. The
    file of a remote one is the peer's: a local file or cell of that name (``<remote-cell-1>``
    of a server in this process) must not stand in for the line the peer sent."""
    saved = linecache.cache.get(filename)
    linecache.cache[filename] = (0, None, [], filename)
    try:
        yield
    finally:
        if saved is None:
            linecache.cache.pop(filename, None)
        else:
            linecache.cache[filename] = saved


def _traceback_of(entries: list[types.TracebackType]) -> types.TracebackType | None:
    """A traceback of these entries only (the user frames)."""
    tb: types.TracebackType | None = None
    for entry in reversed(entries):
        tb = types.TracebackType(tb, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return tb


def holds_group(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception of its printed chain is an exception group."""
    return _GROUP is not None and any(isinstance(linked, _GROUP) for linked, _ in chain_of(exc))


# -- IPython 9 themes and IPython 8 color schemes ----------------------------------------------


class _ThemeLook:
    """IPython 9: a ``PyColorize`` theme paints pygments tokens."""

    def __init__(self, name: str) -> None:
        from IPython.utils.PyColorize import theme_table

        if name not in theme_table:
            name = DEFAULT_THEME
        self.name = name
        self.theme = theme_table[name]
        self.top_line = self.theme.symbols["top_line"]

    def formatter(self, mode: str) -> Any:
        from IPython.core.ultratb import FormattedTB

        return FormattedTB(mode=mode, theme_name=self.name, tb_offset=0)

    def paint(self, tokens: list[tuple[Any, str]]) -> str:
        return self.theme.format(tokens)

    def frame_line(self, filename: str, lineno: int, function: str | None) -> str:
        from IPython.core.tbtools import _tokens_filename

        tokens = _tokens_filename(True, filename, lineno=lineno)
        if function:
            tokens = [*tokens, (Token, ", in "), (Token.VName, function)]
        return self.paint(tokens)

    def source_lines(self, lineno: int, index: int, lines: list[str],
                     variables: tuple[tuple[str, str], ...] = ()) -> str:
        from IPython.core.tbtools import _simple_format_traceback_lines
        from IPython.utils.PyColorize import Parser

        parser = Parser(theme_name=self.name)
        numbered = [(line + "\n", parser.format2(line + "\n", "str")) for line in lines]
        return self.paint(_simple_format_traceback_lines(
            lineno, index, numbered, [_variable_tokens(*pair) for pair in variables],
            self.theme))

    def variable_lines(self, variables: tuple[tuple[str, str], ...]) -> str:
        return "".join(self.paint(_variable_tokens(*pair)) for pair in variables)


class _SchemeLook:
    """IPython 8: a color scheme (``Linux``, ``NoColor``, ...) of escape codes per field."""

    _FIELDS = {Token.Topline: "topline", Token.Normal: "Normal", Token.NormalEm: "normalEm",
               Token.Filename: "filename", Token.FilenameEm: "filenameEm",
               Token.Lineno: "lineno", Token.LinenoEm: "linenoEm", Token.Name: "name",
               Token.NameEm: "nameEm", Token.VName: "vName", Token.ExcName: "excName",
               Token.Caret: "caret", Token.ValEm: "valEm"}
    top_line = "-"

    def __init__(self, name: str) -> None:
        from IPython.core.excolors import exception_colors

        table = exception_colors()
        schemes = {scheme.lower(): scheme for scheme in table}
        self.name = schemes.get(name.lower()) or schemes[DEFAULT_THEME]
        table.set_active_scheme(self.name)
        self.colors = table.active_colors

    def formatter(self, mode: str) -> Any:
        from IPython.core.ultratb import FormattedTB

        return FormattedTB(mode=mode, color_scheme=self.name, tb_offset=0)

    def paint(self, tokens: list[tuple[Any, str]]) -> str:
        normal = self.colors.Normal
        parts = []
        for token, text in tokens:
            field = self._FIELDS.get(token)
            color = getattr(self.colors, field) if field else ""
            parts.append(f"{color}{text}{normal}" if color and text else text)
        return "".join(parts)

    def frame_line(self, filename: str, lineno: int, function: str | None) -> str:
        from IPython.core.ultratb import _format_filename

        text = _format_filename(filename, self.colors.filenameEm, self.colors.Normal,
                                lineno=lineno)
        if function:
            text += self.paint([(Token, ", in "), (Token.VName, function)])
        return text

    def source_lines(self, lineno: int, index: int, lines: list[str],
                     variables: tuple[tuple[str, str], ...] = ()) -> str:
        from IPython.core.ultratb import _simple_format_traceback_lines
        from IPython.utils.PyColorize import Parser

        parser = Parser(style=self.name)

        def line_format(line: str, out: str) -> tuple[str, bool]:
            # One line end: IPython 8's colored format2 adds its own.
            text, error = parser.format2(line, out)
            return (text or line).rstrip("\n") + "\n", error

        # IPython 8 puts the variables after the line as one string, and adds its line end.
        lvals = self.variable_lines(variables).rstrip("\n")
        return "".join(_simple_format_traceback_lines(
            lineno, index, [line + "\n" for line in lines], self.colors, lvals, line_format))

    def variable_lines(self, variables: tuple[tuple[str, str], ...]) -> str:
        return "".join(self.paint(_variable_tokens(*pair)) for pair in variables)


def _variable_tokens(name: str, value: str) -> list[tuple[Any, str]]:
    """One line of ``%xmode Verbose``'s variables, as IPython writes them under a frame."""
    return [(Token, " " * 8), (Token, name), (Token, " "), (Token.ValEm, "= "),
            (Token.ValEm, value), (Token, "\n")]


def _look(name: str) -> _ThemeLook | _SchemeLook:
    """The look for a ``%colors`` name, in the color system of the IPython installed."""
    from IPython.utils import PyColorize

    if hasattr(PyColorize, "theme_table"):
        return _ThemeLook(name)
    return _SchemeLook(name)


@contextlib.contextmanager
def remote_frames_only() -> Iterator[None]:
    """Around a magic's remote call: an error shows the remote frames alone, without the
    cell's local ``get_ipython().run_cell_magic(...)`` line."""
    try:
        yield
    except RemoteError as exc:
        exc.__dict__["_rk_hide_local"] = True
        raise


class IPythonRendering(ErrorRendering):
    """How errors show in IPython and the notebook: IPython's own formatters (``%xmode``,
    ``%colors``), and the text the peer wrote cleaned of terminal escapes other than colours
    (an OSC 52 clipboard write in a terminal IPython) and of bidi overrides, trusted or not.
    ``mode``: an ``%xmode`` of its own (the proxy kernel's: its remote shell's), else the
    current shell's."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode

    def remote_error(self, exc: Any) -> list[str]:
        try:
            lines = RemoteTracebackFormatter(mode=self.mode).structured(exc)
        except Exception:  # never hide the error behind a failure to format it
            lines = [*errors._plain(exc)]
        return [sanitize_text_stream(str(line)) for line in lines]

    def connection_closed(self, exc: Any) -> list[str]:
        """One line for a dead connection; the reconnect hint only where it applies."""
        text = str(exc)
        if "reconnect" not in text:
            name = _registered_name(text)
            if name is not None:
                text += f" (%remote reconnect {name} connects again)"
        return [_one_line("ConnectionClosed", text)]

    def one_line(self, exc: BaseException) -> list[str]:
        return [_one_line(type(exc).__name__, str(exc))]


IPYTHON_RENDERING = IPythonRendering()


def _one_line(name: str, text: str) -> str:
    text = sanitize_text_stream(text)  # a close reason may come from the peer
    try:
        look = _look(_shell_settings()[1])
    except Exception:  # never hide the message behind a failure to color it
        return f"{name}: {text}"
    return look.paint([(Token.ExcName, name), (Token, ": "), (Token, text)])


def _registered_name(text: str) -> str | None:
    """The notebook's name of the closed connection a message is about, if any."""
    from remote_kernel.ipython.registry import CLOSED, get_registry

    for name, entry in get_registry().entries.items():
        if entry.state == CLOSED and entry.conn is not None and entry.conn.peer in text:
            return name
    return None


def show_remote_syntax_error(shell: Any) -> None:
    """IPython sends every SyntaxError to ``showsyntaxerror``, which prints the local frames
    of the call (the magic, the connection): a remote one is rendered here instead."""
    original = shell.showsyntaxerror

    def showsyntaxerror(filename: str | None = None, running_compiled_code: bool = False) -> None:
        value = sys.exc_info()[1] or getattr(sys, "last_value", None)
        if isinstance(value, RemoteError) and isinstance(value, SyntaxError):
            shell._showtraceback(type(value), value, value._render_traceback_())
            return
        original(filename, running_compiled_code)

    showsyntaxerror._rk_original = original  # type: ignore[attr-defined]
    shell.showsyntaxerror = showsyntaxerror


def restore_syntax_error(shell: Any) -> None:
    _restore(shell, "showsyntaxerror")


def _restore(shell: Any, method: str) -> None:
    """Take our wrapper of ``shell.<method>`` away (the class's own method shows again)."""
    current = shell.__dict__.get(method)
    if current is not None and hasattr(current, "_rk_original"):
        delattr(shell, method)


def show_remote_groups(shell: Any) -> None:
    """IPython prints any exception group with ``traceback.print_exc()``, never asking its
    ``_render_traceback_`` (so the frames of the connection's machinery would show, and
    ``%xmode Minimal`` would not apply): a remote one is rendered here instead."""
    original = shell.showtraceback

    def showtraceback(exc_tuple: Any = None, filename: str | None = None,
                      tb_offset: int | None = None, exception_only: bool = False,
                      running_compiled_code: bool = False) -> None:
        try:
            value = shell._get_exc_info(exc_tuple)[1]
        except ValueError:  # nothing to show: IPython says so
            value = None
        if isinstance(value, RemoteError) and not exception_only and holds_group(value):
            shell._showtraceback(type(value), value, value._render_traceback_())
            if shell.call_pdb:
                shell.debugger(force=True)
            return
        original(exc_tuple, filename, tb_offset, exception_only, running_compiled_code)

    showtraceback._rk_original = original  # type: ignore[attr-defined]
    shell.showtraceback = showtraceback


def restore_groups(shell: Any) -> None:
    _restore(shell, "showtraceback")


def install() -> None:
    """Connections built with the process's hooks (core/hooks.py) render their errors here."""
    PROCESS_HOOKS.error_rendering = IPYTHON_RENDERING
