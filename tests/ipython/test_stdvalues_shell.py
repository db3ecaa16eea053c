"""Standard-library values and enum members through %%remote -o and %remote pull, in a
real InteractiveShell against a real server process."""

from __future__ import annotations

import datetime
import decimal
import http
import pathlib
import zoneinfo
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk
from remote_kernel.ipython.registry import get_registry
from tests.ipython.test_shell import run


@pytest.fixture
def lab(shell: InteractiveShell, classic_server) -> Iterator[rk.Connection]:
    shell.run_line_magic("remote", f"connect 127.0.0.1:{classic_server.port} --name lab "
                                   f"--token-file {classic_server.token_file}")
    yield shell.user_ns["lab"]
    if "lab" in get_registry().entries:
        shell.run_line_magic("remote", "close lab")



def test_remote_outputs_and_pull_give_the_values(shell, lab) -> None:
    run(shell, "%%remote -o stamp,amount,where,status,mode\n"
               "import datetime, decimal, enum, http, pathlib, zoneinfo\n"
               "stamp = datetime.datetime(2024, 10, 27, 2, 30, fold=1,\n"
               "                          tzinfo=zoneinfo.ZoneInfo('Europe/Berlin'))\n"
               "amount = decimal.Decimal('1.10')\n"
               "where = pathlib.PureWindowsPath(r'C:\\data\\x.h5')\n"
               "status = http.HTTPStatus.NOT_FOUND\n"
               "class Mode(enum.Enum):\n"
               "    FAST = 1\n"
               "mode = Mode.FAST\n")
    ns = shell.user_ns
    assert type(ns["stamp"]) is datetime.datetime and ns["stamp"].fold == 1
    assert ns["stamp"].tzinfo is zoneinfo.ZoneInfo("Europe/Berlin")
    assert type(ns["amount"]) is decimal.Decimal and str(ns["amount"]) == "1.10"
    assert type(ns["where"]) is pathlib.PureWindowsPath
    assert ns["status"] is http.HTTPStatus.NOT_FOUND  # known here: the local member
    assert rk.is_netref(ns["mode"])  # known only there: stays a reference
    lab.execute("later = (datetime.date(2024, 2, 29), datetime.timedelta(hours=1))\n"
                "ok = http.HTTPStatus.OK")
    run(shell, "%remote pull later")
    run(shell, "%remote pull ok")
    assert ns["later"] == (datetime.date(2024, 2, 29), datetime.timedelta(hours=1))
    assert ns["ok"] is http.HTTPStatus.OK


def test_a_remote_zone_comes_back_a_zone_and_displays(shell, lab) -> None:
    """%remote EXPR of a time zone gives the zone itself (by value): it displays here, with
    no request."""
    paris = run(shell, "%remote __import__('zoneinfo').ZoneInfo('Europe/Paris')")
    assert paris is zoneinfo.ZoneInfo("Europe/Paris")
    fixed = run(shell, "%remote datetime.timezone(datetime.timedelta(hours=9), 'JST')")
    assert type(fixed) is datetime.timezone and fixed.tzname(None) == "JST"
    before = lab.stats["requests"]
    data, _ = shell.display_formatter.format(paris)
    assert data["text/plain"] == "zoneinfo.ZoneInfo(key='Europe/Paris')"
    assert shell.display_formatter.format(fixed)[0]["text/plain"] == repr(fixed)
    assert lab.stats["requests"] == before
    shell.user_ns["here"] = zoneinfo.ZoneInfo("Asia/Tokyo")
    run(shell, "%remote push here")
    assert lab.eval("type(here).__name__, str(here)") == ("ZoneInfo", "Asia/Tokyo")
