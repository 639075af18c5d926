#!/usr/bin/env bash
# The tap demo (`make demo`, until the two-site lab exists): a disk served by hvds-tap, every
# write copied to a VDSA sink, the VDSA taken down and brought back, the replica proven equal.
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
wait_ready() { # FILE: wait until the service wrote its ready line
  for _ in $(seq 100); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "service did not start:"; cat "$1"; exit 1
}
metric() { # NAME: a sample of the tap's metrics
  curl -s http://127.0.0.1:9711/metrics | awk -v m="$1" '$1 ~ "^"m {printf "%d\n", $2; exit}'
}
start_vdsa() {
  hvds-vdsa sink --listen "$work/vdsa.sock" --dir "$work/replica" >"$work/vdsa.out" 2>>"$work/vdsa.log" &
  vdsa_pid=$!; pids+=("$vdsa_pid"); wait_ready "$work/vdsa.out"
}
wait_clean() {
  for _ in $(seq 200); do [[ "$(metric hvds_tap_dirty_bytes)" == "0" ]] && return 0; sleep 0.1; done
  echo "the tap still has dirty blocks"; exit 1
}

truncate -s 256M "$work/vm1-disk0.raw"
cat >"$work/tap.toml" <<TOML
[tap]
unix_socket = "$work/tap.sock"
vdsa_socket = "$work/vdsa.sock"
state_dir = "$work/state"
metrics = "127.0.0.1:9711"

[[export]]
name = "vm1-disk0"
path = "$work/vm1-disk0.raw"
TOML
uri="nbd+unix:///vm1-disk0?socket=$work/tap.sock"

say "Start the VDSA (a sink that applies every copy to a replica image) and the tap"
start_vdsa
hvds-tap --config "$work/tap.toml" >"$work/tap.out" 2>>"$work/tap.log" &
pids+=("$!"); wait_ready "$work/tap.out"
qemu-img info "$uri"

say "A VM-like workload: fio random writes with verification, through the tap"
fio --name=vm --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size=256M \
  --io_size=128M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting \
  | grep -E "write:|read:|err="
wait_clean
sha256sum "$work/vm1-disk0.raw" "$work/replica/vm1-disk0.img"

say "The VDSA goes down; the VM keeps writing at full speed, the tap keeps a dirty bitmap"
kill "$vdsa_pid"; wait "$vdsa_pid" 2>/dev/null || true
qemu-io -f raw -c "write -P 0xab 64M 8M" -c "write -P 0xcd 200M 64k" "$uri" | grep wrote
echo "dirty bytes waiting for the VDSA: $(metric hvds_tap_dirty_bytes)"

say "The VDSA comes back: only the dirty blocks are sent again"
start_vdsa
wait_clean
echo "bytes resent by the resync: $(metric hvds_tap_resync_bytes_total)"
sha256sum "$work/vm1-disk0.raw" "$work/replica/vm1-disk0.img"
a="$(sha256sum <"$work/vm1-disk0.raw")"; b="$(sha256sum <"$work/replica/vm1-disk0.img")"
[[ "$a" == "$b" ]] && say "replica identical to the disk" || { echo "MISMATCH"; exit 1; }
