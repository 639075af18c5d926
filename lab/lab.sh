#!/usr/bin/env bash
# The lab: systemd-booted Debian 12 containers under rootful podman, one per line of
# lab/topology, on their own podman network, reached by Ansible through the
# containers.podman.podman connection.
#   lab/lab.sh up       build the image if missing, make the network, start the containers
#   lab/lab.sh down     remove the containers and the network (the image stays cached)
#   lab/lab.sh status   what runs
#   lab/lab.sh exec HOST COMMAND...
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
network=hvds-lab
subnet=10.90.7.0/24
prefix=hvds-lab-

hosts=() addresses=()
while read -r host address _; do
  [[ -z "$host" || "$host" == \#* ]] && continue
  hosts+=("$host") addresses+=("$address")
done <"$here/topology"

up() {
  local image
  image="$(bash "$here/image.sh")"
  podman network exists "$network" || podman network create --subnet "$subnet" "$network" >/dev/null
  local add_hosts=() i
  for i in "${!hosts[@]}"; do add_hosts+=(--add-host "${hosts[i]}:${addresses[i]}"); done
  for i in "${!hosts[@]}"; do
    local name="$prefix${hosts[i]}"
    if [[ "$(podman container inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" == true ]]; then
      continue
    fi
    podman rm -f "$name" >/dev/null 2>&1 || true
    # CAP_SYS_ADMIN lets systemd in the container build the units' sandboxes (ProtectSystem,
    # PrivateTmp, ...): without it systemd skips them silently and the hardening goes untested.
    podman run -d --name "$name" --hostname "${hosts[i]}" --network "$network" \
      --ip "${addresses[i]}" "${add_hosts[@]}" --cap-add SYS_ADMIN \
      --label hvds-lab=1 "$image" >/dev/null
  done
  for i in "${!hosts[@]}"; do
    local state=""
    for _ in $(seq 100); do
      state="$(podman exec "$prefix${hosts[i]}" systemctl is-system-running 2>/dev/null || true)"
      [[ "$state" == running || "$state" == degraded ]] && break
      sleep 0.2
    done
    [[ "$state" == running || "$state" == degraded ]] ||
      { echo "lab: ${hosts[i]} did not boot (systemd: ${state:-no answer})" >&2; exit 1; }
    echo "lab: ${hosts[i]} up at ${addresses[i]} (container $prefix${hosts[i]}, systemd $state)"
  done
}

down() {
  local i
  for i in "${!hosts[@]}"; do podman rm -f -t 5 "$prefix${hosts[i]}" >/dev/null 2>&1 || true; done
  podman network exists "$network" && podman network rm "$network" >/dev/null
  echo "lab: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) podman ps -a --filter label=hvds-lab=1 ;;
  exec) shift; host="$1"; shift; exec podman exec "$prefix$host" "$@" ;;
  *) echo "usage: $0 up|down|status|exec HOST COMMAND..." >&2; exit 2 ;;
esac
