#!/usr/bin/env bash
# Builds the lab's image: Debian 12 (minbase) booting systemd, with what the hvds roles need on a
# hypervisor or manager host (python3 + venv, qemu-utils for the lab's disk writes, qemu-system-x86
# for its VMs, iproute2).
# No registry is reachable here: debootstrap makes the root file system, `podman import` the
# image. Cached: the image is tagged with a hash of this script, and rebuilt only when missing.
#   lab/image.sh          build if missing, print the image name
#   lab/image.sh --force  build again
#   lab/image.sh --remove remove every build of the image
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
mirror="${HVDS_LAB_MIRROR:-http://deb.debian.org/debian}"
packages=(systemd systemd-sysv python3 python3-venv iproute2 procps qemu-utils qemu-system-x86 ca-certificates)
tag="$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-12)"
image="localhost/hvds-lab-debian12:$tag"

if [[ "${1:-}" == "--remove" ]]; then
  podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/hvds-lab-debian12:' |
    xargs -r podman rmi >/dev/null
  exit 0
fi
if [[ "${1:-}" != "--force" ]] && podman image exists "$image"; then
  echo "$image"
  exit 0
fi

work="$(mktemp -d /var/tmp/hvds-lab-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
echo "lab image: debootstrap bookworm into $root (about a minute)" >&2
IFS=, debootstrap --variant=minbase --include="${packages[*]}" bookworm "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

# A container boots no hardware: drop the units that wait for it, and the getty on a console
# nobody reads.
for unit in systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
  getty@tty1.service console-getty.service systemd-logind.service \
  systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
echo "hvds-lab" >"$root/etc/hostname"
: >"$root/etc/machine-id"   # a new one at each boot
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar -C "$root" --numeric-owner -cf - . |
  podman import -q --change 'CMD ["/lib/systemd/systemd"]' --change 'ENV container=podman' \
    --change 'STOPSIGNAL SIGRTMIN+3' - "$image" >/dev/null
# Older builds of this image are of no use any more.
podman images --format '{{.Repository}}:{{.Tag}}' |
  grep '^localhost/hvds-lab-debian12:' | grep -v ":$tag\$" | xargs -r podman rmi >/dev/null || true
echo "$image"
