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
# Order matters on this VM: a run that follows a qemu-img convert pays
# about 1 s more system time (writing into the page cache that qemu-img's
# deleted output freed is slow); the warm-up run of every tool absorbs it.
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

size=$(stat -L -c %s "$W/a.img")
data=$(du -kL "$W/a.img" | cut -f1)
printf '\nrblock convert vs qemu-img convert: ext4 disk %d MiB, %d MiB allocated\n' \
    $(( size >> 20 )) $(( data >> 10 ))
# msync CMD...: best wall time of two runs after a warm-up, with the page
# cache's dirty data written back before each run (no run pays for the
# previous one's writeback).  MEASURED="wall_s peak_rss_kib cpu_s" (CPU =
# user + system of the best run: steadier than wall time on a shared box)
msync() {
    local best_t="" best_m="" best_c="" t m c out tf
    tf=$(mktemp)
    "$@" >/dev/null 2>&1 || true
    for _ in 1 2; do
        sync
        /usr/bin/time -o "$tf" -f "%e %M %U %S" "$@" >/dev/null 2>&1 || true
        out=$(tail -1 "$tf")
        read -r t m c1 c2 <<<"$out"
        c=$(awk "BEGIN{print $c1 + $c2}")
        if [ -z "$best_t" ] || awk "BEGIN{exit !($t < $best_t)}"; then
            best_t=$t; best_m=$m; best_c=$c
        fi
    done
    rm -f "$tf"
    MEASURED="$best_t $best_m $best_c"
}

HDR='%-28s %8s %9s %8s %6s %11s %6s %11s %6s %13s\n'
printf "$HDR" case "rblock s" "qemu+sync" "qemu s" "time" "CPU s r/q" "CPU" "RSS MiB r/q" \
    "RSS" "out MiB r/q"

row() { # label src fmt-args...
    local label=$1 src=$2 r q q2 rm qm rc qc rs qs
    shift 2
    msync "$RBLOCK" convert "$@" "$src" "$W/r.out"; read -r r rm rc <<<"$MEASURED"
    rs=$(du -k "$W/r.out" | cut -f1)
    msync bash -c 'qemu-img convert "$@" && sync -d "${@: -1}"' qemu "$@" "$src" "$W/q.out"
    q=${MEASURED%% *}
    msync qemu-img convert "$@" "$src" "$W/q.out"; read -r q2 qm qc <<<"$MEASURED"
    qs=$(du -k "$W/q.out" | cut -f1)
    printf "$HDR" "$label" "$r" "$q" "$q2" "$(ratio "$r" "$q")" "$rc/$qc" "$(ratio "$rc" "$qc")" \
        "$(( rm >> 10 ))/$(( qm >> 10 ))" "$(ratio "$rm" "$qm")" "$(( rs >> 10 ))/$(( qs >> 10 ))"
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
printf '%-28s %8s %8s %11s %15s\n' case "rblock s" "qemu s" "RSS MiB r/q" "out KiB r/q"
msync "$RBLOCK" convert -O qcow2 "$W/huge.raw" "$W/r.out"; read -r r rm rc <<<"$MEASURED"
rs=$(stat -c %s "$W/r.out")
msync qemu-img convert -O qcow2 "$W/huge.raw" "$W/q.out"; read -r q qm qc <<<"$MEASURED"
qs=$(stat -c %s "$W/q.out")
printf '%-28s %8s %8s %11s %15s\n' "1 TiB sparse raw -> qcow2" "$r" "$q" \
    "$(( rm >> 10 ))/$(( qm >> 10 ))" "$(( rs >> 10 ))/$(( qs >> 10 ))"
