#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock delta against QEMU's documented recipe for the same overlay:
#   qemu-img create -f qcow2 -b NEW -F raw D && qemu-img rebase -f qcow2 -b BASE -F raw D
# on a multi-GiB ext4 disk image holding real files and a changed copy
# (warm page cache; least of BENCH_RUNS runs after a warm-up).  Reports time, peak
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
printf '%-18s %12s %12s %8s %8s %11s %13s %13s\n' case "wall s r/q" "cpu s r/q" \
    "wall r/q" "cpu r/q" "RSS MiB r/q" "file KiB r/q" "alloc KiB r/q"
for case in "a few changes:c" "64 MiB changed:m" "identical:b"; do
    label=${case%:*} new=$W/${case#*:}.img
    measure sh -c "rm -f r.qcow2; '$RBLOCK' delta -q a.img $(basename "$new") r.qcow2"
    r=$MEASURED
    measure bash -c "qemu_recipe a.img $(basename "$new") q.qcow2"
    q=$MEASURED
    f() { echo "$1" | cut -d' ' -f"$2"; }
    printf '%-18s %12s %12s %8s %8s %11s %13s %13s\n' "$label" \
        "$(f "$r" 1)/$(f "$q" 1)" "$(f "$r" 2)/$(f "$q" 2)" \
        "$(ratio "$(f "$r" 1)" "$(f "$q" 1)")" "$(ratio "$(f "$r" 2)" "$(f "$q" 2)")" \
        "$(( $(f "$r" 3) >> 10 ))/$(( $(f "$q" 3) >> 10 ))" \
        "$(( $(stat -c %s r.qcow2) >> 10 ))/$(( $(stat -c %s q.qcow2) >> 10 ))" \
        "$(du -k r.qcow2 | cut -f1)/$(du -k q.qcow2 | cut -f1)"
    qemu-img compare -q "$W/r.qcow2" "$new" || echo "  (!) rblock's delta does not read as NEW"
done
