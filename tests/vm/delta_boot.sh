#!/bin/bash
# SPDX-License-Identifier: MIT
# A Linux guest boots from a delta made by `rblock delta` (issue 4, item 3).
#
# base.raw: ext4 by mke2fs -d; new.raw: a copy with files added by debugfs.
# `rblock delta base.raw new.raw delta.qcow2`, then the guest boots with
# delta.qcow2 as its virtio disk, reads the files only new.raw has, writes
# files, and powers off.  Afterwards: qemu-img check is clean, the guest's
# writes are in the image, base.raw is unchanged.
#
# VM_REFERENCE=qemu makes the delta with qemu-img instead (a self-check of
# the harness, never what `make check` runs).
set -u
VM_TEST_NAME=delta_boot
. "$(dirname "$0")/lib/lib.sh"

if [ "${VM_REFERENCE:-}" = qemu ]; then
    vm_log "VM_REFERENCE=qemu: the delta is made by qemu-img, rblock is not tested"
else
    vm_rblock_has delta || vm_skip "'rblock delta' is not implemented yet"
fi
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
qemu-img info delta.qcow2 | grep -q '^backing file: base.raw' ||
    vm_fail "delta.qcow2 does not name base.raw as its backing file: $(qemu-img info delta.qcow2 | grep backing)"
qemu-img compare -q delta.qcow2 new.raw || vm_fail "qemu-img compare delta.qcow2 new.raw: not identical"
delta_bytes=$(stat -c %s delta.qcow2)
vm_log "delta.qcow2 is $delta_bytes bytes ($(du -k delta.qcow2 | cut -f1) KiB allocated)"

token=$(vm_token)
VM_APPEND=$(vm_append_for blk "$token") \
    vm_run console.log -drive file=delta.qcow2,format=qcow2,if=virtio,cache=writeback ||
    { tail -n 40 console.log >&2; vm_fail "qemu failed or the guest hung"; }
vm_check_console console.log "$token" "$base_bin_sha"

# After the guest: the image is sound and holds what the guest wrote.
vm_qemu_img_check delta.qcow2
if [ -n "${RBLOCK:-}" ] && vm_rblock_has check; then
    "$RBLOCK" check delta.qcow2 >check.log 2>&1 || { cat check.log >&2; vm_fail "rblock check delta.qcow2 failed"; }
fi
qemu-img convert -O raw delta.qcow2 after.raw || vm_fail "qemu-img convert -O raw failed"
vm_check_written after.raw "$token"
[ "$(vm_sha base.raw)" = "$base_sha" ] || vm_fail "base.raw changed"
qemu-img info delta.qcow2 | grep -q '^backing file: base.raw' || vm_fail "the backing file name changed"

echo "PASS: delta_boot (guest ran ${VM_BOOT_SECONDS}s)"
exit 0
