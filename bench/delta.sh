#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock delta against QEMU's documented recipe for the same overlay:
#   qemu-img create -f qcow2 -b NEW -F raw D && qemu-img rebase -f qcow2 -b BASE -F raw D
# on a multi-GiB ext4 disk image holding real files and a changed copy
# (warm page cache; best of two runs after a warm-up).  Reports time, peak
# RSS and the delta's size (file length and allocated bytes).  Never asserts.
# Env: RBLOCK, BENCH_DIR, BENCH_DISK, BENCH_DATA_MB, BENCH_REUSE (lib-disks.inc).
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
. bench/lib-disks.inc

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-delta.XXXXXX")
trap 'rm -rf "$W"' EXIT
make_disks "$W"
# a second NEW with more change: 64 MiB rewritten in 1 MiB runs over the disk
cp --sparse=always "$(readlink -f "$W/c.img")" "$W/m.img"
size=$(stat -L -c %s "$W/a.img")
for i in $(seq 0 63); do
    dd if=/dev/urandom of="$W/m.img" bs=1M count=1 seek=$(( (size >> 20) * i / 64 + 7 )) \
       conv=notrunc status=none
done

qemu_recipe() { # BASE NEW OUT
    rm -f "$3"
    qemu-img create -q -f qcow2 -b "$(basename "$2")" -F raw "$3" &&
        qemu-img rebase -f qcow2 -b "$(basename "$1")" -F raw "$3"
}
export -f qemu_recipe
cd "$W"  # the deltas name their backing files relative to this folder

printf '\nrblock delta vs qemu-img create -b NEW + rebase -b BASE: disk %d MiB, %d MiB allocated\n' \
    $(( size >> 20 )) $(( $(du -kL "$W/a.img" | cut -f1) >> 10 ))
printf '%-22s %9s %9s %7s %12s %12s %12s %12s\n' case "rblock s" "qemu s" ratio \
    "RSS MiB r/q" "file r/q KiB" "alloc r KiB" "alloc q KiB"
for case in "a few changes:c" "64 MiB changed:m" "identical:b"; do
    label=${case%:*} new=$W/${case#*:}.img
    measure sh -c "rm -f r.qcow2; '$RBLOCK' delta -q a.img $(basename "$new") r.qcow2"
    rt=${MEASURED% *}; rm_=${MEASURED#* }
    measure bash -c "qemu_recipe a.img $(basename "$new") q.qcow2"
    qt=${MEASURED% *}; qm=${MEASURED#* }
    printf '%-22s %9s %9s %7s %12s %12s %12s %12s\n' "$label" "$rt" "$qt" "$(ratio "$rt" "$qt")" \
        "$(( rm_ >> 10 ))/$(( qm >> 10 ))" \
        "$(( $(stat -c %s "$W/r.qcow2") >> 10 ))/$(( $(stat -c %s "$W/q.qcow2") >> 10 ))" \
        "$(du -k "$W/r.qcow2" | cut -f1)" "$(du -k "$W/q.qcow2" | cut -f1)"
    qemu-img compare -q "$W/r.qcow2" "$new" || echo "  (!) rblock's delta does not read as NEW"
done
