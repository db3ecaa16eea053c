"""``obj?`` on netrefs is laid out as local IPython lays out the same object: functions and
methods without "String form", classes made in remote cells with their real file."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk
from remote_kernel.ipython.sink import NotebookSink


@pytest.fixture
def lab(shell: InteractiveShell, classic_server) -> Iterator[rk.Connection]:
    shell.run_line_magic("remote", f"connect 127.0.0.1:{classic_server.port} --name lab "
                                   f"--token-file {classic_server.token_file}")
    conn = shell.user_ns["lab"]
    yield conn
    shell.run_line_magic("remote", "close lab")


def _fields(shell: InteractiveShell, name: str, detail: int = 0) -> dict[str, str]:
    """The sections of ``name?`` as IPython prints them: {title: text}."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", shell.object_inspect_text(name, detail_level=detail))
    fields: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        found = re.match(r"([A-Z][\w ]+):\s*(.*)$", line)
        if found and not line.startswith(" "):
            title = found.group(1)
            fields[title] = found.group(2)
        elif title:
            fields[title] += "\n" + line
    return fields


def test_a_remote_method_has_no_string_form(shell: InteractiveShell,
                                            lab: rk.Connection) -> None:
    pytest.importorskip("pandas")
    lab.execute("import pandas as pd\ndf = pd.DataFrame({'volts': range(1000)})")
    shell.user_ns["df"] = lab.namespace["df"]
    remote = _fields(shell, "df.describe")
    import pandas

    shell.user_ns["local_df"] = pandas.DataFrame({"volts": range(1000)})
    local = _fields(shell, "local_df.describe")
    assert "String form" not in remote and "String form" not in local
    assert remote["Signature"] == local["Signature"].replace("local_df", "df")
    # The module that defines DataFrame.describe: frame.py in pandas 3, generic.py in pandas 2
    # (the newest on Python 3.10).
    defined_in = inspect.getsourcefile(pandas.DataFrame.describe)
    assert remote["File"] == local["File"] and defined_in is not None
    assert remote["File"].endswith(os.path.basename(defined_in))
    assert "Generate descriptive statistics" in remote["Docstring"]
    data = _fields(shell, "df")  # an instance keeps its string form, as locally
    assert "String form" in data and "volts" in data["String form"]


def test_classes_made_remotely_show_where_they_were_made(shell: InteractiveShell,
                                                         lab: rk.Connection) -> None:
    lab.execute("class Sensor:\n    '''Reads a value.'''\n    def read(self):\n"
                "        return 1\n")
    shell.user_ns["Sensor"] = lab.namespace["Sensor"]
    fields = _fields(shell, "Sensor")
    assert re.fullmatch(r"<remote-execute-\d+>", fields["File"].strip()), fields
    assert "String form" not in fields
    source = _fields(shell, "Sensor", detail=1)["Source"]
    assert "class Sensor:" in source and "return 1" in source
    sink = NotebookSink()
    lab.root.interpreter.run_cell("class Probe:\n    pass\n", sink)
    shell.user_ns["Probe"] = lab.namespace["Probe"]
    assert re.fullmatch(r"<remote-cell-\d+>", _fields(shell, "Probe")["File"].strip())
    assert "bin/remote-kernel" not in str(_fields(shell, "Probe"))


def test_the_type_reads_as_local_ipython_prints_it(shell: InteractiveShell,
                                                   lab: rk.Connection) -> None:
    source = "def reading():\n    '''One value.'''\n    return 1\n" \
             "class Probe:\n    pass\nprobe = Probe()\nvalues = [1, 2]\n"
    lab.execute(source)
    local: dict = {}
    exec(source, local)  # noqa: S102
    for name in ("reading", "probe", "values", "Probe"):
        shell.user_ns[name] = lab.namespace[name]
        remote_type = _fields(shell, name)["Type"]
        shell.user_ns[name] = local[name]
        assert remote_type == _fields(shell, name)["Type"], name
    shell.user_ns["reading"] = lab.namespace["reading"]
    assert _fields(shell, "reading")["Type"] == "function"
