# SPDX-License-Identifier: MIT
"""Formats and locks: what rblock will not read, write or share.

- Images of formats rblock does not read (made by qemu-img, or built here
  for bochs, cloop and dmg) are refused by name by info, map, convert and
  serve, which write nothing; -f raw still reads them as raw.
- A raw image whose format was guessed refuses, over NBD (EPERM) and
  JSON-RPC, a write that would make its first sector probe as another
  format (the qcow2-header-naming-a-host-file attack); -f raw allows it;
  ordinary writes to block 0 pass.
- Readers respect writers: while qemu-nbd or `rblock serve` has an image
  open for writing, info, map, check, convert, diff, delta and serve
  --read-only refuse it (naming the lock), and read it with -U; the same
  holds for the backing file of an overlay, as with qemu-img.  Readers
  never conflict with readers.
"""
import base64
import errno
import os
import select
import signal
import struct
import subprocess

import nbd
import pytest

from rpc_harness import RBLOCK, Server

MiB = 1 << 20
LOCK_MSG = 'failed to get shared "write" lock'


def rb(*args, cwd=None):
    return subprocess.run([RBLOCK, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def qemu_img(*args, cwd=None):
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True, cwd=cwd)


def clean(err):
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


# ---------------------------------------------------------------- formats

QEMU_FORMATS = [
    # (file name, qemu-img create arguments, name rblock gives)
    ("x.vmdk", ["-f", "vmdk"], "vmdk"),
    ("flat.vmdk", ["-f", "vmdk", "-o", "subformat=monolithicFlat"], "vmdk"),  # text
    ("x.vdi", ["-f", "vdi"], "vdi"),
    ("x.vhdx", ["-f", "vhdx"], "vhdx"),
    ("x.vpc", ["-f", "vpc"], "vpc"),
    ("fixed.vpc", ["-f", "vpc", "-o", "subformat=fixed"], "vpc"),  # footer only
    ("x.qed", ["-f", "qed"], "qed"),
    ("x.parallels", ["-f", "parallels"], "parallels"),
    ("x.luks", ["--object", "secret,id=s0,data=x", "-f", "luks", "-o", "key-secret=s0,iter-time=10"],
     "luks"),
]


def crafted(name):
    """Images QEMU cannot create: the signatures of its read-only drivers."""
    if name == "bochs":
        hdr = bytearray(512)
        hdr[0:22] = b"Bochs Virtual HD Image"
        hdr[32:39] = b"Redolog"
        hdr[48:55] = b"Growing"
        struct.pack_into("<II", hdr, 64, 0x00020000, 512)
        return bytes(hdr) + bytes(MiB)
    if name == "cloop":
        return (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 "
                b"/dev/cloop $1\n").ljust(MiB, b"\0")
    if name == "dmg":
        koly = bytearray(512)
        koly[0:4] = b"koly"
        struct.pack_into(">II", koly, 4, 4, 512)
        return bytes(MiB) + bytes(koly)
    raise ValueError(name)


@pytest.fixture(params=[f[0] for f in QEMU_FORMATS] + ["x.bochs", "x.cloop", "x.dmg"])
def foreign(request, tmp_path):
    fname = request.param
    for f, args, name in QEMU_FORMATS:
        if f == fname:
            # qemu's LUKS key-slot timing (getrusage) now and then fails on
            # a busy machine ("Unable to get accurate CPU usage"): the image
            # is QEMU's to make, so a second try is no hidden failure of ours
            for attempt in range(3):
                try:
                    qemu_img("create", "-q", *args, f, "1M", cwd=tmp_path)
                    break
                except subprocess.CalledProcessError:
                    if name != "luks" or attempt == 2:
                        raise
            return tmp_path / f, name
    name = fname.split(".")[1]
    (tmp_path / fname).write_bytes(crafted(name))
    return tmp_path / fname, name


def test_foreign_format_refused_by_name_read_as_raw_with_f_raw(foreign, tmp_path):
    path, name = foreign
    before = path.read_bytes()
    want = f"{path}: this is a {name} image; rblock reads qcow2 and raw (use -f raw"
    for args in (["info", path], ["map", path], ["check", path],
                 ["serve", path, "--run", "true"], ["serve", "-r", path, "--run", "true"]):
        p = rb(*args)
        assert p.returncode != 0, (args, p.stdout)
        assert want in p.stderr, (args, p.stderr)
        assert len(p.stderr.splitlines()) == 1, p.stderr
        clean(p.stderr)
    for fmt in ("qcow2", "raw"):
        out = tmp_path / ("out." + fmt)
        p = rb("convert", "-O", fmt, path, out)
        assert p.returncode != 0 and want in p.stderr, p.stderr
        assert not out.exists(), f"convert -O {fmt} wrote an output"
    p = rb("diff", path, path)
    assert p.returncode == 2 and want in p.stderr, p.stderr
    p = rb("delta", path, path, tmp_path / "d.qcow2")
    assert p.returncode != 0 and want in p.stderr, p.stderr
    assert not (tmp_path / "d.qcow2").exists()
    assert path.read_bytes() == before
    # -f raw still reads it, as raw
    p = rb("info", "-f", "raw", path)
    assert p.returncode == 0, p.stderr
    assert "file format: raw" in p.stdout
    assert f"({path.stat().st_size} bytes)" in p.stdout
    out = tmp_path / "copy.raw"
    p = rb("convert", "-f", "raw", "-O", "raw", path, out)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == path.read_bytes()


def test_backing_without_format_holding_a_foreign_header(tmp_path):
    """A backing file is never probed: without a recorded format it is
    raw, and refused when it holds another format's header."""
    qemu_img("create", "-q", "-f", "vmdk", "b.vmdk", "1M", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.vmdk", "-F", "raw", "top.qcow2",
             cwd=tmp_path)
    # drop the recorded format: its header extension (the first, right
    # after the 112-byte v3 header) becomes the end-of-extensions marker
    with open(tmp_path / "top.qcow2", "r+b") as f:
        f.seek(112)
        f.write(bytes(4))
    p = rb("info", "top.qcow2", cwd=tmp_path)
    assert p.returncode == 0 and "backing file format" not in p.stdout, p.stdout
    for args in (["info", "--backing-chain", "top.qcow2"], ["map", "top.qcow2"]):
        p = rb(*args, cwd=tmp_path)
        assert p.returncode != 0, p.stdout
        assert "backing file 'b.vmdk' has no recorded format and is a vmdk image" \
            in p.stderr, p.stderr
        assert "-F raw" in p.stderr, p.stderr


# ------------------------------------------------ probed raw: block 0 guard

def qcow2_header_naming(backing):
    """A minimal qcow2 v2 header whose backing file is @backing."""
    name = backing.encode()
    hdr = bytearray(512)
    struct.pack_into(">IIQIIQIIQQIIQ", hdr, 0, 0x514649FB, 2, 72, len(name), 16,
                     1 << 20, 0, 1, 0x30000, 0x10000, 1, 0, 0)
    hdr[72:72 + len(name)] = name
    return bytes(hdr)


@pytest.fixture
def guest_raw(tmp_path):
    path = tmp_path / "guest.raw"
    path.write_bytes(bytes(MiB))
    return path


def served(path, *args):
    """rblock serve PATH (NBD and JSON-RPC) held open until stop()."""
    return Server(str(path), *args)


def test_guessed_raw_refuses_a_qcow2_header_in_block_0(guest_raw):
    before = guest_raw.read_bytes()
    srv = served(guest_raw)
    try:
        h = srv.nbd()
        with pytest.raises(nbd.Error) as e:
            h.pwrite(qcow2_header_naming("/etc/passwd"), 0)
        assert e.value.errnum == errno.EPERM
        # a header built by pieces is refused at the piece that completes it
        h.pwrite(b"QF", 0)
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"I\xfb\0\0\0\2", 2)
        assert e.value.errnum == errno.EPERM
        h.pwrite(b"\0\0", 0)
        # a longer write that covers block 0 too
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"LUKS\xba\xbe\0\1" + bytes(8192 - 8), 0)
        assert e.value.errnum == errno.EPERM
        h.shutdown()
        c = srv.client()
        e = c.error("write", {"offset": 0,
                              "data": base64.b64encode(b"vhdxfile").decode()})
        assert "first sector" in e["message"] and "vhdx" in e["message"], e
        assert e["code"] == -32002 and e["data"]["name"] == "EPERM", e
        c.close()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    clean(err)
    assert "raw was guessed" in err and "-f raw" in err, err
    assert guest_raw.read_bytes() == before
    p = rb("info", guest_raw)
    assert p.returncode == 0 and "file format: raw" in p.stdout, p.stderr


def test_guessed_raw_refuses_zeroes_that_complete_a_signature(guest_raw):
    with open(guest_raw, "r+b") as f:
        f.write(b"QEDx")  # not QED's magic: a guessed raw image
    srv = served(guest_raw)
    try:
        h = srv.nbd()
        with pytest.raises(nbd.Error) as e:
            h.zero(1, 3)  # would leave "QED\0"
        assert e.value.errnum == errno.EPERM
        with pytest.raises(nbd.Error) as e:
            h.trim(1, 3)  # a hole reads as zeros
        assert e.value.errnum == errno.EPERM
        h.zero(4, 0)  # while "\0\0\0\0" is no signature
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    assert guest_raw.read_bytes()[:8] == b"\0" * 8


def test_guessed_raw_allows_ordinary_block_0_writes_and_f_raw_any(guest_raw):
    srv = served(guest_raw)
    try:
        h = srv.nbd()
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"conectix", 0)
        assert e.value.errnum == errno.EPERM
        mbr = bytearray(os.urandom(512))
        mbr[0:4] = b"\xeb\x63\x90\x00"
        mbr[510:512] = b"\x55\xaa"
        h.pwrite(bytes(mbr), 0)
        assert h.pread(512, 0) == bytes(mbr)
        h.pwrite(bytes(4096), 0)
        h.pwrite(bytes(mbr), 0)
        h.zero(4096, 512)
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    data = guest_raw.read_bytes()
    assert data[:512] == bytes(mbr) and data[512:4608] == bytes(4096)
    # with -f raw the format is the user's word: no restriction, no warning
    hdr = qcow2_header_naming("/etc/passwd")
    srv = served(guest_raw, "-f", "raw")
    try:
        h = srv.nbd()
        h.pwrite(hdr, 0)
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    assert "guessed" not in err, err
    assert guest_raw.read_bytes()[:512] == hdr


# ------------------------------------------------------------------ locks

class QemuNbd:
    """qemu-nbd holding an image; --fork returns once it serves."""

    def __init__(self, tmp_path, image, fmt, *args):
        self.pidfile = tmp_path / "qemu-nbd.pid"
        sock = tmp_path / "qemu-nbd.sock"
        subprocess.run(["qemu-nbd", "--fork", "--pid-file", str(self.pidfile), "-k",
                        str(sock), "-f", fmt, *args, str(image)], check=True)
        self.pid = int(self.pidfile.read_text())

    def stop(self):
        """SIGTERM, and wait until it is gone (it is not our child: a pidfd)."""
        fd = os.pidfd_open(self.pid)
        try:
            os.kill(self.pid, signal.SIGTERM)
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, "qemu-nbd did not stop"
        finally:
            os.close(fd)


@pytest.fixture
def images(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", "held.qcow2", "1M", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "other.qcow2", "1M", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "held.qcow2", "-F", "qcow2",
             "top.qcow2", cwd=tmp_path)
    return tmp_path


def reader_commands(d):
    """Each command that only reads held.qcow2, and what success means."""
    return [
        (["info", d / "held.qcow2"], (0,)),
        (["map", d / "held.qcow2"], (0,)),
        (["check", d / "held.qcow2"], (0,)),
        (["convert", "-O", "raw", d / "held.qcow2", d / "out.raw"], (0,)),
        (["diff", d / "held.qcow2", d / "other.qcow2"], (0, 1)),
        (["delta", d / "held.qcow2", d / "other.qcow2", d / "d.qcow2"], (0,)),
        (["serve", "-r", d / "held.qcow2", "--run", "true"], (0,)),
        # an overlay's backing file is read too (qemu-img map/convert refuse it)
        (["map", d / "top.qcow2"], (0,)),
        (["info", "--backing-chain", d / "top.qcow2"], (0,)),
    ]


def with_U(args):
    return [args[0], "-U", *args[1:]]


def check_readers_refused_then_allowed_with_U(d):
    for args, ok in reader_commands(d):
        for f in ("out.raw", "d.qcow2"):
            (d / f).unlink(missing_ok=True)
        p = rb(*args)
        assert p.returncode not in ok and p.returncode != 0, (args, p.stdout)
        assert LOCK_MSG in p.stderr and "held.qcow2" in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        clean(p.stderr)
        p = rb(*with_U(args))
        assert p.returncode in ok, (with_U(args), p.stderr)
        clean(p.stderr)
    # an overlay alone (qemu-img info opens no backing either) is fine
    p = rb("info", d / "top.qcow2")
    assert p.returncode == 0, p.stderr


def test_readers_refuse_an_image_qemu_nbd_writes(images):
    q = QemuNbd(images, images / "held.qcow2", "qcow2")
    try:
        check_readers_refused_then_allowed_with_U(images)
        # as qemu-img create: an overlay of an image in use can be made (the
        # backing file is only read for its size, sharing everything)
        p = rb("create", "-f", "qcow2", "-b", "held.qcow2", "-F", "qcow2", "ov.qcow2",
               cwd=images)
        assert p.returncode == 0, p.stderr
    finally:
        q.stop()
    p = rb("info", images / "held.qcow2")
    assert p.returncode == 0, p.stderr


def test_readers_refuse_an_image_rblock_serve_writes(images):
    srv = served(images / "held.qcow2")
    try:
        check_readers_refused_then_allowed_with_U(images)
        # the server's own inspection is not refused by its own lock
        c = srv.client()
        assert c.result("info")["format"] == "qcow2"
        c.close()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_raw_image_written_by_rblock_serve_is_refused_too(tmp_path):
    img = tmp_path / "a.raw"
    img.write_bytes(bytes(MiB))
    srv = served(img, "-f", "raw")
    try:
        p = rb("info", img)
        assert p.returncode != 0 and LOCK_MSG in p.stderr, p.stderr
        p = rb("info", "-U", img)
        assert p.returncode == 0, p.stderr
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_readers_refuse_an_image_whose_data_file_is_written(tmp_path):
    """The external data file is locked as the image is (QEMU's data-file
    child): a reader is refused while another process writes it."""
    data = tmp_path / "d.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data}", "e.qcow2", "1M",
             cwd=tmp_path)
    srv = served(data, "-f", "raw")
    try:
        for args in (["info", "e.qcow2"], ["map", "e.qcow2"], ["check", "e.qcow2"]):
            p = rb(*args, cwd=tmp_path)
            assert p.returncode != 0, (args, p.stdout)
            assert "e.qcow2: external data file" in p.stderr and LOCK_MSG in p.stderr, \
                p.stderr
            p = rb(*with_U(args), cwd=tmp_path)
            assert p.returncode == 0, (args, p.stderr)
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    assert rb("info", "e.qcow2", cwd=tmp_path).returncode == 0


def test_force_share_is_for_readers_only(images):
    p = rb("serve", "-U", images / "held.qcow2", "--run", "true")
    assert p.returncode != 0
    assert "--force-share/-U can only be used with --read-only" in p.stderr, p.stderr
    p = rb("check", "-r", "leaks", "-U", images / "held.qcow2")
    assert p.returncode != 0
    assert "--force-share/-U cannot be used with -r" in p.stderr, p.stderr


def test_readers_coexist_and_keep_writers_out(tmp_path):
    img = tmp_path / "a.raw"
    img.write_bytes(bytes(MiB))
    # qemu-nbd --read-only of a raw image refuses nobody writing; rblock
    # readers beside it are fine
    q = QemuNbd(tmp_path, img, "raw", "--read-only")
    try:
        for args in (["info", img], ["map", img], ["serve", "-r", img, "--run", "true"]):
            p = rb(*args)
            assert p.returncode == 0, (args, p.stderr)
    finally:
        q.stop()
    srv = served(img, "-r")
    try:
        # a second read-only server and other readers coexist with the first
        p = rb("serve", "-r", img, "--run", "nbdinfo --size \"$uri\"")
        assert p.returncode == 0 and p.stdout.strip() == str(MiB), p.stderr
        assert rb("info", img).returncode == 0
        # while rblock reads it, nobody writes it: qemu-io, rblock serve
        p = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 0 512", str(img)],
                           capture_output=True, text=True)
        assert p.returncode != 0 and 'Failed to get "write" lock' in p.stdout + p.stderr, \
            p.stdout + p.stderr
        p = rb("serve", "-f", "raw", img, "--run", "true")
        assert p.returncode != 0 and 'failed to get "write" lock' in p.stderr, p.stderr
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    assert img.read_bytes() == bytes(MiB)
