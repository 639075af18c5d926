#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: log_bundle
short_description: Collect a site's log bundle and fetch it
version_added: 0.1.0
description:
  - Has the site manager collect a log bundle (its recent log, configuration and database rows,
    and every host's VDSA status, secrets redacted) as the tracked command C(log_collection),
    waits for it, and downloads the tar.gz to O(dest) on the host the module runs on. As usual for
    this collection, run it on the controller (a play for C(localhost), or with C(delegate_to) set to
    C(localhost)) to keep the file there.
  - Every run collects a new bundle, so the module always reports a change; in check mode it
    collects nothing and reports the change it would make.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  dest:
    description:
      - Where to write the bundle. A directory (one that exists, or a path ending in C(/)) keeps
        it under the bundle's own name, C(hvds-logs-<site>-<time>-<id>.tar.gz); any other path is
        the file's name. The parent directory must exist.
      - An existing file is replaced.
    type: path
    required: true
  wait_timeout:
    description: Seconds to wait for the collection before the module fails (the collection goes on).
    type: int
    default: 600
extends_documentation_fragment:
  - hvds.replication.connection
  - ansible.builtin.files
seealso:
  - module: hvds.replication.command_info
"""

EXAMPLES = r"""
- name: Fetch site A's logs for a support case
  hvds.replication.log_bundle:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    dest: /tmp/support/
    mode: "0600"
  delegate_to: localhost
  register: bundle

- name: Show where it is
  ansible.builtin.debug:
    msg: "{{ bundle.dest }}: {{ bundle.size }} bytes, {{ bundle.command.result.files | length }} files"
"""

RETURN = r"""
dest:
  description: The path of the bundle written (in check mode, the path it would have when O(dest) is a file's).
  returned: always
  type: str
  sample: /tmp/support/hvds-logs-site-a-20250101T100000-21.tar.gz
size:
  description: Bytes written (0 in check mode).
  returned: always
  type: int
  sample: 48213
checksum:
  description: SHA-256 of the file written (empty in check mode).
  returned: always
  type: str
  sample: 6d3c2f0a9b5e0f1f5b1f7d1b2a7c3e4d5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c
command:
  description:
    - The tracked command C(log_collection) as it ended; empty in check mode.
    - Its result names the bundle and lists its files and the hosts asked.
    - See M(hvds.replication.command_info) for its keys.
  returned: always
  type: dict
  sample:
    id: 21
    kind: log_collection
    vpg: null
    status: succeeded
    progress: 100
    started_at: "2025-01-01T10:00:00Z"
    ended_at: "2025-01-01T10:00:01Z"
    result: {bundle: hvds-logs-site-a-20250101T100000-21.tar.gz, bytes: 48213, files: [manifest.json], hosts: [a1]}
    error: null
diff:
  description: The file written (only with C(--diff)).
  returned: when diff mode is on
  type: dict
  sample: {before: {}, after: {dest: /tmp/support/hvds-logs-site-a-20250101T100000-21.tar.gz}}
"""

import os
import tempfile

from ansible.module_utils.common.text.converters import to_text
from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsApiError,
    HvdsModule,
    api_path,
    finish_command,
)


def is_directory(dest):
    return dest.endswith("/") or os.path.isdir(dest)


def target_path(dest, bundle):
    """The file the bundle goes to: `dest`, or the bundle's name in the directory `dest`."""
    if is_directory(dest):
        return os.path.join(dest, bundle)
    return dest


def bundle_name(command):
    """The bundle's file name as the command's result gives it, without any directory part."""
    name = os.path.basename(to_text((command.get("result") or {}).get("bundle") or ""))
    if not name or name in (".", ".."):
        raise HvdsApiError("hvds command %s (log_collection) names no bundle: %s"
                           % (command.get("id"), command.get("result")), detail=command)
    return name


def download(module, command, path):
    """Write the command's bundle to `path` through a temporary file next to it; its size."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise HvdsApiError("the directory of dest, %s, does not exist" % directory)
    fd, tmp = tempfile.mkstemp(prefix=".hvds-logs-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            size = module.client.download(api_path("commands", command["id"], "bundle"), out,
                                          accept="application/gzip")[1]
        checksum = module.sha256(tmp)
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return size, checksum


def run(module):
    dest = module.params["dest"]
    if module.check_mode:
        shown = dest if not is_directory(dest) else dest.rstrip("/") + "/"
        return dict(changed=True, dest=shown, size=0, checksum="", command={},
                    diff={"before": {}, "after": {"dest": shown}})
    command = module.client.post(("logs",))
    command = finish_command(module.client, command, True, module.params["wait_timeout"])
    path = target_path(dest, bundle_name(command))
    size, checksum = download(module, command, path)
    file_args = module.load_file_common_arguments(module.params, path=path)
    module.set_fs_attributes_if_different(file_args, True)
    return dict(changed=True, dest=path, size=size, checksum=checksum, command=command,
                diff={"before": {}, "after": {"dest": path}})


def main():
    module = HvdsModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            wait_timeout=dict(type="int", default=600),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
