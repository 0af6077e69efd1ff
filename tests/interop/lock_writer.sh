#!/bin/bash
# SPDX-License-Identifier: MIT
# Image locking: a second writer is refused clearly, by rblock and
# by QEMU, both ways, with QEMU's lock bytes (fcntl OFD locks).  No sleeps:
# --run keeps the server up for exactly the command; a qemu-io kept open on
# a fifo is polled for (bounded, /proc/locks) until its lock shows.
set -euo pipefail
: "${RBLOCK:?set RBLOCK to the rblock binary}"
T=$(mktemp -d)
qpid=
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
export PATH="/usr/bin:$PATH"
LOCKED="image is locked by another process (is it in use by rblock serve or qemu?)"
# the lock that could not be had, in QEMU's words
LOCKED_W="$LOCKED: failed to get \"write\" lock"
LOCKED_SW="$LOCKED: failed to get shared \"write\" lock"

qemu-img create -q -f raw a.raw 1M
qemu-img create -q -f qcow2 a.qcow2 1M

step "a second rblock serve of the same image is refused with one clear line"
set +e
"$RBLOCK" serve -q -f raw a.raw --run "\"$RBLOCK\" serve -f raw --nbd unix:$T/s2 a.raw" 2>err.txt
rc=$?
set -e
[ $rc -ne 0 ] || fail "second writer was not refused"
grep -qxF "rblock: a.raw: $LOCKED_W" err.txt || fail "message: $(cat err.txt)"
[ "$(wc -l < err.txt)" -eq 1 ] || fail "more than one line: $(cat err.txt)"

step "qemu-io cannot write an image rblock serves"
set +e
"$RBLOCK" serve -f raw a.raw --run "qemu-io -f raw -c 'write -P 7 0 512' a.raw" >out.txt 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "qemu-io wrote an image rblock serves: $(cat out.txt)"
grep -q 'Failed to get "write" lock' out.txt || fail "qemu-io said: $(cat out.txt)"
cmp -s a.raw <(head -c 1048576 /dev/zero) || fail "the image changed"

step "a read-only rblock serve is a reader: qemu-io may not write meanwhile"
set +e
"$RBLOCK" serve -r a.raw --run "qemu-io -f raw -c 'write -P 7 0 512' a.raw" >out.txt 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "qemu-io wrote an image rblock serves read-only: $(cat out.txt)"
grep -q 'Failed to get "write" lock' out.txt || fail "qemu-io said: $(cat out.txt)"
cmp -s a.raw <(head -c 1048576 /dev/zero) || fail "the image changed"

step "the lock goes with the server: qemu-io writes once it is gone"
qemu-io -f raw -c 'write -P 8 0 512' a.raw >/dev/null || fail "lock left behind"

# qemu-io holding an image open for writing, until we close its stdin.
hold() { # FORMAT FILE
    mkfifo "$T/fifo"
    qemu-io -f "$1" "$2" < "$T/fifo" > "$T/qemu-io.out" 2>&1 &
    qpid=$!
    exec 9> "$T/fifo"
    # until qemu-io holds its write lock (byte 101, in /proc/locks)
    local ino
    ino=$(stat -c %i "$2")
    for _ in $(seq 400); do
        awk -v ino="$ino" '$2 == "OFDLCK" { n = split($6, d, ":");
            if (d[n] == ino && $7 <= 101 && $8 >= 101) found = 1 }
            END { exit !found }' /proc/locks && return 0
        kill -0 "$qpid" 2>/dev/null || break
        sleep 0.05
    done
    fail "qemu-io did not open $2"
}
release() {
    echo quit >&9
    exec 9>&-
    wait "$qpid" || true
    qpid=
    rm -f "$T/fifo"
}

for img in a.raw a.qcow2; do
    fmt=${img#a.}
    step "rblock serve refuses $fmt while qemu-io has it open for writing"
    hold "$fmt" "$img"
    set +e
    "$RBLOCK" serve -f "$fmt" --nbd "unix:$T/s3" "$img" 2>err.txt
    rc=$?
    set -e
    release
    [ $rc -ne 0 ] || fail "rblock served $img while qemu-io wrote it"
    # qemu-io unshares write on a qcow2 file, not on a raw one: either lock
    grep -qxF -e "rblock: $img: $LOCKED_W" -e "rblock: $img: $LOCKED_SW" err.txt ||
        fail "message: $(cat err.txt)"
done

"$RBLOCK" serve a.qcow2 --run true || fail "rblock cannot serve a qcow2 read-write"
step "qemu-io cannot write, nor qemu-img info read, a qcow2 rblock serves"
set +e
"$RBLOCK" serve a.qcow2 --run "qemu-io -c 'write 0 512' a.qcow2" >out.txt 2>&1
rc=$?
"$RBLOCK" serve a.qcow2 --run "qemu-img info a.qcow2" >info.txt 2>&1
rc2=$?
set -e
[ $rc -ne 0 ] || fail "qemu-io wrote a qcow2 rblock serves: $(cat out.txt)"
grep -q 'Failed to get "write" lock' out.txt || fail "qemu-io said: $(cat out.txt)"
[ $rc2 -ne 0 ] || fail "qemu-img info read a qcow2 being written: $(cat info.txt)"
grep -q 'Failed to get shared "write" lock' info.txt || fail "qemu-img said: $(cat info.txt)"
"$RBLOCK" serve a.qcow2 --run "qemu-img info -U a.qcow2" >/dev/null ||
    fail "qemu-img info -U refused"

step "rblock serve works again once qemu-io is gone"
"$RBLOCK" serve a.raw --run 'nbdinfo --size "$uri"' > size.txt || fail "serve after release"
[ "$(cat size.txt)" = 1048576 ] || fail "size: $(cat size.txt)"
echo "lock tests passed"
