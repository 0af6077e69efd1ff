# SPDX-License-Identifier: MIT
"""rblock serve on a qcow2 chain made by qemu-img: several clients writing
at once through libnbd, then qemu-img check and qemu-img convert prove the
overlay holds exactly what was written and the backing file is untouched."""
import errno
import hashlib
import random
import subprocess

import nbd
import pytest

from nbd_helpers import RBLOCK, Server

MiB = 1 << 20
SIZE = 32 * MiB


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def raw_of(path, tmp_path):
    out = tmp_path / "conv.raw"
    run("qemu-img", "convert", "-O", "raw", str(path), str(out))
    return out.read_bytes()


@pytest.fixture
def chain(tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), str(SIZE))
    run("qemu-io", "-c", "write -P 0x11 0 5M", "-c", "write -P 0x22 12M 3M",
        "-c", "write -z 20M 1M", str(base))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    run("qemu-io", "-c", "write -P 0x33 4M 2M", str(top))
    return base, top


def connect(uri):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:allocation-depth")
    h.connect_uri(uri)
    return h


def test_concurrent_writers(chain, tmp_path):
    base, top = chain
    base_sum = sha(base)
    expect = bytearray(raw_of(top, tmp_path))
    srv = Server(str(top), tmpdir=tmp_path)
    try:
        handles = [connect(srv.uri) for _ in range(4)]
        rnd = random.Random(7)
        stripe = 64 * 1024
        pending = []
        # every request owns a stripe of its own: requests in flight may
        # run in any order, so none may overlap another
        stripes = list(range(SIZE // stripe))
        rnd.shuffle(stripes)
        for i, idx in enumerate(stripes[:400]):
            h = handles[i % 4]
            lo = idx * stripe + rnd.randrange(stripe - 1)
            n = rnd.randrange(1, idx * stripe + stripe - lo + 1)
            if i % 10 == 9:
                h.aio_zero(n, lo, flags=nbd.CMD_FLAG_NO_HOLE if i % 20 == 9 else 0)
                expect[lo:lo + n] = bytes(n)
            else:
                data = rnd.randbytes(n)
                buf = nbd.Buffer.from_bytearray(bytearray(data))
                pending.append(buf)
                h.aio_pwrite(buf, lo, flags=nbd.CMD_FLAG_FUA if i % 7 == 0 else 0)
                expect[lo:lo + n] = data
        for h in handles:
            while h.aio_in_flight() > 0:
                h.poll(-1)
        handles[0].flush()
        # every client sees every write (one image, CAN_MULTI_CONN)
        for h in handles:
            assert h.pread(SIZE, 0) == expect
        depth = {}

        def cb(ctx, off, entries, err):
            depth[ctx] = list(entries)
            return 0
        handles[1].block_status(MiB, 4 * MiB, cb)
        assert depth["qemu:allocation-depth"][1] == 1  # written here: top layer
        for h in handles:
            h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    subprocess.run(["qemu-img", "check", "-q", str(top)], check=True)
    assert raw_of(top, tmp_path) == expect
    assert sha(base) == base_sum


def test_trim_zero_and_fast_zero(chain, tmp_path):
    base, top = chain
    base_sum = sha(base)
    srv = Server(str(top), tmpdir=tmp_path)
    try:
        h = connect(srv.uri)
        h.pwrite(b"\x44" * MiB, 8 * MiB)
        h.zero(MiB, 8 * MiB)
        assert h.pread(MiB, 8 * MiB) == bytes(MiB)
        h.zero(2 * MiB, 12 * MiB)  # over backing data: must read zeros now
        assert h.pread(2 * MiB, 12 * MiB) == bytes(2 * MiB)
        try:
            h.zero(MiB, 16 * MiB, nbd.CMD_FLAG_FAST_ZERO)
            assert h.pread(MiB, 16 * MiB) == bytes(MiB)
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP  # allowed: zeroing was not cheap
        h.trim(MiB, 4 * MiB)  # a hint: the data may now read as the backing's
        h.flush()
        h.set_strict_mode(0)
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"x" * 4096, SIZE - 2048)
        assert e.value.errnum == errno.ENOSPC
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    subprocess.run(["qemu-img", "check", "-q", str(top)], check=True)
    assert sha(base) == base_sum


@pytest.mark.parametrize("opts", ["cluster_size=65536", "cluster_size=4096",
                                  "extended_l2=on,cluster_size=65536"])
def test_rewrite_of_an_owned_cluster_keeps_it_owned(tmp_path, opts):
    """Clusters the image owns, rewritten through every path that reuses
    them (a zeroed-but-allocated cluster written again, a partial write to
    a cluster with unallocated subclusters, a write over a written one),
    keep refcount 1 with the COPIED flag set: qemu-img check finds no
    "OFLAG_COPIED" error and QEMU reads back what was written."""
    img = tmp_path / "own.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, str(img), str(4 * MiB))
    srv = Server(str(img), tmpdir=tmp_path)
    expect = bytearray(4 * MiB)
    try:
        h = connect(srv.uri)

        def write(off, data):
            h.pwrite(data, off)
            expect[off:off + len(data)] = data

        for c in range(8):
            off = c * 65536
            write(off, bytes([0x10 + c]) * 65536)      # allocate
        h.flush()
        for c in range(8):
            off = c * 65536
            h.zero(65536, off, nbd.CMD_FLAG_NO_HOLE)    # zero, keep the cluster
            expect[off:off + 65536] = bytes(65536)
            write(off + 512 * c, bytes([0x20 + c]) * 1024)  # rewrite part of it
            write(off + 4096, bytes([0x30 + c]) * 8192)     # and again, in place
        write(MiB + 2048, b"\x40" * 1024)               # a partly allocated cluster
        write(MiB + 40960, b"\x41" * 1024)              # the same one, elsewhere
        h.flush()
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    chk = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert raw_of(img, tmp_path) == bytes(expect)
