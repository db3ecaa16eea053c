"""Memory a caller offers for one large frame to be received in place, with its owner.

An obtain's READ offers the part of its destination the chunk fills
(``Connection.async_request(..., into=Landing(...))``, several READs in flight, each with its
own offer; ``sync_request`` takes ``into=`` too). The view may be a raw view of an
uninitialised ``bytes`` object (uninit.py), which keeps nothing alive: so the offer carries
the object that owns the memory, and whatever writes into the view (the frame decoder)
holds the offer, hence the owner, until its frame ends. Nothing writes into freed memory.

A caller that stops waiting (its request timed out, or Stop) withdraws the offer (an
obtain withdraws the offers of every READ in flight, and ``Connection.forget`` takes those
whose frames have not started off the table): from
then on the frame's remaining bytes drain into the decoder's scratch memory, never into
the view. The owner may still be kept alive until the frame ends (a receive already under
way in another thread completes into it), so a withdrawn buffer must not be handed out;
an obtain that gives up discards its destination.
"""

from __future__ import annotations

from typing import Any


class Landing:
    """Writable memory (``view``) offered for one frame of exactly ``view.nbytes`` bytes,
    and ``owner``, the object whose memory it is (kept alive as long as the offer is)."""

    __slots__ = ("owner", "view", "withdrawn")

    def __init__(self, owner: Any, view: memoryview) -> None:
        if view.readonly or not view.contiguous:
            raise ValueError("a landing must be writable, contiguous memory")
        self.owner = owner
        self.view = view
        self.withdrawn = False

    def size(self) -> int:
        """The frame size this landing takes; -1 once its view was released."""
        try:
            return self.view.nbytes
        except ValueError:  # released by its owner: it takes nothing any more
            return -1

    def withdraw(self) -> None:
        """The caller stopped waiting: no further byte of the frame may land here."""
        self.withdrawn = True
