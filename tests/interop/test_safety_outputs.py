# SPDX-License-Identifier: MIT
"""What rblock may do to the file it writes (convert -O raw|qcow2, create,
delta), checked with real tools:

- a FIFO or a character device given as the output is refused and stays;
- an image held by qemu-nbd or by `rblock serve` is refused with QEMU's
  "failed to get "write" lock" and stays byte for byte;
- an output that is an input, or any layer of an input's backing chain
  (also through a symlink or a hard link), is refused and stays;
- a block device is written in place, never truncated or removed;
- sizes are parsed and rounded as qemu-img create does;
- a full disk is an error naming ENOSPC: a file this run created is
  removed, an existing file that was emptied stays and the message says so.
"""
import json
import os
import select
import signal
import shutil
import stat
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from nbd_helpers import Server  # noqa: E402

RBLOCK = os.environ.get("RBLOCK", "rblock")
MiB = 1 << 20
IS_ROOT = os.geteuid() == 0
WRITERS = ["convert-raw", "convert-qcow2", "create", "delta"]


def run(*args, check=False):
    # a writer that blocks (opening a FIFO waits for a reader) fails the test
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def imgs(tmp_path):
    """base.qcow2 <- top.qcow2 (each with data of its own), and raw files."""
    d = tmp_path
    base, top = d / "base.qcow2", d / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "4M", check=True)
    run("qemu-io", "-c", "write -P 0x11 0 1M", base, check=True)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2",
        top, check=True)
    run("qemu-io", "-c", "write -P 0x22 1M 1M", top, check=True)
    return {"dir": d, "base": base, "top": top}


def write_to(writer, imgs, out):
    """Run one writer of @out with the images of the fixture as inputs."""
    if writer == "convert-raw":
        return run(RBLOCK, "convert", "-O", "raw", imgs["top"], out)
    if writer == "convert-qcow2":
        return run(RBLOCK, "convert", "-O", "qcow2", imgs["top"], out)
    if writer == "create":
        return run(RBLOCK, "create", "-q", "-f", "qcow2", out, "1M")
    assert writer == "delta"
    return run(RBLOCK, "delta", "-q", imgs["base"], imgs["top"], out)


def refused(r, *words):
    assert r.returncode == 1, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert r.stderr.startswith("rblock: ") and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w.lower() in r.stderr.lower(), r.stderr


# ---- special files ----------------------------------------------------------

@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", ["chardev", "fifo"])
def test_special_file_output_refused(imgs, writer, kind):
    out = imgs["dir"] / kind
    if kind == "chardev":
        if not IS_ROOT:
            print("skip: mknod needs root", file=sys.stderr)
            pytest.skip("mknod needs root")
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a null device node
        what, test = "character device", stat.S_ISCHR
    else:
        os.mkfifo(out)
        what, test = "FIFO", stat.S_ISFIFO
    before = os.lstat(out)
    r = write_to(writer, imgs, out)
    refused(r, what, "left unchanged")
    after = os.lstat(out)
    assert test(after.st_mode) and after.st_ino == before.st_ino
    assert after.st_rdev == before.st_rdev


# ---- images held by another process -------------------------------------------

def held_image(d):
    img = d / "held.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", img, "2M", check=True)
    run("qemu-io", "-c", "write -P 0x33 0 128k", img, check=True)
    return img


def wait_gone(pid):
    """Wait for process @pid (not our child) to end, without sleeping."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], 60)[0], f"process {pid} did not stop"
    finally:
        os.close(fd)


@pytest.mark.parametrize("writer", WRITERS)
def test_output_held_by_qemu_nbd_refused(imgs, writer):
    d = imgs["dir"]
    img = held_image(d)
    pidfile, sock = d / "nbd.pid", d / "nbd.sock"
    # --fork returns once the image is open and the socket listens
    run("qemu-nbd", "-f", "qcow2", "--fork", f"--pid-file={pidfile}",
        f"--socket={sock}", img, check=True)
    pid = int(pidfile.read_text())
    try:
        before = img.read_bytes()
        r = write_to(writer, imgs, img)
        refused(r, 'failed to get "write" lock', "rblock serve or qemu")
        assert img.read_bytes() == before
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
    # once free, the same command writes it
    r = write_to(writer, imgs, img)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("writer", WRITERS)
def test_output_held_by_rblock_serve_refused(imgs, writer):
    d = imgs["dir"]
    img = held_image(d)
    srv = Server(str(img), "-f", "qcow2", tmpdir=str(d))
    try:
        # a finished handshake proves that serve has the image open
        run("nbdinfo", "--size", srv.uri, check=True)
        before = img.read_bytes()
        r = write_to(writer, imgs, img)
        refused(r, 'failed to get "write" lock', "rblock serve or qemu")
        assert img.read_bytes() == before
    finally:
        status, err = srv.stop()
    assert status == 0, err
    run("qemu-img", "check", img, check=True)


# ---- the output is an input -----------------------------------------------------

def input_cases(writer, imgs):
    """(output path, extra args) pairs naming an input or one of its layers."""
    d, base, top = imgs["dir"], imgs["base"], imgs["top"]
    link = d / "link-to-base"
    if not link.exists():
        os.symlink(base.name, link)
    hard = d / "hard-top"
    if not hard.exists():
        os.link(top, hard)
    if writer == "create":  # the new image may not be its own backing chain
        return [(base, ["-b", base.name, "-F", "qcow2"]),
                (base, ["-b", top.name, "-F", "qcow2"]),
                (link, ["-b", top.name, "-F", "qcow2"]),
                (top, ["-b", top.name, "-F", "qcow2"])]
    return [(base, []), (link, []), (top, []), (hard, [])]


@pytest.mark.parametrize("writer", WRITERS)
def test_output_is_an_input_refused(imgs, writer):
    base, top = imgs["base"], imgs["top"]
    for out, extra in input_cases(writer, imgs):
        before = {p: p.read_bytes() for p in (base, top)}
        if writer == "create":
            r = run(RBLOCK, "create", "-q", "-f", "qcow2", *extra, out)
        else:
            r = write_to(writer, imgs, out)
        refused(r, "refusing to overwrite")
        for p, data in before.items():
            assert p.read_bytes() == data, f"{p} changed writing {out}"
        assert os.path.exists(out)
    # the chain still reads as it did
    run("qemu-img", "check", top, check=True)
    run("qemu-io", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M", top,
        check=True)


# ---- block devices ----------------------------------------------------------------

@pytest.fixture
def loopdev(tmp_path):
    """A node in the scratch folder for a loop device over an 8 MiB file of
    0xee bytes (the node, not /dev/loopN, is what the tests name)."""
    if not IS_ROOT:
        print("skip: losetup needs root", file=sys.stderr)
        pytest.skip("losetup needs root")
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"\xee" * (8 * MiB))
    r = run("losetup", "-f", "--show", backing)
    if r.returncode != 0:
        print(f"skip: losetup does not work here: {r.stderr.strip()}", file=sys.stderr)
        pytest.skip(f"losetup does not work here: {r.stderr.strip()}")
    dev = r.stdout.strip()
    node = tmp_path / "blockdev"
    try:
        os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(dev).st_rdev)
        yield node
    finally:
        run("losetup", "-d", dev, check=True)


def test_block_device_output(imgs, loopdev):
    dev = loopdev
    rdev = os.stat(dev).st_rdev
    d = imgs["dir"]
    src = d / "src.raw"
    data = bytes(range(256)) * (4 * MiB // 256)
    src.write_bytes(data)
    r = run(RBLOCK, "convert", "-f", "raw", "-O", "raw", src, dev)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISBLK(os.stat(dev).st_mode)
    with open(dev, "rb") as f:
        written = f.read()
    # written in place: the source's bytes, the rest of the device as it was
    assert written == data + b"\xee" * (4 * MiB)
    # a source larger than the device: refused, nothing written, not removed
    big = d / "big.raw"
    big.write_bytes(b"\x01" * (16 * MiB))
    r = run(RBLOCK, "convert", "-f", "raw", "-O", "raw", big, dev)
    refused(r, "8388608")
    assert os.stat(dev).st_rdev == rdev
    # qcow2 outputs are made in files only: refused, left alone
    for args in (["convert", "-f", "raw", "-O", "qcow2", src, dev],
                 ["create", "-q", "-f", "qcow2", dev, "1M"],
                 ["delta", "-q", "-f", "raw", imgs["base"], src, dev]):
        r = run(RBLOCK, *args)
        refused(r, "block device", "left unchanged")
        assert stat.S_ISBLK(os.stat(dev).st_mode) and os.stat(dev).st_rdev == rdev
    with open(dev, "rb") as f:
        assert f.read() == written


# ---- sizes ----------------------------------------------------------------------

def virtual_size(path):
    info = run("qemu-img", "info", "--output=json", path, check=True).stdout
    return json.loads(info)["virtual-size"]


def test_create_sizes_as_qemu_img(tmp_path):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for size in ["1000", "1.5G", "512k", "2T", "1b", "1.k", "0x1000", "3M", "0.5M",
                 "513"]:
        r = run(RBLOCK, "create", "-q", "-f", "qcow2", ours, size)
        assert r.returncode == 0, f"{size}: {r.stderr}"
        run("qemu-img", "create", "-q", "-f", "qcow2", theirs, size, check=True)
        assert virtual_size(ours) == virtual_size(theirs), size
        run("qemu-img", "check", ours, check=True)
    # what qemu-img refuses, rblock refuses
    for size in ["1.5", "1KB", "1KiB", "", "k", "1.5b", "1 k"]:
        r = run("qemu-img", "create", "-q", "-f", "qcow2", theirs, size)
        assert r.returncode != 0, size
        r = run(RBLOCK, "create", "-q", "-f", "qcow2", ours, size)
        assert r.returncode == 1 and "invalid size" in r.stderr, size


# ---- disk full ----------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs, or a skip (with a word on stderr) when not root."""
    if not IS_ROOT:
        print("skip: mounting a tmpfs for the disk-full tests needs root",
              file=sys.stderr)
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt, check=True)
    try:
        yield mnt
    finally:
        run("umount", mnt, check=True)


def fill(fs):
    """Use up the free space of @fs."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\xff" * 4096)
    except OSError as e:
        assert e.errno == 28  # ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("writer", WRITERS)
def test_disk_full(tmp_path, small_fs, writer):
    src, zero = tmp_path / "src.raw", tmp_path / "zero.raw"
    src.write_bytes(b"\x5a" * (12 * MiB))  # more than the file system holds
    with open(zero, "wb") as f:
        f.truncate(12 * MiB)

    def go(out):
        if writer == "convert-raw":
            return run(RBLOCK, "convert", "-f", "raw", "-O", "raw", src, out)
        if writer == "convert-qcow2":
            return run(RBLOCK, "convert", "-f", "raw", "-O", "qcow2", src, out)
        if writer == "create":
            return run(RBLOCK, "create", "-q", "-f", "qcow2", out, "1G")
        return run(RBLOCK, "delta", "-q", "-f", "raw", "-F", "raw", zero, src, out)

    new, old = small_fs / "new.img", small_fs / "old.img"
    old.write_bytes(b"\x77" * 4096)
    if writer == "create":
        fill(small_fs)  # its few metadata clusters fit anywhere else
    # a file this run created: removed, and the message says why
    r = go(new)
    refused(r, "No space left on device", "partial output removed")
    assert not new.exists()
    # an existing file: it was the user's to overwrite; it stays, emptied,
    # and the message says that it holds an incomplete image
    r = go(old)
    refused(r, "No space left on device", "emptied", "incomplete")
    assert old.exists()
    assert sorted(p.name for p in small_fs.iterdir()) == sorted(
        ["old.img"] + (["filler"] if writer == "create" else []))
