#!/bin/bash
# rblock create: every option makes an image qemu-img checks clean, whose
# header says what was asked, and that QEMU can write and still checks clean.
# Overlays (-b) show the right backing in qemu-img info and read through.
set -euo pipefail
R=${RBLOCK:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }

check_clean() { # file
    qemu-img check -q "$1" || fail "qemu-img check $1"
}
# a command that must fail: exit 1 (not a crash: 134/139 or a sanitizer's)
must_fail() { # what command...
    local what=$1 rc=0
    shift
    "$@" 2>err.txt || rc=$?
    [ $rc = 1 ] || fail "$what: exit $rc, want 1: $(cat err.txt)"
    grep -q '^rblock: ' err.txt || fail "$what: no error message: $(cat err.txt)"
}

for o in "" compat=0.10 cluster_size=512 cluster_size=2M cluster_size=4k,refcount_bits=1 \
         refcount_bits=2 refcount_bits=4 refcount_bits=8 refcount_bits=32 refcount_bits=64 \
         lazy_refcounts=on extended_l2=on compression_type=zstd \
         preallocation=metadata preallocation=metadata,compat=0.10 \
         preallocation=metadata,extended_l2=on preallocation=metadata,cluster_size=4k,refcount_bits=2 \
         cluster_size=2M,refcount_bits=64,extended_l2=on,compression_type=zstd,lazy_refcounts=on; do
    rm -f a.qcow2
    $R create -q -f qcow2 ${o:+-o $o} a.qcow2 1G || fail "create $o"
    check_clean a.qcow2
    info=$(qemu-img info --output=json a.qcow2)
    grep -q '"virtual-size": 1073741824' <<< "$info" || fail "size ($o): $info"
    case "$o" in *compat=0.10*) grep -q '"compat": "0.10"' <<< "$info" || fail "compat $o";; esac
    case "$o" in *extended_l2=on*) grep -q '"extended-l2": true' <<< "$info" || fail "extl2 $o";; esac
    case "$o" in *zstd*) grep -q '"compression-type": "zstd"' <<< "$info" || fail "zstd $o";; esac
    case "$o" in *lazy_refcounts=on*) grep -q '"lazy-refcounts": true' <<< "$info" || fail "lazy $o";; esac
    case "$o" in *refcount_bits=*) b=${o#*refcount_bits=}; b=${b%%,*}
        grep -q "\"refcount-bits\": $b" <<< "$info" || fail "refcount bits $o";; esac
    case "$o" in *cluster_size=*) cs=${o#*cluster_size=}; cs=${cs%%,*}
        case $cs in 512) n=512;; 4k) n=4096;; 2M) n=2097152;; esac
        grep -q "\"cluster-size\": $n" <<< "$info" || fail "cluster size $o";; esac
    # QEMU writes into it, and it stays clean and reads back
    qemu-io -f qcow2 -c 'write -P 0xab 0 64k' -c 'write -P 0xcd 1000M 3M' -c 'write -z 5M 1M' \
        a.qcow2 >/dev/null || fail "qemu-io write $o"
    check_clean a.qcow2
    # qemu-io exits 1 when a read fails or a pattern does not match
    qemu-io -f qcow2 -c 'read -P 0xab 0 64k' -c 'read -P 0xcd 1000M 3M' -c 'read -P 0 64k 1M' \
        a.qcow2 >/dev/null || fail "qemu-io read $o"
done

# A new default image is byte for byte what qemu-img makes.
qemu-img create -q -f qcow2 q.qcow2 1G
$R create -q -f qcow2 r.qcow2 1G
cmp q.qcow2 r.qcow2 || fail "default image differs from qemu-img's"
qemu-img create -q -f qcow2 -o compat=0.10 -b q.qcow2 -F qcow2 q2.qcow2 1G
$R create -q -f qcow2 -o compat=0.10 -b q.qcow2 -F qcow2 r2.qcow2 1G
cmp q2.qcow2 r2.qcow2 || fail "v2 overlay differs from qemu-img's"
# size and format taken from a qcow2 backing file
qemu-img create -q -f qcow2 -b q.qcow2 -F qcow2 q3.qcow2
$R create -q -f qcow2 -b q.qcow2 r3.qcow2
cmp q3.qcow2 r3.qcow2 || fail "overlay without size or -F differs from qemu-img's"

# Overlays: size from the backing, -F probed and always written.
qemu-img create -q -f raw base.raw 64M
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 10M 64k' base.raw >/dev/null
mkdir sub
$R create -q -f qcow2 -b ../base.raw sub/ov.qcow2 || fail "create overlay of raw"
info=$(qemu-img info --output=json sub/ov.qcow2)
grep -q '"backing-filename": "../base.raw"' <<< "$info" || fail "backing name: $info"
grep -q '"backing-filename-format": "raw"' <<< "$info" || fail "backing format: $info"
grep -q '"virtual-size": 67108864' <<< "$info" || fail "size from backing: $info"
qemu-img compare -q base.raw sub/ov.qcow2 || fail "overlay does not read as its backing"
qemu-io -c 'write -P 0x33 65536 4096' sub/ov.qcow2 >/dev/null
check_clean sub/ov.qcow2
qemu-io -c 'read -P 0x11 0 65536' -c 'read -P 0x33 65536 4096' -c 'read -P 0x11 69632 4096' \
    sub/ov.qcow2 >/dev/null || fail "overlay COW by qemu"

qemu-img create -q -f qcow2 mid.qcow2 64M
$R create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 128M || fail "create overlay of qcow2"
info=$(qemu-img info --output=json top.qcow2)
grep -q '"backing-filename-format": "qcow2"' <<< "$info" || fail "backing format qcow2: $info"
grep -q '"virtual-size": 134217728' <<< "$info" || fail "explicit size: $info"
check_clean top.qcow2

# Errors are one line and exit 1.
must_fail "create without size" $R create -q -f qcow2 x.qcow2
must_fail "v2 refcount 8" $R create -q -f qcow2 -o compat=0.10,refcount_bits=8 x.qcow2 1G
must_fail "cluster 1000" $R create -q -f qcow2 -o cluster_size=1000 x.qcow2 1G
must_fail "unknown option" $R create -q -f qcow2 -o bogus=1 x.qcow2 1G
must_fail "missing backing" $R create -q -f qcow2 -b missing.raw x.qcow2
must_fail "unwritable" $R create -q -f qcow2 /nonexistent/dir/x.qcow2 1G
[ ! -e x.qcow2 ] || fail "failed create left a file"
echo "write_create: ok"
