"""Many connections at once: :class:`Group` runs the same call on every member concurrently.

Theory of operation
-------------------
:func:`fan_out` runs one task per member on a bounded set of daemon threads and waits for
all of them in the calling thread. Daemon threads, not a ``ThreadPoolExecutor``: the
interpreter joins an executor's threads when it exits, so a member that answers nothing even
after its interrupt would keep the process from exiting (tests/test_fan_out_exit.py).
A task's thread is the one that waits for its connection's reply, so it also serves that
peer's callbacks meanwhile (the output of a ``%%remote`` cell arrives that way). Each task
runs in a copy of the caller's context (``contextvars``), so whatever the caller's context
says, such as which notebook cell output belongs to, holds in the task too.

When the caller is interrupted (Ctrl-C, a notebook's Stop button: ``KeyboardInterrupt`` in
the waiting thread) or a timeout passes, every unfinished member is interrupted
(``Connection.interrupt``: the peer raises ``KeyboardInterrupt`` in the requests it runs for
us, and they answer with it), the tasks get a moment to end, and the call raises
``KeyboardInterrupt`` or reports ``RequestTimeout`` for those members. The connections stay
usable either way.

Members are given as Connections or as strings (connection names, targets). This layer
resolves Connections only; strings go first through the group's ``resolvers`` (by default
those of ``core.hooks.PROCESS_HOOKS``, where the IPython extension adds a notebook's
connection names), then through the group's ``connect`` (the net layer's
``remote_kernel.Group`` connects connection-file names and ``host:port``). Closing
a group closes only the connections it opened.
"""

from __future__ import annotations

import collections
import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from remote_kernel.core.connection import Connection
from remote_kernel.core.hooks import PROCESS_HOOKS
from remote_kernel.errors import GroupError, RemoteKernelError, RequestTimeout

T = TypeVar("T")

MAX_WORKERS = 64  # threads of one fan-out; more members wait for a free thread
INTERRUPT_GRACE = 2.0  # seconds interrupted tasks get to end before the call gives up on them
WAIT_SLICE = 0.1  # seconds the waiting thread sleeps at a time
_DEFAULT: Any = object()


@dataclass(frozen=True)
class Member:
    """One member of a group: its name, its connection, and whether the group opened it."""

    name: str
    conn: Connection
    owned: bool = False


# Tried in order for each member given to a Group (a string or a Connection); the first that
# returns a Member wins.
Resolver = Callable[[Any], "Member | None"]


class _FanOut:
    """The shared state of one fan-out: the queue of tasks, their outcomes, who runs what."""

    def __init__(self, tasks: Mapping[str, Callable[[], Any]]) -> None:
        # Each task gets its own copy of the caller's context (a Context runs in one thread).
        self.queue = collections.deque(
            (name, task, contextvars.copy_context()) for name, task in tasks.items())
        self.results: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}
        self.running: set[str] = set()
        self.settled: set[str] = set()  # decided by the caller; a late outcome is dropped
        self.stopped = False
        self.cond = threading.Condition()

    def work(self) -> None:
        while True:
            with self.cond:
                if self.stopped or not self.queue:
                    return
                name, task, context = self.queue.popleft()
                self.running.add(name)
            try:
                value = context.run(task)
            except BaseException as exc:  # noqa: BLE001 - every failure is the member's outcome
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, value)
            with self.cond:
                self.running.discard(name)
                if name in self.settled:
                    pass
                elif outcome[0]:
                    self.results[name] = outcome[1]
                else:
                    self.errors[name] = outcome[1]
                self.cond.notify_all()

    def finished(self) -> bool:
        return not self.running and (self.stopped or not self.queue)

    def wait(self, deadline: float | None) -> bool:
        """Wait until every task ended or ``deadline``; True if they all ended."""
        with self.cond:
            while not self.finished():
                remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # In slices: a signal another thread received (SIGINT from a notebook's Stop)
                # only becomes KeyboardInterrupt here once this thread runs again.
                self.cond.wait(min(remaining, WAIT_SLICE))
            return True

    def stop(self) -> tuple[list[str], list[str]]:
        """No more tasks start; returns (running, never started) names."""
        with self.cond:
            self.stopped = True
            unstarted = [name for name, _task, _context in self.queue]
            self.queue.clear()
            return sorted(self.running), unstarted


def fan_out(tasks: Mapping[str, Callable[[], T]], *,
            interrupt: Callable[[str], Any] | None = None, timeout: float | None = None,
            max_workers: int = MAX_WORKERS, grace: float = INTERRUPT_GRACE,
            ) -> tuple[dict[str, T], dict[str, BaseException]]:
    """Run every task at once (at most ``max_workers`` at a time); ``(results, errors)``,
    each keyed by name in the order of ``tasks``.

    ``interrupt(name)`` stops a running task (cancels its remote requests); it is called for
    every unfinished task when the caller gets ``KeyboardInterrupt`` (then re-raised once
    the tasks ended or ``grace`` passed) and when ``timeout`` passes (those tasks then fail
    with ``RequestTimeout``)."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, not {max_workers}")
    run = _FanOut(tasks)
    for index in range(min(max_workers, len(tasks))):
        threading.Thread(target=run.work, daemon=True, name=f"rk-fan-out-{index}").start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        if not run.wait(deadline):
            running, unstarted = run.stop()
            _interrupt_all(running, interrupt)
            run.wait(time.monotonic() + grace)
            with run.cond:
                for name in running + unstarted:
                    run.settled.add(name)
                    outcome = run.errors.get(name)
                    if name in run.results or (
                            outcome is not None and not isinstance(outcome, KeyboardInterrupt)):
                        continue  # it ended on its own just in time
                    run.errors[name] = RequestTimeout(
                        f"{name}: no result within {timeout} s"
                        + ("; interrupted" if name in running else "; never started"))
    except KeyboardInterrupt:
        running, _unstarted = run.stop()
        _interrupt_all(running, interrupt)
        run.wait(time.monotonic() + grace)  # a second Ctrl-C ends this wait too
        raise
    with run.cond:
        order = list(tasks)
        results = {name: run.results[name] for name in order if name in run.results}
        errors = {name: run.errors[name] for name in order if name in run.errors}
    return results, errors


def _interrupt_all(names: Iterable[str], interrupt: Callable[[str], Any] | None) -> None:
    if interrupt is None:
        return
    for name in names:
        try:
            interrupt(name)
        except Exception:  # a connection that died meanwhile: its task ends on its own
            pass


class Group:
    """Several connections used as one: ``eval``, ``execute`` and ``map`` run on every
    member concurrently and return ``{name: value}`` in the order of ``names``.

    ``members``: Connections, or strings that a resolver or ``connect`` turns into one, or a
    mapping ``{name: member}`` to choose the names. A member that fails makes the call raise
    :class:`~remote_kernel.errors.GroupError`, which keeps the others' results. ``timeout``
    is the default per call (None: wait until done; Ctrl-C interrupts every member).
    ``resolvers``: tried in order on each member before ``connect`` (default: the
    process's, core/hooks.py, where the IPython extension finds a notebook's connections).
    """

    def __init__(self, members: Iterable[Any] | Mapping[str, Any] = (), *,
                 connect: Callable[[str], Member] | None = None,
                 timeout: float | None = None, max_workers: int = MAX_WORKERS,
                 resolvers: list[Resolver] | None = None) -> None:
        self.timeout = timeout
        self._resolvers = PROCESS_HOOKS.resolvers if resolvers is None else resolvers
        self.max_workers = max_workers
        self._connect = connect
        self._members: dict[str, Member] = {}
        self._closed = False
        given = list(members.items()) if isinstance(members, Mapping) else \
            [(None, member) for member in members]
        resolved: list[Member | None] = []
        wanted: dict[str, str] = {}  # slot -> target, for members still to connect
        for index, (name, member) in enumerate(given):
            found = self._resolve(member)
            if found is None:
                if not isinstance(member, str):
                    raise TypeError(f"a group member is a Connection, a connection name or a "
                                    f"target, not {type(member).__name__}")
                wanted[str(index)] = member
            elif name is not None:
                found = Member(str(name), found.conn, found.owned)
            resolved.append(found)
        if wanted:
            opened = self._open_all(wanted)
            for slot, member in opened.items():
                name = given[int(slot)][0]
                resolved[int(slot)] = member if name is None else \
                    Member(str(name), member.conn, member.owned)
        for member in resolved:
            assert member is not None
            if member.name in self._members:
                self._close_owned(resolved)
                raise ValueError(f"two members of the group are named {member.name!r}; "
                                 f"pass a mapping {{name: member}} to name them")
            self._members[member.name] = member

    # -- building ----------------------------------------------------------------------------

    def _resolve(self, member: Any) -> Member | None:
        for resolver in list(self._resolvers):
            found = resolver(member)
            if found is not None:
                return found
        if isinstance(member, Connection):
            return Member(self.name_of(member), member, owned=False)
        return None

    def name_of(self, conn: Connection) -> str:
        """The name of a member given as a Connection (its peer's name here)."""
        return conn.peer

    def _open_all(self, targets: Mapping[str, str]) -> dict[str, Member]:
        """Connect the members given as targets, all at once; on any failure close those
        that opened and raise GroupError naming the ones that did not."""
        connect = self._connect
        if connect is None:
            missing = ", ".join(repr(target) for target in targets.values())
            raise ValueError(f"no connection named {missing}: this Group takes Connections; "
                             f"remote_kernel.Group also connects names and host:port")
        results, errors = fan_out({slot: (lambda target=target: connect(target))
                                   for slot, target in targets.items()},
                                  max_workers=self.max_workers)
        if errors:
            for member in results.values():
                if member.owned:
                    member.conn.close()
            raise GroupError({targets[slot]: exc for slot, exc in errors.items()},
                             {targets[slot]: None for slot in results})
        return results

    @staticmethod
    def _close_owned(members: Iterable[Member | None]) -> None:
        for member in members:
            if member is not None and member.owned:
                member.conn.close()

    # -- members ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The members' names, in the order given."""
        return list(self._members)

    def connection(self, name: str) -> Connection:
        """The connection of member ``name``."""
        try:
            return self._members[name].conn
        except KeyError:
            raise KeyError(f"no member named {name!r} in this group "
                           f"(members: {', '.join(self._members) or 'none'})") from None

    @property
    def connections(self) -> dict[str, Connection]:
        return {name: self.connection(name) for name in self._members}

    def __getitem__(self, name: str) -> Connection:
        return self.connection(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __repr__(self) -> str:
        state = " (closed)" if self._closed else ""
        return f"<remote_kernel.Group {self.names}{state}>"

    # -- calls on every member ---------------------------------------------------------------

    def map(self, fn: Callable[[Connection], T], *, timeout: float | None = _DEFAULT,
            ) -> dict[str, T]:
        """``{name: fn(conn)}``, ``fn`` called for every member concurrently; GroupError
        if any failed (its ``results`` keeps the others')."""
        return self._run({name: (lambda name=name: fn(self.connection(name)))
                          for name in self._members}, timeout)

    def eval(self, source: str, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """Evaluate ``source`` on every member (classic peers)."""
        return self.map(lambda conn: conn.eval(source), timeout=timeout)

    def execute(self, source: str, *, timeout: float | None = _DEFAULT) -> dict[str, None]:
        """Execute ``source`` on every member (classic peers); ``{name: None}``."""
        return self.map(lambda conn: conn.execute(source), timeout=timeout)

    def ping(self, timeout: float = 3.0) -> dict[str, float]:
        """Round-trip seconds of every member."""
        return self.map(lambda conn: conn.ping(timeout), timeout=timeout + INTERRUPT_GRACE)

    def interrupt(self) -> None:
        """Interrupt what every member's connection waits for (see Connection.interrupt)."""
        for name in self._members:
            try:
                self.connection(name).interrupt()
            except RemoteKernelError:
                pass

    def run(self, tasks: Mapping[str, Callable[[], T]], *, timeout: float | None = _DEFAULT,
            ) -> tuple[dict[str, T], dict[str, BaseException]]:
        """The fan-out under ``map``: ``tasks`` keyed by member name, results and errors
        returned rather than raised (for callers that report each failure themselves)."""
        if self._closed:
            raise RemoteKernelError("this group is closed")
        unknown = [name for name in tasks if name not in self._members]
        if unknown:
            raise KeyError(f"not members of this group: {', '.join(unknown)}")
        return fan_out(tasks, interrupt=self._interrupt_member,
                       timeout=self.timeout if timeout is _DEFAULT else timeout,
                       max_workers=self.max_workers)

    def _interrupt_member(self, name: str) -> None:
        self.connection(name).interrupt()

    def _run(self, tasks: Mapping[str, Callable[[], T]], timeout: float | None) -> dict[str, T]:
        results, errors = self.run(tasks, timeout=timeout)
        if errors:
            raise GroupError(errors, results)
        return results

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections this group opened; the others stay open."""
        if self._closed:
            return
        self._closed = True
        self._close_owned(self._members.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["INTERRUPT_GRACE", "MAX_WORKERS", "Group", "Member", "Resolver", "fan_out"]
