#!/bin/bash
# SPDX-License-Identifier: MIT
# JSON-RPC requests per second for 512-byte reads: one client, then 32
# clients at once, on a qcow2 image full of data and on a raw one, over
# a unix socket and over TCP loopback.  Also the server's CPU time per
# request (user+system, from /proc), which a busy machine skews less than
# wall time.  Prints figures; asserts nothing.
#
#   bench/rpc.sh [SECONDS]        (RBLOCK=path/to/rblock, default build/rblock)
set -eu
cd "$(dirname "$0")/.."
RBLOCK=${RBLOCK:-build/rblock}
SECS=${1:-5}
[ -x "$RBLOCK" ] || { echo "bench/rpc.sh: build first (make)" >&2; exit 1; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cc -O2 -Wall -pthread -o "$T/rpc_load" bench/rpc_load.c

# 256 MiB of data: reads hit allocated clusters, not holes.
qemu-img create -q -f qcow2 "$T/disk.qcow2" 256M
qemu-io -c "write -P 0x5a 0 256M" "$T/disk.qcow2" >/dev/null
qemu-img convert -O raw "$T/disk.qcow2" "$T/disk.raw"

# Run inside --run: $PPID is the server.  Prints the load generator's line
# and the server's CPU microseconds per request.
cat > "$T/measure" <<'EOS'
#!/bin/bash
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for n in 1 32; do
    c0=$(cpu "$SERVER")
    line=$("$LOAD" "$rpc" "$n" "$SECS" 512 268435456) || { echo "$line"; exit 1; }
    c1=$(cpu "$SERVER")
    reqs=$(echo "$line" | awk '{print $3}')
    tck=$(getconf CLK_TCK)
    echo "$line; server CPU $(awk -v t=$((c1 - c0)) -v r="$reqs" -v k="$tck" \
        'BEGIN { printf "%.1f", r ? t * 1e6 / k / r : 0 }') us/request"
done
EOS
chmod +x "$T/measure"

echo "rblock $("$RBLOCK" --version | cut -d' ' -f2), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg), ${SECS}s per figure"
for img in disk.qcow2 disk.raw; do
    for addr in "unix:$T/rpc.sock" "tcp:127.0.0.1:0"; do
        echo "== $img over ${addr%%:*}"
        LOAD="$T/rpc_load" SECS=$SECS "$RBLOCK" serve --read-only --nbd "unix:$T/nbd.sock" \
            --rpc "$addr" --run "SERVER=\$PPID exec \"$T/measure\"" "$T/$img" 2>&1 \
            | sed 's/^/  /' || true
    done
done
