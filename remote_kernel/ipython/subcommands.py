"""The ``%remote`` subcommands as one table: each has its argparse parser (built from
IPython's ``magic_arguments.argument`` decorators stacked on its handler), a one-line
summary and its handler. The usage text, ``%remote?`` and ``%remote <TAB>`` are generated
from it, so a subcommand or an option is written down once.

The README's Magics table cannot be generated at run time; a test checks it against this
table instead (tests/ipython/test_subcommands.py).

Reading a parser back (its actions, an option's action, an action's invocation) uses
argparse's underscored attributes, as argcomplete does: argparse has no public way.
"""

from __future__ import annotations

import argparse
import inspect
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser, MagicHelpFormatter

WIDTH = 92  # fixed, so the generated text does not depend on the terminal it is made in
EXPRESSION_USAGE = "%remote EXPR"
EXPRESSION_SUMMARY = "evaluate EXPR remotely and return the result"
CELL_SUMMARY = "run the cell remotely, on one peer or several at once (%%remote? tells more)"


class _Formatter(MagicHelpFormatter):
    """IPython's magic help layout at a fixed width, the usage line without its RST prefix."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=WIDTH, max_help_position=30)

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str = "%") -> None:
        super().add_usage(usage, actions, groups, prefix)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        # plain text, not IPython's RST (which writes `-i <a,b>`)
        return argparse.HelpFormatter._format_action_invocation(self, action)


def build_parser(prog: str, description: str | None, func: Any) -> MagicArgumentParser:
    """A parser from the ``argument``/``argument_group`` decorators stacked on ``func``
    (as ``magic_arguments`` builds one, without rewriting ``func``'s docstring)."""
    parser = MagicArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    group = None
    for decorator in getattr(func, "decorators", [])[::-1]:  # in source order
        result = decorator.add_to_parser(parser, group)
        if result is not None:
            group = result
    return parser


@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str
    parser: MagicArgumentParser
    handler: Callable[..., Any]  # (magics, args: argparse.Namespace) -> result

    @property
    def usage(self) -> str:
        return self.parser.format_usage().rstrip()

    def parse(self, rest: str) -> argparse.Namespace:
        """The arguments, or a UsageError naming this subcommand and its usage."""
        try:
            return self.parser.parse_argstring(rest)
        except (UsageError, ValueError) as exc:  # ValueError: an unclosed quote
            raise UsageError(f"%remote {self.name}: {exc}\n{self.usage}") from None


def subcommand(name: str, summary: str) -> Callable[[Any], Any]:
    """Mark a ``RemoteMagics`` method as the handler of ``%remote NAME``; the ``argument``
    decorators below this one describe its arguments."""

    def decorate(func: Any) -> Any:
        func.rk_subcommand = Subcommand(name, summary,
                                        build_parser(f"remote {name}", summary, func), func)
        return func

    return decorate


def collect(cls: type) -> dict[str, Subcommand]:
    """The subcommands of a class, in the order they are defined."""
    return {found.name: found for value in vars(cls).values()
            if (found := getattr(value, "rk_subcommand", None)) is not None}


def usage(table: dict[str, Subcommand], cell_parser: argparse.ArgumentParser) -> str:
    """What a typo or an empty ``%remote`` shows: one usage per subcommand, then the
    expression form and the cell magic."""
    lines = [sub.usage for sub in table.values()]
    lines += [EXPRESSION_USAGE, cell_parser.format_usage().rstrip()]
    return "\n".join(lines)


def docstring(table: dict[str, Subcommand], cell_parser: argparse.ArgumentParser,
              written: str | None) -> str:
    """``%remote?``: the first line of the ``written`` docstring, every subcommand's usage,
    summary and arguments, then the rest of ``written`` (its example)."""
    body = []
    for sub in table.values():
        body += [sub.usage, _indent(sub.summary, 4), *_arguments(sub.parser)]
    body += [EXPRESSION_USAGE, _indent(EXPRESSION_SUMMARY, 4),
             cell_parser.format_usage().rstrip(), _indent(CELL_SUMMARY, 4)]
    return _around("\n".join(body), written)


def cell_docstring(parser: argparse.ArgumentParser, written: str | None) -> str:
    """``%%remote?``: its usage and arguments, within the ``written`` docstring."""
    body = "\n".join([parser.format_usage().rstrip(), *_arguments(parser)])
    return _around(body, written)


def _around(usage_block: str, written: str | None) -> str:
    head, _, rest = inspect.cleandoc(written or "").partition("\n")
    return f"{head}\n\nUsage::\n\n{textwrap.indent(usage_block, '    ')}\n\n{rest.strip()}\n"


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    """One entry per argument that has help: its invocation, then the help wrapped below."""
    formatter = parser._get_formatter()
    lines = []
    for action in parser._actions:
        if not action.help:
            continue
        lines.append(_indent(formatter._format_action_invocation(action), 4))
        lines.append(_indent(action.help, 8))
    return lines


def _indent(text: str, by: int) -> str:
    return textwrap.fill(text, WIDTH - 4, initial_indent=" " * by, subsequent_indent=" " * by)


def options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser``, in the order they were added."""
    return [option for action in parser._actions for option in action.option_strings]


def positional_metavar(parser: argparse.ArgumentParser, before: Iterable[str]) -> str | None:
    """The metavar of the positional argument a new word after ``before`` would fill (the
    words already typed after the subcommand), or None when none is left."""
    taking_value = {option for action in parser._actions if action.nargs != 0
                    for option in action.option_strings}
    count, skip = 0, False
    for word in before:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in taking_value
        else:
            count += 1
    for action in parser._actions:
        if action.option_strings:
            continue
        many = action.nargs in ("*", "+", argparse.REMAINDER)
        if many or count == 0:
            return str(action.metavar or action.dest).upper()
        count -= 1
    return None


def option_action(parser: argparse.ArgumentParser, option: str) -> argparse.Action | None:
    """The action of ``option`` when it takes a value, else None."""
    action = parser._option_string_actions.get(option)
    return action if action is not None and action.nargs != 0 else None


__all__ = ["Subcommand", "build_parser", "collect", "docstring", "cell_docstring", "subcommand",
           "usage", "options", "positional_metavar", "option_action"]
