"""The ``%remote`` subcommands are written down once (magics.SUBCOMMANDS, one parser each):
the usage, ``%remote?``, ``%remote <TAB>``, each subcommand's errors and README's Magics table
all follow that table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from remote_kernel.ipython import subcommands
from remote_kernel.ipython.magics import CELL_PARSER, SUBCOMMANDS, USAGE
from remote_kernel.ipython.registry import get_registry

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = ("connect", "list", "use", "close", "ping", "reconnect", "pull", "push", "group",
         "discover")


def flat(text: str) -> str:
    """Without colors and with runs of whitespace as one space (usages may wrap)."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def completions(shell: InteractiveShell, line: str) -> list[str]:
    with provisionalcompleter():
        return [c.text for c in shell.Completer.completions(line, len(line))]


def test_the_table_has_every_subcommand() -> None:
    assert tuple(SUBCOMMANDS) == NAMES
    for sub in SUBCOMMANDS.values():
        assert sub.usage.startswith(f"%remote {sub.name}")
        assert sub.summary and sub.handler.__name__ == f"_do_{sub.name}"


def test_help_lists_every_subcommand_with_its_usage_and_options(shell) -> None:
    text = flat(shell.object_inspect_mime("%remote")["text/plain"])  # what %remote? shows
    for sub in SUBCOMMANDS.values():
        assert flat(sub.usage) in text
        assert flat(sub.summary) in text
        for option in subcommands.options(sub.parser):
            assert option in text
    assert "%remote EXPR" in text and flat(CELL_PARSER.format_usage()) in text
    assert "Example::" in text  # the prose written in magics.py is kept
    cell_text = flat(shell.object_inspect_mime("%%remote")["text/plain"])
    assert flat(CELL_PARSER.format_usage()) in cell_text and "-o x binds x" in cell_text


def test_usage_shown_for_an_empty_line_has_every_usage(shell) -> None:
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("remote", "")
    message = str(caught.value)
    assert message.endswith(USAGE)
    for sub in SUBCOMMANDS.values():
        assert sub.usage in message
    assert CELL_PARSER.format_usage().rstrip() in message


def test_a_typo_still_says_what_was_meant(shell) -> None:
    with pytest.raises(UsageError, match="did you mean 'discover'") as caught:
        shell.run_line_magic("remote", "discvoer --timeout 1")
    assert str(caught.value).endswith(USAGE)


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_option_is_a_usage_error_with_that_usage(shell, name: str) -> None:
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("remote", f"{name} x --bogus-option")
    message = str(caught.value)
    assert message.startswith(f"%remote {name}: ")
    assert message.endswith(SUBCOMMANDS[name].usage)
    assert "--bogus-option" in message or "required" in message


def test_a_bad_option_to_the_cell_magic_shows_its_usage(shell) -> None:
    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic("remote", "--bogus-option", "1")
    assert CELL_PARSER.format_usage().rstrip() in str(caught.value)


def test_arguments_a_subcommand_does_not_take(shell) -> None:
    with pytest.raises(UsageError, match=r"^%remote list: unrecognized arguments: extra"):
        shell.run_line_magic("remote", "list extra")
    with pytest.raises(UsageError, match=r"^%remote use: .*required: NAME"):
        shell.run_line_magic("remote", "use")
    with pytest.raises(UsageError, match=r"^%remote connect: No closing quotation"):
        shell.run_line_magic("remote", 'connect "host')


def test_tab_offers_exactly_the_table(shell) -> None:
    assert sorted(completions(shell, "%remote ")) == sorted(NAMES)
    assert completions(shell, "%remote p") == ["ping", "pull", "push"]


def test_tab_offers_options_and_choices(shell) -> None:
    assert completions(shell, "%remote close --") == ["--all"]
    assert sorted(completions(shell, "%remote connect x --")) == \
        sorted(subcommands.options(SUBCOMMANDS["connect"].parser))
    assert completions(shell, "%remote connect x --service ") == ["classic", "void"]
    assert completions(shell, "%remote discover --int") == ["--interface"]
    assert sorted(completions(shell, "%%remote -")) == sorted(subcommands.options(CELL_PARSER))
    assert "--token-file" in completions(shell, "%remote group g a --to")


def test_tab_offers_names_where_the_parser_says_so(shell) -> None:
    registry = get_registry()
    registry.groups["benchgroup"] = []
    try:
        assert completions(shell, "%%remote bench") == ["benchgroup"]  # NAME of a cell: groups too
        assert completions(shell, "%remote group g a bench") == ["benchgroup"]  # MEMBER
        assert completions(shell, "%remote group bench") == ["benchgroup"]  # GROUP
        assert "benchgroup" not in completions(shell, "%remote ping bench")  # a connection
        assert "subprocess" in completions(shell, "%remote connect --name n sub")  # TARGET
    finally:
        del registry.groups["benchgroup"]


def magics_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Magics\n")
    return text[start:text.index("\n## ", start + 1)]


def rows_about(section: str, magic: str) -> str:
    """The README table's rows whose first column shows ``magic``."""
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return "\n".join(row for row in rows if magic in row.split(" | ")[0])


def documents(rows: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", rows) is not None


@pytest.mark.parametrize("name", NAMES)
def test_readme_documents_the_subcommand_and_its_options(name: str) -> None:
    rows = rows_about(magics_section(), f"%remote {name}")
    assert rows, f"README's Magics table has no row for %remote {name}"
    for action in SUBCOMMANDS[name].parser._actions:
        if action.option_strings:
            assert any(documents(rows, option) for option in action.option_strings), \
                f"README's row for %remote {name} does not mention {action.option_strings}"


def test_readme_documents_the_cell_magic_options() -> None:
    rows = rows_about(magics_section(), "%%remote")
    for action in CELL_PARSER._actions:
        if action.option_strings:
            assert any(documents(rows, option) for option in action.option_strings), \
                f"README's %%remote rows do not mention {action.option_strings}"
