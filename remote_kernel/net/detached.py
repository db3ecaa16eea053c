"""A server-wide bound on the sessions kept for a resume while their link is down.

Each session keeps what it sent and its client did not acknowledge (up to
``session.RESEND_LIMIT``) for ``resume_window`` after its link drops. Without a bound across
sessions, clients that never acknowledge and then vanish would hold that memory for every
session they opened. Past either bound (``max_detached_sessions``, ``max_detached_bytes``
in the config) the session detached longest ago is ended: its objects are released and its
client's resume is refused as for a session the server does not know.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("remote_kernel.net.detached")

ENFORCE_EVERY = 0.2  # seconds: how often the monitor's look at growing sessions counts


class DetachedSessions:
    """The server's sessions whose link is down, oldest first, and their bound."""

    def __init__(self, max_sessions: int, max_bytes: int) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.ended = 0  # sessions ended to keep within the bound
        self._detached: dict[Any, None] = {}  # ResumableTransport -> None, in order detached
        self._lock = threading.Lock()
        self._checked = 0.0

    def track(self, session: Any) -> None:
        """Count ``session`` while its link is down (net/session.ResumableTransport)."""
        session.budget = self
        session.on_state.append(lambda state: self._changed(session, state))

    def __len__(self) -> int:
        return len(self._detached)

    @property
    def kept(self) -> int:
        """Bytes the detached sessions keep for re-sending."""
        with self._lock:
            return sum(session.store.kept for session in self._detached)

    def _changed(self, session: Any, state: str) -> None:
        with self._lock:
            if state == "unreachable":
                self._detached.setdefault(session)
            elif state in ("open", "closed"):
                self._detached.pop(session, None)
            # ("resuming": still counted, and not ended while its resume runs)
        if state == "unreachable":
            self.enforce(force=True)

    def enforce(self, force: bool = False) -> None:
        """End the sessions detached longest ago while the detached ones exceed a bound."""
        now = time.monotonic()
        if not force and now - self._checked < ENFORCE_EVERY:
            return
        self._checked = now
        victims = []
        with self._lock:
            count = len(self._detached)
            total = sum(session.store.kept for session in self._detached)
            for session in list(self._detached):
                if count <= self.max_sessions and total <= self.max_bytes:
                    break
                if session.state != "unreachable":
                    continue
                victims.append(session)
                del self._detached[session]
                count -= 1
                total -= session.store.kept
        for session in victims:
            self.ended += 1
            log.warning("ending the session with %s, detached longest ago: the server keeps "
                        "at most %d detached sessions and %d MiB for re-sending to them",
                        session.peer_name, self.max_sessions, self.max_bytes >> 20)
            session.end(f"session with {session.peer_name} ended while its link was down: "
                        f"the server keeps at most {self.max_sessions} such sessions and "
                        f"{self.max_bytes >> 20} MiB for re-sending to them "
                        "(max_detached_sessions, max_detached_bytes); its objects are "
                        "released")
