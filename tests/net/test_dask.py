"""rk.Group.from_dask on a real distributed.LocalCluster (worker processes on loopback)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(240)]

JOIN_WITHIN = 10.0  # seconds: a worker that joins is a member by then (the bound)


def running_servers(plugin_name: str | None = None) -> list[str]:
    from remote_kernel.net.dask import running_servers

    return running_servers(plugin_name)


def start_cluster(n: int) -> tuple[Any, Any]:
    cluster = distributed.LocalCluster(n_workers=n, processes=True, threads_per_worker=1,
                                       dashboard_address=None, host="127.0.0.1")
    return cluster, distributed.Client(cluster, set_as_default=False)


def stop_cluster(cluster: Any, client: Any) -> None:
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any]]:
    cluster, client = start_cluster(3)
    yield cluster, client
    stop_cluster(cluster, client)


@pytest.fixture
def client(cluster: tuple[Any, Any]) -> Any:
    return cluster[1]


def wait_until(predicate: Any, timeout: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_members_are_the_workers_with_their_pids(client: Any) -> None:
    with rk.Group.from_dask(client) as group:
        assert group.names == ["w0", "w1", "w2"]
        pids = client.run(os.getpid)
        addresses = {name: info.address for name, info in group.members.items()}
        got = group.map(lambda conn: conn.modules.os.getpid())
        assert got == {name: pids[address] for name, address in addresses.items()}
        # the Worker object is in the classic namespace, and its data is live
        assert group.eval("worker.address") == addresses
        assert all(conn.root.worker.address == addresses[name]
                   for name, conn in group.connections.items())
        # each server is bound to its worker's host (loopback here) and needs the token
        for conn in group.connections.values():
            host, port = conn.peer.rsplit(":", 1)
            assert host == "127.0.0.1"
            with pytest.raises(rk.AuthenticationError):
                rk.connect(host, int(port))


def test_the_token_travels_only_inside_the_plugin(client: Any, tmp_path: Any) -> None:
    with rk.Group.from_dask(client) as group:
        token = group._token
        # not in what the scheduler tells anyone about its workers, nor in the plugin's repr
        assert token not in repr(client.scheduler_info())
        plugin_reprs = client.run(lambda dask_worker: repr(dask_worker.plugins))
        assert all(token not in text for text in plugin_reprs.values())
        # nothing written to the workers' directories
        dirs = client.run(lambda dask_worker: dask_worker.local_directory)
        for directory in dirs.values():
            for root, _dirs, files in os.walk(directory):
                for file in files:
                    path = os.path.join(root, file)
                    try:
                        with open(path, "rb") as handle:
                            assert token.encode() not in handle.read()
                    except OSError:
                        pass


def test_closing_stops_its_servers_and_nothing_else(client: Any) -> None:
    first = rk.Group.from_dask(client)
    second = rk.Group.from_dask(client, name="second")
    try:
        before = client.run(running_servers)
        assert all(len(servers) == 2 for servers in before.values())
        first.close()
        after = client.run(running_servers)
        assert all(len(servers) == 1 for servers in after.values())
        assert second.eval("1 + 1") == {"w0": 2, "w1": 2, "w2": 2}
        with pytest.raises(rk.RemoteKernelError, match="closed"):
            first.eval("1")
    finally:
        second.close()
    assert all(servers == [] for servers in client.run(running_servers).values())


def test_from_a_scheduler_address_and_a_subset_of_workers(cluster: tuple[Any, Any]) -> None:
    cluster_, client = cluster
    with rk.Group.from_dask(cluster_.scheduler_address, workers=["w0", 2]) as group:
        assert group.names == ["w0", "w2"]
        servers = client.run(running_servers)
        named = {info["name"]: servers[address]
                 for address, info in client.scheduler_info()["workers"].items()}
        assert len(named[0]) == 1 and named[1] == [] and len(named[2]) == 1
    assert all(servers == [] for servers in client.run(running_servers).values())


def test_a_netref_into_worker_data_displays_and_completes_in_one_request_each(
        client: Any) -> None:
    from IPython.core.completer import provisionalcompleter
    from IPython.core.interactiveshell import InteractiveShell

    future = client.submit(lambda n: list(range(n)), 5, key="five-numbers", pure=False)
    assert future.result() == [0, 1, 2, 3, 4]
    (holder,) = client.who_has(future)["five-numbers"]
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    try:
        with rk.Group.from_dask(client) as group:
            name = next(n for n, info in group.members.items() if info.address == holder)
            conn = group[name]
            data = conn.root.worker.data
            assert "five-numbers" in data.keys()
            before = conn.stats["requests"]
            bundle, _ = shell.display_formatter.format(data)
            assert conn.stats["requests"] - before == 1
            assert bundle["text/plain"] == conn.eval("repr(worker.data)")  # the peer's repr
            value = data["five-numbers"]
            before = conn.stats["requests"]
            bundle, _ = shell.display_formatter.format(value)
            assert conn.stats["requests"] - before == 1
            assert bundle["text/plain"] == "[0, 1, 2, 3, 4]"
            shell.user_ns["data"] = data
            with provisionalcompleter():
                before = conn.stats["requests"]
                texts = [c.text for c in shell.Completer.completions("data.", 5)]
                assert conn.stats["requests"] - before == 1
            assert "data.keys" in texts
            assert rk.obtain(value) == [0, 1, 2, 3, 4]
            del value, data
            shell.user_ns.pop("data", None)
    finally:
        shell.run_line_magic("unload_ext", "remote_kernel")
        del future


class TimedOut:
    """A stdout that remembers when each piece of text arrived."""

    def __init__(self) -> None:
        self.pieces: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.pieces.append((time.monotonic(), text))
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.pieces)


def test_a_remote_cell_on_the_group_streams_each_workers_lines_labelled(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from remote_kernel.ipython.registry import get_registry

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    shell.user_ns["client"] = client
    try:
        shell.run_line_magic("remote", "connect dask:client --name cl")
        group = shell.user_ns["cl"]
        assert isinstance(group, rk.Group) and group.names == ["w0", "w1", "w2"]
        registry = get_registry()
        assert registry.groups["cl"] == ["w0", "w1", "w2"]
        assert {registry.entries[n].target for n in group.names} == \
            {f"dask:{info.address}" for info in group.members.values()}
        out = TimedOut()
        monkeypatch.setattr(sys, "stdout", out)
        started = time.monotonic()
        result = shell.run_cell("%%remote cl\nimport time\nprint('first', worker.name)\n"
                                "time.sleep(1.5)\nprint('second', worker.name)\n")
        ended = time.monotonic()
        monkeypatch.undo()
        result.raise_error()
        lines = out.text.splitlines()
        for index in range(3):
            assert f"[w{index}] first {index}" in lines
            assert f"[w{index}] second {index}" in lines
        firsts = [when for when, text in out.pieces if "first" in text]
        assert len(firsts) == 3 and max(firsts) < ended - 1.0, (started, firsts, ended)
        capture = TimedOut()
        monkeypatch.setattr(sys, "stdout", capture)
        shell.run_line_magic("remote", "list")
        monkeypatch.undo()
        assert "group cl: w0 w1 w2" in capture.text
        assert capture.text.count("dask:tcp://127.0.0.1:") == 3
    finally:
        monkeypatch.undo()
        shell.run_line_magic("unload_ext", "remote_kernel")
        shell.user_ns.pop("client", None)
    assert group.closed
    assert all(servers == [] for servers in client.run(running_servers).values())


def test_membership_follows_scaling_up_and_down() -> None:
    cluster, client = start_cluster(3)
    try:
        with rk.Group.from_dask(client) as group:
            assert len(group) == 3
            cluster.scale(4)
            took = wait_until(lambda: len(group) == 4, 30)
            assert took < JOIN_WITHIN, f"the fourth worker joined after {took:.1f} s"
            assert group.names == ["w0", "w1", "w2", "w3"]
            assert set(group.eval("worker.name").values()) == {0, 1, 2, 3}
            cluster.scale(2)
            wait_until(lambda: len(group) == 2, 30)
            gone = group.gone
            assert len(gone) == 2
            assert all(group.members[name].state == "gone" for name in gone)
            assert "gone" in repr(group)
            # a call now runs on the members left; a gone one asked for fails alone
            assert set(group.eval("1")) == set(group.names)
            results, errors = group.run({name: (lambda name=name: group[name].eval("1"))
                                         for name in [*group.names, gone[0]]})
            assert set(results) == set(group.names) and list(errors) == [gone[0]]
            assert isinstance(errors[gone[0]], rk.ConnectionClosed)
    finally:
        stop_cluster(cluster, client)


def test_a_worker_killed_mid_cell_fails_only_that_member() -> None:
    cluster, client = start_cluster(3)
    try:
        with rk.Group.from_dask(client) as group:
            victim = "w1"
            pid = group[victim].modules.os.getpid()
            threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
            with pytest.raises(rk.GroupError) as caught:
                group.execute("import time; time.sleep(4)")
            assert list(caught.value.errors) == [victim]
            assert isinstance(caught.value.errors[victim], rk.ConnectionClosed)
            assert set(caught.value.results) == {"w0", "w2"}
            # the nanny starts it again: the same member comes back on a new connection
            wait_until(lambda: group.members[victim].state == "connected"
                       and group.members[victim].pid not in (None, pid), 60)
            assert group[victim].modules.os.getpid() != pid
            assert group.eval("1") == {"w0": 1, "w1": 1, "w2": 1}
    finally:
        stop_cluster(cluster, client)


NO_DASK = """
import sys
sys.modules["distributed"] = None  # as if it were not installed
import remote_kernel as rk
try:
    rk.Group.from_dask("tcp://127.0.0.1:8786")
except ImportError as exc:
    print("ImportError:", exc)
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "remote_kernel")
shell.run_cell("%remote connect dask:tcp://127.0.0.1:8786")
"""


@pytest.mark.slow
def test_without_dask_one_line_says_what_to_install() -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-c", NO_DASK], capture_output=True, text=True,
                            timeout=60)
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "remote_kernel[dask]" in line]
    assert lines[0] == "ImportError: Dask is not installed: pip install " \
                       "'remote_kernel[dask]' (dask[distributed])", result
    assert any(line.startswith("UsageError: Dask is not installed") for line in lines), result
    assert "Traceback" not in result.stdout + result.stderr, result
