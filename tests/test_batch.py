"""rk.batch against a real server process: one request, results in order, failures kept."""

from __future__ import annotations

import pytest

import remote_kernel as rk

pytestmark = pytest.mark.timeout(60)


def test_a_batch_is_one_request_with_each_result_in_order(test_server) -> None:
    with test_server.connect() as conn:
        root = conn.root
        items = root.make_list(1, 2)
        before = conn.stats["requests"]
        with rk.batch(conn) as batch:
            echoed = [batch.call(root.echo, i) for i in range(1000)]
            appended = batch.call(items.append, 3)  # runs before the next call
            index = batch.call(items.index, 3)
            made = batch.call(root.make_dict, a=1)
            assert not index.ready  # nothing is sent before the block ends
        assert conn.stats["requests"] - before == 1
        assert [r.value for r in echoed] == list(range(1000))
        assert appended.value is None and index.value == 2
        assert rk.obtain(made.value) == {"a": 1}


def test_each_failure_stays_with_its_call(test_server) -> None:
    with test_server.connect() as conn:
        root = conn.root
        with rk.batch(conn) as batch:
            first = batch.call(root.echo, "a")
            failing = batch.call(root.raise_value_error, "bad value")
            last = batch.call(root.echo, "z")
        assert first.value == "a" and last.value == "z"
        assert failing.error
        with pytest.raises(ValueError, match="bad value") as info:
            _ = failing.value
        assert isinstance(info.value, rk.RemoteError)
        assert "raise_value_error" in info.value.remote_traceback


def test_nothing_is_sent_when_the_block_raises(test_server) -> None:
    with test_server.connect() as conn:
        root = conn.root
        before = conn.stats["requests"]
        with pytest.raises(RuntimeError), rk.batch(conn) as batch:
            result = batch.call(root.echo, 1)
            raise RuntimeError("changed my mind")
        assert conn.stats["requests"] == before
        with pytest.raises(rk.RemoteKernelError, match="not sent"):
            _ = result.value


def test_batch_refuses_local_callables_and_other_connections(test_server) -> None:
    with test_server.connect() as conn, test_server.connect() as other:
        with rk.batch(conn) as batch:
            with pytest.raises(TypeError, match="remote callable"):
                batch.call(print, 1)
            with pytest.raises(ValueError, match="this batch is for"):
                batch.call(other.root.echo, 1)
        with pytest.raises(rk.RemoteKernelError, match="already sent"):
            batch.call(conn.root.echo, 1)


def test_the_policy_applies_to_batched_calls(test_server) -> None:
    """A hand-made BATCH naming a private method gets AccessDenied for that call only."""
    from remote_kernel.protocol.messages import Op

    with test_server.connect() as conn:
        root = conn.root
        outcomes = conn.sync_request(Op.BATCH, ((root,), ((0, "private_thing", (), None),
                                                          (0, "reset", (), None))))
        (denied_ok, denied), (reset_ok, reset) = outcomes
        assert denied_ok == 0 and isinstance(denied, rk.AccessDenied)
        assert reset_ok == 1 and reset == "reset done"


def test_a_malformed_batch_fails_alone(test_server) -> None:
    """A hand-made BATCH naming a target it does not carry, or a non-string name, fails
    that call only; a batch that is not (targets, calls) fails as a whole."""
    from remote_kernel.protocol.messages import Op

    with test_server.connect() as conn:
        root = conn.root
        outcomes = conn.sync_request(Op.BATCH, ((root,), ((1, "reset", (), None),
                                                          (0, 5, (), None),
                                                          (0, "reset", (), None))))
        (bad_ok, bad), (name_ok, name_error), (ok, value) = outcomes
        assert bad_ok == 0 and isinstance(bad, ValueError)
        assert name_ok == 0 and isinstance(name_error, rk.AccessDenied)
        assert ok == 1 and value == "reset done"
        with pytest.raises(ValueError, match="targets, calls"):
            conn.sync_request(Op.BATCH, ((root, "reset", (), None),))
        assert conn.root.echo(3) == 3  # the connection is fine
