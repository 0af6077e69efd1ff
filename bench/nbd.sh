#!/bin/bash
# SPDX-License-Identifier: MIT
# bench/nbd.sh - rblock serve side by side with qemu-nbd: the same image,
# the same client (nbdcopy), the same machine.  Prints seconds (best of
# $REPEAT runs) and the ratio qemu-nbd / rblock (> 1: rblock is faster).
# A benchmark, not a test: it never asserts.
#
#   RBLOCK=build/rblock bench/nbd.sh            (BENCH_DIR, SIZE_MB, REPEAT)
set -uo pipefail
RBLOCK=${RBLOCK:-$(dirname "$0")/../build/rblock}
RBLOCK=$(realpath "$RBLOCK")
SIZE_MB=${SIZE_MB:-1024}
REPEAT=${REPEAT:-3}
CLIENTS=${CLIENTS:-8}
D=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$D"
[ -n "${BENCH_DIR:-}" ] || trap 'rm -rf "$D"' EXIT
cd "$D" || exit 1

now() { date +%s.%N; }
# best-of-REPEAT wall time of "$@", or "n/a" when it fails
best() {
    local b="" s e t
    for _ in $(seq "$REPEAT"); do
        s=$(now)
        "$@" >/dev/null 2>&1 || { echo n/a; return; }
        e=$(now)
        t=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }')
        if [ -z "$b" ] || awk -v t="$t" -v b="$b" 'BEGIN { exit !(t < b) }'; then b=$t; fi
    done
    echo "$b"
}
row() { # name rblock qemu
    local ratio=n/a
    if [ "$2" != n/a ] && [ "$3" != n/a ]; then
        ratio=$(awk -v r="$2" -v q="$3" 'BEGIN { printf "%.2fx", q / r }')
    fi
    printf '%-34s %10s %10s %8s\n' "$1" "$2" "$3" "$ratio"
}

# --- data: a tar of /usr/lib (real, mixed data), SIZE_MB long ------------
if [ ! -s data.raw ]; then
    echo "making ${SIZE_MB} MiB of data from a tar of /usr/lib..." >&2
    for _ in $(seq 16); do tar cf - /usr/lib 2>/dev/null; done | head -c $((SIZE_MB << 20)) > data.raw
fi
# sparse: the data with a hole as large again after it, and holes inside
if [ ! -s sparse.raw ]; then
    cp --sparse=always data.raw sparse.raw
    truncate -s $((2 * SIZE_MB << 20)) sparse.raw
    for i in $(seq 0 8 $((SIZE_MB / 16 - 1))); do
        fallocate -p -o $((i * 16 << 20)) -l $((64 << 20)) sparse.raw 2>/dev/null || break
    done
fi
for f in data sparse; do
    [ -s $f.qcow2 ] || qemu-img convert -f raw -O qcow2 $f.raw $f.qcow2
done
cat data.raw sparse.raw data.qcow2 sparse.qcow2 > /dev/null  # warm the page cache

# --- servers -------------------------------------------------------------
rb() { echo "$RBLOCK" serve -f "$1" "${@:2}"; }
qn() { echo qemu-nbd -f "$1" "${@:2}"; }
# one client, server by socket activation
read_full() { nbdcopy --no-extents -- [ $($1 "$2" -r "$3") ] null:; }
read_sparse() { nbdcopy -- [ $($1 "$2" -r "$3") ] null:; }
write_qcow2() {
    rm -f out.qcow2
    qemu-img create -q -f qcow2 out.qcow2 "$(stat -c %s data.raw)"
    nbdcopy data.raw -- [ $($1 qcow2 out.qcow2) ] && sync -f out.qcow2
}
write_raw() {
    rm -f out.raw; truncate -s "$(stat -c %s data.raw)" out.raw
    nbdcopy data.raw -- [ $($1 raw out.raw) ] && sync -f out.raw
}
# CLIENTS clients at once on one server (unix socket, polled until up)
many() {
    local sock="$D/many.sock" pid rc=0
    rm -f "$sock"
    if [ "$1" = rb ]; then
        "$RBLOCK" serve -r -f "$2" --nbd "unix:$sock" "$3" 2>/dev/null & pid=$!
    else
        qemu-nbd -r -t -e $((CLIENTS * 2)) -f "$2" -k "$sock" "$3" 2>/dev/null & pid=$!
    fi
    for _ in $(seq 1 400); do [ -S "$sock" ] && break; sleep 0.01; done
    local pids=()
    for _ in $(seq "$CLIENTS"); do
        nbdcopy --no-extents -C 1 "nbd+unix:///?socket=$sock" null: & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    kill "$pid"; wait "$pid" 2>/dev/null
    return $rc
}

echo "rblock serve vs qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'), " \
     "$(nproc) CPUs, ${SIZE_MB} MiB of data, best of $REPEAT"
printf '%-34s %10s %10s %8s\n' "test" "rblock s" "qemu-nbd s" "ratio"
for fmt in raw qcow2; do
    row "full read $fmt (--no-extents)" "$(best read_full rb $fmt data.$fmt)" \
        "$(best read_full qn $fmt data.$fmt)"
    row "sparse-aware read $fmt" "$(best read_sparse rb $fmt sparse.$fmt)" \
        "$(best read_sparse qn $fmt sparse.$fmt)"
    row "$CLIENTS clients full read $fmt" "$(best many rb $fmt data.$fmt)" \
        "$(best many qn $fmt data.$fmt)"
done
row "write into raw (nbdcopy in)" "$(best write_raw rb)" "$(best write_raw qn)"
row "write into empty qcow2" "$(best write_qcow2 rb)" "$(best write_qcow2 qn)"
