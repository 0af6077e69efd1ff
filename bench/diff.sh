#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock diff against qemu-img compare and cmp on a multi-GiB ext4 disk
# image holding real files (warm page cache; best of two runs after a
# warm-up).  Ratios are rblock / other: below 1 means rblock is faster.
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
for o in o1 o2; do
    qemu-img create -q -f qcow2 -b a.img -F raw "$W/$o.qcow2"
    qemu-io -f qcow2 -c "write -P 0x5a 100M 4M" -c "write -P 0x${o#o}1 1G 1M" "$W/$o.qcow2" >/dev/null
done

size=$(stat -L -c %s "$W/a.img")
data=$(du -kL "$W/a.img" | cut -f1)
printf '\nrblock diff vs qemu-img compare vs cmp: disk %d MiB, %d MiB allocated\n' \
    $(( size >> 20 )) $(( data >> 10 ))
printf '%-34s %10s %10s %10s %9s %9s %11s\n' case "rblock s" "qemu-img s" "cmp s" \
    "vs qemu" "vs cmp" "RSS MiB r/q/c"

row() { # label fileA fileB [cmp?]
    local label=$1 a=$2 b=$3 r q c rm qm cm
    measure "$RBLOCK" diff --count "$a" "$b"; r=${MEASURED% *}; rm=${MEASURED#* }
    measure qemu-img compare "$a" "$b"; q=${MEASURED% *}; qm=${MEASURED#* }
    if [ "${4:-cmp}" = cmp ]; then
        measure cmp "$a" "$b"; c=${MEASURED% *}; cm=${MEASURED#* }
    else
        c=0; cm=0
    fi
    printf '%-34s %10s %10s %10s %9s %9s %11s\n' "$label" "$r" "$q" \
        "$( [ "$c" = 0 ] && echo - || echo "$c")" "$(ratio "$r" "$q")" \
        "$( [ "$c" = 0 ] && echo - || ratio "$r" "$c")" \
        "$(( rm >> 10 ))/$(( qm >> 10 ))/$( [ "$c" = 0 ] && echo - || echo $(( cm >> 10 )))"
}

row "raw, identical (scanned whole)" "$W/a.img" "$W/b.img"
row "raw, a few changes" "$W/a.img" "$W/c.img"
row "qcow2, identical" "$W/a.qcow2" "$W/b.qcow2" nocmp
row "qcow2 vs raw, a few changes" "$W/a.qcow2" "$W/c.img" nocmp
row "overlays sharing a base" "$W/o1.qcow2" "$W/o2.qcow2" nocmp
echo "(cmp and qemu-img compare stop at the first difference: on changed disks"
echo " they read less; rblock diff reads everything to list every differing sector)"
