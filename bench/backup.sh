#!/bin/bash
# SPDX-License-Identifier: MIT
# Incremental backup of a qcow2 disk with a few MiB written since the last
# backup, three ways:
#   bitmap  rblock delta --bitmap NAME FULL LIVE OUT   (reads only the dirty clusters)
#   scan    rblock delta FULL LIVE OUT                 (compares both disks)
#   pull    qemu-nbd -r -B NAME LIVE, the dirty ranges from its
#           qemu:dirty-bitmap:NAME context copied with libnbd into a
#           qemu-nbd-served qcow2 overlay of FULL (what libvirt-style backup
#           tools do; nbdcopy itself cannot filter by a bitmap)
# LIVE: the ext4 disk of lib-disks.inc (BENCH_DISK, default 4G, real files)
# converted to qcow2; FULL: rblock convert of it; a bitmap added; then
# BENCH_WRITE_MB (default 8) MiB of random data written through rblock serve
# in 64 KiB..1 MiB runs spread over the disk.  Warm page cache (median of
# BENCH_RUNS runs after a warm-up), and cold: LIVE and FULL evicted from the
# page cache (fdatasync + POSIX_FADV_DONTNEED on those two files only) before
# each run.  BENCH_RUNS defaults to 5; each run writes a new output.  Every
# output is checked to read as LIVE.  Measures, never asserts.
# Env: RBLOCK, BENCH_DIR, BENCH_DISK, BENCH_DATA_MB, BENCH_REUSE, BENCH_WRITE_MB.
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
. bench/lib-disks.inc

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-backup.XXXXXX")
trap 'rm -rf "$W"' EXIT
make_disks "$W"
cd "$W"  # the outputs name their backing files relative to this folder
"$RBLOCK" convert -O qcow2 a.img live.qcow2
"$RBLOCK" convert -O qcow2 live.qcow2 full.qcow2
"$RBLOCK" bitmap --add live.qcow2 nightly

cat >write.py <<'EOF'
import os, random, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size, left, rnd = h.get_size(), int(sys.argv[2]) << 20, random.Random(1)
while left > 0:
    n = min(left, rnd.choice([64, 128, 256, 1024]) << 10)
    h.pwrite(os.urandom(n), rnd.randrange(0, (size - n) >> 12) << 12)
    left -= n
h.flush()
h.shutdown()
EOF
"$RBLOCK" serve --nbd "unix:$W/w.sock" \
    --run "/usr/bin/python3 '$W/write.py' \"\$uri\" ${BENCH_WRITE_MB:-8}" live.qcow2

cat >pull.py <<'EOF'
import sys
import nbd
live, out, name = sys.argv[1:4]
ctx = "qemu:dirty-bitmap:" + name
src = nbd.NBD()
src.add_meta_context(ctx)
src.connect_systemd_socket_activation(["qemu-nbd", "-r", "-f", "qcow2", "-B", name, live])
dst = nbd.NBD()
dst.connect_systemd_socket_activation(["qemu-nbd", "-f", "qcow2", out])
size, off, dirty = src.get_size(), 0, []
while off < size:
    got = []
    def cb(meta, start, entries, err):
        if meta == ctx:
            got.extend(entries)
        return 0
    src.block_status(min(size - off, 1 << 30), off, cb)
    for i in range(0, len(got), 2):
        if got[i + 1] & 1:
            dirty.append((off, got[i]))
        off += got[i]
for start, n in dirty:
    for at in range(start, start + n, 4 << 20):
        k = min(4 << 20, start + n - at)
        buf = src.pread(k, at)
        if buf.count(0) == k:
            dst.zero(k, at)
        else:
            dst.pwrite(buf, at)
dst.flush()
dst.shutdown()
src.shutdown()
EOF
cat >evict.py <<'EOF'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
# run1 EVICT CMD...: one run of CMD (after evicting LIVE and FULL from the
# page cache when EVICT is 1, outside the timed part); prints "wall cpu rss",
# wall from bash's time to the millisecond (the bitmap case takes a few
# tens of ms; /usr/bin/time's %e has a 10 ms resolution).
run1() {
    local evict=$1 tf u s m w TIMEFORMAT=%3R
    shift
    tf=$(mktemp)
    # each run writes a new output, as each incremental is a new file (the
    # old one removed outside the timed part, so as not to time its truncation)
    local a
    for a in "$@"; do
        case $a in b.qcow2 | s.qcow2) rm -f "$a" ;; pull) rm -f p.qcow2 ;; esac
    done
    if [ "$evict" = 1 ]; then /usr/bin/python3 evict.py live.qcow2 full.qcow2; fi
    w=$( { time /usr/bin/time -o "$tf" -f "%U %S %M" "$@" >/dev/null 2>&1; } 2>&1 ) || true
    read -r u s m < <(tail -1 "$tf")
    rm -f "$tf"
    awk "BEGIN{printf \"%.3f %.2f %d\\n\", $w, $u + $s, $m}"
}
# median N...: the median of the numbers given
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# measure2 EVICT CMD...: a warm-up, then the median wall and CPU time and the
# largest RSS of BENCH_RUNS (default 5) runs; sets MEASURED.
measure2() {
    local ts=() cs=() max_m=0 e c m
    run1 0 "${@:2}" >/dev/null
    for _ in $(seq "${BENCH_RUNS:-5}"); do
        read -r e c m < <(run1 "$@")
        ts+=("$e")
        cs+=("$c")
        [ "$m" -gt "$max_m" ] && max_m=$m
    done
    MEASURED="$(median "${ts[@]}") $(median "${cs[@]}") $max_m"
}

pull() {
    qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 p.qcow2 &&
        /usr/bin/python3 pull.py live.qcow2 p.qcow2 nightly
}
export -f pull

size=$(qemu-img info --output=json live.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
dirty=$(nbdinfo --map=qemu:dirty-bitmap:nightly -- [ qemu-nbd -r -f qcow2 -B nightly live.qcow2 ] |
        awk '$3 % 2 == 1 { s += $2 } END { print s + 0 }')
printf '\nincremental backup: disk %d MiB (%d MiB allocated), %d MiB written through serve, %d KiB dirty in the bitmap\n' \
    $(( size >> 20 )) $(( $(du -k live.qcow2 | cut -f1) >> 10 )) "${BENCH_WRITE_MB:-8}" \
    $(( dirty >> 10 ))
echo "rblock $("$RBLOCK" --version | cut -d' ' -f2), qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg), median of ${BENCH_RUNS:-5} runs"
f() { echo "$1" | cut -d' ' -f"$2"; }
printf '%-28s %8s %8s %8s %8s %9s %8s %8s\n' method "wall s" "cpu s" "cold s" \
    "RSS MiB" "out KiB" "wall x" "cold x"
# (delta replaces an existing output itself: no shell around it)
B=("$RBLOCK" delta -q --bitmap nightly full.qcow2 live.qcow2 b.qcow2)
S=("$RBLOCK" delta -q full.qcow2 live.qcow2 s.qcow2)
measure2 0 "${B[@]}"; b=$MEASURED
measure2 1 "${B[@]}"; bc=$(f "$MEASURED" 1)
measure2 0 "${S[@]}"; s=$MEASURED
measure2 1 "${S[@]}"; sc=$(f "$MEASURED" 1)
measure2 0 bash -c pull; p=$MEASURED
measure2 1 bash -c pull; pc=$(f "$MEASURED" 1)
for row in "rblock delta --bitmap:$b:$bc:b.qcow2" "rblock delta (scanning):$s:$sc:s.qcow2" \
           "qemu-nbd -B + libnbd pull:$p:$pc:p.qcow2"; do
    IFS=: read -r label m mc out <<<"$row"
    printf '%-28s %8s %8s %8s %8s %9s %8s %8s\n' "$label" "$(f "$m" 1)" "$(f "$m" 2)" \
        "$mc" "$(( $(f "$m" 3) >> 10 ))" "$(du -k "$out" | cut -f1)" \
        "$(ratio "$(f "$m" 1)" "$(f "$b" 1)")" "$(ratio "$mc" "$bc")"
    qemu-img compare -q "$out" live.qcow2 || echo "  (!) $out does not read as the live disk"
done
echo "(x: wall time relative to rblock delta --bitmap, warm and cold; higher = slower)"
