#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock commit and safe rebase against qemu-img commit and rebase, on
# qcow2 images of a multi-GiB ext4 disk of real files (lib-disks.inc):
#   commit       TOP (256 MiB written over BASE in 1 MiB runs) into BASE
#   rebase new   TOP moved from BASE to a standalone copy of BASE with a
#                few changes (both backing files read whole, where not zero)
#   rebase ov    TOP moved from OV1 to OV2, two overlays of one common
#                base (what a rebase between snapshots of a golden image
#                looks like): the shared base need not be read at all
# Each run starts from fresh copies (not timed); the least wall and CPU
# time of BENCH_RUNS (default 3) runs after a warm-up.  Both tools leave
# their result durable (qemu-img flushes at its close, rblock syncs).
# Never asserts; the results are compared with qemu-img compare.
# Env: RBLOCK, BENCH_DIR, BENCH_DISK, BENCH_DATA_MB, BENCH_REUSE, BENCH_RUNS.
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
. bench/lib-disks.inc

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-life.XXXXXX")
trap 'rm -rf "$W"' EXIT
make_disks "$W"
cd "$W"
size=$(stat -L -c %s a.img)
qemu-img convert -f raw -O qcow2 a.img base.qcow2
qemu-img convert -f raw -O qcow2 c.img new.qcow2
# 256 MiB of changes in 1 MiB runs spread over the disk
writes=()
for i in $(seq 0 255); do
    writes+=(-c "write -P $((i % 250 + 1)) $(( (size >> 20) * i / 256 + 3 ))M 1M")
done
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 "${writes[@]}" top.qcow2 >/dev/null
# two overlays of base.qcow2, 32 MiB each changed, and TOP on the first
for o in 1 2; do
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov$o.qcow2
    ow=()
    for i in $(seq 0 31); do
        ow+=(-c "write -P $((o * 40 + i)) $(( (size >> 20) * i / 32 + 11 * o ))M 1M")
    done
    qemu-io -f qcow2 "${ow[@]}" ov$o.qcow2 >/dev/null
done
qemu-img create -q -f qcow2 -b ov1.qcow2 -F qcow2 top1.qcow2
qemu-io -f qcow2 -c "write -P 7 100M 8M" -c "write -P 8 900M 8M" top1.qcow2 >/dev/null
mkdir orig
mv base.qcow2 top.qcow2 top1.qcow2 orig/
ln ov1.qcow2 orig/ov1.qcow2
ln orig/base.qcow2 base.qcow2 # read-only for the rebases

# timed TOOL SETUP CMD...: least wall and CPU seconds of the runs (SETUP
# restores the files, untimed) -> TIMED="wall cpu rss"
timed() {
    local setup=$1 best_t="" best_c="" max_m=0 e u s m c tf
    shift
    tf=$(mktemp)
    for k in $(seq 0 "${BENCH_RUNS:-3}"); do
        $setup
        sync
        /usr/bin/time -o "$tf" -f "%e %U %S %M" "$@" >/dev/null 2>&1 || true
        [ "$k" = 0 ] && continue # warm-up
        read -r e u s m < <(tail -1 "$tf")
        c=$(awk "BEGIN{print $u + $s}")
        if [ -z "$best_t" ] || awk "BEGIN{exit !($e < $best_t)}"; then best_t=$e; fi
        if [ -z "$best_c" ] || awk "BEGIN{exit !($c < $best_c)}"; then best_c=$c; fi
        [ "$m" -gt "$max_m" ] && max_m=$m
    done
    rm -f "$tf"
    TIMED="$best_t $best_c $max_m"
}

fresh_commit() { rm -f base.qcow2 top.qcow2; cp orig/base.qcow2 orig/top.qcow2 .; }
fresh_top() { cp orig/top.qcow2 orig/top1.qcow2 .; }

printf '\nrblock commit / rebase vs qemu-img %s: disk %d MiB, %d MiB allocated, load %s\n' \
    "$(qemu-img --version | sed -n '1s/.*version \([^ ]*\).*/\1/p')" $(( size >> 20 )) \
    $(( $(du -kL a.img | cut -f1) >> 10 )) "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %14s %12s %9s %8s %12s\n' case "wall s r/q" "cpu s r/q" "wall r/q" \
    "cpu r/q" "RSS MiB r/q"
row() {
    local label=$1 r=$2 q=$3
    f() { echo "$1" | cut -d' ' -f"$2"; }
    printf '%-14s %14s %12s %9s %8s %12s\n' "$label" "$(f "$r" 1)/$(f "$q" 1)" \
        "$(f "$r" 2)/$(f "$q" 2)" "$(ratio "$(f "$r" 1)" "$(f "$q" 1)")" \
        "$(ratio "$(f "$r" 2)" "$(f "$q" 2)")" "$(( $(f "$r" 3) >> 10 ))/$(( $(f "$q" 3) >> 10 ))"
}

timed fresh_commit "$RBLOCK" commit -q top.qcow2
r=$TIMED
qemu-img convert -O raw base.qcow2 r.raw
timed fresh_commit qemu-img commit -q top.qcow2
row commit "$r" "$TIMED"
qemu-img compare -q -f raw -F qcow2 r.raw base.qcow2 || echo "  (!) the committed bases differ"
rm -f r.raw base.qcow2
ln orig/base.qcow2 base.qcow2

timed fresh_top "$RBLOCK" rebase -b new.qcow2 -F qcow2 top.qcow2
r=$TIMED
cp top.qcow2 r.qcow2
timed fresh_top qemu-img rebase -b new.qcow2 -F qcow2 top.qcow2
row "rebase new" "$r" "$TIMED"
qemu-img compare -q r.qcow2 orig/top.qcow2 || echo "  (!) rblock's rebased image reads differently"

timed fresh_top "$RBLOCK" rebase -b ov2.qcow2 -F qcow2 top1.qcow2
r=$TIMED
cp top1.qcow2 r1.qcow2
timed fresh_top qemu-img rebase -b ov2.qcow2 -F qcow2 top1.qcow2
row "rebase ov" "$r" "$TIMED"
qemu-img compare -q r1.qcow2 orig/top1.qcow2 || echo "  (!) rblock's rebased image reads differently"
