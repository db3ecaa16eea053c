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
peer) and a closed connection are one line each. Without a shell (the proxy kernel) the
look is IPython's default: Context mode, the "linux" colors.
"""

from __future__ import annotations

import contextlib
import linecache
import sys
import types
from collections.abc import Iterator
from typing import Any

from pygments.token import Token

from remote_kernel import errors
from remote_kernel.errors import RemoteError, RemoteFrame, chain_of, traceback_note_hidden
from remote_kernel.protocol.frames import user_tracebacks

DEFAULT_MODE, DEFAULT_THEME = "Context", "linux"
MAIN_CONTEXT, CHAINED_CONTEXT = 5, 3  # source lines around a frame, as IPython shows them
_CONTEXT_MODES = ("Context", "Verbose", "Docs")
_LINK_CAUSE = {"cause": True, "context": None}


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
        from IPython.core.ultratb import FormattedTB
        from IPython.utils.PyColorize import theme_table

        shell_mode, shell_theme = _shell_settings()
        self.mode = mode or shell_mode
        theme = theme or shell_theme
        if theme not in theme_table:
            theme = DEFAULT_THEME
        self.theme_name = theme
        self.theme = theme_table[theme]
        plain_mode = self.mode if self.mode in ("Plain", "Minimal") else "Plain"
        self.tb = FormattedTB(mode=plain_mode, theme_name=theme, tb_offset=0)
        self.context_mode = self.mode in _CONTEXT_MODES

    # -- the whole traceback ------------------------------------------------------------

    def structured(self, exc: BaseException) -> list[str]:
        with traceback_note_hidden():  # the frames are shown here, not as a note
            if self.mode == "Minimal":
                return self._exception_lines(exc)
            parts: list[str] = []
            sections = [(linked, link, self._frames(linked)) for linked, link in chain_of(exc)]
            if self.context_mode and any(entries or remote for _, _, (entries, remote)
                                         in sections):
                parts.append(self._paint([(Token.Topline, self.theme.symbols["top_line"]
                                           * 75)]))
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
        tb: types.TracebackType | None = None
        for entry in reversed(entries):  # a traceback of the user frames only
            tb = types.TracebackType(tb, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        if tb is None:
            return []
        self.tb.include_vars = self.mode == "Verbose"
        records = self.tb.get_records(tb, context, 0)
        return [self.tb.format_record(record) for record in records]

    def _remote_record(self, frame: RemoteFrame, context: int) -> str:
        """A remote frame the way VerboseTB shows a local one: file, function, source."""
        from IPython.core.tbtools import _simple_format_traceback_lines, _tokens_filename
        from IPython.utils.PyColorize import Parser

        text = self._paint(_tokens_filename(True, frame.filename, lineno=frame.lineno))
        if frame.function and frame.function != "<module>":
            text += self._paint([(Token, ", in "), (Token.VName, frame.function)])
        text += "\n"
        if frame.context:
            first, lines = frame.context_start, list(frame.context)
        else:
            first, lines = frame.lineno, [frame.line] if frame.line else []
        before, after = (context - 1) - (context - 1) // 2, (context - 1) // 2
        window = [(first + i, line) for i, line in enumerate(lines)
                  if frame.lineno - before <= first + i <= frame.lineno + after]
        if not any(number == frame.lineno for number, _ in window):
            return text
        parser = Parser(theme_name=self.theme_name)
        numbered = [(line + "\n", parser.format2(line + "\n", "str")) for _, line in window]
        index = [number for number, _ in window].index(frame.lineno)
        tokens = _simple_format_traceback_lines(frame.lineno, index, numbered, [], self.theme)
        return text + self._paint(tokens)

    # -- pieces ---------------------------------------------------------------------------

    def _exception_lines(self, exc: BaseException) -> list[str]:
        """``Type: message`` (with the file, line and caret of a SyntaxError, and the peer's
        notes) through IPython's ListTB."""
        return self.tb.get_exception_only(type(exc), exc)

    def _label(self, where: str, indent: str = "") -> str:
        return self._paint([(Token, indent),
                            (Token.NormalEm, f"[{errors.where_label(where)}]")])

    def _paint(self, tokens: list[tuple[Any, str]]) -> str:
        return self.theme.format(tokens)


@contextlib.contextmanager
def remote_frames_only() -> Iterator[None]:
    """Around a magic's remote call: an error shows the remote frames alone, without the
    cell's local ``get_ipython().run_cell_magic(...)`` line."""
    try:
        yield
    except RemoteError as exc:
        exc.__dict__["_rk_hide_local"] = True
        raise


def render_remote_error(exc: Any) -> list[str]:
    """``RemoteError._render_traceback_``: the structured traceback IPython shows."""
    try:
        return RemoteTracebackFormatter().structured(exc)
    except Exception:  # never hide the error behind a failure to format it
        return [*errors._plain(exc)]


def render_connection_closed(exc: Any) -> list[str]:
    """One line for a dead connection; the reconnect hint only where it applies."""
    text = str(exc)
    if "reconnect" not in text:
        name = _registered_name(text)
        if name is not None:
            text += f" (%remote reconnect {name} connects again)"
    return [_one_line("ConnectionClosed", text)]


def render_one_line(exc: BaseException) -> list[str]:
    """A Stop or a timeout while waiting for the peer: one line, no frames of the wait."""
    return [_one_line(type(exc).__name__, str(exc))]


def _one_line(name: str, text: str) -> str:
    try:
        from IPython.utils.PyColorize import theme_table

        theme = theme_table[_shell_settings()[1]]
    except (ImportError, KeyError):
        return f"{name}: {text}"
    return theme.format([(Token.ExcName, name), (Token, ": "), (Token, text)])


def _registered_name(text: str) -> str | None:
    """The notebook's name of the lost connection a message is about, if any."""
    from remote_kernel.ipython.registry import LOST, get_registry

    for name, entry in get_registry().entries.items():
        if entry.state == LOST and entry.conn is not None and entry.conn.peer in text:
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
    current = shell.__dict__.get("showsyntaxerror")
    if current is not None and hasattr(current, "_rk_original"):
        del shell.showsyntaxerror


def install() -> None:
    """Make remote errors, a closed connection, a Stop and a timeout render here."""
    errors.render_remote_error = render_remote_error
    errors.render_connection_closed = render_connection_closed
    errors.render_one_line = render_one_line
