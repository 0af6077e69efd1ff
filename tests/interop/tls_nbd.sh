#!/bin/bash
# SPDX-License-Identifier: MIT
# NBD over TLS driven by real clients: nbdinfo, nbdcopy (libnbd) and
# qemu-img over nbds:// with X.509 certificates (made here with certtool)
# and PSK (psktool); require mode refuses plaintext, on mode takes both;
# bad credentials are start-up errors.  No sleeps: captive --run.
set -euo pipefail
: "${RBLOCK:?set RBLOCK to the rblock binary}"
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
export PATH="/usr/bin:$PATH"   # nbdsh wants Debian's python3

/usr/bin/python3 "$HERE/tls_pki.py" "$T"
PKI=$T/pki CLIENT=$T/client CLIENT2=$T/client2 ANON=$T/anon OTHER=$T/other PSK=$T/keys.psk
export T PKI CLIENT CLIENT2 ANON OTHER PSK

MiB=1048576
head -c $((3 * MiB)) /dev/urandom > disk.raw
truncate -s $((5 * MiB)) disk.raw
head -c $MiB /dev/urandom >> disk.raw
truncate -s $((8 * MiB)) disk.raw

step "nbdinfo over nbds+unix:// and nbds://localhost (X.509, require)"
"$RBLOCK" serve -r --tls-cert "$PKI" --run \
    'nbdinfo "nbds+unix:///?socket=$unixsocket&tls-certificates=$ANON"' disk.raw > info.txt \
    || fail "nbdinfo over nbds+unix"
grep -q 'with TLS' info.txt || fail "no TLS: $(cat info.txt)"
grep -q 'export-size: 8388608' info.txt || fail "size: $(cat info.txt)"
"$RBLOCK" serve -r --tls=require --tls-cert "$PKI" --nbd tcp:127.0.0.1:0 --run \
    'case "$uri" in nbds://*) ;; *) exit 9;; esac
     nbdinfo "nbds://localhost:$port?tls-certificates=$ANON"' disk.raw > info2.txt \
    || fail "nbdinfo over nbds://localhost"
grep -q 'with TLS' info2.txt || fail "no TLS over tcp: $(cat info2.txt)"

step "a client trusting another CA fails (libnbd checks the host over tcp)"
if "$RBLOCK" serve -r --tls-cert "$PKI" --nbd tcp:127.0.0.1:0 --run \
    'nbdinfo "nbds://localhost:$port?tls-certificates=$OTHER"' disk.raw \
    > /dev/null 2> other.err; then
    fail "a certificate from an unknown CA was accepted"
fi

step "require mode refuses a plaintext client"
if "$RBLOCK" serve -r --tls=require --tls-cert "$PKI" --run \
    'nbdinfo --size "nbd+unix:///?socket=$unixsocket"' disk.raw > /dev/null 2> plain.err; then
    fail "plaintext client served in require mode"
fi
grep -qi 'requires TLS' plain.err || fail "no TLS-required message: $(cat plain.err)"

step "on mode serves TLS and plaintext clients"
"$RBLOCK" serve -r --tls=on --tls-cert "$PKI" --run \
    'nbdinfo --size "nbd+unix:///?socket=$unixsocket" &&
     nbdinfo "nbds+unix:///?socket=$unixsocket&tls-certificates=$ANON" | grep -q "with TLS"' \
    disk.raw > on.txt || fail "on mode"
grep -qx 8388608 on.txt || fail "on mode plaintext size: $(cat on.txt)"

step "nbdcopy over TLS, out and in"
"$RBLOCK" serve -r --tls-cert "$PKI" --run \
    'nbdcopy "nbds+unix:///?socket=$unixsocket&tls-certificates=$ANON" out.raw' disk.raw \
    || fail "nbdcopy out"
cmp disk.raw out.raw || fail "nbdcopy over TLS differs"
head -c $((8 * MiB)) /dev/urandom > src.raw
truncate -s $((8 * MiB)) target.raw
"$RBLOCK" serve --tls-cert "$PKI" --run \
    'nbdcopy src.raw "nbds+unix:///?socket=$unixsocket&tls-certificates=$ANON"' target.raw \
    || fail "nbdcopy in"
cmp src.raw target.raw || fail "nbdcopy in over TLS differs"

step "qemu-img convert and compare over TLS (tls-creds-x509)"
"$RBLOCK" serve -r --tls-cert "$PKI" --nbd tcp:127.0.0.1:0 --run \
    'O="--object tls-creds-x509,id=tls0,dir=$CLIENT,endpoint=client"
     N="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,tls-creds=tls0"
     qemu-img convert $O --image-opts "$N" -O raw conv.raw &&
     qemu-img compare $O --image-opts "driver=raw,file.filename=disk.raw" "$N"' \
    disk.raw > qemu.txt || fail "qemu-img over TLS: $(cat qemu.txt)"
cmp disk.raw conv.raw || fail "qemu-img convert over TLS differs"
grep -q identical qemu.txt || fail "qemu-img compare: $(cat qemu.txt)"

step "PSK"
"$RBLOCK" serve -r --tls-psk "$PSK" --run \
    'nbdinfo --size "nbds+unix://alice@/?socket=$unixsocket&tls-psk-file=$PSK"' disk.raw \
    > psk.txt || fail "nbdinfo with PSK"
grep -qx 8388608 psk.txt || fail "psk size: $(cat psk.txt)"
"$RBLOCK" serve -r --tls-psk "$PSK" --run \
    'qemu-img compare --object tls-creds-psk,id=tls0,dir=$T,username=alice,endpoint=client \
         --image-opts "driver=raw,file.filename=disk.raw" \
         "driver=nbd,server.type=unix,server.path=$unixsocket,tls-creds=tls0"' \
    disk.raw > qpsk.txt || fail "qemu-img with PSK: $(cat qpsk.txt)"
grep -q identical qpsk.txt || fail "qemu-img compare with PSK: $(cat qpsk.txt)"
if "$RBLOCK" serve -r --tls-psk "$PSK" --run \
    'nbdinfo --size "nbds+unix://alice@/?socket=$unixsocket&tls-psk-file=$T/wrong.psk"' \
    disk.raw > /dev/null 2>&1; then
    fail "a wrong PSK was accepted"
fi

step "--tls-verify-peer wants a client certificate from the CA"
"$RBLOCK" serve -r --tls-cert "$PKI" --tls-verify-peer --run \
    'nbdinfo --size "nbds+unix:///?socket=$unixsocket&tls-certificates=$CLIENT"' disk.raw \
    > /dev/null || fail "client certificate refused"
if "$RBLOCK" serve -r --tls-cert "$PKI" --tls-verify-peer --run \
    'nbdinfo --size "nbds+unix:///?socket=$unixsocket&tls-certificates=$ANON"' disk.raw \
    > /dev/null 2>&1; then
    fail "a client without a certificate passed --tls-verify-peer"
fi

step "--tls-verify-peer with ca-crl.pem: the revoked client is refused, another served"
mkdir crl
cp "$PKI"/ca-cert.pem "$PKI"/server-cert.pem "$PKI"/server-key.pem crl/
# without a list, both clients are served (the control)
for c in "$CLIENT" "$CLIENT2"; do
    C=$c "$RBLOCK" serve -r --tls-cert crl --tls-verify-peer --nbd tcp:127.0.0.1:0 --run \
        'nbdinfo --size "nbds://localhost:$port?tls-certificates=$C"' disk.raw > size.txt ||
        fail "client $c refused without a revocation list"
    [ "$(cat size.txt)" = 8388608 ] || fail "size: $(cat size.txt)"
done
certtool --generate-crl --load-ca-privkey "$PKI/ca-key.pem" \
    --load-ca-certificate "$PKI/ca-cert.pem" --load-certificate "$CLIENT/client-cert.pem" \
    --template "$PKI/ca.info" --outfile crl/ca-crl.pem > /dev/null 2>&1
# a valid list that does not name client2: the server starts and serves it
"$RBLOCK" serve -r --tls-cert crl --tls-verify-peer --nbd tcp:127.0.0.1:0 --run \
    'nbdinfo --size "nbds://localhost:$port?tls-certificates=$CLIENT2"' disk.raw \
    > size.txt 2> crl-ok.err || fail "a client the list does not name was refused: $(cat crl-ok.err)"
[ "$(cat size.txt)" = 8388608 ] || fail "size with a revocation list: $(cat size.txt)"
# the revoked one: the server started (the command ran) and refused it in
# the handshake, at certificate verification
rc=0
"$RBLOCK" serve -r --tls-cert crl --tls-verify-peer --nbd tcp:127.0.0.1:0 --run \
    'echo started; nbdinfo --size "nbds://localhost:$port?tls-certificates=$CLIENT"' disk.raw \
    > revoked.out 2> revoked.err || rc=$?
[ $rc != 0 ] || fail "a revoked client certificate was accepted"
grep -qx started revoked.out || fail "the server did not start: $(cat revoked.err)"
grep -q 'TLS handshake failed: Error in the certificate verification' revoked.err ||
    fail "not refused at certificate verification: $(cat revoked.err)"

step "bad credentials and options are start-up errors (exit 1, one line)"
mkdir empty mismatch
cp "$PKI/ca-cert.pem" "$PKI/server-cert.pem" mismatch/
cp "$OTHER/ca-key.pem" mismatch/server-key.pem
echo 'alice:xyz' > bad.psk
: > empty.psk
expect_fail() { # expected-message-pattern serve-args...
    local pat=$1 rc=0
    shift
    "$RBLOCK" serve -r "$@" --run 'exit 0' disk.raw > /dev/null 2> err.txt || rc=$?
    [ "$rc" = 1 ] || fail "serve $* exited $rc, not 1"
    [ "$(wc -l < err.txt)" = 1 ] || fail "serve $*: not one line: $(cat err.txt)"
    grep -q -- "$pat" err.txt || fail "serve $*: $(cat err.txt)"
}
expect_fail 'server-cert.pem' --tls-cert empty
expect_fail 'server-cert.pem' --tls-cert "$T/nowhere"
expect_fail 'server-key.pem' --tls-cert mismatch
echo garbage > crl/ca-crl.pem
expect_fail 'ca-crl.pem' --tls-cert crl --tls-verify-peer
expect_fail 'nowhere.psk' --tls-psk "$T/nowhere.psk"
expect_fail 'bad.psk:1' --tls-psk bad.psk
expect_fail 'empty.psk' --tls-psk empty.psk
expect_fail 'needs --tls-cert' --tls=on
expect_fail 'off, on or require' --tls=maybe --tls-cert "$PKI"
expect_fail 'together' --tls-cert "$PKI" --tls-psk "$PSK"
expect_fail 'needs --tls-cert' --tls-psk "$PSK" --tls-verify-peer

echo "tls_nbd: all passed"
