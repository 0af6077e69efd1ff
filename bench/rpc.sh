#!/bin/bash
# SPDX-License-Identifier: MIT
# JSON-RPC requests per second for 512-byte reads: one client, then 32
# clients at once, on a qcow2 image full of data and on a raw one, over
# a unix socket and over TCP loopback.  Prints figures; asserts nothing.
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

echo "rblock $("$RBLOCK" --version | cut -d' ' -f2), $(nproc) CPUs, ${SECS}s per figure"
for img in disk.qcow2 disk.raw; do
    for addr in "unix:$T/rpc.sock" "tcp:127.0.0.1:0"; do
        echo "== $img over ${addr%%:*}"
        "$RBLOCK" serve --read-only --rpc "$addr" --run \
            "\"$T/rpc_load\" \"\$rpc\" 1 $SECS 512 268435456 &&
             \"$T/rpc_load\" \"\$rpc\" 32 $SECS 512 268435456" "$T/$img"
    done
done
