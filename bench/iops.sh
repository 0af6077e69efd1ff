#!/bin/bash
# SPDX-License-Identifier: MIT
# bench/iops.sh - small random I/O through rblock serve, side by side with
# qemu-nbd (and nbdkit's file plugin for raw): fio's nbd engine, 4 KiB
# requests, queue depth 1 and 16.  Each server serves its own copy of the
# same image; the servers of one row run one after the other, REPEAT rounds
# alternating, and the table shows median IOPS and ratios (> 1: rblock is
# faster).  A benchmark, not a test: it never asserts.
#
#   RBLOCK=build/rblock bench/iops.sh
#   env: BENCH_DIR, RUNTIME (s, default 3), REPEAT (default 3), QDS ("1 16"),
#        FORMATS ("qcow2 raw"), WORKLOADS ("randread randwrite-empty
#        randwrite-alloc mixed"), SERVERS ("rblock qemu-nbd nbdkit"),
#        SIZE_MB (allocated images, default 512), EMPTY_GB (empty images,
#        default 16), EMPTY_IOS (writes into an empty image, default 16384),
#        RBLOCK_BASE (another rblock binary: SERVERS may name it "base", for
#        before/after figures)
set -uo pipefail
RBLOCK=${RBLOCK:-$(dirname "$0")/../build/rblock}
RBLOCK=$(realpath "$RBLOCK")
RUNTIME=${RUNTIME:-3}
REPEAT=${REPEAT:-3}
QDS=${QDS:-"1 16"}
FORMATS=${FORMATS:-"qcow2 raw"}
WORKLOADS=${WORKLOADS:-"randread randwrite-empty randwrite-alloc mixed"}
SERVERS=${SERVERS:-"rblock qemu-nbd nbdkit"}
SIZE_MB=${SIZE_MB:-512}
EMPTY_GB=${EMPTY_GB:-16}
EMPTY_IOS=${EMPTY_IOS:-16384}
PY=/usr/bin/python3

if ! command -v fio >/dev/null || ! fio --enghelp=nbd >/dev/null 2>&1; then
    echo "bench/iops.sh: fio with the nbd engine is needed (apt-get install fio)" >&2
    exit 0
fi
D=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$D"
[ -n "${BENCH_DIR:-}" ] || trap 'rm -rf "$D"' EXIT
cd "$D" || exit 1
SOCK=$D/iops.sock

# --- images: allocated (every cluster written) and empty ----------------
if [ ! -s full.raw ]; then
    # incompressible data, all of it allocated
    head -c $((SIZE_MB << 20)) /dev/urandom > full.raw
fi
[ -s full.qcow2 ] || qemu-img convert -f raw -O qcow2 full.raw full.qcow2

# fresh copy of the image workload $1 in format $2 for server $3 -> path
image_for() {
    local wl=$1 fmt=$2 srv=$3 out=$D/$3.$2
    rm -f "$out"
    case $wl in
    randwrite-empty)
        if [ "$fmt" = qcow2 ]; then
            qemu-img create -q -f qcow2 "$out" "${EMPTY_GB}G"
        else
            truncate -s "${EMPTY_GB}G" "$out"
        fi ;;
    *)
        # server-specific copies, so no server reads another's page cache
        cp --reflink=auto full.$fmt "$out" ;;
    esac
    # warm the page cache with the data; an empty image has none, and
    # reading a sparse raw file's holes would fill the cache with pages of
    # zeros (16 GiB of them per server), which the writes then fight
    [ "$wl" = randwrite-empty ] || cat "$out" > /dev/null 2>&1
    echo "$out"
}

start_server() { # server fmt image
    rm -f "$SOCK"
    case $1 in
    rblock) "$RBLOCK" serve -f "$2" --nbd "unix:$SOCK" "$3" 2>/dev/null & ;;
    base) "$RBLOCK_BASE" serve -f "$2" --nbd "unix:$SOCK" "$3" 2>/dev/null & ;;
    qemu-nbd) qemu-nbd -t -f "$2" -k "$SOCK" "$3" 2>/dev/null & ;;
    nbdkit) nbdkit -f -U "$SOCK" file "file=$3" 2>/dev/null & ;;
    esac
    SPID=$!
    for _ in $(seq 1 500); do [ -S "$SOCK" ] && return 0; sleep 0.01; done
    return 1
}
# CPU time the server used so far, in clock ticks (utime + stime)
server_ticks() { awk '{ print $14 + $15 }' "/proc/$SPID/stat" 2>/dev/null || echo 0; }
stop_server() {
    kill "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
}

# IOPS of one fio run: workload, queue depth, image size in bytes
run_fio() {
    local wl=$1 qd=$2 size=$3 args=()
    case $wl in
    randread) args=(--rw=randread --time_based --runtime="$RUNTIME") ;;
    randwrite-alloc) args=(--rw=randwrite --time_based --runtime="$RUNTIME") ;;
    mixed) args=(--rw=randrw --rwmixread=70 --time_based --runtime="$RUNTIME") ;;
    randwrite-empty) args=(--rw=randwrite --io_size=$((EMPTY_IOS * 4096))) ;;
    esac
    fio --name=iops --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --bs=4k \
        --iodepth="$qd" --size="$size" --norandommap --randrepeat=1 \
        --output-format=json "${args[@]}" 2>/dev/null |
        $PY -c 'import json,sys
try:
    t = sys.stdin.read()
    j = json.loads(t[t.index("{"):])["jobs"][0]
    print(round(j["read"]["iops"] + j["write"]["iops"]),
          j["read"]["total_ios"] + j["write"]["total_ios"])
except Exception:
    print("n/a 0")'
}

median() { tr ' ' '\n' | grep -v '^$' | grep -v n/a | sort -n |
           awk '{a[NR]=$1} END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2];
                                 else printf "%d\n", (a[NR/2] + a[NR/2+1]) / 2 }'; }
ratio() { case "$1$2" in *n/a*|*-*) echo "-"; return ;; esac
          awk -v r="$1" -v o="$2" 'BEGIN { printf "%.2fx", r / o }'; }

echo "bench/iops.sh: fio $(fio --version) nbd engine, 4 KiB requests, $(nproc) CPUs," \
     "load $(cut -d' ' -f1-3 /proc/loadavg), median of $REPEAT runs of ${RUNTIME} s" \
     "(empty: $EMPTY_IOS writes into ${EMPTY_GB} GiB)"
printf '%-16s %-6s %3s %9s %9s %7s %9s %7s\n' workload format QD rblock qemu-nbd ratio \
       nbdkit ratio
for wl in $WORKLOADS; do
    for fmt in $FORMATS; do
        for qd in $QDS; do
            declare -A res=() cpu=()
            for _ in $(seq "$REPEAT"); do
                for srv in $SERVERS; do
                    [ "$srv" = nbdkit ] && [ "$fmt" != raw ] && continue
                    img=$(image_for "$wl" "$fmt" "$srv")
                    if [ "$wl" = randwrite-empty ]; then
                        size=$((EMPTY_GB << 30))
                    else
                        size=$((SIZE_MB << 20))
                    fi
                    if start_server "$srv" "$fmt" "$img"; then
                        t0=$(server_ticks)
                        read -r iops ios < <(run_fio "$wl" "$qd" "$size")
                        t1=$(server_ticks)
                        res[$srv]="${res[$srv]:-} $iops"
                        # server CPU microseconds per request
                        [ "${ios:-0}" -gt 0 ] && cpu[$srv]="${cpu[$srv]:-} $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / ios ))"
                    else
                        res[$srv]="${res[$srv]:-} n/a"
                    fi
                    stop_server
                    rm -f "$img"
                done
            done
            r=$(echo "${res[rblock]:-}" | median)
            q=$(echo "${res[qemu-nbd]:-}" | median)
            k=-
            [ "$fmt" = raw ] && k=$(echo "${res[nbdkit]:-}" | median)
            printf '%-16s %-6s %3s %9s %9s %7s %9s %7s\n' "$wl" "$fmt" "$qd" "$r" "$q" \
                   "$(ratio "$r" "$q")" "$k" "$(ratio "$r" "$k")"
            [ -n "${res[base]:-}" ] && echo "    base (before): $(echo "${res[base]}" | median)" \
                "= $(ratio "$(echo "${res[base]}" | median)" "$q") of qemu-nbd"
            [ -n "${IOPS_VERBOSE:-}" ] && echo "    runs: rblock${res[rblock]:-} qemu-nbd${res[qemu-nbd]:-} nbdkit${res[nbdkit]:-} base${res[base]:-}"
            echo "    server CPU us/request: rblock $(echo "${cpu[rblock]:-}" | median)" \
                 "qemu-nbd $(echo "${cpu[qemu-nbd]:-}" | median)" \
                 "${cpu[nbdkit]:+nbdkit $(echo "${cpu[nbdkit]}" | median)}" \
                 "${cpu[base]:+base $(echo "${cpu[base]}" | median)}"
            unset res cpu
        done
    done
done
