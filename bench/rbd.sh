#!/bin/bash
# SPDX-License-Identifier: MIT
# Ceph RBD: rblock against Ceph's and QEMU's own tools on a one-node cluster
# (tests/ceph/cluster.sh; bluestore on a sparse file, since memstore holds
# twice the data in memory):
#   - convert a 1 GiB qcow2 (BENCH_RBD_DATA_MB MiB of data, default 768) into
#     a new RBD image: rblock convert vs qemu-img convert -O raw rbd:...
#     (both create the image; best of two, alternating);
#   - apply an incremental change (BENCH_RBD_CHANGE_MB, default 64, in 4 MiB
#     pieces) to an RBD image: rblock delta --output-format=rbd-diff of two
#     qcow2 files piped into rbd import-diff, vs rbd export-diff of two RBD
#     snapshots piped into rbd import-diff.
# Ratios are rblock / anchor (below 1: rblock is faster).  Never asserts;
# checks that the results are equal (qemu-img compare) and says so.
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-$PWD/build/rblock}
DATA_MB=${BENCH_RBD_DATA_MB:-768}
CHANGE_MB=${BENCH_RBD_CHANGE_MB:-64}
for t in ceph-mon ceph-osd rbd qemu-img; do
    command -v "$t" >/dev/null || { echo "bench/rbd.sh: $t missing (scripts/install-deps)"; exit 0; }
done

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/rblock-bench-rbd.XXXXXX")
cleanup() {
    tests/ceph/cluster.sh stop "$W/ceph" || true
    rm -rf "$W"
}
trap cleanup EXIT
RBLOCK_CEPH_STORE=bluestore tests/ceph/cluster.sh start "$W/ceph" >/dev/null
export CEPH_CONF=$W/ceph/ceph.conf

# base: 1 GiB qcow2, DATA_MB MiB of random data in 4 MiB pieces, holes between
qemu-img create -q -f qcow2 "$W/base.qcow2" 1G
head -c $(( DATA_MB << 20 )) /dev/urandom > "$W/data"
/usr/bin/python3 - "$W" "$DATA_MB" "$CHANGE_MB" <<'PY'
import os, random, subprocess, sys
w, data_mb, change_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(1)
slots = random.sample(range(256), data_mb // 4)  # 4 MiB slots of 1 GiB
with open(f"{w}/data", "rb") as f:
    for n, i in enumerate(sorted(slots)):
        piece = f.read(4 << 20)
        open(f"{w}/piece", "wb").write(piece)
        subprocess.run(["qemu-io", "-c", f"write -s {w}/piece {(i * 4) << 20} 4M",
                        f"{w}/base.qcow2"], check=True, capture_output=True)
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", f"{w}/base.qcow2", "-F",
                "qcow2", f"{w}/new.qcow2"], check=True)
for i in random.sample(range(256), change_mb // 4):
    open(f"{w}/piece", "wb").write(os.urandom(4 << 20))
    subprocess.run(["qemu-io", "-c", f"write -s {w}/piece {(i * 4) << 20} 4M",
                    f"{w}/new.qcow2"], check=True, capture_output=True)
os.unlink(f"{w}/piece")
PY
rm -f "$W/data"

# wall seconds of CMD (a shell string)
secs() {
    local s e
    s=$(date +%s.%N)
    bash -c "$1" >/dev/null 2>&1 || echo "bench/rbd.sh: failed: $1" >&2
    e=$(date +%s.%N)
    awk "BEGIN{printf \"%.2f\", $e - $s}"
}
best() { awk "BEGIN{print ($1 < $2) ? $1 : $2}"; }

r1=$(secs "$RBLOCK convert -O rbd $W/base.qcow2 rbd:rbd/a")
q1=$(secs "qemu-img convert -f qcow2 -O raw $W/base.qcow2 rbd:rbd/b")
rbd rm --no-progress rbd/a >/dev/null 2>&1
rbd rm --no-progress rbd/b >/dev/null 2>&1
q2=$(secs "qemu-img convert -f qcow2 -O raw $W/base.qcow2 rbd:rbd/b")
r2=$(secs "$RBLOCK convert -O rbd $W/base.qcow2 rbd:rbd/a")
r=$(best "$r1" "$r2")
q=$(best "$q1" "$q2")
same=$(qemu-img compare -q -F raw "$W/base.qcow2" rbd:rbd/a && echo equal || echo DIFFERENT)

rbd snap create --no-progress rbd/a@s1 >/dev/null
rbd snap create --no-progress rbd/b@s1 >/dev/null
ri=$(secs "$RBLOCK delta -q --output-format=rbd-diff --from-snap s1 --to-snap s2 $W/base.qcow2 $W/new.qcow2 - | rbd import-diff --no-progress - rbd/a")
qi=$(secs "rbd export-diff --no-progress --from-snap s1 rbd/a@s2 - | rbd import-diff --no-progress - rbd/b")
same2=$(qemu-img compare -q -F raw "$W/new.qcow2" rbd:rbd/b && echo equal || echo DIFFERENT)

printf '\nCeph RBD (one-node bluestore cluster on loopback), load %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'qcow2 1 GiB with %d MiB data; change %d MiB\n\n' "$DATA_MB" "$CHANGE_MB"
printf '| job | rblock s | anchor | anchor s | rblock / anchor |\n|---|---|---|---|---|\n'
printf '| convert qcow2 -> new rbd image (%s) | %s | qemu-img convert -O raw rbd: | %s | %s |\n' \
    "$same" "$r" "$q" "$(awk "BEGIN{printf \"%.2f\", $r / $q}")"
printf '| incremental into rbd (%s) | %s | rbd export-diff + import-diff | %s | %s |\n' \
    "$same2" "$ri" "$qi" "$(awk "BEGIN{printf \"%.2f\", $ri / $qi}")"
