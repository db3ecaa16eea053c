"""One attribute policy for every handler: the object browser (CHILDREN) and key completion
(KEYS) read only what GETATTR could, under the name the policy resolved; the public
methods of builtin types are allowed on exactly those types, not on subclasses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.protocol.handlers import HANDLERS
from remote_kernel.protocol.messages import Op

SECRET = "the-private-config-secret"
CALLED: list[str] = []


class Settings:
    """Private configuration next to an exposed accessor of the same name."""

    def __init__(self) -> None:
        self.config = {"password": SECRET}  # private: no exposed_ prefix

    def exposed_config(self) -> str:
        return "public view"


class Ledger:
    """A mapping-like object whose keys() is not exposed."""

    def keys(self) -> list[str]:
        CALLED.append("keys")
        return [SECRET]

    def _ipython_key_completions_(self) -> list[str]:
        CALLED.append("_ipython_key_completions_")
        return [SECRET]


class SecretDict(dict):
    """A dict subclass: its methods are not the builtin's promise."""

    def secret(self) -> str:
        return SECRET


class Narrow(rk.Service):
    def exposed_settings(self) -> Settings:
        return Settings()

    def exposed_ledger(self) -> Ledger:
        return Ledger()

    def exposed_secret_dict(self) -> SecretDict:
        return SecretDict(password=SECRET)

    def exposed_plain_dict(self) -> dict:
        return {"a": 1}

    def exposed_plain_str(self) -> str:
        return "abc"


@pytest.fixture(scope="module")
def narrow() -> Iterator[Connection]:
    with rk.Server(Narrow) as server, rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        yield conn


def test_children_read_the_resolved_name_not_the_private_one(narrow: Connection) -> None:
    settings = narrow.root.settings()
    found = narrow.sync_request(Op.CHILDREN, settings, (), 100)
    names = [entry["name"] for entry in found]
    assert "config" in names
    assert all(SECRET not in entry["repr"] for entry in found), found
    assert names.count("config") + names.count("exposed_config") == 1  # shown once
    with pytest.raises(rk.AccessDenied):
        narrow.sync_request(Op.GETATTR, settings, "__dict__")


def test_keys_are_read_only_through_allowed_names(narrow: Connection) -> None:
    CALLED.clear()
    ledger = narrow.root.ledger()
    assert narrow.sync_request(Op.KEYS, ledger) == ()
    assert CALLED == []
    assert narrow.sync_request(Op.KEYS, narrow.root.plain_dict()) == ("a",)


def test_builtin_methods_are_allowed_on_exact_builtin_types_only(narrow: Connection) -> None:
    secret = narrow.root.secret_dict()
    for name in ("keys", "items", "values", "get", "copy", "secret"):
        with pytest.raises(rk.AccessDenied):
            narrow.sync_request(Op.GETATTR, secret, name)
        with pytest.raises(rk.AccessDenied):
            narrow.sync_request(Op.CALLATTR, secret, name, (), None)
    assert narrow.sync_request(Op.KEYS, secret) == ()
    plain = narrow.root.plain_dict()
    assert list(plain.keys()) == ["a"] and plain.get("a") == 1
    assert narrow.root.plain_str() == "abc"


def test_every_handler_that_names_an_attribute_asks_the_policy(narrow: Connection) -> None:
    """Each opcode that takes a name from the peer: a private name is denied."""
    settings = narrow.root.settings()
    attempts: dict[int, tuple] = {
        Op.GETATTR: (settings, "__dict__"),
        Op.SETATTR: (settings, "exposed_config", 1),
        Op.DELATTR: (settings, "exposed_config"),
        Op.CALLATTR: (settings, "__init__", (), None),
        Op.OINFO: (settings, "__dict__", 0),
        Op.CMP: (settings, 1, "__init__"),
        Op.COMPLETE: (settings, ("__dict__",)),
        Op.CHILDREN: (settings, (("attr", "__dict__"),), 10),
    }
    for op, args in attempts.items():
        assert op in HANDLERS
        with pytest.raises(AttributeError):
            narrow.sync_request(op, *args)
    # GETATTR of "config" is the exposed accessor, never the private dict.
    method = narrow.sync_request(Op.GETATTR, settings, "config")
    assert method() == "public view"


def test_a_classic_server_still_completes_dict_keys(classic: Any) -> None:
    data = classic.eval("{'alpha': 1, 'beta': 2}")
    assert sorted(classic.sync_request(Op.KEYS, data)) == ["alpha", "beta"]
