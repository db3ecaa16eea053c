"""The filter between a peer's output and the notebook: display bundles and stream text.

Output of an untrusted peer is reduced to an allow-list of MIME types before it is published:
data-only types pass, HTML, Markdown, SVG and LaTeX go through ``sanitize.py``, display
metadata is cut to layout keys (never trust), widget views pass only when allowed. A
connection the user marked trusted (``trust_output=True``, ``--trust``) skips all of this.
The threat model is in ``sanitize.py`` and SECURITY.md.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from remote_kernel.outputs.sanitize import (
    defuse_tex,
    sanitize_html,
    sanitize_markdown,
    sanitize_svg,
    sanitize_text_stream,
)

__all__ = ["FilteredBundle", "filter_bundle", "filter_bundle_report", "peer_display_id",
           "sanitize_text_stream"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class FilteredBundle(NamedTuple):
    """A filtered display bundle and what was dropped from it ({mime: reason}, for logging)."""

    data: dict[str, Any]
    metadata: dict[str, Any]
    dropped: dict[str, str]


class _Refused(Exception):
    """A bundle entry that cannot be made safe; the message is the reason."""


# -- bundles ---------------------------------------------------------------------------------

_MAX_JSON_DEPTH = 64
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*", re.ASCII)


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is list and all(type(line) is str for line in value):
        return "".join(value)  # nbformat's multi-line form
    raise _Refused(f"not text ({type(value).__name__})")


def _plain_json(value: Any, depth: int = 0) -> Any:
    """A copy made of exact builtin JSON types only (a netref or subclass is refused)."""
    if depth > _MAX_JSON_DEPTH:
        raise _Refused("JSON nested too deeply")
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return value
    if kind in (list, tuple):
        return [_plain_json(item, depth + 1) for item in value]
    if kind is dict:
        if not all(type(key) is str for key in value):
            raise _Refused("JSON object with a non-string key")
        return {key: _plain_json(item, depth + 1) for key, item in value.items()}
    raise _Refused(f"not JSON data ({kind.__name__})")


def _base64_image(value: Any) -> str:
    if type(value) is bytes:
        return base64.b64encode(value).decode("ascii")
    if type(value) is not str or not _BASE64.fullmatch(value):
        raise _Refused("image data is not base64 text")
    return value


def _markdown(value: Any) -> str:
    try:
        return sanitize_markdown(_text(value))
    except ValueError as exc:
        raise _Refused(str(exc)) from None


def _svg(value: Any) -> str:
    cleaned = sanitize_svg(_text(value))
    if not cleaned:
        raise _Refused("no <svg> element left after sanitizing")
    return cleaned


def _widget_view(value: Any) -> Any:
    view = _plain_json(value)
    if type(view) is not dict or type(view.get("model_id")) is not str:
        raise _Refused("not a widget view")
    return view


_FILTERS: dict[str, Callable[[Any], Any]] = {
    "text/plain": lambda v: sanitize_text_stream(_text(v)),
    "text/html": lambda v: sanitize_html(_text(v)),
    "text/markdown": _markdown,
    "text/latex": lambda v: defuse_tex(_text(v)),
    "image/svg+xml": _svg,
    "application/json": _plain_json,
    **{f"image/{kind}": _base64_image for kind in ("png", "jpeg", "gif", "webp", "bmp")},
}

# Display metadata a front end reads for layout; everything else (trust flags included) goes.
_METADATA_KEYS: dict[str, tuple[type, ...]] = {
    "width": (int, float),
    "height": (int, float),
    "isolated": (bool,),
    "unconfined": (bool,),
    "expanded": (bool,),
    "needs_background": (str,),
    "root": (str,),
}


def _layout_metadata(values: Any) -> dict[str, Any]:
    if type(values) is not dict:
        return {}
    return {key: value for key, value in values.items()
            if type(key) is str and type(value) in _METADATA_KEYS.get(key, ())}


def _why_dropped(mime: str) -> str:
    if "javascript" in mime or "ecmascript" in mime:
        return "script"
    if mime == WIDGET_VIEW:
        return "widget view (widgets not allowed for this connection)"
    return "not a data-only type"


def filter_bundle_report(data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
                         *, trusted: bool, allow_widgets: bool = False) -> FilteredBundle:
    """:func:`filter_bundle`, with what was dropped and why ({mime: reason}) for the log."""
    if trusted:
        return FilteredBundle(dict(data), dict(metadata or {}), {})
    kept: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for mime, value in dict(data).items():
        if type(mime) is not str:
            dropped[repr(mime)[:80]] = "not a MIME type"
            continue
        check = _FILTERS.get(mime)
        if check is None and allow_widgets and mime == WIDGET_VIEW:
            check = _widget_view
        if check is None:
            dropped[mime] = _why_dropped(mime)
            continue
        try:
            kept[mime] = check(value)
        except _Refused as exc:
            dropped[mime] = str(exc)
    if not kept and dropped:
        kept["text/plain"] = (f"[output withheld from an untrusted peer: "
                              f"{', '.join(sorted(dropped))}]")
    source = dict(metadata) if isinstance(metadata, Mapping) else {}
    meta = _layout_metadata({k: v for k, v in source.items() if type(k) is str and "/" not in k})
    for mime in kept:
        per_type = _layout_metadata(source.get(mime))
        if per_type:
            meta[mime] = per_type
    return FilteredBundle(kept, meta, dropped)


def filter_bundle(data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, *,
                  trusted: bool, allow_widgets: bool = False) -> tuple[dict, dict]:
    """The (data, metadata) of a peer's display bundle that may reach the notebook.

    Trusted: shallow copies, unchanged. Untrusted: an allow-list of MIME types (text, HTML,
    Markdown and SVG sanitized, LaTeX with link/style commands defused, raster images as base64
    text, JSON data); everything else, script and custom-renderer types above all, is dropped.
    When nothing is left, a text/plain line says what was withheld.
    """
    result = filter_bundle_report(data, metadata, trusted=trusted, allow_widgets=allow_widgets)
    return result.data, result.metadata


# -- display ids -----------------------------------------------------------------------------

MAX_DISPLAY_ID = 128
_DISPLAY_ID = re.compile(r"[A-Za-z0-9_.:/-]+", re.ASCII)


def peer_display_id(value: Any) -> str | None:
    """A display id a peer sent (``display(x, display_id=...)``), or None when it is not a
    plain short string of letters, digits and ``_.:/-`` (IPython's own are 32 hex digits):
    the id reaches the front end, which looks outputs up by it."""
    if type(value) is not str or not 0 < len(value) <= MAX_DISPLAY_ID:
        return None
    return value if _DISPLAY_ID.fullmatch(value) else None
