"""What each host of this site must run, derived from the database: the source VPGs whose disks
it serves and the target VPGs (replicas) kept on its datastores. The manager pushes the result
whole (``configure``), so a host that missed a change, or restarted, converges on the next push."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hvds.manager.db import Host, Replica, Vpg
from hvds.vdsa.config import ManagedVpgs


def disk_key(vm: str, export: str) -> str:
    return f"{vm}/{export}"


def source_hosts(spec: dict[str, Any]) -> list[str]:
    """The hosts of this site that serve a VPG's disks."""
    return sorted({vm["host"] for vm in spec["vms"]})


def host_plan(session: Session, host: str) -> ManagedVpgs:
    sources = [_source_vpg(vpg, host) for vpg in session.scalars(select(Vpg).order_by(Vpg.name))]
    replicas = session.scalars(
        select(Replica).where(Replica.host == host).order_by(Replica.vpg)
    ).all()
    stores = _datastores(session.get(Host, host))
    return ManagedVpgs.model_validate({
        "source_vpg": [vpg for vpg in sources if vpg is not None],
        "target_vpg": [_target_vpg(replica, stores) for replica in replicas],
    })  # fmt: skip


def _source_vpg(vpg: Vpg, host: str) -> dict[str, Any] | None:
    spec = vpg.spec
    disks = [
        {"export": disk["export"], "disk": vpg.disk_ids[disk_key(vm["name"], disk["export"])]}
        for vm in spec["vms"]
        if vm["host"] == host
        for disk in vm["disks"]
    ]
    if not disks or not vpg.links or vpg.state == "failed_over":
        return None  # not here, its targets not set up yet, or failed over for good
    return {
        "name": vpg.name,
        "disks": disks,
        "targets": [
            {"address": link["address"], "server_name": link["server_name"]} for link in vpg.links
        ],
        "checkpoint_interval": spec["checkpoint_interval_seconds"],
        "compression": spec["compression"],
        "bandwidth_limit": spec["bandwidth_limit_bytes"],
        # A VPG spread over hosts takes its checkpoints from this manager's barrier.
        "coordinated": len(source_hosts(spec)) > 1,
    }


def _datastores(host: Host | None) -> dict[str, str]:
    return {} if host is None else {store["name"]: store["path"] for store in host.datastores}


def _target_vpg(replica: Replica, stores: dict[str, str]) -> dict[str, Any]:
    spec = replica.spec
    root = PurePosixPath(stores.get(replica.datastore, "/nonexistent-datastore"))
    return {
        "name": replica.vpg,
        "disks": [
            {
                "disk": disk["disk"],
                "name": disk["name"],
                "size": disk["size"],
                "source": disk["source"],
                "mirror": spec.get("in_place", {}).get(disk["name"])
                or str(root / replica.source_site / replica.vpg / f"disk{disk['disk']}.raw"),
            }
            for disk in spec["disks"]
        ],
        "retention_hours": spec["journal_history_hours"],
        "journal_size_limit": spec["journal_size_limit_bytes"],
    }
