#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock diff against qemu-img compare and cmp on a multi-GiB ext4 disk
# image holding real files (warm page cache; least of BENCH_RUNS runs after
# a warm-up, wall clock and CPU time).  Ratios are rblock / other: below 1
# means rblock is faster.
# Never asserts.  Env: RBLOCK (binary), BENCH_DIR (scratch folder parent),
# BENCH_DISK, BENCH_DATA_MB (see lib-disks.inc).
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
. bench/lib-disks.inc

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-diff.XXXXXX")
trap 'rm -rf "$W"' EXIT
make_disks "$W"
qemu-img convert -f raw -O qcow2 "$W/a.img" "$W/a.qcow2"
qemu-img convert -f raw -O qcow2 "$W/b.img" "$W/b.qcow2"
# two overlays of one base, each with a few MiB of its own writes
size=$(stat -L -c %s "$W/a.img")
for o in o1 o2; do
    qemu-img create -q -f qcow2 -b a.img -F raw "$W/$o.qcow2"
    qemu-io -f qcow2 -c "write -P 0x5a $(( size / 40 )) 4M" \
        -c "write -P 0x${o#o}1 $(( size / 4 )) 1M" "$W/$o.qcow2" >/dev/null
done

data=$(du -kL "$W/a.img" | cut -f1)
printf '\nrblock diff vs qemu-img compare vs cmp: disk %d MiB, %d MiB allocated\n' \
    $(( size >> 20 )) $(( data >> 10 ))
printf '%-30s %16s %16s %8s %8s %8s %11s\n' case "wall s r/q/cmp" "cpu s r/q/cmp" \
    "wall r/q" "cpu r/q" "wall r/c" "RSS MiB r/q"

row() { # label fileA fileB [nocmp]
    local label=$1 a=$2 b=$3 r q c
    measure "$RBLOCK" diff --count "$a" "$b"; r=$MEASURED
    measure qemu-img compare "$a" "$b"; q=$MEASURED
    if [ "${4:-cmp}" = cmp ]; then
        measure cmp "$a" "$b"; c=$MEASURED
    else
        c="- - 0"
    fi
    f() { echo "$1" | cut -d' ' -f"$2"; }
    printf '%-30s %16s %16s %8s %8s %8s %11s\n' "$label" \
        "$(f "$r" 1)/$(f "$q" 1)/$(f "$c" 1)" "$(f "$r" 2)/$(f "$q" 2)/$(f "$c" 2)" \
        "$(ratio "$(f "$r" 1)" "$(f "$q" 1)")" "$(ratio "$(f "$r" 2)" "$(f "$q" 2)")" \
        "$( [ "$(f "$c" 1)" = - ] && echo - || ratio "$(f "$r" 1)" "$(f "$c" 1)")" \
        "$(( $(f "$r" 3) >> 10 ))/$(( $(f "$q" 3) >> 10 ))"
}

row "raw, identical (scanned whole)" "$W/a.img" "$W/b.img"
row "raw, a few changes" "$W/a.img" "$W/c.img"
row "qcow2, identical" "$W/a.qcow2" "$W/b.qcow2" nocmp
row "qcow2 vs raw, a few changes" "$W/a.qcow2" "$W/c.img" nocmp
row "overlays sharing a base" "$W/o1.qcow2" "$W/o2.qcow2" nocmp
echo "(cmp and qemu-img compare stop at the first difference: on changed disks"
echo " they read less; rblock diff reads everything to list every differing sector)"
