# shellcheck shell=bash
# Sourced by the lab's scripts: the environment ansible-playbook needs against the lab.
#   CONTAINERS_CONF           podman with runc and lowered ulimits (lab/containers.conf)
#   ANSIBLE_COLLECTIONS_PATH  this repo as the collection hvds.replication (a link under
#                             build/lab/collections), then the system's collections
#                             (community.crypto, containers.podman: scripts/setup.sh)
lab_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="${HVDS_VENV:-$lab_repo/.venv}/bin:$PATH"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$lab_repo/lab/containers.conf}"
mkdir -p "$lab_repo/build/lab/collections/ansible_collections/hvds"
ln -sfn "$lab_repo" "$lab_repo/build/lab/collections/ansible_collections/hvds/replication"
export ANSIBLE_COLLECTIONS_PATH="$lab_repo/build/lab/collections:/usr/share/ansible/collections"
export ANSIBLE_STDOUT_CALLBACK="${ANSIBLE_STDOUT_CALLBACK:-default}"
export ANSIBLE_DISPLAY_SKIPPED_HOSTS="${ANSIBLE_DISPLAY_SKIPPED_HOSTS:-false}"
