# SPDX-License-Identifier: MIT
"""Disk full while serving: an NBD client writing into a qcow2 on a full
file system gets ENOSPC (not a dropped connection), the server keeps
serving, what was written before reads back, and the image stays
consistent: qemu-img check exits 0 or 3 (leaks only), never 2."""
import os
import subprocess
import sys

import nbd
import pytest

from nbd_helpers import Server

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    """A 6 MiB tmpfs, or a skip (with a word on stderr) when not root."""
    if os.geteuid() != 0:
        print("skip: mounting a tmpfs for the disk-full test needs root", file=sys.stderr)
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("cluster", ["4k", "64k"])
def test_enospc_over_nbd(small_fs, tmp_path, cluster):
    img = small_fs / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"cluster_size={cluster}", str(img), "64M"], check=True)
    srv = Server(str(img), "-f", "qcow2", tmpdir=str(tmp_path))
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        written = []
        enospc = None
        for i in range(64):  # 64 x 1 MiB into 6 MiB: the file system fills
            data = bytes([i + 1]) * MiB
            try:
                h.pwrite(data, i * MiB)
                written.append(i)
            except nbd.Error as e:
                enospc = e
                break
        assert enospc is not None, "the file system never filled"
        assert enospc.errnum == 28, f"want ENOSPC, got {enospc.errnum}: {enospc}"  # ENOSPC
        assert written, "nothing could be written before the disk filled"
        # the server keeps serving: the same connection and a new one read back
        h.flush()
        for i in written:
            assert h.pread(4096, i * MiB) == bytes([i + 1]) * 4096
        h.shutdown()
        h2 = nbd.NBD()
        h2.connect_uri(srv.uri)
        assert h2.pread(4096, written[-1] * MiB) == bytes([written[-1] + 1]) * 4096
        h2.shutdown()
    finally:
        status, err = srv.stop()
    assert status == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err
    r = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert r.returncode in (0, 3), r.stdout + r.stderr
