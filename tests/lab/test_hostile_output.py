"""A hostile peer's display in a real JupyterLab: with the connection untrusted (the default)
its JavaScript and event handlers never run and write no file through the Jupyter server's
API; the same payload on a connection the user trusts does both, which shows the attack is
real and the test can fail.

Reuses the real JupyterLab, chromium and `remote-kernel serve` helpers of test_browser.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.test_browser import (
    NEEDS_CHROMIUM,
    NEEDS_EXTENSION,
    Env,
    Lab,
    RemoteServer,
    _notebook,
    _wait_until,
    chromium_page,
    expect,
    open_notebook,
)

pytestmark = [pytest.mark.timeout(240), NEEDS_CHROMIUM, NEEDS_EXTENSION]

# What a hostile server answers for a display: script in HTML, an event handler, and a
# JavaScript output that writes a file through the contents API with the page's own rights.
HOSTILE = r'''
class Evil:
    def __init__(self, tag):
        self.tag = tag
    def _repr_html_(self):
        return (f'<b class="rk-evil-{self.tag}">evil table</b>'
                f'<img src="data:," onerror="window.rk_onerror_{self.tag} = 1">'
                f'<script>window.rk_script_{self.tag} = 1</script>')
    def _repr_javascript_(self):
        return ("window.rk_js_%s = 1;"
                "const xsrf = (document.cookie.match(/_xsrf=([^;]*)/) || [])[1] || '';"
                "fetch('/api/contents/pwned-%s.txt', {method: 'PUT', headers: "
                "{'Content-Type': 'application/json', 'X-XSRFToken': xsrf}, body: "
                "JSON.stringify({type: 'file', format: 'text', content: 'pwned'})});"
                % (self.tag, self.tag))
    def __repr__(self):
        return 'Evil()'
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def lab(env: Env) -> Iterator[Lab]:
    server = Lab(env)
    yield server
    server.close()


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    with chromium_page(1200, 800) as page:
        yield page


def _flag(page: Any, name: str) -> Any:
    return page.evaluate(f"window.{name}")


def test_hostile_display_runs_nothing_unless_trusted(env: Env, lab: Lab, page: Any) -> None:
    name = _notebook(env, "hostile.ipynb")
    server = RemoteServer(env, "evil")
    try:
        nb = open_notebook(page, lab, name)
        nb.run("%load_ext remote_kernel\n"
               f"%remote connect {server.file} --name evil\n"
               f"%remote connect {server.file} --name mine --trust\n"
               f"evil.execute({HOSTILE!r}); mine.execute({HOSTILE!r})")
        # Untrusted: the table text shows, nothing runs, no file appears.
        cell = nb.run("evil.eval('Evil(\"u\")')")
        expect(cell.locator(".jp-OutputArea")).to_contain_text("evil table")
        expect(cell.locator(".jp-OutputArea")).to_contain_text("connect with --trust")
        page.wait_for_timeout(1500)  # the fetch of a script that did run would land by now
        assert _flag(page, "rk_js_u") is None
        assert _flag(page, "rk_onerror_u") is None
        assert _flag(page, "rk_script_u") is None
        assert not (env.notebooks / "pwned-u.txt").exists()
        # Trusted: the same payload runs and writes the file (so the check above can fail).
        nb.run("mine.eval('Evil(\"t\")')")  # JupyterLab prefers the JavaScript output
        _wait_until(lambda: (env.notebooks / "pwned-t.txt").exists(), 15,
                    "the trusted output's script to write its file")
        assert _flag(page, "rk_js_t") == 1
    finally:
        server.kill()
