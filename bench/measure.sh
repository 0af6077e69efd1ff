#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock measure against qemu-img measure: the same numbers (checked and
# printed), and the time to get them (least of BENCH_RUNS runs after a
# warm-up, wall clock and CPU time).  Sources: a sparse raw disk with
# thousands of data extents, its qcow2 copies (64 KiB and 4 KiB clusters),
# an overlay on it, --size alone.  Ratios are rblock / qemu-img: below 1
# means rblock is faster.  Never asserts.  Env: RBLOCK, BENCH_DIR,
# BENCH_RUNS, BENCH_MEASURE_GB (disk size, default 4).
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
. bench/lib-disks.inc

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-measure.XXXXXX")
trap 'rm -rf "$W"' EXIT
gb=${BENCH_MEASURE_GB:-4}
size=$(( gb << 30 ))
truncate -s "$size" "$W/a.raw"
# one 64 KiB run every 3 MiB, and a 64 MiB run in the middle
args=()
for (( off = 0; off < size; off += 3 << 20 )); do args+=(-c "write -P 0x5a $off 64k"); done
args+=(-c "write -P 0x33 $(( size / 2 )) 64M")
qemu-io -f raw "${args[@]}" "$W/a.raw" >/dev/null
qemu-img convert -f raw -O qcow2 "$W/a.raw" "$W/a.qcow2"
qemu-img convert -f raw -O qcow2 -o cluster_size=4k "$W/a.raw" "$W/a4k.qcow2"
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "$W/top.qcow2"
qemu-io -f qcow2 -c "write -P 1 1M 8M" "$W/top.qcow2" >/dev/null
qemu-img bitmap --add "$W/a.qcow2" b0

printf '\nrblock measure vs qemu-img measure: %d GiB disk, %d data extents\n' "$gb" \
    $(( size / (3 << 20) + 1 ))
printf '%-34s %-6s %14s %14s %8s %8s\n' case same "wall s r/q" "cpu s r/q" "wall r/q" \
    "cpu r/q"
row() { # label args...
    local label=$1 r q same=no
    shift
    if [ "$("$RBLOCK" measure "$@" 2>&1)" = "$(qemu-img measure "$@" 2>&1)" ]; then same=yes; fi
    measure "$RBLOCK" measure "$@"; r=$MEASURED
    measure qemu-img measure "$@"; q=$MEASURED
    f() { echo "$1" | cut -d' ' -f"$2"; }
    printf '%-34s %-6s %14s %14s %8s %8s\n' "$label" "$same" \
        "$(f "$r" 1)/$(f "$q" 1)" "$(f "$r" 2)/$(f "$q" 2)" \
        "$(ratio "$(f "$r" 1)" "$(f "$q" 1)")" "$(ratio "$(f "$r" 2)" "$(f "$q" 2)")"
}
row "raw -> qcow2" -O qcow2 -f raw "$W/a.raw"
row "qcow2 64k -> qcow2 (bitmap)" -O qcow2 "$W/a.qcow2"
row "qcow2 4k -> qcow2 4k" -O qcow2 -o cluster_size=4k "$W/a4k.qcow2"
row "overlay chain -> qcow2 json" --output=json -O qcow2 "$W/top.qcow2"
row "qcow2 -> raw" -O raw "$W/a.qcow2"
row "--size 100G, 512 B clusters" -O qcow2 -o cluster_size=512 --size 100G
