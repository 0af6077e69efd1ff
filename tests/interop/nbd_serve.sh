#!/bin/bash
# SPDX-License-Identifier: MIT
# rblock serve driven by the real clients: nbdinfo, nbdcopy, qemu-img,
# qemu-io, nbdfuse; raw images, qcow2 images and chains made by qemu-img,
# with qemu-nbd's answers as the oracle for maps.  No sleeps: socket
# activation (nbdinfo -- [ ... ]) and captive --run.
set -euo pipefail
: "${RBLOCK:?set RBLOCK to the rblock binary}"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
export PATH="/usr/bin:$PATH"   # nbdsh wants Debian's python3

MiB=1048576
# raw: 3 MiB of data, a 1 MiB hole, 1 MiB of data, hole to 16 MiB
head -c $((3 * MiB)) /dev/urandom > disk.raw
truncate -s $((4 * MiB)) disk.raw
head -c $MiB /dev/urandom >> disk.raw
truncate -s $((16 * MiB)) disk.raw

step "nbdinfo over socket activation"
nbdinfo --json -- [ "$RBLOCK" serve disk.raw ] > info.json
grep -q '"export-size": 16777216' info.json || fail "size: $(cat info.json)"
grep -q '"is_read_only": false' info.json || fail "read-only flag"
nbdinfo -- [ "$RBLOCK" serve -r -D "my disk" disk.raw ] > info.txt
grep -q 'is_read_only: true' info.txt || fail "--read-only not advertised"
grep -q 'description: my disk' info.txt || fail "description: $(cat info.txt)"

step "nbdinfo --map and --list"
nbdinfo --map -- [ "$RBLOCK" serve -r disk.raw ] > map.rb
nbdinfo --map -- [ qemu-nbd -r -f raw disk.raw ] > map.qemu
diff -u map.qemu map.rb || fail "raw map differs from qemu-nbd's"
"$RBLOCK" serve -r -x disk1 --run 'nbdinfo --list "$uri"' disk.raw > list.txt
grep -q 'export="disk1"' list.txt || fail "list: $(cat list.txt)"

step "nbdcopy out, with and without extents"
nbdcopy -- [ "$RBLOCK" serve -r disk.raw ] out.raw
cmp disk.raw out.raw || fail "nbdcopy out differs"
nbdcopy --no-extents -- [ "$RBLOCK" serve -r disk.raw ] out2.raw
cmp disk.raw out2.raw || fail "nbdcopy --no-extents out differs"

step "nbdcopy in"
head -c $((16 * MiB)) /dev/urandom > src.raw
truncate -s $((16 * MiB)) target.raw
nbdcopy src.raw -- [ "$RBLOCK" serve target.raw ]
cmp src.raw target.raw || fail "nbdcopy in differs"

step "qemu-img and qemu-io over nbd:// (tcp) and nbd+unix://"
"$RBLOCK" serve -r --nbd tcp:127.0.0.1:0 --run \
    'case "$uri" in nbd://127.0.0.1:*) ;; *) exit 9;; esac; qemu-img compare -f raw disk.raw "$uri"' \
    disk.raw || fail "qemu-img compare over tcp"
"$RBLOCK" serve -r --nbd tcp:127.0.0.1:0 --run 'qemu-img convert -O raw "$uri" conv.raw' \
    disk.raw || fail "qemu-img convert over tcp"
cmp disk.raw conv.raw || fail "qemu-img convert over nbd:// differs"
cp disk.raw rw.raw
cp disk.raw expect.raw
IO=(-c "write -P 0x5a 512 70000" -c "write -z 2M 1M" -c "discard 5M 64k"
    -c "write -P 0x33 $((16 * MiB - 4096)) 4096" -c "aio_write -P 0x11 9M 1M" -c "aio_flush"
    -c "flush")
qemu-io -f raw "${IO[@]}" expect.raw > /dev/null
printf '%s\0' "${IO[@]}" > io.args
"$RBLOCK" serve --nbd "unix:$T/rw.sock" \
    --run 'xargs -0 -a io.args sh -c '\''exec qemu-io -f raw "$@" "$0"'\'' "$uri" > qio.out' \
    rw.raw || fail "qemu-io over nbd+unix"
cmp expect.raw rw.raw || fail "writes through qemu-io differ"
"$RBLOCK" serve -r --nbd "unix:$T/ro.sock" --run 'qemu-io -f raw -c "write 0 512" "$uri"' \
    rw.raw > ro.out 2>&1 || true
grep -qi "permission\|read-only\|not permitted" ro.out || fail "read-only write: $(cat ro.out)"
cmp expect.raw rw.raw || fail "read-only export was written"

step "--run: exit status, unix socket mode 0600"
set +e
"$RBLOCK" serve -r --run 'exit 7' disk.raw; rc=$?
set -e
[ "$rc" = 7 ] || fail "--run exit status $rc, expected 7"
mode=$("$RBLOCK" serve -r --nbd "unix:$T/m.sock" --run 'stat -c %a "$unixsocket"' disk.raw)
[ "$mode" = 600 ] || fail "unix socket mode $mode"
[ ! -e "$T/m.sock" ] || fail "unix socket left behind"

step "nbdsh against --run"
"$RBLOCK" serve -r --run 'nbdsh -u "$uri" -c "assert h.get_size() == 16777216"' disk.raw \
    || fail "nbdsh"

step "nbdfuse"
unmount() { fusermount3 -u "$1" 2>/dev/null || umount "$1"; }
if ! command -v nbdfuse >/dev/null; then
    echo "SKIP: nbdfuse: not installed (Debian package nbdfuse)" >&2
elif [ -c /dev/fuse ] && { [ "$(id -u)" = 0 ] || command -v fusermount3 >/dev/null; }; then
    mkdir fuse
    nbdfuse -r -P fuse.pid fuse/disk [ "$RBLOCK" serve -r disk.raw ] 2>fuse.err &
    fpid=$!
    # nbdfuse writes its pid file once the mount is up: poll for it
    # (bounded), as for a socket.
    for _ in $(seq 1 600); do
        [ -s fuse.pid ] && break
        kill -0 $fpid 2>/dev/null || break
        sleep 0.05
    done
    if [ -s fuse.pid ]; then
        cmp disk.raw fuse/disk || { unmount fuse; fail "nbdfuse read differs"; }
        unmount fuse
        wait $fpid || true
    else
        kill $fpid 2>/dev/null || true
        # rblock's own failure is not FUSE's
        if grep -q 'rblock\|Sanitizer\|runtime error' fuse.err; then
            fail "nbdfuse over rblock serve: $(cat fuse.err)"
        fi
        echo "SKIP: nbdfuse: FUSE does not work here: $(head -c 300 fuse.err)" >&2
    fi
else
    echo "SKIP: nbdfuse: no /dev/fuse, or not root and no fusermount3" >&2
fi

step "qcow2 image and chain"
qemu-img create -q -f qcow2 base.qcow2 16M
qemu-io -c "write -P 1 0 3M" -c "write -z 4M 1M" -c "write -P 7 10M 64k" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c "write -P 2 1M 3M" -c "write -z 10M 32k" top.qcow2 >/dev/null
"$RBLOCK" serve -r --run true top.qcow2 || fail "rblock cannot serve a qcow2 chain"
qemu-img convert -O raw top.qcow2 top.expect
nbdcopy -- [ "$RBLOCK" serve -r top.qcow2 ] top.out
cmp top.expect top.out || fail "qcow2 chain: nbdcopy differs from qemu-img convert"
nbdcopy --no-extents -- [ "$RBLOCK" serve -r top.qcow2 ] top.out2
cmp top.expect top.out2 || fail "qcow2 chain: nbdcopy --no-extents differs"
"$RBLOCK" serve -r --run 'qemu-img compare -f qcow2 top.qcow2 "$uri"' top.qcow2 \
    || fail "qemu-img compare qcow2"
for ctx in base:allocation qemu:allocation-depth; do
    nbdinfo --map=$ctx -- [ "$RBLOCK" serve -r top.qcow2 ] > m.rb
    nbdinfo --map=$ctx -- [ qemu-nbd -r -A -f qcow2 top.qcow2 ] > m.qemu
    diff -u m.qemu m.rb || fail "qcow2 chain --map=$ctx differs from qemu-nbd's"
done

step "writes into qcow2"
sum_before=$(sha256sum base.qcow2)
"$RBLOCK" serve --run true top.qcow2 || fail "rblock cannot serve a qcow2 read-write"
cp top.expect top.expect.w
qemu-io -f raw "${IO[@]}" top.expect.w > /dev/null
"$RBLOCK" serve --nbd "unix:$T/q.sock" \
    --run 'xargs -0 -a io.args sh -c '\''exec qemu-io -f raw "$@" "$0"'\'' "$uri" > qio.out' \
    top.qcow2 || fail "qemu-io writes into qcow2"
qemu-img check -q top.qcow2 || fail "qemu-img check after writes"
qemu-img convert -O raw top.qcow2 top.after
cmp top.expect.w top.after || fail "qcow2 holds something else than was written"
[ "$(sha256sum base.qcow2)" = "$sum_before" ] || fail "backing file was modified"
qemu-img create -q -f qcow2 empty.qcow2 16M
nbdcopy src.raw -- [ "$RBLOCK" serve empty.qcow2 ]
qemu-img check -q empty.qcow2 || fail "qemu-img check after nbdcopy in"
qemu-img compare -q -f raw -F qcow2 src.raw empty.qcow2 || fail "nbdcopy into qcow2 differs"
echo "all nbd_serve checks passed"
