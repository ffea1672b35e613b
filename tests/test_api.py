"""The RPC contract (flock_node/api.py): every served method has its argument Struct, and
decoding is validation — a wrong type or an unknown argument is one error naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock_node import api
from flock_node.actors.flock_api import FlockApi
from flock_node.actors.resource_manager import ResourceManager
from flock_node.trust.actor import TrustApi


def test_every_served_method_has_its_struct_and_nothing_else_does():
    served = {(a.NAME, m) for a in (FlockApi, ResourceManager, TrustApi) for m in a.METHODS}
    assert served == set(api.CALLS)


@pytest.mark.parametrize(("args", "message"), [
    ({"limit": "ten"}, "history: limit: expected `int`, got `str`"),
    ({"limit": -1}, "history: limit: expected `int` >= 0"),
    ({"limit": True}, "history: limit: expected `int`, got `bool`"),
    ({"limit": 1 << 63}, "history: limit: expected `int` <= 9223372036854775807"),
    ({"lmit": 3}, "history: Object contains unknown field `lmit`"),
    (["not", "a", "map"], "history: arguments must be a map"),
])
def test_bad_arguments_name_what_is_wrong(args, message):
    with pytest.raises(api.BadArgs) as e:
        api.decode_args("flock_api", "history", args)
    assert str(e.value).startswith(message)


def test_defaults_fill_in_and_positional_names_follow_the_struct():
    assert api.decode_args("flock_api", "history", {}) == {"limit": 200, "offset": None}
    assert api.positional("notify", "resource_manager")[:2] == ("resource", "action")
    assert api.positional("subscribe_to") == ("resource", "action", "node", "remote_resource")
    assert api.positional("no_such_method") == ()


@given(st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8),
    st.lists(st.integers(), max_size=3)), max_size=4))
def test_any_map_decodes_or_is_one_bad_args(args):
    for actor, method in api.CALLS:
        try:
            out = api.decode_args(actor, method, args)
        except api.BadArgs as e:
            assert str(e).startswith(f"{method}: ")
        else:
            assert set(out) == set(api.CALLS[(actor, method)].__struct_fields__)


def test_state_words_are_the_spec_words():
    assert [s.value for s in api.State] == ["alive", "suspect", "down", "left"]
    assert api.State.ALIVE == "alive"
