#!/usr/bin/env bash
# Build a tiny bootable QEMU guest: the Debian bookworm cloud kernel plus a busybox-static
# initramfs whose /init runs one disk action (hvds.action=) against its virtio disk /dev/vda,
# prints "HVDS-RESULT: ..." on the console (ttyS0) and powers off.
#
# Usage: build-guest.sh [OUT_DIR]    (default: ${HVDS_CACHE:-/var/cache/hvds}/guest)
#
# Produces OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz (plus OUT_DIR/kernel-package, the
# kernel package used). Idempotent: a second run with unchanged inputs does nothing.
#
# Environment:
#   HVDS_GUEST_KERNEL_PKG  kernel package to use (e.g. linux-image-6.1.0-56-cloud-amd64);
#                          default: the one linux-image-cloud-amd64 currently depends on
#                          (resolved only when no guest has been built yet)
#   HVDS_GUEST_BUSYBOX     static busybox binary to put in the initramfs (default /bin/busybox)
#
# Needs: apt-get, apt-cache, dpkg-deb, cpio, gzip, xz, flock; a static busybox
# (Debian package busybox-static).
#
# Guest actions (kernel command line):
#   hvds.action=write:<seed>:<count>  writes <count> 4 KiB blocks at block offsets 0..count-1;
#       block n = "hvds seed=<seed> block=<n>\n" padded to 4096 bytes with the letter
#       chr(ord('a') + (seed * 7 + n) % 26); then sync; prints "HVDS-RESULT: wrote <count>".
#       (agent/tests/guest.py:expected_block reproduces this byte for byte.)
#   hvds.action=read  prints "HVDS-RESULT: sha256 <hex>" of the first hvds.bytes= bytes of
#       /dev/vda (default: the whole device).
#   hvds.action=ticker:<name>  a VM that keeps writing (the lab's VMs): counts the ticks already
#       on the disk (block n = "hvds-ticker name=<name> tick=<n>\n" zero-padded to 4096 bytes,
#       n = 1, 2, ...), prints "HVDS-RESULT: ticks <N> intact" (or an error if they do not run
#       1..N without a gap), then writes tick N+1, N+2, ... each with fsync, one every
#       hvds.interval= seconds (default 1), printing "HVDS-TICK: name=<name> tick=<n>"; it never
#       powers off by itself.
#   Any failure prints "HVDS-RESULT: error <reason>".
set -euo pipefail

OUT=${1:-${HVDS_CACHE:-/var/cache/hvds}/guest}
BUSYBOX=${HVDS_GUEST_BUSYBOX:-/bin/busybox}
KPKG_REQUESTED=${HVDS_GUEST_KERNEL_PKG:-}
META_PKG=linux-image-cloud-amd64
# insmod order matters: each module only needs the ones before it.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

log() { echo "build-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip xz flock sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ -x $BUSYBOX ]] || die "no busybox at $BUSYBOX (install busybox-static)"
APPLETS=$("$BUSYBOX" --list) || die "$BUSYBOX does not look like busybox"
for applet in sh mount insmod dmesg sleep blockdev printf wc yes tr head dd sync sha256sum poweroff grep awk; do
    grep -qx "$applet" <<<"$APPLETS" || die "$BUSYBOX lacks the applet $applet"
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec 9>"$OUT/.lock"
flock 9   # one builder at a time per output dir

# Everything that determines the result, except the kernel package (recorded separately).
SELF=${BASH_SOURCE[0]}
inputs_hash() {
    { sha256sum <"$SELF"; sha256sum <"$BUSYBOX"; } | sha256sum | cut -d' ' -f1
}
INPUTS=$(inputs_hash)

if [[ -f $OUT/vmlinuz && -f $OUT/initramfs.cpio.gz && -f $OUT/kernel-package && -f $OUT/.stamp ]]; then
    built_pkg=$(<"$OUT/kernel-package")
    if [[ $(<"$OUT/.stamp") == "$INPUTS" && ( -z $KPKG_REQUESTED || $KPKG_REQUESTED == "$built_pkg" ) ]]; then
        log "up to date: $OUT ($built_pkg)"
        exit 0
    fi
fi

# --- pick the kernel package -------------------------------------------------------------
resolve_meta() {
    apt-cache depends "$META_PKG" 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
KPKG=$KPKG_REQUESTED
if [[ -z $KPKG ]]; then
    KPKG=$(resolve_meta || true)
    if [[ -z $KPKG ]]; then
        log "apt-cache does not know $META_PKG; running apt-get update"
        apt-get update -qq >&2
        KPKG=$(resolve_meta || true)
    fi
    [[ -n $KPKG ]] || die "cannot resolve $META_PKG to a kernel package"
fi
log "kernel package: $KPKG"

# --- download (kept in OUT/dl so a rebuild does not download again) ----------------------
DL=$OUT/dl
mkdir -p "$DL"
find_deb() { find "$DL" -maxdepth 1 -name "${KPKG}_*_amd64.deb" -print | sort | tail -n 1; }
DEB=$(find_deb)
if [[ -z $DEB ]]; then
    # apt-get download works in the current directory; as root it warns about the
    # unsandboxed download, which is harmless.
    if ! (cd "$DL" && apt-get download -q "$KPKG" >&2); then
        log "download failed; running apt-get update and retrying"
        apt-get update -qq >&2
        (cd "$DL" && apt-get download -q "$KPKG" >&2)
    fi
    DEB=$(find_deb)
    [[ -n $DEB ]] || die "apt-get download produced no ${KPKG}_*_amd64.deb in $DL"
fi
log "using $(basename "$DEB")"

# --- build in a scratch dir, then move the results into place ----------------------------
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

dpkg-deb -x "$DEB" "$WORK/pkg"
mapfile -t kvers < <(find "$WORK/pkg/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n')
[[ ${#kvers[@]} -eq 1 ]] || die "expected one kernel version in $DEB, found: ${kvers[*]}"
KVER=${kvers[0]}
MODDIR=$WORK/pkg/lib/modules/$KVER
[[ -f $WORK/pkg/boot/vmlinuz-$KVER ]] || die "no boot/vmlinuz-$KVER in $DEB"

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$BUSYBOX" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
# The kernel opens /dev/console before running /init; without the node init starts with no
# stdio. /init re-opens the console after mounting devtmpfs anyway, so this is best effort.
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || log "warning: cannot mknod dev/console"

for m in "${MODULES[@]}"; do
    ko=$(find "$MODDIR/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) -print -quit)
    if [[ -z $ko ]]; then
        # Not a module in this kernel: fine if it is built in.
        grep -qE "/$m\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null \
            || die "module $m is neither in $DEB nor built in"
        log "module $m is built in"
        continue
    fi
    case $ko in
        *.ko.xz) xz -dc "$ko" >"$ROOT/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$ko" >"$ROOT/lib/modules/$m.ko" ;;
        *) cp "$ko" "$ROOT/lib/modules/$m.ko" ;;
    esac
done

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# hvds test guest /init (busybox sh). See tests/guest/build-guest.sh.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
set -f          # the command line is split below; never glob it
set -o pipefail

finish() {
    sync
    poweroff -f
    # If poweroff failed, exiting init panics the kernel; panic=-1 + QEMU -no-reboot ends it.
    exit 1
}
result() {
    dmesg -n 1 2>/dev/null  # keep kernel messages out of the result line
    echo "HVDS-RESULT: $*"
}
fail() { result "error $*"; finish; }
is_uint() {  # decimal, no leading zeros (sh arithmetic would read 010 as octal)
    case $1 in 0) return 0 ;; '' | 0* | *[!0-9]*) return 1 ;; esac
    [ ${#1} -le 15 ]
}

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    if [ -f /lib/modules/$m.ko ]; then
        insmod /lib/modules/$m.ko || fail "insmod $m"
    fi
done

ACTION=
BYTES=
INTERVAL=
for arg in $(cat /proc/cmdline); do
    case $arg in
        hvds.action=*) ACTION=${arg#hvds.action=} ;;
        hvds.bytes=*) BYTES=${arg#hvds.bytes=} ;;
        hvds.interval=*) INTERVAL=${arg#hvds.interval=} ;;
    esac
done

i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -le 200 ] || fail "no /dev/vda after 20 s"
    sleep 0.1
done
SIZE=$(blockdev --getsize64 /dev/vda) || fail "blockdev /dev/vda"
echo "HVDS-INFO: /dev/vda size=$SIZE action=$ACTION"

case $ACTION in
    write:*:*)
        rest=${ACTION#write:}
        seed=${rest%%:*}
        count=${rest#*:}
        is_uint "$seed" || fail "bad seed '$seed'"
        is_uint "$count" || fail "bad count '$count'"
        [ $((count * 4096)) -le "$SIZE" ] || fail "count $count does not fit in $SIZE bytes"
        alphabet=abcdefghijklmnopqrstuvwxyz
        n=0
        while [ $n -lt "$count" ]; do
            printf 'hvds seed=%s block=%s\n' "$seed" "$n" >/tmp/blk
            hlen=$(wc -c </tmp/blk)
            fill=${alphabet:$(((seed * 7 + n) % 26)):1}
            yes "$fill" | tr -d '\n' | head -c $((4096 - hlen)) >>/tmp/blk
            [ "$(wc -c </tmp/blk)" -eq 4096 ] || fail "block $n is not 4096 bytes"
            dd if=/tmp/blk of=/dev/vda bs=4096 seek=$n count=1 conv=notrunc 2>/dev/null \
                || fail "dd block $n"
            n=$((n + 1))
        done
        sync || fail "sync"
        result "wrote $count"
        ;;
    read)
        if [ -n "$BYTES" ]; then
            is_uint "$BYTES" || fail "bad hvds.bytes '$BYTES'"
            [ "$BYTES" -le "$SIZE" ] || fail "hvds.bytes $BYTES exceeds device size $SIZE"
            sum=$(head -c "$BYTES" /dev/vda | sha256sum) || fail "read /dev/vda"
        else
            sum=$(sha256sum </dev/vda) || fail "read /dev/vda"
        fi
        result "sha256 ${sum%% *}"
        ;;
    ticker:*)
        # A VM that keeps working: tick n goes to block n (a line, zero-padded to 4 KiB), each
        # made durable (fsync) before the next. On boot it first counts the ticks already on
        # the disk: they must run 1, 2, ... N with no gap (what a crash-consistent copy of the
        # disk at any instant holds), then it goes on from N+1 until it is stopped.
        name=${ACTION#ticker:}
        case $name in '' | *[!a-z0-9_-]*) fail "bad ticker name '$name'" ;; esac
        [ ${#name} -le 63 ] || fail "ticker name longer than 63 characters"
        interval=${INTERVAL:-1}
        blocks=$((SIZE / 4096))
        # grep finds nothing on a new disk: not an error (pipefail is on).
        found=$(dd if=/dev/vda bs=1M 2>/dev/null | { grep -a -o "hvds-ticker name=$name tick=[0-9]*" || true; } \
            | awk -F= 'BEGIN { n = 0 } $NF == n + 1 { n++; next } { bad = 1; exit } END { if (bad) print "gap after " n; else print n }') \
            || fail "cannot read /dev/vda"
        case $found in
            gap*) result "error ticks out of order: $found" ; finish ;;
        esac
        echo "HVDS-TICKER: name=$name found=$found"
        result "ticks $found intact"
        n=$((found + 1))
        while [ $n -lt "$blocks" ]; do
            { printf 'hvds-ticker name=%s tick=%s\n' "$name" "$n"; head -c 4096 /dev/zero; } \
                | head -c 4096 >/tmp/blk
            dd if=/tmp/blk of=/dev/vda bs=4096 seek=$n count=1 conv=notrunc,fsync 2>/dev/null \
                || { echo "HVDS-TICKER: name=$name write of tick $n failed"; sleep "$interval"; continue; }
            echo "HVDS-TICK: name=$name tick=$n"
            n=$((n + 1))
            sleep "$interval"
        done
        echo "HVDS-TICKER: name=$name disk full at tick $n"
        while :; do sleep 3600; done
        ;;
    '') fail "no hvds.action= on the kernel command line" ;;
    *) fail "unknown hvds.action '$ACTION'" ;;
esac
finish
INIT
chmod 755 "$ROOT/init"

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) \
    | gzip -9n >"$WORK/initramfs.cpio.gz"
cp "$WORK/pkg/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

rm -f "$OUT/.stamp"   # so an interrupted install is never taken for a finished one
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
echo "$KPKG" >"$OUT/kernel-package"
echo "$KVER" >"$OUT/kernel-version"
echo "$INPUTS" >"$OUT/.stamp"
log "built $OUT/vmlinuz and $OUT/initramfs.cpio.gz ($KPKG, $KVER)"
