#!/bin/bash
# rblock convert from raw sources (plain, sparse, all-zero, 1 TiB mostly
# empty, odd size) to raw and to qcow2 with every option: the output
# checks clean, compares identical, is no larger than qemu-img convert's,
# holes stay holes, QEMU can write it; failures remove the partial output.
set -euo pipefail
R=${RBLOCK:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }

# sources
truncate -s 64M sparse.raw
for off in 0 3 17 200 511 1000; do      # scattered 64 KiB of real bytes
    head -c 65536 "$R" | dd of=sparse.raw bs=64k seek=$off conv=notrunc status=none
done
dd if=/dev/zero of=sparse.raw bs=64k seek=300 count=20 conv=notrunc status=none  # written zeros
head -c 3000 /dev/urandom | dd of=sparse.raw bs=1 seek=40000000 conv=notrunc status=none
truncate -s 16M zero.raw
dd if=/dev/zero of=zero.raw bs=1M count=8 conv=notrunc status=none
head -c 5000000 "$R" > odd.raw; head -c 1234567 /dev/urandom >> odd.raw   # not sector-aligned
truncate -s 1T huge.raw
printf 'hello' | dd of=huge.raw bs=1 seek=$((512 << 30)) conv=notrunc status=none
head -c 1M /dev/urandom | dd of=huge.raw bs=1M seek=$(((1 << 20) - 1)) conv=notrunc status=none

# raw -> raw keeps size and holes
for s in sparse zero odd huge; do
    $R convert $s.raw out.raw || fail "convert $s -O raw"
    [ "$(stat -c %s out.raw)" = "$(stat -c %s $s.raw)" ] || fail "$s: size"
    qemu-img compare -q -f raw -F raw $s.raw out.raw || fail "$s: contents"
    [ "$(du -k out.raw | cut -f1)" -le "$(( $(du -k $s.raw | cut -f1) + 64 ))" ] || fail "$s: not sparse"
done
[ "$(du -k out.raw | cut -f1)" -lt 4096 ] || fail "1 TiB output is not sparse"

# raw -> qcow2, every option, compressed or not
opts=("" compat=0.10 cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1
      refcount_bits=2 refcount_bits=4 refcount_bits=8 refcount_bits=32 refcount_bits=64
      lazy_refcounts=on extended_l2=on compression_type=zstd
      cluster_size=2M,refcount_bits=64,extended_l2=on,compression_type=zstd
      cluster_size=512,refcount_bits=1)
# every option on the sparse source; a representative few on the others
few=("" compat=0.10 cluster_size=512 extended_l2=on compression_type=zstd refcount_bits=1)
for s in sparse zero odd; do
    if [ $s = sparse ]; then set -- "${opts[@]}"; else set -- "${few[@]}"; fi
    for o in "$@"; do
        for c in "" -c; do
            what="$s ${o:-default} $c"
            $R convert -O qcow2 $c ${o:+-o $o} $s.raw out.qcow2 || fail "convert $what"
            qemu-img check -q out.qcow2 || fail "check $what"
            qemu-img compare -q -f raw -F qcow2 $s.raw out.qcow2 || fail "compare $what"
            qemu-img convert -O qcow2 $c ${o:+-o $o} $s.raw q.qcow2
            a=$(stat -c %s out.qcow2); b=$(stat -c %s q.qcow2)
            # tiny clusters: the refcount table is sized up front from the
            # data extents (written zeros included), qemu grows it lazily
            case "$o" in *cluster_size=512*) b=$((b + 1024));; esac
            [ "$a" -le "$b" ] || fail "$what: $a bytes, qemu-img $b"
        done
    done
done
# 1 TiB: fast path, tiny output, QEMU reads and writes it
$R convert -O qcow2 huge.raw huge.qcow2 || fail "convert 1 TiB"
qemu-img check -q huge.qcow2 || fail "check 1 TiB"
qemu-img compare -q -f raw -F qcow2 huge.raw huge.qcow2 || fail "compare 1 TiB"
[ "$(stat -c %s huge.qcow2)" -lt $((4 << 20)) ] || fail "1 TiB output too large"
qemu-io -c 'write -P 0xab 0 64k' -c 'write -P 0xcd 100G 1M' huge.qcow2 >/dev/null
qemu-img check -q huge.qcow2 || fail "check 1 TiB after qemu-io"
qemu-io -c 'read -P 0xab 0 64k' -c 'read -P 0xcd 100G 1M' huge.qcow2 >/dev/null ||
    fail "qemu-io reads back"
$R convert -O qcow2 -c -o compression_type=zstd sparse.raw z.qcow2
qemu-io -c 'write -P 0xab 4096 8k' z.qcow2 >/dev/null
qemu-img check -q z.qcow2 || fail "check compressed after qemu-io"

# failures: clear message, exit 1, no partial output left behind
rc=0; out=$($R convert missing.raw o.raw 2>&1) || rc=$?
[ $rc = 1 ] || fail "missing source: exit $rc: $out"
case $out in *missing.raw*) ;; *) fail "missing source message: $out";; esac
# an unwritable destination folder: mode 555 stops everyone but root; as
# root (how CI runs) a read-only tmpfs mount, else an immutable folder
mkdir ro; chmod 555 ro
ro_undo=
if touch ro/probe 2>/dev/null; then
    rm -f ro/probe
    if mount -t tmpfs -o ro,size=64k tmpfs ro 2>/dev/null; then
        ro_undo="umount $T/ro"
    elif chattr +i ro 2>/dev/null; then
        ro_undo="chattr -i $T/ro"
    else
        echo "convert_raw: SKIP unwritable destination: as root, neither a read-only" \
             "tmpfs mount nor chattr +i works here" >&2
    fi
    [ -z "$ro_undo" ] || trap '$ro_undo; rm -rf "$T"' EXIT
    touch ro/probe 2>/dev/null && fail "could not make an unwritable folder"
fi
if ! touch ro/probe 2>/dev/null; then
    rc=0; out=$($R convert sparse.raw ro/o.qcow2 -O qcow2 2>&1) || rc=$?
    [ $rc = 1 ] || fail "unwritable destination: exit $rc: $out"
    case $out in *ro/o.qcow2*) ;; *) fail "unwritable message: $out";; esac
    [ ! -e ro/o.qcow2 ] || fail "unwritable destination: a file was made"
fi
if [ -n "$ro_undo" ]; then $ro_undo; trap 'rm -rf "$T"' EXIT; fi
rc=0; (trap '' XFSZ; ulimit -f 256; $R convert -O qcow2 odd.raw big.qcow2 2>err.txt) || rc=$?
[ $rc = 1 ] || fail "file size limit: exit $rc: $(cat err.txt)"
grep -q 'partial output removed' err.txt || fail "limit message: $(cat err.txt)"
[ ! -e big.qcow2 ] || fail "partial qcow2 output left behind"
rc=0; (trap '' XFSZ; ulimit -f 256; $R convert odd.raw big.raw 2>err.txt) || rc=$?
[ $rc = 1 ] || fail "file size limit raw: exit $rc: $(cat err.txt)"
[ ! -e big.raw ] || fail "partial raw output left behind"
rc=0; $R convert -O vmdk sparse.raw o.vmdk 2>err.txt || rc=$?
[ $rc = 1 ] || fail "unknown output format: exit $rc: $(cat err.txt)"
[ ! -e o.vmdk ] || fail "unknown output format: a file was made"
# a full disk (a small tmpfs, when we may mount one)
mkdir full
if mount -t tmpfs -o size=128k tmpfs full 2>/dev/null; then
    trap 'umount "$T/full" 2>/dev/null || true; rm -rf "$T"' EXIT
    for f in raw qcow2; do
        rc=0; out=$($R convert -O $f sparse.raw full/o.$f 2>&1) || rc=$?
        [ $rc = 1 ] || fail "full disk ($f): exit $rc: $out"
        grep -q 'No space left on device' <<< "$out" || fail "full disk message: $out"
        [ ! -e full/o.$f ] || fail "partial output on a full disk ($f)"
    done
    umount full
    trap 'rm -rf "$T"' EXIT
else
    echo "convert_raw: SKIP full disk: cannot mount a tmpfs here (needs root)" >&2
fi
# a source that changes size while it is read
head -c 200M /dev/zero | tr '\0' 'x' > grow.raw
( while [ ! -e stop ]; do truncate -s +4096 grow.raw; done ) &
grower=$!
rc=0; out=$($R convert -O qcow2 grow.raw g.qcow2 2>&1) || rc=$?
touch stop; wait $grower
[ $rc = 1 ] || fail "source changing size not noticed: exit $rc: $out"
grep -q 'changed size' <<< "$out" || fail "size change message: $out"
[ ! -e g.qcow2 ] || fail "partial output left after a size change"
echo "convert_raw: ok"
exit 0
