#!/bin/bash
# SPDX-License-Identifier: MIT
# Images whose headers name hostile files: a backing file or an
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

step "a backing file without a recorded format is raw, never probed"
# drop the backing-format extension (the first one, right after the
# 112-byte v3 header) by making it the end-of-extensions marker
nofmt() { cp "$1" "$2"; printf '\0\0\0\0' | dd of="$2" bs=1 seek=112 conv=notrunc status=none; }
# a raw backing file is read as raw
head -c 1M /dev/urandom > plain.raw
qemu-img create -q -f qcow2 -b plain.raw -F raw p.qcow2
nofmt p.qcow2 p-nofmt.qcow2
info=$(qemu-img info p-nofmt.qcow2)
case $info in *"backing file format"*) fail "the format extension is still there";; esac
"$RBLOCK" serve -r p-nofmt.qcow2 --run 'nbdcopy "$uri" out2.raw'
cmp out2.raw plain.raw || fail "a raw backing without a recorded format reads wrong"
# one that holds a qcow2 header (a guest wrote it) is refused, not probed
nofmt f.qcow2 g.qcow2
refused "raw backing with a qcow2 header, no recorded format" "no recorded format and holds a qcow2 header" g.qcow2
qemu-img create -q -f qcow2 base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
nofmt top.qcow2 top-nofmt.qcow2
refused "qcow2 backing without a recorded format" "no recorded format.*qemu-img rebase -u -b base.qcow2 -F qcow2" top-nofmt.qcow2
echo "hostile image tests passed"
