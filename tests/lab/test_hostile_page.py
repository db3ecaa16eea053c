"""A hostile peer's pager in a real JupyterLab: IPython's pager (``obj?``, ``page.page``) in a
``%%remote`` cell becomes a page payload of the execute reply, which JupyterLab adds to the
cell as output. Untrusted, its script and event handlers never run; trusted, the same page
runs its script (so the test can fail). A module of its own: one notebook per page.
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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("hostile-page"))


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


# What a hostile server pages from a %%remote cell, as `obj?` would.
HOSTILE_PAGE = r'''
def hostile_page(tag):
    from IPython.core import page
    page.page({
        "text/plain": "paged evil",
        "text/html": (f'<b class="rk-page-{tag}">paged evil</b>'
                      f'<img src="data:," onerror="window.rk_page_onerror_{tag} = 1">'
                      f'<script>window.rk_page_script_{tag} = 1</script>'),
        "application/javascript": (
            "window.rk_page_js_%s = 1;"
            "const xsrf = (document.cookie.match(/_xsrf=([^;]*)/) || [])[1] || '';"
            "fetch('/api/contents/paged-%s.txt', {method: 'PUT', headers: "
            "{'Content-Type': 'application/json', 'X-XSRFToken': xsrf}, body: "
            "JSON.stringify({type: 'file', format: 'text', content: 'pwned'})});"
            % (tag, tag)),
    })
'''


def test_hostile_page_runs_nothing_unless_trusted(env: Env, lab: Lab, page: Any) -> None:
    name = _notebook(env, "hostile-page.ipynb")
    server = RemoteServer(env, "evil-pager")
    try:
        nb = open_notebook(page, lab, name)
        nb.run("%load_ext remote_kernel\n"
               f"%remote connect {server.file} --name evil\n"
               f"%remote connect {server.file} --name mine --trust\n"
               f"evil.execute({HOSTILE_PAGE!r}); mine.execute({HOSTILE_PAGE!r})")
        cell = nb.run("%%remote evil\nhostile_page('u')")
        expect(cell.locator(".jp-OutputArea-output").first).to_be_visible()
        page.wait_for_timeout(1500)  # the fetch of a script that did run would land by now
        assert _flag(page, "rk_page_js_u") is None
        assert _flag(page, "rk_page_onerror_u") is None
        assert _flag(page, "rk_page_script_u") is None
        assert not (env.notebooks / "paged-u.txt").exists()
        expect(cell.locator(".jp-OutputArea .rk-page-u")).to_have_text("paged evil")
        # Trusted: the same page runs its script (so the checks above can fail).
        nb.run("%%remote mine\nhostile_page('t')")
        _wait_until(lambda: (env.notebooks / "paged-t.txt").exists(), 15,
                    "the trusted page's script to write its file")
        assert _flag(page, "rk_page_js_t") == 1
    finally:
        server.kill()
