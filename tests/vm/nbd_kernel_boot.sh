#!/bin/bash
# SPDX-License-Identifier: MIT
# A Linux guest mounts a disk served by `rblock serve` through its own
# kernel's nbd driver and Debian's nbd-client, as
# `nbd-client HOST 10809 /dev/nbd0` does on a real machine.  QEMU's user
# networking (restrict=on: the guest reaches nothing else) forwards the
# guest's 10.0.2.100:10809 to the server on a loopback port.  The guest
# reads the files only the overlay has, writes files, unmounts, runs
# nbd-client -d and powers off; then the server is stopped (SIGTERM), the
# overlay passes qemu-img check and holds the writes, base.raw is unchanged.
#
# VM_REFERENCE=qemu serves with qemu-nbd instead (a self-check of the
# harness, never what `make check` runs).
set -uo pipefail
VM_TEST_NAME=nbd_kernel_boot
. "$(dirname "$0")/lib/lib.sh"

[ "${VM_REFERENCE:-}" != qemu ] || vm_log "VM_REFERENCE=qemu: served by qemu-nbd, rblock is not tested"
[ -x /usr/sbin/nbd-client ] || vm_fail "no /usr/sbin/nbd-client (scripts/install-deps installs nbd-client)"
command -v socat >/dev/null 2>&1 || vm_fail "socat not installed (scripts/install-deps installs it; QEMU runs it per guest connection)"
vm_setup
vm_resolve_modules $VM_MODULES_NBD >/dev/null ||
    vm_skip "the guest kernel $VM_KVER lacks a module of: $VM_MODULES_NBD"
vm_tmpdir
cd "$VM_TMP" || vm_fail "cd $VM_TMP"

vm_make_disks "$VM_TMP"
base_sha=$(vm_sha base.raw)
base_bin_sha=$(vm_sha tree/data/base.bin)
vm_make_overlay overlay.qcow2

for try in 1 2 3; do
    port=$(vm_free_port)
    vm_serve_start overlay.qcow2 "tcp:127.0.0.1:$port"
    case $? in
        0) break ;;
        2) [ "$try" = 3 ] && vm_fail "no free port after 3 tries" ;;
        *) vm_fail "cannot start the server" ;;
    esac
done

token=$(vm_token)
VM_APPEND="$(vm_append_for nbd "$token") rb.nbd=10.0.2.100:10809" \
    vm_run console.log \
    -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat STDIO TCP:127.0.0.1:$port" \
    -device virtio-net-pci,netdev=n0,romfile=
qemu_rc=$?
vm_serve_stop   # first: a server that died is a skip or a failure of its own
[ "$qemu_rc" = 0 ] || { tail -n 40 console.log >&2; vm_fail "qemu failed or the guest hung (status $qemu_rc)"; }
vm_expect console.log '^RB-NBD: connected, 131072 sectors$'
vm_check_console console.log "$token" "$base_bin_sha"
vm_expect console.log '^RB-NBD: disconnected$'

vm_qemu_img_check overlay.qcow2
qemu-img convert -O raw overlay.qcow2 after.raw || vm_fail "qemu-img convert -O raw failed"
vm_check_written after.raw "$token"
[ "$(vm_sha base.raw)" = "$base_sha" ] || vm_fail "base.raw changed"

echo "PASS: nbd_kernel_boot (guest ran ${VM_BOOT_SECONDS}s)"
exit 0
