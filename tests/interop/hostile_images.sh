#!/bin/bash
# SPDX-License-Identifier: MIT
# Images whose headers name hostile files (issue 7): a backing file or an
# external data file that is a FIFO or a character device, a json:
# pseudo-filename, a backing loop, a chain deeper than the cap.  Each is
# refused with one clear message; nothing hangs (timeout is only a
# deadlock guard) and nothing is probed.
set -euo pipefail
: "${RBLOCK:?set RBLOCK to the rblock binary}"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }

refused() { # WHAT PATTERN IMAGE: map and serve must fail with PATTERN
    local what=$1 pat=$2 img=$3 rc
    for cmd in map "serve -r --run true"; do
        set +e
        timeout 60 "$RBLOCK" $cmd "$img" > out.txt 2> err.txt
        rc=$?
        set -e
        [ $rc -ne 124 ] || fail "$what: rblock $cmd hung"
        [ $rc -ne 0 ] || fail "$what: rblock $cmd accepted it"
        grep -q "$pat" err.txt || fail "$what: rblock $cmd said: $(cat err.txt)"
    done
}

mkfifo fifo
step "backing file is a FIFO"
qemu-img create -q -f qcow2 -u -b fifo -F raw a.qcow2 1M
refused "FIFO backing" "not a regular file or block device" a.qcow2

step "backing file is a character device"
qemu-img create -q -f qcow2 -u -b /dev/zero -F raw b.qcow2 1M
refused "device backing" "not a regular file or block device" b.qcow2

step "external data file is a FIFO"
qemu-img create -q -f qcow2 -o data_file=data.raw c.qcow2 1M
rm data.raw
mkfifo data.raw
refused "FIFO data file" "not a regular file or block device" c.qcow2

step "json: backing file name"
qemu-img create -q -f qcow2 -u -b 'json:{"driver":"file","filename":"/etc/passwd"}' -F raw d.qcow2 1M
refused "json: backing" "json: pseudo-filename" d.qcow2

step "backing loop"
qemu-img create -q -f qcow2 -u -b e2.qcow2 -F qcow2 e1.qcow2 1M
qemu-img create -q -f qcow2 -u -b e1.qcow2 -F qcow2 e2.qcow2 1M
refused "loop" "loop" e1.qcow2

step "chain deeper than 64 layers"
qemu-img create -q -f raw l0 1M
for i in $(seq 1 66); do
    qemu-img create -q -f qcow2 -u -b "l$((i - 1))" -F "$([ $i = 1 ] && echo raw || echo qcow2)" "l$i" 1M
done
refused "deep chain" "deeper than" l66

step "the backing format recorded in the header is used, never probed"
# a raw backing file that holds a qcow2 header naming a host file
qemu-img create -q -f qcow2 -b /etc/hostname -F raw inner.qcow2 1M 2>/dev/null ||
    qemu-img create -q -f qcow2 -u -b /etc/hostname -F raw inner.qcow2 1M
cp inner.qcow2 evil.raw
truncate -s 1M evil.raw
qemu-img create -q -f qcow2 -b evil.raw -F raw f.qcow2 1M
"$RBLOCK" map --output=json f.qcow2 > map.json || fail "raw backing with a qcow2 header"
grep -q '"depth": *1' map.json || fail "map: $(cat map.json)"
"$RBLOCK" info f.qcow2 > info.txt
grep -q "backing file format: raw" info.txt || fail "info: $(cat info.txt)"
# served, it reads back the raw bytes (the qcow2 header), not /etc/hostname
"$RBLOCK" serve -r f.qcow2 --run 'nbdcopy "$uri" out.raw'
cmp out.raw evil.raw || fail "backing read through a probed format"
echo "hostile image tests passed"
