"""How the manager's API shows a VPG: one VPG (vpg_out, through VpgOut) and a page of them
(vpg_document, from the stored rows) say the same, reverse_site included."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from hvds.manager.db import Vpg
from hvds.manager.listing import reverse_site, vpg_document
from hvds.manager.routes.vpgs import vpg_out
from hvds.manager.schemas import VpgSpec

GIVEN = {
    "name": "erp",
    "vms": [{"name": "vm1", "host": "a1", "disks": [{"export": "vm1-disk0"}]}],
    "targets": [{"site": "site-b", "host": "b1", "datastore": "ds1"}],
}
SPEC = VpgSpec.model_validate(GIVEN).model_dump(mode="json")  # as the manager stores it
# What SourceRecovery.reverse leaves in the VPG's recovery once the recovery site protects it back.
REVERSED = {
    "kind": "failover", "state": "committed",
    "reverse": {"vpg": "erp", "site": "site-b", "state": "initializing"},
}  # fmt: skip


def a_vpg(state: str, recovery: dict[str, Any] | None) -> Vpg:
    when = datetime.datetime(2025, 1, 1, 10, 0, 0)
    return Vpg(name="erp", spec=SPEC, state=state, rpo_seconds=None, recovery=recovery,
               created_at=when, updated_at=when)  # fmt: skip


@pytest.mark.parametrize(
    ("recovery", "expected"),
    [
        (None, None),
        ({"kind": "test", "checkpoint": {"id": 1}}, None),
        ({"kind": "failover", "state": "committed"}, None),
        (REVERSED, "site-b"),
    ],
)
def test_reverse_site_is_where_the_vpg_is_protected_back_from(
    recovery: dict[str, Any] | None, expected: str | None
) -> None:
    assert reverse_site(recovery) == expected


@pytest.mark.parametrize(("state", "recovery"), [("protected", None), ("failed_over", REVERSED)])
def test_one_vpg_and_a_page_of_them_show_the_same(
    state: str, recovery: dict[str, Any] | None
) -> None:
    vpg = a_vpg(state, recovery)
    one = vpg_out(vpg).model_dump(mode="json")
    listed = vpg_document(vpg.spec, vpg.state, vpg.rpo_seconds, vpg.created_at, vpg.updated_at,
                          vpg.recovery)  # fmt: skip
    assert one == listed
    assert one["reverse_site"] == reverse_site(recovery)
    assert "reverse" not in one and "kind" not in one  # only the site, not the recovery record
