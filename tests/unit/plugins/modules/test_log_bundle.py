# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import os
import stat

from ansible_collections.hvds.replication.plugins.modules import log_bundle
from ansible_collections.hvds.replication.plugins.modules.log_bundle import target_path


def test_target_path(tmp_path):
    assert target_path(str(tmp_path), "b.tar.gz") == os.path.join(str(tmp_path), "b.tar.gz")
    assert target_path("/nowhere/yet/", "b.tar.gz") == "/nowhere/yet/b.tar.gz"
    assert target_path(str(tmp_path / "site-a.tar.gz"), "b.tar.gz") == str(tmp_path / "site-a.tar.gz")


def test_a_bundle_is_collected_and_fetched_every_run(manager, run_module, tmp_path):
    checked = run_module(log_bundle, dict(dest=str(tmp_path) + "/"), check=True, diff=True)
    assert checked["changed"] is True
    assert checked["command"] == {}
    assert manager.commands == []
    assert os.listdir(str(tmp_path)) == []

    fetched = run_module(log_bundle, dict(dest=str(tmp_path), mode="0600"), diff=True)
    assert fetched["changed"] is True
    name = "hvds-logs-site-a-20250101T100000-1.tar.gz"
    path = str(tmp_path / name)
    assert fetched["dest"] == path
    assert fetched["diff"] == {"before": {}, "after": {"dest": path}}
    with open(path, "rb") as f:
        content = f.read()
    assert content == manager.bundle(1)
    assert fetched["size"] == len(content)
    assert fetched["checksum"] == hashlib.sha256(content).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(str(tmp_path))) == [name]  # no temporary file left

    named = run_module(log_bundle, dict(dest=str(tmp_path / "site-a.tar.gz")))
    assert named["changed"] is True
    assert named["command"]["id"] == 2
    with open(str(tmp_path / "site-a.tar.gz"), "rb") as f:
        assert f.read() == manager.bundle(2)


def test_a_missing_directory_or_a_failed_collection_fails_the_module(manager, run_module, tmp_path):
    missing = run_module(log_bundle, dict(dest=str(tmp_path / "no" / "such" / "dir") + "/"))
    assert missing["failed"] is True
    assert missing["msg"] == "the directory of dest, %s, does not exist" % (tmp_path / "no" / "such" / "dir")
    manager.failing_command = "log_collection"
    failed = run_module(log_bundle, dict(dest=str(tmp_path)))
    assert failed["failed"] is True
    assert failed["msg"] == "hvds command 2 (log_collection) failed: no target answered"
