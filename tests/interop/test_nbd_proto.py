# SPDX-License-Identifier: MIT
"""rblock serve driven by libnbd (python3-libnbd): the protocol's edge
cases, each checked against the image file itself."""
import errno
import hashlib
import os
import random
import subprocess

import nbd
import pytest

from nbd_helpers import Server

MiB = 1 << 20
SIZE = 16 * MiB


@pytest.fixture
def image(tmp_path):
    """Raw image: random data in [0, 4M) and [8M, 9M), a hole elsewhere."""
    rnd = random.Random(5)
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.write(rnd.randbytes(4 * MiB))
        f.truncate(SIZE)
        f.seek(8 * MiB)
        f.write(rnd.randbytes(MiB))
    return str(path)


@pytest.fixture
def server(image, tmp_path):
    srv = Server(image, "--export-name", "disk", "--description", "a test disk",
                 tmpdir=tmp_path)
    yield srv
    rc, err = srv.stop()
    assert rc == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


def connect(uri, structured=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:allocation-depth")
    h.connect_uri(uri)
    return h


def file_bytes(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def test_flags_and_info(server):
    h = nbd.NBD()
    h.set_full_info(True)
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:allocation-depth")
    h.connect_uri(server.uri)
    assert h.get_size() == SIZE
    assert not h.is_read_only()
    assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
    assert h.can_fast_zero() and h.can_multi_conn() and h.can_df() and h.can_cache()
    assert h.get_export_description() == "a test disk"
    assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
    assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB
    assert h.can_meta_context("base:allocation")
    assert h.can_meta_context("qemu:allocation-depth")
    h.shutdown()


def test_named_export_and_bad_name(server):
    h = nbd.NBD()
    h.connect_uri(server.uri_for("disk"))
    assert h.get_size() == SIZE
    h.shutdown()
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(server.uri_for("nosuch"))


def test_list_and_meta_contexts(server):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(server.uri)
    names = []
    h.opt_list(lambda name, desc: names.append(name))
    assert names == ["disk"]
    ctxs = []
    h.opt_list_meta_context(lambda name: ctxs.append(name))
    assert sorted(ctxs) == ["base:allocation", "qemu:allocation-depth"]
    h.opt_abort()


@pytest.mark.parametrize("structured", [True, False])
def test_reads_match_file(server, image, structured):
    h = connect(server.uri, structured)
    assert h.get_structured_replies_negotiated() == structured
    rnd = random.Random(1)
    cases = [(0, 4 * MiB), (4 * MiB - 1000, 5000), (7 * MiB + 3, 2 * MiB + 11),
             (SIZE - 1, 1), (SIZE - 32 * MiB // 4, 32 * MiB // 4)]
    cases += [(rnd.randrange(SIZE - 70000), rnd.randrange(1, 70000)) for _ in range(50)]
    for off, n in cases:
        assert h.pread(n, off) == file_bytes(image, off, n), (off, n)
    # DF: one data chunk, zeros included
    if structured:
        chunks = []
        DATA, HOLE = nbd.READ_DATA, nbd.READ_HOLE

        def chunk(sub, off, status, err):
            chunks.append((off, len(sub), status))
            return 0
        off = 3 * MiB + MiB // 2
        assert h.pread_structured(MiB, off, chunk, nbd.CMD_FLAG_DF) == \
            file_bytes(image, off, MiB)
        assert chunks == [(off, MiB, DATA)]
        # without DF the hole at 4M comes as an OFFSET_HOLE chunk
        chunks.clear()
        assert h.pread_structured(MiB, off, chunk) == file_bytes(image, off, MiB)
        assert chunks == [(off, MiB // 2, DATA), (4 * MiB, MiB // 2, HOLE)]
        # a read wholly inside the hole is one hole chunk, no payload
        chunks.clear()
        assert h.pread_structured(MiB, 5 * MiB, chunk) == bytes(MiB)
        assert chunks == [(5 * MiB, MiB, HOLE)]
        # hole, data, hole: three chunks of the right types, in order
        chunks.clear()
        assert h.pread_structured(3 * MiB, 7 * MiB, chunk) == file_bytes(image, 7 * MiB,
                                                                          3 * MiB)
        assert chunks == [(7 * MiB, MiB, HOLE), (8 * MiB, MiB, DATA), (9 * MiB, MiB, HOLE)]
    h.shutdown()


def test_reads_past_end_and_oversize_fail(server):
    h = connect(server.uri)
    h.set_strict_mode(0)  # let the server judge
    for off, n in [(SIZE - 1, 2), (SIZE, 1), (2**63, 512), (2**64 - 512, 1024)]:
        with pytest.raises(nbd.Error) as e:
            h.pread(n, off)
        assert e.value.errnum == errno.EINVAL, (off, n)
    with pytest.raises(nbd.Error) as e:
        h.pwrite(b"x" * 512, SIZE - 256)
    assert e.value.errnum == errno.ENOSPC
    with pytest.raises(nbd.Error) as e:
        h.zero(4096, SIZE)
    assert e.value.errnum == errno.ENOSPC
    with pytest.raises(nbd.Error) as e:
        h.block_status(4096, SIZE, lambda *a: 0)
    assert e.value.errnum == errno.EINVAL
    # the connection still works
    assert len(h.pread(4096, 0)) == 4096
    h.shutdown()


def test_zero_length_requests(server):
    h = connect(server.uri)
    h.set_strict_mode(0)
    assert h.pread(0, 0) == b""
    assert h.pread(0, SIZE) == b""
    h.pwrite(b"", 4096)
    h.trim(0, 0)
    h.zero(0, 0)
    with pytest.raises(nbd.Error) as e:
        h.block_status(0, 0, lambda *a: 0)
    assert e.value.errnum == errno.EINVAL
    assert len(h.pread(4096, 0)) == 4096
    h.shutdown()


def test_unknown_flags_rejected(server):
    h = connect(server.uri)
    h.set_strict_mode(0)
    with pytest.raises(nbd.Error) as e:
        h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE)
    assert e.value.errnum == errno.EINVAL
    with pytest.raises(nbd.Error) as e:
        h.pwrite(b"a" * 512, 0, nbd.CMD_FLAG_NO_HOLE)
    assert e.value.errnum == errno.EINVAL
    assert len(h.pread(512, 0)) == 512
    h.shutdown()


def test_pipelined_aio_reads(server, image):
    h = connect(server.uri)
    rnd = random.Random(2)
    reqs = []
    for _ in range(200):
        off, n = rnd.randrange(SIZE - 300000), rnd.randrange(1, 300000)
        buf = nbd.Buffer(n)
        reqs.append((h.aio_pread(buf, off), buf, off, n))
    peak = h.aio_in_flight()
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie, buf, off, n in reqs:
        assert h.aio_command_completed(cookie)
        assert buf.to_bytearray() == file_bytes(image, off, n)
    assert peak > 1
    h.shutdown()


def test_block_status(server):
    h = connect(server.uri)
    seen = {}

    def cb(ctx, off, entries, err):
        seen[ctx] = (off, list(entries))
        return 0

    h.block_status(SIZE, 0, cb)
    M = MiB
    assert seen["base:allocation"] == (0, [4 * M, 0, 4 * M, 3, M, 0, 7 * M, 3])
    assert seen["qemu:allocation-depth"] == (0, [SIZE, 1])
    seen.clear()
    h.block_status(SIZE - 5 * M, 5 * M, cb, nbd.CMD_FLAG_REQ_ONE)
    assert seen["base:allocation"] == (5 * M, [3 * M, 3])
    h.shutdown()


def test_simple_replies_have_no_block_status(server):
    h = connect(server.uri, structured=False)
    assert not h.can_meta_context("base:allocation")
    assert not h.can_df()
    h.shutdown()


def test_write_flush_read_back(server, image):
    h = connect(server.uri)
    rnd = random.Random(3)
    expect = bytearray(file_bytes(image, 0, SIZE))
    for i in range(40):
        off, n = rnd.randrange(SIZE - 100000), rnd.randrange(1, 100000)
        data = rnd.randbytes(n)
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if i % 2 else 0)
        expect[off:off + n] = data
    h.flush()
    h2 = connect(server.uri)  # multi-conn: another connection sees it all
    assert h2.pread(SIZE, 0) == expect
    h2.shutdown()
    h.shutdown()
    assert file_bytes(image, 0, SIZE) == expect


def test_trim_and_zeroes(server, image):
    h = connect(server.uri)
    h.trim(MiB, MiB)
    h.flush()
    assert h.pread(MiB, MiB) == bytes(MiB)
    h.zero(65536, 100, nbd.CMD_FLAG_FAST_ZERO)
    h.zero(70000, 2 * MiB + 5, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    h.zero(4096, 8 * MiB, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
    assert h.pread(65536, 100) == bytes(65536)
    assert h.pread(70000, 2 * MiB + 5) == bytes(70000)
    assert h.pread(4096, 8 * MiB) == bytes(4096)
    h.shutdown()
    assert file_bytes(image, MiB, MiB) == bytes(MiB)
    assert file_bytes(image, 2 * MiB + 5, 70000) == bytes(70000)


def test_cache_and_flush(server):
    h = connect(server.uri)
    h.cache(MiB, 0)
    h.flush()
    h.set_strict_mode(0)
    with pytest.raises(nbd.Error) as e:
        h.cache(MiB, SIZE)
    assert e.value.errnum == errno.EINVAL
    h.shutdown()


def test_read_only(image, tmp_path):
    before = hashlib.sha256(open(image, "rb").read()).hexdigest()
    srv = Server(image, "--read-only", tmpdir=tmp_path)
    try:
        h = connect(srv.uri)
        assert h.is_read_only()
        assert not h.can_trim() and not h.can_zero() and not h.can_fua()
        h.set_strict_mode(0)
        for op in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.trim(512, 0),
                   lambda: h.zero(512, 0)):
            with pytest.raises(nbd.Error) as e:
                op()
            assert e.value.errnum == errno.EPERM
        h.flush()
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    assert hashlib.sha256(open(image, "rb").read()).hexdigest() == before


def test_sigterm_finishes_in_flight_writes(image, tmp_path):
    srv = Server(image, tmpdir=tmp_path)
    h = connect(srv.uri)
    data = bytes([0xA5]) * (4 * MiB)
    bufs = [nbd.Buffer.from_bytearray(bytearray(data)) for _ in range(4)]
    cookies = [h.aio_pwrite(b, i * 4 * MiB) for i, b in enumerate(bufs)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
    rc, err = srv.stop()  # the client is still connected
    assert rc == 0, err
    assert file_bytes(image, 0, SIZE) == data * 4
    assert not os.path.exists(srv.path)


def test_nbdsh_script(server, image):
    """The nbdsh front end, as a user would drive it."""
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
    out = subprocess.run(
        ["nbdsh", "-u", server.uri, "-c",
         "print(h.get_size()); print(h.pread(16, 0).hex())"],
        capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == [str(SIZE), file_bytes(image, 0, 16).hex()]
