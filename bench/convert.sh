#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock convert against qemu-img convert on a multi-GiB ext4 disk image
# holding real files (mke2fs -d; see lib-disks.inc), warm source cache,
# best of two runs after a warm-up, `sync` before every run.  Prints wall
# time, peak RSS (/usr/bin/time %M) and output size; ratios are rblock /
# qemu-img (below 1: rblock is faster / smaller).  rblock fdatasyncs its
# output before it exits; qemu-img convert does not (its data is still in
# the page cache when it returns), so qemu-img is timed as
# `qemu-img convert ... && sync -d OUT` ("qemu+sync"), and as is.
# Also a 1 TiB sparse raw disk to qcow2.  Never asserts.
# Env: RBLOCK, BENCH_DIR, BENCH_DISK, BENCH_DATA_MB, BENCH_REUSE.
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
. bench/lib-disks.inc

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-convert.XXXXXX")
trap 'rm -rf "$W"' EXIT
make_disks "$W"
qemu-img convert -f raw -O qcow2 "$W/a.img" "$W/src.qcow2"
qemu-img convert -f raw -O qcow2 -c "$W/a.img" "$W/srcz.qcow2"

size=$(stat -c %s "$W/a.img")
data=$(du -k "$W/a.img" | cut -f1)
printf '\nrblock convert vs qemu-img convert: ext4 disk %d MiB, %d MiB allocated\n' \
    $(( size >> 20 )) $(( data >> 10 ))
printf '%-28s %8s %9s %9s %6s %11s %6s %13s %6s\n' case "rblock s" "qemu+sync" "qemu s" \
    "time" "RSS MiB r/q" "RSS" "out MiB r/q" "size"

# msync CMD...: as measure (lib-disks.inc), with the page cache's
# dirty data written back before each run, so no run pays for another's
msync() {
    local best_t="" best_m="" t m out tf
    tf=$(mktemp)
    "$@" >/dev/null 2>&1 || true
    for _ in 1 2; do
        sync
        /usr/bin/time -o "$tf" -f "%e %M" "$@" >/dev/null 2>&1 || true
        out=$(tail -1 "$tf"); t=${out% *}; m=${out#* }
        if [ -z "$best_t" ] || awk "BEGIN{exit !($t < $best_t)}"; then
            best_t=$t; best_m=$m
        fi
    done
    rm -f "$tf"
    MEASURED="$best_t $best_m"
}

row() { # label src fmt-args...
    local label=$1 src=$2 r q q2 rm qm rs qs
    shift 2
    msync "$RBLOCK" convert "$@" "$src" "$W/r.out"; r=${MEASURED% *}; rm=${MEASURED#* }
    rs=$(du -k "$W/r.out" | cut -f1)
    msync bash -c 'qemu-img convert "$@" && sync -d "${@: -1}"' qemu "$@" "$src" "$W/q.out"
    q=${MEASURED% *}
    msync qemu-img convert "$@" "$src" "$W/q.out"; q2=${MEASURED% *}; qm=${MEASURED#* }
    qs=$(du -k "$W/q.out" | cut -f1)
    printf '%-28s %8s %9s %9s %6s %11s %6s %13s %6s\n' "$label" "$r" "$q" "$q2" \
        "$(ratio "$r" "$q")" "$(( rm >> 10 ))/$(( qm >> 10 ))" "$(ratio "$rm" "$qm")" \
        "$(( rs >> 10 ))/$(( qs >> 10 ))" "$(ratio "$rs" "$qs")"
    rm -f "$W/r.out" "$W/q.out"
}

row "raw -> qcow2" "$W/a.img" -O qcow2
row "qcow2 -> qcow2" "$W/src.qcow2" -O qcow2
row "qcow2 -> raw" "$W/src.qcow2" -O raw
row "compressed qcow2 -> raw" "$W/srcz.qcow2" -O raw
row "raw -> qcow2, 2M clusters" "$W/a.img" -O qcow2 -o cluster_size=2M
if [ -n "${BENCH_COMPRESS:-}" ]; then
    row "raw -> qcow2 -c (zlib)" "$W/a.img" -O qcow2 -c
fi

rm -f "$W"/*.img "$W"/*.qcow2
truncate -s 1T "$W/huge.raw"
for off in 0 1 100 1000 10000 100000 1000000; do
    head -c 1M /dev/urandom | dd of="$W/huge.raw" bs=1M seek=$off conv=notrunc status=none
done
printf '\n1 TiB sparse raw (7 MiB of data) -> qcow2\n'
printf '%-30s %9s %9s %7s %13s %7s %15s %7s\n' case "rblock s" "qemu s" "time" \
    "RSS MiB r/q" "RSS" "out KiB r/q" "size"
measure "$RBLOCK" convert -O qcow2 "$W/huge.raw" "$W/r.out"; r=${MEASURED% *}; rm=${MEASURED#* }
rs=$(stat -c %s "$W/r.out")
measure qemu-img convert -O qcow2 "$W/huge.raw" "$W/q.out"; q=${MEASURED% *}; qm=${MEASURED#* }
qs=$(stat -c %s "$W/q.out")
printf '%-30s %9s %9s %7s %13s %7s %15s %7s\n' "1 TiB sparse raw -> qcow2" "$r" "$q" \
    "$(ratio "$r" "$q")" "$(( rm >> 10 ))/$(( qm >> 10 ))" "$(ratio "$rm" "$qm")" \
    "$(( rs >> 10 ))/$(( qs >> 10 ))" "$(ratio "$rs" "$qs")"
