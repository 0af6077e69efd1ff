#!/bin/bash
# SPDX-License-Identifier: MIT
# A Linux guest boots with its disk served by `rblock serve` and QEMU as the
# NBD client.  The server exports a qcow2 overlay
# over a unix socket; QEMU's nbd block driver is the guest's virtio disk.
# The guest reads the files only the overlay has, writes files, powers off;
# then the server is stopped (SIGTERM: flush and close), the overlay passes
# qemu-img check and holds the guest's writes, base.raw is unchanged.
#
# VM_REFERENCE=qemu serves with qemu-nbd instead (a self-check of the
# harness, never what `make check` runs).
set -uo pipefail
VM_TEST_NAME=nbd_boot
. "$(dirname "$0")/lib/lib.sh"

[ "${VM_REFERENCE:-}" != qemu ] || vm_log "VM_REFERENCE=qemu: served by qemu-nbd, rblock is not tested"
vm_setup
vm_tmpdir
cd "$VM_TMP" || vm_fail "cd $VM_TMP"

vm_make_disks "$VM_TMP"
base_sha=$(vm_sha base.raw)
base_bin_sha=$(vm_sha tree/data/base.bin)
vm_make_overlay overlay.qcow2

sock=$VM_TMP/nbd.sock
vm_serve_start overlay.qcow2 "unix:$sock" || vm_fail "cannot start the server"

token=$(vm_token)
VM_APPEND=$(vm_append_for blk "$token") \
    vm_run console.log \
    -blockdev "driver=nbd,node-name=disk0,server.type=unix,server.path=$sock,cache.direct=off" \
    -device virtio-blk-pci,drive=disk0
qemu_rc=$?
vm_serve_stop   # first: a server that died is a skip or a failure of its own
[ "$qemu_rc" = 0 ] || { tail -n 40 console.log >&2; vm_fail "qemu failed or the guest hung (status $qemu_rc)"; }
vm_check_console console.log "$token" "$base_bin_sha"

vm_qemu_img_check overlay.qcow2
qemu-img convert -O raw overlay.qcow2 after.raw || vm_fail "qemu-img convert -O raw failed"
vm_check_written after.raw "$token"
[ "$(vm_sha base.raw)" = "$base_sha" ] || vm_fail "base.raw changed"

echo "PASS: nbd_boot (guest ran ${VM_BOOT_SECONDS}s)"
exit 0
