#!/usr/bin/env bash
# `make demo` until the Ansible lab exists: two sites as local processes on this machine.
# Site A: a VM disk served by hvds-tap, its host's VDSA. Site B: a VDSA with the journal and the
# mirror. Writes go through the tap, replicate over mutual TLS, checkpoints are taken (one
# tagged), the source VDSA dies and comes back, and the mirror is proven equal to the disk.
set -euo pipefail

work="$(mktemp -d /var/tmp/hvds-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start() { # NAME COMMAND...: start a service, wait for its ready line
  local name="$1"; shift
  "$@" >"$work/$name.out" 2>>"$work/$name.log" &
  pids+=("$!"); eval "${name//-/_}_pid=$!"
  for _ in $(seq 100); do grep -q ready "$work/$name.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "$name did not start:"; cat "$work/$name.log"; exit 1
}
tap_metric() { # NAME: one sample of the tap's metrics, as an integer
  curl -s http://127.0.0.1:9711/metrics | awk -v m="$1" '$1 ~ "^"m {printf "%d\n", $2; exit}'
}
wait_clean() {
  for _ in $(seq 300); do [[ "$(tap_metric hvds_tap_dirty_bytes)" == "0" ]] && return 0; sleep 0.1; done
  echo "the tap still has copies not acknowledged by site B"; exit 1
}
ctl_a() { hvds-vdsa "$@" --control "$work/a/control.sock"; }
ctl_b() { hvds-vdsa "$@" --control "$work/b/control.sock"; }
checkpoint() { # TAG: a tagged checkpoint at site A, waited for at site B
  wait_clean
  ctl_a checkpoint --vpg erp --tag "$1" --description "demo: $1" >/dev/null
  for _ in $(seq 100); do
    ctl_b checkpoints --vpg erp | jq -e --arg t "$1" '.checkpoints[] | select(.tag == $t)' \
      >/dev/null && return 0
    sleep 0.1
  done
  echo "checkpoint $1 never reached site B"; exit 1
}
same() { # compare the VM disk and site B's mirror by sha256
  local a b; a="$(sha256sum <"$work/a/erp-db.raw" | cut -d' ' -f1)"
  b="$(sha256sum <"$work/b/mirrors/erp-db.raw" | cut -d' ' -f1)"
  echo "source disk  $a"; echo "site B mirror $b"
  [[ "$a" == "$b" ]] || { echo "MISMATCH"; exit 1; }
}

mkdir -p "$work/a" "$work/b"
size=$((512 * 1024 * 1024))
truncate -s "$size" "$work/a/erp-db.raw"

say "Certificates for mutual TLS between the VDSAs"
hvds-vdsa pki --dir "$work/pki" vdsa-a1 vdsa-b1

cat >"$work/b/vdsa.toml" <<TOML
[vdsa]
id = "vdsa-b1"
listen = "127.0.0.1:15400"
journal_dir = "$work/b/journal"
control_socket = "$work/b/control.sock"
[tls]
ca = "$work/pki/ca.pem"
cert = "$work/pki/vdsa-b1.pem"
key = "$work/pki/vdsa-b1.key"
[[target_vpg]]
name = "erp"
retention_hours = 1
analysis_interval = 1.0
disks = [{ disk = 1, name = "erp-db", size = $size, mirror = "$work/b/mirrors/erp-db.raw" }]
TOML
cat >"$work/a/vdsa.toml" <<TOML
[vdsa]
id = "vdsa-a1"
tap_socket = "$work/a/vdsa.sock"
control_socket = "$work/a/control.sock"
[tls]
ca = "$work/pki/ca.pem"
cert = "$work/pki/vdsa-a1.pem"
key = "$work/pki/vdsa-a1.key"
[[source_vpg]]
name = "erp"
checkpoint_interval = 1.0
disks = [{ export = "erp-db", disk = 1 }]
targets = [{ address = "127.0.0.1:15400", server_name = "vdsa-b1" }]
TOML
cat >"$work/a/tap.toml" <<TOML
[tap]
unix_socket = "$work/a/tap.sock"
vdsa_socket = "$work/a/vdsa.sock"
state_dir = "$work/a/state"
metrics = "127.0.0.1:9711"
[[export]]
name = "erp-db"
path = "$work/a/erp-db.raw"
TOML
uri="nbd+unix:///erp-db?socket=$work/a/tap.sock"

say "Site B: the target VDSA (journal, mirror). Site A: the source VDSA and the tap"
start vdsa-b hvds-vdsa run --config "$work/b/vdsa.toml"
start vdsa-a hvds-vdsa run --config "$work/a/vdsa.toml"
start tap hvds-tap --config "$work/a/tap.toml"
qemu-img info "$uri" | head -3

say "The VM installs an OS: an ext4 file system with Debian's os-release, written through the tap"
mkdir -p "$work/rootfs/etc"
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' \
  >"$work/rootfs/etc/os-release"
truncate -s 256M "$work/fs.img" && mkfs.ext4 -q -F -d "$work/rootfs" -L erp-root "$work/fs.img"
nbdcopy "$work/fs.img" "$uri"

say "A database-like workload: fio random writes with verification, through the tap"
fio --name=db --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --offset=256M \
  --size=256M --io_size=64M --verify=crc32c --do_verify=1 --verify_fatal=1 \
  --verify_state_save=0 --group_reporting | grep -E "write:|read:|err="

say "A tagged checkpoint, 'before-upgrade', and the mirror at site B"
checkpoint before-upgrade
same
ctl_b checkpoints --vpg erp | jq -r '"\(.checkpoints | length) checkpoints kept at site B; tagged:",
  (.checkpoints[] | select(.tag != "") | "  checkpoint \(.id) at sequence \(.seq): \(.tag)")'

say "Site B's data analyzer: what the replicated disk holds"
for _ in $(seq 100); do
  ctl_b status | jq -e '.targets.erp.analysis.disks["erp-db"].os' >/dev/null && break
  sleep 0.2
done
ctl_b status | jq -r '.targets.erp.analysis.disks["erp-db"]
  | "file systems: \(.filesystems | join(", ")), OS: \(.os)"'

say "Site A's VDSA dies (kill -9) while the VM writes; it comes back and the tap resyncs"
kill -9 "$vdsa_a_pid"; wait "$vdsa_a_pid" 2>/dev/null || true
qemu-io -f raw -c "write -P 0xab 300M 8M" -c "write -P 0xcd 400M 64k" "$uri" | grep wrote
echo "dirty bytes kept by the tap: $(tap_metric hvds_tap_dirty_bytes)"
start vdsa-a hvds-vdsa run --config "$work/a/vdsa.toml"
checkpoint after-outage
same

say "Replication status at site A"
ctl_a status | jq '.sources.erp'
say "Demo complete: the replica at site B is identical to the VM's disk"
