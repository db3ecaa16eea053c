"""The filter for a peer's output: hostile payloads go, pandas tables and matplotlib SVG stay."""

from __future__ import annotations

import base64
import io
import re
import struct
import xml.dom.minidom
import zlib
from html.parser import HTMLParser
from typing import Any

import pytest

from remote_kernel.outputs.filter import filter_bundle, filter_bundle_report
from remote_kernel.outputs.sanitize import (
    sanitize_html,
    sanitize_markdown,
    sanitize_svg,
    sanitize_text_stream,
)

SCRIPT_MARKERS = ("<script", "onerror", "onload", "onclick", "javascript:", "<iframe", "srcdoc",
                  "<foreignobject", "<object", "<embed", "<form")


def assert_inert(markup: str) -> None:
    lowered = markup.lower()
    for marker in SCRIPT_MARKERS:
        assert marker not in lowered, (marker, markup)


def png_base64() -> str:
    """A real 1x1 PNG, made here."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00\xff")) + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode("ascii")


class Cells(HTMLParser):
    """Counts table cells and collects the text of an HTML fragment."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.cells = {"td": 0, "th": 0, "tr": 0, "table": 0}
        self.text: list[str] = []
        self._in_style = False
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.cells:
            self.cells[tag] += 1
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if not self._in_style and data.strip():
            self.text.append(data.strip())


# -- HTML ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    "<script>fetch('/api/contents')</script>",
    "<img src=x onerror=alert(document.cookie)>",
    '<a href="javascript:alert(1)">click</a>',
    '<a href=" JaVa&#x09;ScRiPt:alert(1)">click</a>',
    '<a href="vbscript:msgbox(1)">click</a>',
    '<a href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;">click</a>',
    '<svg onload="alert(1)"><circle r="4"/></svg>',
    '<iframe srcdoc="<script>parent.alert(1)</script>"></iframe>',
    '<object data="evil.swf"></object><embed src="evil.swf">',
    '<form action="https://evil.example"><input name="q"><button>go</button></form>',
    '<div onmouseover="alert(1)" style="x:expression(alert(1))">hover</div>',
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    '<body onload=alert(1)>',
])
def test_html_payloads_are_made_inert(payload: str) -> None:
    assert_inert(sanitize_html(payload))


def test_html_keeps_safe_markup() -> None:
    markup = ('<h2>Result</h2><p><b>bold</b> <em>em</em> H<sub>2</sub>O x<sup>2</sup></p>'
              '<ul><li>one</li></ul><pre><code>x = 1</code></pre><hr><br>'
              '<a href="https://example.org/?a=1&amp;b=2">link</a>'
              '<a href="mailto:me@example.org">mail</a>'
              f'<img src="data:image/png;base64,{png_base64()}" alt="dot">'
              '<img src="https://example.org/x.png">')
    cleaned = sanitize_html(markup)
    for kept in ("<h2>", "<b>", "<em>", "<sub>", "<sup>", "<li>", "<pre>", "<code>", "<hr>",
                 "<br>", 'href="https://example.org/?a=1&amp;b=2"', 'href="mailto:me@example.org"',
                 'src="data:image/png;base64,'):
        assert kept in cleaned
    assert 'rel="noopener noreferrer"' in cleaned


def test_html_styles_cannot_leave_the_output() -> None:
    cleaned = sanitize_html(
        '<div style="position:fixed;top:0;z-index:9999;color:red;'
        'background:url(https://evil.example/p);margin-top:-400px">x</div>'
        '<div class="jp-Dialog lm-mod-hidden mine" id="jupyter-config-data">y</div>'
        '<style>body { display: none }</style>'
        '<style>.dataframe td { color: red; background-image: url(https://evil.example) }</style>')
    assert 'style="color: red"' in cleaned
    for gone in ("position", "z-index", "url(", "margin", "jp-Dialog", "lm-mod", "jupyter-config",
                 "body", "display"):
        assert gone not in cleaned
    assert 'class="mine"' in cleaned
    scope = re.fullmatch(r'<div class="(rk-scope-[0-9a-f]{16})">.*</div>', cleaned, re.S)
    assert scope, cleaned  # the rule reaches the tables of this output only
    assert f"<style>.{scope.group(1)} .dataframe td {{color: red}}</style>" in cleaned


def test_html_images_load_nothing_from_the_network() -> None:
    """An http(s) image is fetched as the page loads (tracking, the user's address)."""
    cleaned = sanitize_html('<img src="https://tracker.example/p.gif" alt="a">'
                            '<img src="//tracker.example/p.gif"><img src=" http://x.example/">'
                            f'<img src="data:image/png;base64,{png_base64()}">')
    assert "tracker" not in cleaned and "x.example" not in cleaned
    assert cleaned.count("<img") == 4 and cleaned.count("src=") == 1


def test_markdown_images_load_nothing_from_the_network() -> None:
    cleaned = sanitize_markdown("see ![dot](https://tracker.example/p.gif) and ![ref][r]\n\n"
                                "[r]: http://tracker.example/q.gif\n")
    assert "![" not in cleaned and "see !\\[dot](https://tracker.example/p.gif)" in cleaned


def test_a_style_block_cannot_restyle_another_outputs_tables() -> None:
    pd = pytest.importorskip("pandas")
    hostile = sanitize_html('<style>.dataframe td, #T_victim td {color: white; '
                            'background: white}</style><p>innocent</p>')
    victim = sanitize_html(pd.DataFrame({"a": [1]})._repr_html_())
    scopes = [re.match(r'<div class="(rk-scope-[0-9a-f]{16})">', html) for html in (hostile, victim)]
    assert all(scopes) and scopes[0].group(1) != scopes[1].group(1)
    rules = re.findall(r"<style>(.*?)</style>", hostile, re.S)
    selectors = [sel.strip() for rule in rules for sel in rule.split("{")[0].split(",")]
    assert selectors and all(sel.startswith(f".{scopes[0].group(1)} ") for sel in selectors)
    # Filtered twice (a fan-out result), the rules stay inside the first scope.
    twice = sanitize_html(hostile)
    assert f".{scopes[0].group(1)} .dataframe td" in twice


def test_mathjax_link_and_style_commands_are_defused() -> None:
    cleaned = sanitize_html(r"<p>$\href{javascript:alert(1)}{x}$ $\style{position:fixed}{y}$</p>")
    assert r"\href" not in cleaned and r"\style" not in cleaned
    bundle, _ = filter_bundle({"text/latex": r"$\href{javascript:alert(1)}{x} + \alpha$"},
                              trusted=False)
    assert r"\href" not in bundle["text/latex"] and r"\alpha" in bundle["text/latex"]


MATHJAX_GAPS = {
    "mmlToken href": r'$\mmlToken{mi}[href="javascript:alert(1)"]{x}$',
    "mmlToken style/class": r'$\mmlToken{mi}[style="position:fixed;top:0", class="jp-Dialog"]{x}$',
    "bbox style": r"$\bbox[position:fixed;top:0;left:0;width:100%]{x}$",
    "bbox through a macro": r"$\def\b#1{\bbox[#1]{x}}\b{position:fixed}$",
    "bbox through let": r"$\let\b\bbox \b[position:fixed]{x}$",
    "split by <wbr>": r"$\hr<wbr>ef{https://evil.example}{x}$",
    "split by <WBR/>": r"$\cl<WBR/>ass{jp-Dialog}{x}$",
    "split by a zero-width space": "$\\st\u200byle{position:fixed}{x}$",
    "setOptions": r"$\setOptions[tex]{x}$",
}
# A \bbox may carry a plain colour/padding list or nothing: through a macro or \let, its
# options could be anything.
_RISKY = re.compile(r"\\(href|url|class|cssId|style|mmlToken|setOptions|require)(?![A-Za-z])"
                    r"|\\bbox(?![A-Za-z])(?!\s*\{|\s*\[[\w ,.]*\])")


def _mathjax_sees(text: str) -> str:
    """The text MathJax reads from a page: <wbr> and invisible characters inside a word
    joined (as MathJax joins around <wbr>), entities decoded."""
    import html

    return re.sub(r"<wbr\s*/?>|[\u00ad\u200b-\u200d\u2060\ufeff]", "", html.unescape(text),
                  flags=re.IGNORECASE)


@pytest.mark.parametrize("mime", ["text/html", "text/latex", "text/markdown"])
@pytest.mark.parametrize("name", sorted(MATHJAX_GAPS))
def test_mathjax_commands_that_set_links_or_styles_are_defused(mime: str, name: str) -> None:
    data, _ = filter_bundle({mime: MATHJAX_GAPS[name]}, trusted=False)
    kept = data.get(mime)  # Markdown with a script URL is refused as a whole
    assert kept is None or not _RISKY.search(_mathjax_sees(kept)), kept


def test_markdown_entities_cannot_rebuild_a_mathjax_command() -> None:
    """`&amp;#101;` comes back as `&#101;` (Markdown keeps its text), which the page decodes."""
    with pytest.raises(ValueError, match="MathJax"):
        sanitize_markdown(r"\$\hr&amp;#101;f{https://evil.example}{x}\$")


def test_plain_mathjax_is_kept() -> None:
    tex = r"$\bbox[yellow,5px]{\alpha} + \bbox{\beta} + \frac{1}{2}$"
    data, _ = filter_bundle({"text/latex": tex, "text/markdown": f"**sum** {tex}",
                             "text/html": f"<p>{tex}</p>"}, trusted=False)
    assert data["text/latex"] == tex
    assert data["text/markdown"] == f"**sum** {tex}"
    assert data["text/html"] == f"<p>{tex}</p>"


def test_pandas_dataframe_html_keeps_its_table() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"volts": [1.5, 2.25, -3.0], "label": ["a<b", "R&D", "ok"]},
                         index=pd.Index(["x", "y", "z"], name="probe"))
    original = frame._repr_html_()
    cleaned = sanitize_html(original)
    before, after = Cells(original), Cells(cleaned)
    assert after.cells == before.cells
    assert after.cells["td"] == 6
    assert after.text == before.text
    assert 'class="dataframe"' in cleaned
    assert "<style>" in cleaned and ".dataframe thead th {text-align: right}" in cleaned


def test_pandas_styler_keeps_its_colours() -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("jinja2")
    frame = pd.DataFrame({"a": [1, 2]})
    original = frame.style.map(lambda v: "background-color: #ff0000" if v > 1 else "").to_html()
    cleaned = sanitize_html(original)
    assert Cells(cleaned).cells == Cells(original).cells
    styler_id = re.search(r'id="(T_\w+?)_row1_col0"', original)
    assert styler_id is not None
    assert f"#{styler_id.group(1)}_row1_col0 {{background-color: #ff0000}}" in cleaned
    assert f'id="{styler_id.group(1)}_row1_col0"' in cleaned


# -- SVG -----------------------------------------------------------------------------------


def matplotlib_svg() -> str:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [2, 0, 1], "o-", label="trace")
    ax.imshow([[0.0, 1.0], [1.0, 0.0]], extent=(0, 1, 0, 1))
    ax.set_title("V < 5 & I > 2")
    ax.legend()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()


def test_matplotlib_svg_keeps_its_drawing() -> None:
    original = matplotlib_svg()
    cleaned = sanitize_svg(original)
    for element in ("<path", "<use", "<clipPath", "<image", "<g"):
        assert cleaned.count(element) == original.count(element), element
    assert cleaned.count("<path") > 10
    assert cleaned.count("clip-path=") == original.count("clip-path=")
    assert 'xlink:href="data:image/png;base64,' in cleaned
    document = xml.dom.minidom.parseString(cleaned)
    root = document.documentElement
    assert root.tagName == "svg"
    assert root.namespaceURI == "http://www.w3.org/2000/svg"
    assert root.getAttribute("viewBox") == xml.dom.minidom.parseString(
        original).documentElement.getAttribute("viewBox")
    assert "stroke-linejoin: round" in cleaned


@pytest.mark.parametrize("payload", [
    '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><rect width="1"/></svg>',
    '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="1"/></svg>',
    '<svg><foreignObject><iframe src="javascript:alert(1)"></iframe><div>x</div>'
    '</foreignObject><rect width="1"/></svg>',
    '<svg><a xlink:href="javascript:alert(1)"><rect width="9" onclick="alert(1)"/></a></svg>',
    '<svg><animate attributeName="href" to="javascript:alert(1)"/><set attributeName="onclick"'
    ' to="alert(1)"/><rect width="1"/></svg>',
    '<svg><use href="https://evil.example/sprite.svg#a"/><image href="https://evil.example/p.png"/>'
    '<rect width="1"/></svg>',
])
def test_svg_payloads_are_made_inert(payload: str) -> None:
    cleaned = sanitize_svg(payload)
    assert_inert(cleaned)
    assert "evil.example" not in cleaned
    assert "<rect" in cleaned
    xml.dom.minidom.parseString(cleaned)


def test_svg_keeps_only_in_document_references() -> None:
    cleaned = sanitize_svg(
        '<svg><rect fill="url(https://evil.example/x)" clip-path="url(#clip)"'
        ' style="fill:url(#grad);stroke:url(https://evil.example/y)"/>'
        '<style>* { fill: red } @import url(https://evil.example/s.css);</style>'
        '<style>* { display: none }</style></svg>')
    assert 'clip-path="url(#clip)"' in cleaned
    assert 'style="fill: url(#grad)"' in cleaned
    assert "evil.example" not in cleaned and "display" not in cleaned
    xml.dom.minidom.parseString(cleaned)


def test_svg_without_an_svg_element_is_empty() -> None:
    assert sanitize_svg("<p>not an image</p>") == ""


# -- Markdown ------------------------------------------------------------------------------


def test_markdown_text_survives_and_its_html_is_sanitized() -> None:
    source = ("# Title\n\n> a quote & more, 1 < 2 > 0\n\n"
              "**bold** <b onclick=\"alert(1)\">raw</b> <script>alert(1)</script>\n\n"
              "[site](https://example.org/?a=1&b=2) <https://example.org/auto>\n")
    cleaned = sanitize_markdown(source)
    assert "# Title" in cleaned
    assert "> a quote & more, 1 < 2 > 0" in cleaned
    assert "**bold** <b>raw</b>" in cleaned
    assert "[site](https://example.org/?a=1&b=2)" in cleaned
    assert "https://example.org/auto" in cleaned
    assert_inert(cleaned)


@pytest.mark.parametrize("source", [
    "[x](javascript:alert(1))",
    "[x](JAVA\tSCRIPT:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x]\n\n[x]: javascript\\:alert(1)",
    "![x](vbscript:msgbox(1))",
])
def test_markdown_with_script_links_is_dropped(source: str) -> None:
    report = filter_bundle_report({"text/markdown": source, "text/plain": "x"}, trusted=False)
    assert "text/markdown" in report.dropped
    assert report.data == {"text/plain": "x"}


# -- bundles -------------------------------------------------------------------------------


def test_script_and_unknown_types_are_dropped() -> None:
    data: dict[str, Any] = {
        "text/plain": "<Lab>",
        "application/javascript": "fetch('/api/contents', {method: 'PUT'})",
        "text/javascript": "alert(1)",
        "application/ecmascript": "alert(1)",
        "application/vnd.plotly.v1+json": {"data": []},
        "application/x-evil": "x",
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2},
    }
    report = filter_bundle_report(data, trusted=False)
    assert report.data == {"text/plain": "<Lab>"}
    assert set(report.dropped) == set(data) - {"text/plain"}
    assert report.dropped["application/javascript"] == "script"
    assert filter_bundle(data, trusted=False) == (report.data, report.metadata)


def test_widget_views_pass_when_allowed() -> None:
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    data, _ = filter_bundle({"application/vnd.jupyter.widget-view+json": view, "text/plain": "w"},
                            trusted=False, allow_widgets=True)
    assert data["application/vnd.jupyter.widget-view+json"] == view


def test_nothing_left_says_what_was_withheld() -> None:
    data, metadata = filter_bundle({"application/javascript": "alert(1)"}, trusted=False)
    assert list(data) == ["text/plain"]
    assert "application/javascript" in data["text/plain"]
    assert metadata == {}


def test_png_passes_unchanged_and_bad_images_are_dropped() -> None:
    png = png_base64()
    data, metadata = filter_bundle(
        {"image/png": png, "image/jpeg": "not base64 <script>", "image/gif": {"x": 1}},
        {"image/png": {"width": 320, "height": 240, "trusted": True}}, trusted=False)
    assert data == {"image/png": png}
    assert metadata == {"image/png": {"width": 320, "height": 240}}


def test_metadata_keeps_layout_only() -> None:
    _, metadata = filter_bundle(
        {"text/html": "<b>x</b>", "text/plain": "x"},
        {"trusted": True, "isolated": True, "text/html": {"isolated": True, "trusted": True},
         "application/javascript": {"x": 1}, "text/plain": "not a dict"},
        trusted=False)
    assert metadata == {"isolated": True, "text/html": {"isolated": True}}


def test_json_must_be_plain_data() -> None:
    class Sneaky(dict):  # a subclass (or a netref) is not plain data
        pass

    data, _ = filter_bundle({"application/json": {"a": [1, 2.5, None, True, ("t",)]}},
                            trusted=False)
    assert data == {"application/json": {"a": [1, 2.5, None, True, ["t"]]}}
    report = filter_bundle_report({"application/json": Sneaky(a=1), "text/plain": "j"},
                                  trusted=False)
    assert "application/json" in report.dropped


def test_text_types_must_be_text() -> None:
    report = filter_bundle_report({"text/html": 42, "text/plain": ["a", "b"]}, trusted=False)
    assert report.data == {"text/plain": "ab"}
    assert "text/html" in report.dropped


def test_untrusted_bundle_is_sanitized_end_to_end() -> None:
    data, _ = filter_bundle({
        "text/html": '<img src=x onerror="alert(1)"><table><tr><td>1</td></tr></table>',
        "image/svg+xml": '<svg onload="alert(1)"><path d="M0 0L1 1"/></svg>',
        "text/plain": "\x1b]52;c;ZXZpbA==\x07plain",
    }, trusted=False)
    assert_inert(data["text/html"]) and assert_inert(data["image/svg+xml"])
    assert "<td>1</td>" in data["text/html"] and "<path" in data["image/svg+xml"]
    assert data["text/plain"] == "plain"


def test_trusted_passes_everything_unchanged() -> None:
    data = {"application/javascript": "alert(1)", "text/html": "<script>alert(1)</script>",
            "application/x-anything": {"k": "v"}, "text/plain": "\x1b]52;c;eA==\x07"}
    metadata = {"trusted": True, "text/html": {"isolated": False}}
    out_data, out_metadata = filter_bundle(data, metadata, trusted=True)
    assert out_data == data and out_metadata == metadata
    assert out_data is not data and out_metadata is not metadata


# -- streams -------------------------------------------------------------------------------


def test_stream_keeps_colours_and_strips_other_escapes() -> None:
    text = ("\x1b[31mred\x1b[0m \x1b[1;38;5;208mbold\x1b[0m"
            " \x1b]8;;javascript:alert(1)\x1b\\link\x1b]8;;\x1b\\"  # OSC 8 hyperlink
            " \x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52 clipboard write
            "\x1b]0;fake title\x07"  # window title
            "\x1b[2J\x1b[1A\x1b[6n\x1bc"  # clear, cursor up, cursor report, reset
            "\x1bP+q544e\x1b\\"  # DCS query
            "\x9b2J\x9d0;t\x9c"  # 8-bit CSI and OSC
            "\x07\x08 progress 50%\r progress 100%\n\tdone")
    assert sanitize_text_stream(text) == (
        "\x1b[31mred\x1b[0m \x1b[1;38;5;208mbold\x1b[0m link  progress 50%\r progress 100%\n\tdone")


def test_stream_escape_split_across_chunks_cannot_reassemble() -> None:
    first, second = "\x1b]52;c;cm0g", "LXJmIH4=\x07 after"
    joined = sanitize_text_stream(first) + sanitize_text_stream(second)
    assert "\x1b" not in joined and "\x07" not in joined
    assert joined.endswith(" after")


def test_stream_drops_bidi_overrides_and_isolates() -> None:
    """Trojan Source: `access = "user\u202e \u2066// admin\u2069 \u2066"` reads as something else."""
    spoof = 'if role != "user\u202e \u2066# admin\u2069 \u2066":\u200f'
    cleaned = sanitize_text_stream(spoof)
    assert not re.search("[\u202a-\u202e\u2066-\u2069]", cleaned)
    assert cleaned == 'if role != "user # admin ":\u200f'  # the marks (RLM) stay
    data, _ = filter_bundle({"text/plain": "\u202eevil"}, trusted=False)
    assert data["text/plain"] == "evil"
