"""Typed, validated protocol configuration.

``config`` is a plain dict everywhere in the public API; :func:`make_config` turns it into a
frozen :class:`ProtocolConfig`, raising ``ValueError`` naming the key for an unknown key or a
value of the wrong type. Names follow RPyC where RPyC has one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

DEFAULT_MAX_MESSAGE_SIZE = 512 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    allow_safe_attrs: bool = True
    allow_exposed_attrs: bool = True
    allow_public_attrs: bool = False
    allow_all_attrs: bool = False
    allow_setattr: bool = False
    allow_delattr: bool = False
    exposed_prefix: str = "exposed_"
    # None: no per-call limit. A live peer may take as long as a call takes; liveness
    # (unreachable_after) decides when a silent peer is given up, Stop interrupts.
    sync_request_timeout: float | None = None
    unreachable_after: float = 10.0  # seconds of silence before a peer counts as unreachable
    resume_window: float = 300.0  # seconds a session is kept for a resume after its link died
    # A server's bound across the sessions kept while their link is down (net/detached.py):
    # past either, the one detached longest ago ends.
    max_detached_sessions: int = 64
    max_detached_bytes: int = 256 << 20  # kept by them for re-sending
    include_local_traceback: bool = True
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    connid: str | None = None


def _accepted(annotation: Any) -> tuple[type, ...]:
    """The classes a field's annotation accepts (``float | None`` -> int, float, NoneType)."""
    kinds = typing.get_args(annotation) or (annotation,)
    # A float field takes an int too, as a type checker lets it.
    return tuple(kind for declared in kinds
                 for kind in ((int, float) if declared is float else (declared,)))


# Derived from the dataclass, so a new field is validated without a second list to update.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    name: _accepted(hint) for name, hint in typing.get_type_hints(ProtocolConfig).items()}


def make_config(config: Mapping[str, Any] | ProtocolConfig | None) -> ProtocolConfig:
    """Validate a user's config dict; unknown keys and wrong types raise ``ValueError``."""
    if config is None:
        return ProtocolConfig()
    if isinstance(config, ProtocolConfig):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict, not {type(config).__name__}")
    for key, value in config.items():
        types = _FIELD_TYPES.get(key)
        if types is None:
            known = ", ".join(sorted(_FIELD_TYPES))
            raise ValueError(f"unknown config key {key!r}; known keys: {known}")
        # bool is an int; refuse True as a size or a timeout, and 1 as a switch.
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise ValueError(
                f"config key {key!r} must be {expected}, not {type(value).__name__}"
            )
    values = dict(config)
    timeout = values.get("sync_request_timeout")
    if timeout is not None and timeout <= 0:
        raise ValueError("config key 'sync_request_timeout' must be positive or None")
    if values.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE) < 1024:
        raise ValueError("config key 'max_message_size' must be at least 1024 bytes")
    if "sync_request_timeout" in values and values["sync_request_timeout"] is not None:
        values["sync_request_timeout"] = float(values["sync_request_timeout"])
    for key in ("max_detached_sessions", "max_detached_bytes"):
        if values.get(key, 0) < 0:
            raise ValueError(f"config key {key!r} must not be negative")
    for key in ("unreachable_after", "resume_window"):
        if key in values:
            if values[key] <= 0:
                raise ValueError(f"config key {key!r} must be positive")
            values[key] = float(values[key])
    return ProtocolConfig(**values)
