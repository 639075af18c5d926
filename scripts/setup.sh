#!/usr/bin/env bash
# Installs everything hvds needs on a fresh Debian 12 machine, as root: Debian packages and the
# project's virtualenv (.venv) with pinned Python packages. Safe to run again: it only installs
# what is missing.
#   scripts/setup.sh        what the tests and the demo need
#   scripts/setup.sh lab    also what the container lab needs (podman, runc, debootstrap)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HVDS_VENV:-$repo/.venv}"

apt_packages=(
  python3 python3-venv python3-dev gcc make
  qemu-utils qemu-system-x86 nbdkit libnbd-bin python3-libnbd fio
  busybox-static e2fsprogs util-linux procps iproute2 cpio curl
  fdisk xfsprogs ntfs-3g dosfstools btrfs-progs lvm2 jq fuse3 postgresql
  nftables  # loss and link cuts in the network fault tests (agent/tests/netfaults.py)
)
# The lab (lab/, make lab-demo): systemd containers under rootful podman; runc, not crun (see
# lab/containers.conf); debootstrap builds the image, as no registry is reachable.
if [[ "${1:-}" == "lab" ]]; then
  apt_packages+=(podman runc debootstrap)
fi

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stamp="$venv/.hvds-requirements"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating virtualenv $venv"
  python3 -m venv "$venv"
fi
want="$(cat "$repo/requirements.txt" "$repo/agent/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing Python packages into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$repo/requirements.txt"
  "$venv/bin/python" -m pip install -q --no-deps -e "$repo/agent"
  echo "$want" > "$stamp"
fi

# promtool, which checks and unit-tests the Prometheus alert rules (deploy/prometheus), from
# Debian's prometheus package without installing it (that would also start a Prometheus).
if [[ ! -x "$venv/bin/promtool" ]]; then
  echo "setup: extracting promtool from Debian's prometheus package"
  download="$(mktemp -d)"
  chmod 755 "$download"  # apt's download user writes there
  (cd "$download" && { apt-get download -qq prometheus 2>/dev/null ||
    { apt-get update -qq && apt-get download -qq prometheus; }; })
  dpkg-deb --fsys-tarfile "$download"/prometheus_*.deb | tar -x -C "$download" ./usr/bin/promtool
  install -m 0755 "$download/usr/bin/promtool" "$venv/bin/promtool"
  rm -rf "$download"
fi

# Collections the roles and the lab use that ansible-core lacks: community.crypto (the
# replication_link role's PKI) and containers.podman (the lab's connection). Galaxy is not
# reachable here, so they come out of the pinned `ansible` package on PyPI, into the system's
# collections path, where ansible-playbook and ansible-lint find them.
ansible_release=12.3.0
collections_dir=/usr/share/ansible/collections/ansible_collections
wanted_collections=(community/crypto:3.0.5 containers/podman:1.18.0)
missing_collections=()
for entry in "${wanted_collections[@]}"; do
  name="${entry%%:*}" version="${entry##*:}"
  have="$(jq -r .collection_info.version "$collections_dir/$name/MANIFEST.json" 2>/dev/null || true)"
  [[ "$have" == "$version" ]] || missing_collections+=("$name")
done
if ((${#missing_collections[@]})); then
  echo "setup: installing collections ${missing_collections[*]} from ansible $ansible_release"
  download="$(mktemp -d)"
  "$venv/bin/python" -m pip download -q --no-deps -d "$download" "ansible==$ansible_release"
  for name in "${missing_collections[@]}"; do
    rm -rf "${collections_dir:?}/$name"
    mkdir -p "$collections_dir/$name"
    "$venv/bin/python" - "$download"/ansible-*.whl "$name" "$collections_dir/$name" <<'PY'
import os, sys, zipfile
wheel, name, dest = sys.argv[1:]
prefix = f"ansible_collections/{name}/"
with zipfile.ZipFile(wheel) as archive:
    for member in archive.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            target = os.path.join(dest, member[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                out.write(src.read())
PY
  done
  rm -rf "$download"
fi
