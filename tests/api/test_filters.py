"""List filters in containerd's filter language, over one shared set of snapshots.

base (committed; gc.root, foo=bar) <- layer2 (committed; foo=baz, tier=mid)
    <- active (active; team=a), view (view; team=b)
solo (active), solo-view (view)
"""

from __future__ import annotations

import pytest
from support.snapshots import list_names

from .conftest import Populated

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALL = {"base", "layer2", "active", "view", "solo", "solo-view"}

CASES: list[tuple[list[str], set[str]]] = [
    ([], ALL),
    ([""], ALL),
    (["kind==active"], {"active", "solo"}),
    (["kind==view"], {"view", "solo-view"}),
    (["kind==committed"], {"base", "layer2"}),
    (["kind==unknown"], set()),
    (["kind!=committed"], {"active", "view", "solo", "solo-view"}),
    (["name==solo"], {"solo"}),
    (['name=="solo-view"'], {"solo-view"}),
    (["name==nothing"], set()),
    (["name!=solo"], ALL - {"solo"}),
    (["parent==layer2"], {"active", "view"}),
    (["parent==base"], {"layer2"}),
    (['parent==""'], {"base", "solo", "solo-view"}),
    (["labels.foo==bar"], {"base"}),
    (['labels.foo=="baz"'], {"layer2"}),
    (['labels."containerd.io/gc.root"'], {"base"}),
    (['labels."containerd.io/gc.root"==2024'], {"base"}),
    (["labels.team"], {"active", "view"}),
    (["labels"], set()),
    (["labels.foo!=bar"], ALL - {"base"}),  # != also matches where the label is absent
    (["labels.team!=a"], ALL - {"active"}),
    (["name~=^solo"], {"solo", "solo-view"}),
    (["name~=/^l.*2$/"], {"layer2"}),
    (["name~=|view$|"], {"view", "solo-view"}),
    (['name~="^(base|active)$"'], {"base", "active"}),
    (["labels.foo~=^ba"], {"base", "layer2"}),
    (["name~=/[/"], set()),  # a regex that does not compile matches nothing
    (["kind==view", "name==solo"], {"view", "solo-view", "solo"}),
    (["name==base", "name==layer2", "name==nothing"], {"base", "layer2"}),
    (["kind==active,parent==layer2"], {"active"}),
    (["kind==active,labels.team==a", "kind==view,labels.team==b"], {"active", "view"}),
    (["kind==committed,labels.foo==baz,labels.tier==mid"], {"layer2"}),
    (["kind==committed,name==active"], set()),
    (["name~=/[/", "name==solo"], {"solo"}),
    ([" kind == active,  name == solo"], {"solo"}),
]


@pytest.mark.parametrize(("filters", "expected"), CASES, ids=[repr(f) for f, _ in CASES])
async def test_filter(populated: Populated, filters: list[str], expected: set[str]) -> None:
    assert await list_names(populated.client, *filters) == expected


async def test_list_without_filters_tells_everything(populated: Populated) -> None:
    from support.snapshots import store_state

    state = await store_state(populated.client)
    assert state == populated.initial
    assert {name: (s.kind, s.parent) for name, s in state.items()} == {
        "base": ("committed", ""),
        "layer2": ("committed", "base"),
        "active": ("active", "layer2"),
        "view": ("view", "layer2"),
        "solo": ("active", ""),
        "solo-view": ("view", ""),
    }
    assert dict(state["base"].labels) == {"containerd.io/gc.root": "2024", "foo": "bar"}
    assert dict(state["active"].labels) == {"team": "a"}


async def test_regex_on_an_absent_label_matches_the_empty_string(populated: Populated) -> None:
    assert await list_names(populated.client, "labels.foo~=^$") == ALL - {"base", "layer2"}
