#!/usr/bin/env bash
# Installs everything hvds needs on a fresh Debian 12 machine, as root: Debian packages and the
# project's virtualenv (.venv) with pinned Python packages. Safe to run again: it only installs
# what is missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HVDS_VENV:-$repo/.venv}"

apt_packages=(
  python3 python3-venv python3-dev gcc make
  qemu-utils qemu-system-x86 nbdkit libnbd-bin python3-libnbd fio
  busybox-static e2fsprogs util-linux procps iproute2 cpio curl
  fdisk xfsprogs ntfs-3g dosfstools btrfs-progs lvm2 jq
)

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
