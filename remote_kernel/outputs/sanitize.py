"""Sanitizers for output a peer produced: HTML, Markdown, SVG, LaTeX and terminal text.

Threat model: the peer is another machine's interpreter, and whoever controls it controls every
byte of the display bundles, ``%%remote`` output and stream text it sends. Our kernel is trusted
by the notebook front end, so anything it publishes runs with the user's rights: one
``application/javascript`` bundle or ``<img onerror=...>`` can drive the Jupyter server's APIs
(files, terminals, other kernels). Output of an untrusted peer is therefore reduced to an
allow-list before it is published: data-only MIME types pass, HTML, Markdown and SVG go through
nh3 (the Ammonia sanitizer) with allow-lists that keep pandas tables and matplotlib figures,
MathJax commands that make links or set classes/styles are defused, and terminal escapes other
than SGR colours are removed from text. Display metadata is cut to layout keys, never trust.
A connection the user marked trusted skips all of this.
"""

from __future__ import annotations

import html as _html
import re
import secrets
from html.parser import HTMLParser

import nh3

__all__ = [
    "defuse_tex",
    "sanitize_html",
    "sanitize_markdown",
    "sanitize_svg",
    "sanitize_text_stream",
]

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"


# -- CSS: one policy for inline style attributes and <style> blocks --------------------------

# No positioning (an output could otherwise cover JupyterLab's own UI), no url() (requests to
# third parties, CSS-based exfiltration), no `content`, `cursor` or `behavior`.
_HTML_CSS = frozenset("""
    color background background-color background-image opacity visibility display
    text-align vertical-align text-decoration text-transform text-indent text-overflow
    white-space word-break word-wrap overflow-wrap line-height letter-spacing word-spacing
    font font-family font-size font-style font-variant font-weight
    border border-top border-right border-bottom border-left border-color border-style
    border-width border-collapse border-spacing border-radius
    border-top-color border-right-color border-bottom-color border-left-color
    border-top-style border-right-style border-bottom-style border-left-style
    border-top-width border-right-width border-bottom-width border-left-width
    padding padding-top padding-right padding-bottom padding-left
    margin margin-top margin-right margin-bottom margin-left
    width height min-width max-width min-height max-height overflow overflow-x overflow-y
    table-layout caption-side empty-cells list-style-type
""".split())
# Painting only: in an SVG a <style> block with `*` selectors (matplotlib writes one) would also
# restyle the page where an SVG is inlined (nbconvert HTML), so fonts/display/opacity stay out.
_SVG_PAINT_CSS = frozenset("""
    fill fill-opacity fill-rule stroke stroke-width stroke-linecap stroke-linejoin
    stroke-miterlimit stroke-dasharray stroke-dashoffset stroke-opacity clip-rule paint-order
    shape-rendering text-rendering image-rendering vector-effect stop-color stop-opacity
    text-anchor dominant-baseline alignment-baseline
""".split())
_SVG_CSS = _SVG_PAINT_CSS | frozenset("""
    clip-path mask opacity visibility display color font font-family font-size font-style
    font-variant font-weight font-stretch letter-spacing word-spacing white-space
""".split())
_CSS_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla", "calc", "var", "min", "max", "clamp",
                            "linear-gradient", "repeating-linear-gradient", "radial-gradient"})
_CSS_VALUE = re.compile(r"[\w\s#%.,()!/+-]*", re.ASCII)
_CSS_FUNCTION = re.compile(r"(?<![A-Za-z-])([A-Za-z-]+)\s*\(")
_FRAGMENT_URL = re.compile(r"url\(\s*#[\w.:-]+\s*\)", re.ASCII)
_MAX_CSS = 256 * 1024  # a stylesheet larger than this is dropped, not parsed
_NEGATIVE = re.compile(r"-\s*[\d.]")
_CSS_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")  # matched at one position only
# A <style> rule of an HTML output may only reach pandas tables: `.dataframe ...` as pandas'
# _repr_html_ writes, `#T_<uuid>...` as pandas' Styler writes. No sibling combinators. Each
# rule is then scoped to its own output (a wrapper with a random class, SCOPE_PREFIX), so one
# output cannot restyle the other tables of the page; an output filtered twice keeps its scope.
SCOPE_PREFIX = "rk-scope-"
_SCOPE = re.compile(rf"\.{SCOPE_PREFIX}[0-9a-f]{{16}}\s+", re.ASCII)
_HTML_SELECTOR = re.compile(
    rf"(?:{_SCOPE.pattern})*(\.dataframe|#T_[\w-]+)(?![\w-])[\w\s.#:>()*-]*", re.ASCII)
_SVG_SELECTOR = re.compile(r"[\w\s.#:>*-]+", re.ASCII)


def _clean_declarations(css: str, allowed: frozenset[str], *, svg: bool) -> str:
    """Keep the declarations whose property is allowed and whose value is inert."""
    kept = []
    for declaration in css.split(";"):
        name, sep, value = declaration.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in allowed or not value or len(value) > 1000 or "/*" in value:
            continue
        functions_ok = _FRAGMENT_URL.sub("", value) if svg else value
        if not _CSS_VALUE.fullmatch(value) or any(
            f.lower() not in _CSS_FUNCTIONS for f in _CSS_FUNCTION.findall(functions_ok)
        ):
            continue
        if name.startswith("margin") and _NEGATIVE.search(value):
            continue  # negative margins move an output over the cells above it
        kept.append(f"{name}: {value}")
    return "; ".join(kept)


def _clean_stylesheet(css: str, *, svg: bool, scope: str = "") -> str:
    """The rules of a <style> block that pass, each selector after ``scope``; "" when none does
    or the block is not plain."""
    if len(css) > _MAX_CSS or any(bad in css for bad in ("@", "\\", "<", "&", "/*", '"', "'")):
        return ""
    rules, end = [], 0
    while match := _CSS_RULE.match(css, end):  # (finditer would rescan: quadratic)
        end = match.end()
        selectors = [s.strip() for s in match.group(1).split(",")]
        pattern = _SVG_SELECTOR if svg else _HTML_SELECTOR
        if not all(pattern.fullmatch(s) for s in selectors):
            continue
        body = _clean_declarations(match.group(2), _SVG_PAINT_CSS if svg else _HTML_CSS, svg=svg)
        if body:
            rules.append(f"{', '.join(scope + s for s in selectors)} {{{body}}}")
    if css[end:].strip():
        return ""
    return "\n".join(rules)


class _StyleBlocks(HTMLParser):
    """Finds the <style> elements of nh3's (canonical) output, with their offsets."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self._text = text
        self._lines = [0]
        for line in text.splitlines(keepends=True):
            self._lines.append(self._lines[-1] + len(line))
        self.blocks: list[tuple[int, int, int, int]] = []  # tag start, content start/end, end
        self._open: tuple[int, int] | None = None
        self.feed(text)
        self.close()

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._lines[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "style":
            start = self._offset()
            self._open = (start, start + len(self.get_starttag_text() or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "style" and self._open is not None:
            start = self._offset()
            self.blocks.append((*self._open, start, self._text.index(">", start) + 1))
            self._open = None


def _filter_style_blocks(markup: str, *, svg: bool, scope: str = "") -> str:
    """Rewrite each <style> element's CSS through the CSS policy (drop it if nothing is left)."""
    if "<style" not in markup:
        return markup
    parts, last = [], 0
    for start, body_start, body_end, end in _StyleBlocks(markup).blocks:
        css = _clean_stylesheet(markup[body_start:body_end], svg=svg, scope=scope)
        parts.append(markup[last:start])
        if css:
            parts.append(f"<style>{css}</style>")
        last = end
    parts.append(markup[last:])
    return "".join(parts)


# -- URLs, classes and ids -------------------------------------------------------------------

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp|bmp)(;base64)?,", re.IGNORECASE)
_DATA_IMAGE_OR_SVG = re.compile(r"data:image/(png|jpeg|gif|webp|bmp|svg\+xml)[;,]", re.I)
_FRAGMENT = re.compile(r"#[\w.:-]+", re.ASCII)
_STYLER_ID = re.compile(r"T_[\w-]{1,200}", re.ASCII)
_SVG_ID = re.compile(r"[A-Za-z_][\w.:-]{0,200}", re.ASCII)
_CLASS = re.compile(r"[A-Za-z_][\w-]{0,100}", re.ASCII)
# Classes of the front end's own widgets (jp-Dialog covers the page, lm-mod-hidden hides...).
_FRONTEND_CLASS_PREFIXES = ("jp-", "lm-", "p-", "mod-", "bp3-", "bp-", "cm-", "codemirror",
                            "mathjax", "mjx-", "widget-", "jupyter-")


def _url_scheme(value: str) -> str | None:
    """The scheme a browser would see (it drops controls and spaces), lower case; None if none."""
    match = _SCHEME.match(re.sub(r"[\x00-\x20\x7f]", "", value))
    return match.group(1).lower() if match else None


def _classes(value: str) -> str | None:
    kept = [c for c in value.split() if _CLASS.fullmatch(c)
            and not c.lower().startswith(_FRONTEND_CLASS_PREFIXES)]
    return " ".join(kept) or None


def _html_attribute(element: str, attribute: str, value: str) -> str | None:
    """nh3's attribute_filter for HTML: URLs, ids, classes and inline styles."""
    if attribute in ("href", "src", "cite"):
        scheme = _url_scheme(value)
        if element == "a" and attribute == "href" and value.startswith("#"):
            return value if _FRAGMENT.fullmatch(value) else None
        if element == "img" and attribute == "src":
            return value if scheme == "data" and _DATA_IMAGE_OR_SVG.match(value.strip()) else None
        allowed = ("http", "https", "mailto") if attribute == "href" else ("http", "https")
        return value.strip() if scheme in allowed else None
    if attribute == "id":
        return value if _STYLER_ID.fullmatch(value) else None
    if attribute == "class":
        return _classes(value)
    if attribute == "style":
        return _clean_declarations(value, _HTML_CSS, svg=False) or None
    return value


def _svg_attribute(element: str, attribute: str, value: str) -> str | None:
    """nh3's attribute_filter for SVG: only in-document references, one data: image kind."""
    if "<" in value:
        return None  # never in a real SVG, and not well-formed XML
    if attribute == "xmlns":
        return value if value == SVG_NS else None
    if attribute == "xlink":  # xmlns:xlink
        return value if value == XLINK_NS else None
    if attribute == "href":  # href and xlink:href
        if element == "image":
            return value if _DATA_IMAGE.match(value.strip()) else None
        return value if _FRAGMENT.fullmatch(value) else None
    if attribute == "id":
        return value if _SVG_ID.fullmatch(value) else None
    if attribute == "class":
        return _classes(value)
    if attribute == "style":
        return _clean_declarations(value, _SVG_CSS, svg=True) or None
    if "url(" in value.lower() and _FRAGMENT_URL.sub("", value).lower().count("url("):
        return None  # clip-path, fill, mask...: url(#id) only
    return value


# -- allow-lists -----------------------------------------------------------------------------


def _per_tag(spec: str) -> dict[str, set[str]]:
    """{tag: attributes} from lines of "tag [tag...]: attribute [attribute...]"."""
    table: dict[str, set[str]] = {}
    for line in spec.strip().splitlines():
        tags, _, attributes = line.partition(":")
        for tag in tags.split():
            table.setdefault(tag, set()).update(attributes.split())
    return table


# Elements whose content goes too: executable, embedding, or parsed as another language.
# <svg>/<math> inside HTML are dropped (the classic mutation-XSS ground); SVG has its own type.
_HTML_DROP_WITH_CONTENT = {
    "script", "noscript", "iframe", "frame", "frameset", "noframes", "noembed", "object",
    "embed", "applet", "template", "svg", "math", "title", "xmp", "plaintext", "textarea",
    "select", "head", "link", "meta", "base",
}
_HTML_TAGS = {
    "a", "abbr", "b", "bdi", "bdo", "blockquote", "br", "caption", "cite", "code", "col",
    "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p",
    "pre", "q", "s", "samp", "small", "span", "strong", "style", "sub", "summary", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "u", "ul", "var", "wbr",
}
_HTML_ATTRIBUTES = _per_tag("""
    *: class style id title lang dir align valign halign
    a: href
    img: src alt width height
    table: border cellpadding cellspacing summary width
    td th: colspan rowspan scope headers width height nowrap
    col colgroup: span width
    ol: start type reversed
    ul: type
    li: value
    blockquote q: cite
    del ins: cite datetime
    time: datetime
    details: open
""")
# <metadata> goes with its content: matplotlib's RDF block is not rendered, and its prefixed
# elements cannot survive an HTML parser anyway.
_SVG_DROP_WITH_CONTENT = {"script", "foreignObject", "metadata", "iframe", "handler"}
_SVG_TAGS = {
    "svg", "g", "defs", "symbol", "use", "path", "rect", "circle", "ellipse", "line", "polyline",
    "polygon", "text", "tspan", "style", "clipPath", "mask", "marker", "linearGradient",
    "radialGradient", "stop", "pattern", "image", "title", "desc",
}
_SVG_ATTRIBUTES = _per_tag("""
    *: id class style transform x y width height dx dy space
    svg: xmlns xlink viewBox version preserveAspectRatio
    symbol: viewBox preserveAspectRatio
    use: href
    path: d pathLength
    rect: rx ry
    circle: cx cy r
    ellipse: cx cy rx ry
    line: x1 y1 x2 y2
    polyline polygon: points
    text tspan: textLength lengthAdjust rotate
    clipPath: clipPathUnits
    mask: maskUnits maskContentUnits
    marker: markerWidth markerHeight refX refY orient markerUnits viewBox preserveAspectRatio
    linearGradient radialGradient: x1 y1 x2 y2 cx cy r fx fy fr gradientUnits gradientTransform
    linearGradient radialGradient: spreadMethod href
    stop: offset
    pattern: patternUnits patternContentUnits patternTransform viewBox preserveAspectRatio href
    image: href preserveAspectRatio
""")
_SVG_ATTRIBUTES["*"] |= _SVG_CSS  # presentation attributes: fill="...", stroke-width="..."

# MathJax typesets HTML and Markdown outputs too (JupyterLab loads all of its TeX packages and
# `require`); these commands make links (\href, \url), set attributes, classes, ids or styles
# on the page (\mmlToken's [href=..., style=..., class=...], \class, \cssId, \style,
# \html...), change the TeX input's options, or load code (\require).
_MATHJAX_RISKY = re.compile(
    r"\\(href|url|class|cssId|style|require|unicode|data|html[A-Za-z]*|mmlToken|setOptions)"
    r"(?![A-Za-z])")
# \bbox[...] takes CSS (`position:fixed;...`) among its options: only a plain colour or padding
# list, or no options, may follow it; anything else (a style, a macro argument `#1`, a `\let`)
# defuses it.
_BBOX_STYLED = re.compile(r"\\bbox(?![A-Za-z])(?!\s*\{|\s*\[[A-Za-z0-9 ,.]*\])")
# A command name split by what MathJax joins when it reads the page (<wbr>; comments are gone
# already) or by invisible characters: joined before the check, so \hr<wbr>ef is \href.
_SPLITTER = r"(?:<wbr\s*/?>|[\u00ad\u200b-\u200d\u2060\ufeff])"
_SPLIT_COMMAND = re.compile(rf"\\[A-Za-z]*(?:{_SPLITTER}+[A-Za-z]+)+", re.IGNORECASE)
_SPLITTERS = re.compile(_SPLITTER, re.IGNORECASE)


def defuse_tex(text: str) -> str:
    """TeX (or HTML/Markdown MathJax reads) with the risky MathJax commands made inert text."""
    text = _SPLIT_COMMAND.sub(lambda m: _SPLITTERS.sub("", m.group()), text)
    text = _MATHJAX_RISKY.sub(r"\\backslash{}\1", text)
    return _BBOX_STYLED.sub(r"\\backslash{}bbox", text)


def sanitize_html(html: str) -> str:
    """HTML reduced to what a data display needs: pandas tables, text markup, images, links.

    Scripts, frames, plugins, forms, event handlers and any URL other than http(s)/mailto links
    and data: images go (an http(s) image would be fetched as the page loads: tracking, the
    user's address); inline styles are cut to non-positioning properties without url(); a
    <style> block survives only with rules that select pandas tables (see ``_HTML_SELECTOR``),
    scoped to this output: the output is wrapped in a ``<div>`` with a random class that every
    kept selector starts with. CSS cannot run script, but a global stylesheet could restyle or
    cover JupyterLab's UI and the other outputs, and send requests through url().
    """
    cleaned = nh3.clean(
        html,
        tags=_HTML_TAGS,
        clean_content_tags=_HTML_DROP_WITH_CONTENT,
        attributes=_HTML_ATTRIBUTES,
        attribute_filter=_html_attribute,
        url_schemes={"http", "https", "mailto", "data"},
        strip_comments=True,
        link_rel="noopener noreferrer",
    )
    scope_class = SCOPE_PREFIX + secrets.token_hex(8)
    styled = _filter_style_blocks(cleaned, svg=False, scope=f".{scope_class} ")
    if styled != cleaned and "<style>" in styled:
        styled = f'<div class="{scope_class}">{styled}</div>'
    return defuse_tex(styled)


# What nh3 escaped in Markdown text that Markdown needs back: `>` (block quotes), `&`, and a `<`
# that cannot open a tag, comment or autolink (a following letter, `/`, `!` or `?` could).
_MARKDOWN_UNESCAPE = re.compile(r"&(amp|gt|nbsp);|&lt;(?![A-Za-z/!?])")
_MARKDOWN_BAD_URL = re.compile(r"(java|vb|live)script:|data:text/html|data:application/xhtml")
# <https://...> and <a@b.org> autolinks would read as tags; bare, the GFM renderer links them.
_AUTOLINK = re.compile(r"<(https?://[^\s<>\"']+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)>", re.ASCII)


def sanitize_markdown(markdown: str) -> str:
    """Markdown whose raw HTML went through :func:`sanitize_html`, its text kept as written
    (but for image syntax, ``![``, which is escaped: images load nothing from the network).

    A link or image whose destination could be ``javascript:`` (checked after undoing entities,
    backslash escapes and whitespace, as the Markdown renderer and the browser would) refuses
    the whole text: raises ``ValueError``. Markdown's code is not told apart from its raw HTML
    (guessing differently from the renderer would let HTML through unsanitized), so a ``<``
    followed by a letter inside code is read as a tag like anywhere else.
    """
    normalized = re.sub(r"[\\\x00-\x20\x7f]", "", _html.unescape(markdown)).lower()
    if _MARKDOWN_BAD_URL.search(normalized):
        raise ValueError("a script URL in Markdown")
    cleaned = sanitize_html(_AUTOLINK.sub(r"\1", markdown))
    result = _MARKDOWN_UNESCAPE.sub(
        lambda m: {"amp": "&", "gt": ">", "nbsp": "\u00a0"}.get(m.group(1) or "", "<"), cleaned)
    # `&amp;#101;` came back as `&#101;`, which the page decodes before MathJax reads it.
    if defuse_tex(_html.unescape(result)) != _html.unescape(result):
        raise ValueError("a MathJax command that makes links or sets styles in Markdown")
    # A Markdown image would be fetched from its URL as the page loads: shown as text instead.
    return result.replace("![", "!\\[")


class _RootTag(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.tag: str | None = None
        self.attrs: dict[str, str | None] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.tag is None:
            self.tag, self.attrs = tag, dict(attrs)


def sanitize_svg(svg: str) -> str:
    """An SVG image reduced to shapes, text, gradients, clips and embedded raster images.

    Keeps what matplotlib writes (paths, ``<use href="#...">``, clip paths, ``<image>`` with a
    data: PNG, its one-line ``<style>``); drops scripts, ``<foreignObject>``, links, animation,
    event handlers and every reference out of the document. The result is well-formed XML with
    the SVG namespace on its root, as an ``<img>`` needs; "" when no ``<svg>`` element is left.
    """
    cleaned = nh3.clean(
        svg,
        tags=_SVG_TAGS,
        clean_content_tags=_SVG_DROP_WITH_CONTENT,
        attributes=_SVG_ATTRIBUTES,
        attribute_filter=_svg_attribute,
        url_schemes={"data"},
        strip_comments=True,
        link_rel=None,
    )
    cleaned = _filter_style_blocks(cleaned, svg=True).replace("&nbsp;", "&#160;")
    root = _RootTag(cleaned[: cleaned.find(">") + 1])  # nh3 escapes ">" in attribute values
    if root.tag != "svg":
        return ""
    start = cleaned.index("<svg") + len("<svg")
    missing = ""
    if "xmlns" not in root.attrs:
        missing += f' xmlns="{SVG_NS}"'
    if "xmlns:xlink" not in root.attrs and "xlink:" in cleaned:
        missing += f' xmlns:xlink="{XLINK_NS}"'
    return cleaned[:start] + missing + cleaned[start:]


# -- terminal text ---------------------------------------------------------------------------

_ESCAPES = re.compile(
    r"""
    (?P<sgr>\x1b\[[0-9;:]*m)                                  # colours and text attributes
    | (?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?    # OSC: titles, links, clipboard
    | (?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?  # DCS, SOS, PM, APC
    | (?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?      # CSI: cursor moves, queries
    | \x1b[\x20-\x2f]*[\x30-\x7e]?                            # other escapes, a lone ESC
    | [\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f]          # other C0/C1 controls
    | [\u202a-\u202e\u2066-\u2069]                              # bidi overrides, isolates
    """,
    re.VERBOSE,
)


def sanitize_text_stream(text: str) -> str:
    """Stream text with SGR colour codes, tabs, newlines and carriage returns kept, nothing else.

    Other escape sequences are removed with their payload: OSC (hyperlinks, window titles,
    OSC 52 clipboard writes), DCS/APC strings, cursor movement and terminal queries, which a
    terminal front end (IPython in a terminal) would act on. Bidi embeddings, overrides and
    isolates (U+202A-202E, U+2066-2069) go too: they make text read differently from what it is
    (Trojan Source); the marks U+200E/U+200F stay, right-to-left text needs them. A sequence
    split across two chunks cannot reassemble: its ESC is dropped with the first part.
    """
    return _ESCAPES.sub(lambda m: m.group("sgr") or "", text)
