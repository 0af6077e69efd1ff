#!/bin/bash
# SPDX-License-Identifier: MIT
# A Linux guest boots from a delta made by `rblock delta`.
#
# base.raw: ext4 by mke2fs -d; new.raw: a copy with files added by debugfs.
# `rblock delta base.raw new.raw delta.qcow2`, then the guest boots with
# delta.qcow2 as its virtio disk, reads the files only new.raw has, writes
# files, and powers off.  Afterwards: qemu-img check is clean, the guest's
# writes are in the image, base.raw is unchanged.
#
# VM_REFERENCE=qemu makes the delta with qemu-img instead (a self-check of
# the harness, never what `make check` runs).
set -uo pipefail
VM_TEST_NAME=delta_boot
. "$(dirname "$0")/lib/lib.sh"

[ "${VM_REFERENCE:-}" != qemu ] ||
    vm_log "VM_REFERENCE=qemu: the delta is made by qemu-img, rblock is not tested"
vm_setup
vm_tmpdir
cd "$VM_TMP" || vm_fail "cd $VM_TMP"

vm_make_disks "$VM_TMP"
base_sha=$(vm_sha base.raw)
base_bin_sha=$(vm_sha tree/data/base.bin)

if [ "${VM_REFERENCE:-}" = qemu ]; then
    qemu-img convert -O qcow2 -B base.raw -F raw new.raw delta.qcow2 || vm_fail "qemu-img convert -B failed"
else
    "$RBLOCK" delta base.raw new.raw delta.qcow2 || vm_fail "rblock delta base.raw new.raw delta.qcow2 failed"
fi

# The delta itself, before any guest touches it.
vm_qemu_img_check delta.qcow2
backing_ok() {
    local b
    b=$(qemu-img info --output=json delta.qcow2 | sed -n 's/^ *"full-backing-filename": "\(.*\)",\{0,1\}$/\1/p')
    [ -n "$b" ] && [ "$(realpath -m "$b")" = "$(realpath base.raw)" ]
}
backing_ok || vm_fail "delta.qcow2's backing file is not base.raw: $(qemu-img info delta.qcow2 | grep -i backing)"
# from another folder too: the backing name resolves from the delta's folder
(cd / && qemu-img compare -q "$VM_TMP/delta.qcow2" "$VM_TMP/new.raw") ||
    vm_fail "qemu-img compare delta.qcow2 new.raw: not identical"
delta_bytes=$(stat -c %s delta.qcow2)
vm_log "delta.qcow2 is $delta_bytes bytes ($(du -k delta.qcow2 | cut -f1) KiB allocated)"

token=$(vm_token)
VM_APPEND=$(vm_append_for blk "$token") \
    vm_run console.log -drive file=delta.qcow2,format=qcow2,if=virtio,cache=writeback ||
    { tail -n 40 console.log >&2; vm_fail "qemu failed or the guest hung"; }
vm_check_console console.log "$token" "$base_bin_sha"

# After the guest: the image is sound and holds what the guest wrote.
vm_qemu_img_check delta.qcow2
if [ -n "${RBLOCK:-}" ]; then
    "$RBLOCK" check delta.qcow2 >check.log 2>&1 || { cat check.log >&2; vm_fail "rblock check delta.qcow2 failed"; }
fi
qemu-img convert -O raw delta.qcow2 after.raw || vm_fail "qemu-img convert -O raw failed"
vm_check_written after.raw "$token"
[ "$(vm_sha base.raw)" = "$base_sha" ] || vm_fail "base.raw changed"
backing_ok || vm_fail "the backing file changed"

echo "PASS: delta_boot (guest ran ${VM_BOOT_SECONDS}s)"
exit 0
