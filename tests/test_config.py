"""make_config: the accepted types come from ProtocolConfig's annotations; a wrong key or
type is a ValueError naming the key."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from remote_kernel.config import ProtocolConfig, make_config


def test_every_field_is_validated() -> None:
    for field in dataclasses.fields(ProtocolConfig):
        with pytest.raises(ValueError, match=f"config key '{field.name}' must be"):
            make_config({field.name: object()})


@pytest.mark.parametrize(("config", "message"), [
    ({"bogus": 1}, "unknown config key 'bogus'; known keys: allow_all_attrs, "),
    ({"allow_setattr": 1}, "config key 'allow_setattr' must be bool, not int"),
    ({"max_message_size": True}, "config key 'max_message_size' must be int, not bool"),
    ({"max_message_size": 2.0}, "config key 'max_message_size' must be int, not float"),
    ({"sync_request_timeout": True},
     "config key 'sync_request_timeout' must be int or float or NoneType, not bool"),
    ({"connid": 3}, "config key 'connid' must be str or NoneType, not int"),
    ({"exposed_prefix": None}, "config key 'exposed_prefix' must be str, not NoneType"),
    ({"sync_request_timeout": 0}, "'sync_request_timeout' must be positive or None"),
    ({"max_message_size": 10}, "'max_message_size' must be at least 1024 bytes"),
    ("x", "config must be a dict, not str"),
])
def test_wrong_values_name_the_key(config: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make_config(config)
    assert message in str(info.value)


def test_accepted_values() -> None:
    assert make_config({"sync_request_timeout": 5}).sync_request_timeout == 5.0
    assert isinstance(make_config({"sync_request_timeout": 5}).sync_request_timeout, float)
    assert make_config({"sync_request_timeout": None, "connid": None}).connid is None
    assert make_config(None) == ProtocolConfig()
    given = ProtocolConfig(allow_setattr=True)
    assert make_config(given) is given
