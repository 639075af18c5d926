"""A VPG whose two disks live on two hosts: two taps, two source VDSAs, one target.

Write-order fidelity across hosts rests on the checkpoint barrier (decision 0009): the test
drives it with the coordinator while a writer alternates dependent writes between the hosts,
then checks at every checkpoint that the two mirrors together hold a prefix of the writes.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Lab, Vdsa, sha256_file, wait_for
from test_replication import STAMPED_WRITER, stamps

from hvds.pki import CertificateAuthority
from hvds.vdsa.config import TargetVpg
from hvds.vdsa.coordinator import coordinated_checkpoint
from hvds.vdsa.target import open_journal

MiB = 1024 * 1024
DISKS = {"db-disk": ("host-a1", 1), "log-disk": ("host-a2", 2)}


class TwoHosts:
    """Site A: two hosts, a disk of the VPG on each. Site B (and C, for fan-out): a target."""

    def __init__(self, root: Path, targets: int) -> None:
        ca = CertificateAuthority(root / "pki")
        self.taps = {host: Lab(root / host) for host, _ in DISKS.values()}
        self.sources = {
            host: Vdsa(root / host / "vdsa", f"vdsa-{host}", ca.issue(f"vdsa-{host}"))
            for host in self.taps
        }
        names = ["vdsa-b1", "vdsa-c1"][:targets]
        self.targets = [Vdsa(root / name / "vdsa", name, ca.issue(name)) for name in names]
        self.target = self.targets[0]
        for target in self.targets:
            target.target_vpgs.append({
                "name": "vpg1",
                "disks": [
                    {"disk": disk, "name": name, "size": 8 * MiB,
                     "mirror": str(target.mirror(name)), "source": f"vdsa-{host}"}
                    for name, (host, disk) in DISKS.items()
                ],
            })  # fmt: skip
        addresses = [(target.address, target.name) for target in self.targets]
        for name, (host, disk) in DISKS.items():
            self.taps[host].root.mkdir(parents=True)
            self.taps[host].add_disk(name, 8 * MiB)
            self.sources[host].protect("vpg1", {name: disk}, addresses, coordinated=True)

    def start(self) -> None:
        for target in self.targets:
            target.start()
        for host, vdsa in self.sources.items():
            vdsa.start()
            self.taps[host].start_tap(vdsa_socket=str(vdsa.tap_socket))

    def uri(self, disk: str) -> str:
        return self.taps[DISKS[disk][0]].uri(disk)

    def checkpoint(self, tag: str = "") -> bool:
        controls = [vdsa.control_socket for vdsa in self.sources.values()]
        return coordinated_checkpoint(controls, "vpg1", tag)

    def wait_synced(self) -> None:
        for host, vdsa in self.sources.items():
            lab = self.taps[host]
            lab.wait_for(
                lambda vdsa=vdsa, lab=lab: (
                    vdsa.status()["sources"]["vpg1"]["consistent"]
                    and all(lab.metric("hvds_tap_dirty_bytes", e) == 0 for e in lab.exports)
                ),
                timeout=60,
                what=f"{host} in sync",
            )

    def stop(self) -> None:
        for lab in self.taps.values():
            lab.stop()
        for vdsa in [*self.sources.values(), *self.targets]:
            vdsa.stop()


@pytest.fixture(params=[1, 2], ids=["one-target", "fan-out"])
def hosts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TwoHosts]:
    hosts = TwoHosts(tmp_path, request.param)
    try:
        yield hosts
    finally:
        hosts.stop()


def test_checkpoints_across_two_hosts_are_prefixes_of_the_write_order(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    count = 3000
    hosts.start()
    hosts.wait_synced()
    assert hosts.checkpoint("synced")

    taken: list[bool] = []
    written = threading.Event()

    def coordinate() -> None:
        while not written.wait(0.05):  # a cut every 50 ms or so while the writer runs
            taken.append(hosts.checkpoint())

    coordinator = threading.Thread(target=coordinate)
    coordinator.start()
    writer = tmp_path / "writer.py"
    writer.write_text(STAMPED_WRITER)
    uris = [hosts.uri("db-disk"), hosts.uri("log-disk")]
    try:
        subprocess.run(
            ["/usr/bin/python3", str(writer), *uris, str(count)], check=True, timeout=120
        )
    finally:
        written.set()
        coordinator.join()
    hosts.wait_synced()
    assert hosts.checkpoint("end")
    assert sum(taken) >= 5, f"the barrier took too few checkpoints: {taken}"

    for target in hosts.targets:
        verify_target(target, count)


def verify_target(target: Vdsa, count: int) -> None:
    """Every cross-host checkpoint at ``target`` is a prefix; rollback gives its content."""

    def end_listed() -> bool:
        listed = target.control(op="checkpoints", vpg="vpg1")["checkpoints"]
        return bool(listed) and listed[-1]["tag"] == "end"

    wait_for(end_listed, what=f"the last cut at {target.name}")
    target.stop()

    config = TargetVpg.model_validate(target.target_vpgs[0])
    journal_dir = target.root / "journal"
    with (
        open_journal(config, journal_dir, "vdsa-host-a1") as db_journal,
        open_journal(config, journal_dir, "vdsa-host-a2") as log_journal,
    ):
        parts = [
            {c.time_ns: c for c in journal.checkpoints()} for journal in (db_journal, log_journal)
        ]
        cuts = sorted(set(parts[0]) & set(parts[1]))
        seen, contents = [], {}
        for cut in cuts:
            db = db_journal.read_at(parts[0][cut].id, 1, 0, 8 * MiB)
            log = log_journal.read_at(parts[1][cut].id, 2, 0, 8 * MiB)
            found = stamps(db) | stamps(log)
            assert found == set(range(len(found))), (
                f"{target.name}: cut {cut} is not a prefix of the writes"
            )
            seen.append(len(found))
            contents[cut] = [hashlib.sha256(db).hexdigest(), hashlib.sha256(log).hexdigest()]
        assert seen[-1] == count
        assert len(set(seen)) >= 5, f"{target.name}: too few distinct cuts: {seen}"

        middle = cuts[len(cuts) // 2]
        db_journal.rollback(parts[0][middle].id)
        log_journal.rollback(parts[1][middle].id)
    mirrors = [sha256_file(target.mirror(name)) for name in DISKS]
    assert mirrors == contents[middle]
