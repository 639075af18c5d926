# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The connection options that every hvds.replication module takes (module_utils/api.py)."""

    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the site manager, for example V(https://manager-a.example.com:8443).
      - The API is served under C(/api/v1) of it.
      - If not set, the value of the E(HVDS_URL) environment variable is used.
    type: str
    required: true
  token:
    description:
      - Bearer token for the site manager API.
      - Reading needs a token with the C(viewer) or C(admin) role, changing needs C(admin).
      - If not set, the value of the E(HVDS_TOKEN) environment variable is used.
    type: str
    required: true
  validate_certs:
    description:
      - Whether to validate the site manager's TLS certificate.
      - Only set to V(false) against a lab manager with a self-signed certificate.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA that signed the site manager's certificate, when it is not in the
        system's trust store.
    type: path
  timeout:
    description:
      - Seconds to wait for one answer of the site manager.
      - Requests that fail with a server error (5xx) or a connection error are tried again up to
        three times, waiting 1, 2 and 4 seconds. Requests that create something (POST) are
        only tried again when the manager did not take them (refused connection, 429, 503).
    type: float
    default: 30
attributes:
  action_group:
    description: Use C(group/hvds.replication.api) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - hvds.replication.api
  check_mode:
    description: Can run in check mode and return the changed status it would have without changing anything.
    support: full
  diff_mode:
    description: Returns what changes (or would change in check mode), before and after, in diff mode.
    support: full
    details: The diff holds only what changes.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: all
notes:
  - All hvds.replication modules that talk to a site manager are in the action group
    C(hvds.replication.api), so C(module_defaults) with C(group/hvds.replication.api) sets the
    connection options once for a play.
"""

    # Added by the modules that only read (the *_info modules).
    INFO_MODULE = r"""
attributes:
  diff_mode:
    support: N/A
    details: It only reads.
"""
