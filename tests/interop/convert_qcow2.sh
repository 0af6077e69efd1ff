#!/bin/bash
# rblock convert from qcow2 sources QEMU made (compressed zlib/zstd, extended
# L2 with subclusters, zero and discarded clusters, a three-layer chain
# mixing raw and qcow2, v2) to qcow2 and raw: output checks clean, compares
# identical, is no larger than qemu-img convert's; and images written
# through the rblock write path (random writes via convert -O qcow2 into
# overlays made with rblock create) stay readable by QEMU.
set -euo pipefail
R=${RBLOCK:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }

# a compressible, partly random payload
head -c 4M "$R" > payload; head -c 1M /dev/urandom >> payload

qemu-img create -q -f qcow2 -o compression_type=zlib plain.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 100k 7k' -c 'write -z 300k 64k' \
    -c 'write -P 0x33 1M 128k' -c 'discard 1M 64k' -c 'write -P 0x44 3M 4k' plain.qcow2 >/dev/null
qemu-img convert -f raw -O qcow2 -c payload zlib.qcow2
qemu-img resize -q -f qcow2 zlib.qcow2 32M
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd payload zstd.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k ext.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x55 4k 8k' -c 'write -P 0x66 200k 4k' -c 'write -z 300k 4k' \
    ext.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x77 0 1M' v2.qcow2 >/dev/null
# chain: raw <- qcow2 <- qcow2 (shorter middle layer)
truncate -s 32M base.raw
dd if=payload of=base.raw conv=notrunc status=none
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 16M
qemu-io -c 'write -P 0x88 1M 1M' -c 'write -z 2M 64k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 48M
qemu-io -c 'write -P 0x99 3M 100k' -c 'write -P 0xaa 40M 64k' top.qcow2 >/dev/null

for s in plain zlib zstd ext v2 top; do
    for args in "-O raw" "-O qcow2" "-O qcow2 -c" "-O qcow2 -o compat=0.10" \
                "-O qcow2 -o extended_l2=on" "-O qcow2 -c -o compression_type=zstd"; do
        what="$s.qcow2 $args"
        out=out.img
        $R convert $args $s.qcow2 $out || fail "convert $what"
        qemu-img compare -q $s.qcow2 $out || fail "compare $what"
        case "$args" in *qcow2*)
            qemu-img check -q $out || fail "check $what"
            qemu-img convert $args $s.qcow2 q.img
            a=$(stat -c %s $out); b=$(stat -c %s q.img)
            [ "$a" -le "$b" ] || fail "$what: $a bytes, qemu-img $b";;
        esac
    done
done
# the converted chain is a standalone image QEMU can keep writing
$R convert -O qcow2 top.qcow2 flat.qcow2
info=$(qemu-img info --output=json flat.qcow2)
case $info in *backing-filename*) fail "flattened image has a backing file: $info";; esac
qemu-io -c 'write -P 0xab 0 64k' -c 'write -P 0xcd 47M 1M' flat.qcow2 >/dev/null
qemu-img check -q flat.qcow2 || fail "check after qemu-io"
qemu-io -c 'read -P 0xab 0 64k' -c 'read -P 0xcd 47M 1M' flat.qcow2 >/dev/null ||
    fail "qemu-io reads back its writes to the flattened image"

# rblock create -b overlay, then QEMU and rblock read the same
$R create -q -f qcow2 -b top.qcow2 ov.qcow2
info=$(qemu-img info --output=json ov.qcow2)
case $info in *'"backing-filename-format": "qcow2"'*) ;; *) fail "overlay backing format: $info";; esac
qemu-img compare -q top.qcow2 ov.qcow2 || fail "overlay reads as its backing"
$R convert ov.qcow2 ov.raw || fail "convert overlay"
qemu-img compare -q top.qcow2 ov.raw || fail "converted overlay differs"
echo "convert_qcow2: ok"
