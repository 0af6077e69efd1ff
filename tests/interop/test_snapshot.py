# SPDX-License-Identifier: MIT
"""Internal snapshots, interchangeable with QEMU on the same files:
`rblock snapshot -c/-a/-d/-l` against `qemu-img snapshot` on qcow2 images
made by qemu-img (v2 and v3, 512 B to 2 MiB clusters, compressed clusters,
extended L2): snapshots either tool made are listed, applied and deleted
by the other, every snapshot's content (qemu-img convert -l) and the
active disk stay what they were, qemu-img check stays clean.  Writes
through `rblock serve` into an image with snapshots copy shared clusters
and tables (the snapshots keep their content, the disk equals qemu-io's
same writes on a copy); `rblock serve -l NAME` serves a snapshot
read-only; bad input is refused with a message and the file unchanged."""
import hashlib
import os
import random
import shutil
import subprocess

import pytest

from nbd_helpers import RBLOCK, Server

MiB = 1 << 20

# (name, qemu-img create options, compress the base content)
VARIANTS = [
    ("v3-64k", "compat=1.1,cluster_size=64k", True),
    ("v2-4k", "compat=0.10,cluster_size=4k", True),
    ("v3-512", "cluster_size=512", False),
    ("v3-32k-extl2", "cluster_size=32k,extended_l2=on,lazy_refcounts=on", True),
    ("v3-2M", "cluster_size=2M", False),
]
SIZE = 4 * MiB


def run(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, timeout=300, **kw)


def qcheck(path):
    c = run("qemu-img", "check", path, check=False)
    assert c.returncode == 0, c.stdout + c.stderr
    c = run(RBLOCK, "check", path, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def content(path, snap=None, tmp=None):
    """The guest bytes of @path (or of its snapshot @snap) as qemu-img reads them."""
    out = os.path.join(tmp or os.path.dirname(path), "content.raw")
    run("qemu-img", "convert", "-f", "qcow2", *(["-l", snap] if snap else []), "-O", "raw",
        path, out)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def qlist(path):
    """qemu-img snapshot -l's rows as (id, tag)."""
    out = run("qemu-img", "snapshot", "-l", path).stdout.splitlines()[2:]
    return [tuple(line.split()[:2]) for line in out]


def make(tmp, opts, compress):
    """A 4 MiB image: data (compressed ones in the first half when
    @compress), then qemu-io writes, zeroes and a discard on top."""
    r = random.Random(7)
    raw = os.path.join(tmp, "base.raw")
    data = bytearray(SIZE)
    for off in range(0, SIZE, 128 * 1024):
        if r.random() < 0.7:
            n = r.choice([4096, 65536, 200 * 1024])
            data[off:off + n] = bytes([r.randrange(1, 255)]) * (n // 2) + r.randbytes(n // 2)
    with open(raw, "wb") as f:
        f.write(data)
    img = os.path.join(tmp, "img.qcow2")
    run("qemu-img", "convert", *(["-c"] if compress else []), "-f", "raw", "-O", "qcow2",
        "-o", opts, raw, img)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 2600k 300k", "-c", "write -z 3M 128k",
        "-c", "discard 3584k 64k", "-c", "write -P 0x12 3670016 512", img)
    os.unlink(raw)
    return img


def ops(n):
    """qemu-io commands changing the disk: round @n of partial and whole
    cluster writes over data, compressed, zero and unallocated areas."""
    b = 0x40 + n
    return ["-c", f"write -P {b} {n * 4096 + 512} 3000",
            "-c", f"write -P {b + 1} 512k 150k",
            "-c", f"write -P {b + 2} 2700k 64k",
            "-c", "write -z 3100k 96k",
            "-c", f"write -P {b + 3} 3584k 4k",
            "-c", "discard 1M 1M"]


@pytest.mark.parametrize("name,opts,compress", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_interchange(tmp_path, name, opts, compress):
    """rblock's snapshots read, applied and deleted by qemu-img, and qemu-img's
    by rblock, on copies of one image changed the same way in between."""
    img = make(str(tmp_path), opts, compress)
    a, b = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    shutil.copy(img, a)
    shutil.copy(img, b)
    c0 = content(a)
    run(RBLOCK, "snapshot", "-c", "s1", a)
    run("qemu-img", "snapshot", "-c", "s1", b)
    qcheck(a)
    assert qlist(a) == [("1", "s1")]
    # the same listing as qemu-img's, byte for byte (same clock: same dates)
    assert run(RBLOCK, "snapshot", "-l", a).stdout == run("qemu-img", "snapshot", "-l", a).stdout
    for p in (a, b):
        run("qemu-io", "-f", "qcow2", *ops(1), p)
    qcheck(a)
    c1 = content(a)
    assert c1 == content(b) and c1 != c0
    assert content(a, "s1") == c0 and content(b, "s1") == c0
    run(RBLOCK, "snapshot", "-c", "s2", a)
    run("qemu-img", "snapshot", "-c", "s2", b)
    for p in (a, b):
        run("qemu-io", "-f", "qcow2", *ops(2), p)
    c2 = content(a)
    assert c2 == content(b)
    qcheck(a)
    for p in (a, b):
        assert content(p, "s1") == c0 and content(p, "s2") == c1
    info_a = run("qemu-img", "info", a).stdout
    assert "s2" in info_a and "0 B" in info_a

    # qemu-img applies and deletes rblock's snapshots ...
    qa = str(tmp_path / "qa.qcow2")
    shutil.copy(a, qa)
    run("qemu-img", "snapshot", "-a", "s1", qa)
    qcheck(qa)
    assert content(qa) == c0 and content(qa, "s2") == c1
    run("qemu-img", "snapshot", "-d", "s1", qa)
    qcheck(qa)
    assert qlist(qa) == [("2", "s2")] and content(qa) == c0

    # ... rblock applies and deletes qemu-img's (and its own)
    run(RBLOCK, "snapshot", "-a", "s1", b)
    qcheck(b)
    assert content(b) == c0 and content(b, "s2") == c1
    run(RBLOCK, "snapshot", "-d", "1", b)  # by id
    qcheck(b)
    assert qlist(b) == [("2", "s2")] and content(b) == c0 and content(b, "s2") == c1
    run(RBLOCK, "snapshot", "-a", "s2", a)
    qcheck(a)
    assert content(a) == c1
    run(RBLOCK, "snapshot", "-d", "s2", a)
    run(RBLOCK, "snapshot", "-d", "s1", a)
    qcheck(a)
    assert qlist(a) == [] and content(a) == c1
    # after the last delete every cluster is the active image's alone again:
    # writes go in place and qemu-img check sees the COPIED flags right
    run("qemu-io", "-f", "qcow2", *ops(3), a)
    qcheck(a)
    # a new snapshot gets the next id, as qemu-img gives it
    run(RBLOCK, "snapshot", "-c", "again", b)
    assert qlist(b) == [("2", "s2"), ("3", "again")]
    qcheck(b)


@pytest.mark.parametrize("name,opts,compress", [VARIANTS[0], VARIANTS[1], VARIANTS[3]],
                         ids=[VARIANTS[0][0], VARIANTS[1][0], VARIANTS[3][0]])
def test_serve_writes_keep_snapshots(tmp_path, name, opts, compress):
    """Writes through rblock serve into an image with snapshots (made by
    qemu-img and by rblock): the disk reads as qemu-io's same writes on a
    copy, every snapshot keeps its content, qemu-img check is clean."""
    img = make(str(tmp_path), opts, compress)
    run("qemu-img", "snapshot", "-c", "q1", img)
    run("qemu-io", "-f", "qcow2", *ops(1), img)
    run(RBLOCK, "snapshot", "-c", "r2", img)
    run("qemu-io", "-f", "qcow2", *ops(3), img)
    # qemu-img's snapshot shares the L2 tables with the disk: the first
    # write into each must copy it
    run("qemu-img", "snapshot", "-c", "q3", img)
    want = {s: content(img, s) for s in ("q1", "r2", "q3")}
    ref = str(tmp_path / "ref.qcow2")
    shutil.copy(img, ref)
    cmds = ops(2) + ops(4) + ["-c", "write -P 0x77 0 4M"]
    run("qemu-io", "-f", "qcow2", *cmds, ref)
    q = " ".join(f"'{c}'" for c in cmds)
    run(RBLOCK, "serve", "--run", f'qemu-io -f raw {q} "$uri"', img)
    qcheck(img)
    assert content(img) == content(ref)
    for s, data in want.items():
        assert content(img, s) == data, f"snapshot {s} changed"
    # and the snapshots still apply (qemu-img) and read back
    run("qemu-img", "snapshot", "-a", "q1", img)
    qcheck(img)
    assert content(img) == want["q1"]


def test_serve_snapshot_read_only(tmp_path):
    """rblock serve -l ID_OR_NAME serves the snapshot (nbdcopy and qemu-img
    compare equal to qemu-img convert -l), refuses writes, leaves the file."""
    img = make(str(tmp_path), VARIANTS[0][1], True)
    run("qemu-img", "snapshot", "-c", "first", img)
    run("qemu-io", "-f", "qcow2", *ops(1), img)
    run(RBLOCK, "snapshot", "-c", "second", img)
    run("qemu-io", "-f", "qcow2", *ops(2), img)
    before = digest(img)
    for key, snap in (("first", "first"), ("2", "second"), ("snapshot.name=second", "second"),
                      ("snapshot.id=1", "first")):
        out = str(tmp_path / "out.raw")
        run(RBLOCK, "serve", "-l", key, "--run", f'nbdcopy "$uri" {out}', img)
        with open(out, "rb") as f:
            assert f.read() == content(img, snap), key
        ref = str(tmp_path / "snap.raw")
        run("qemu-img", "convert", "-l", snap, "-O", "raw", img, ref)
        run(RBLOCK, "serve", "-l", key, "--run", f'qemu-img compare -f raw -F raw "$uri" {ref}',
            img)
    w = run(RBLOCK, "serve", "-l", "first", "--run", 'qemu-io -f raw -c "write 0 4k" "$uri"',
            img, check=False)
    assert "failed" in (w.stdout + w.stderr).lower() or w.returncode != 0
    assert digest(img) == before
    bad = run(RBLOCK, "serve", "-l", "nope", "--run", "true", img, check=False)
    assert bad.returncode != 0 and "no snapshot 'nope'" in bad.stderr


def test_refusals_change_nothing(tmp_path):
    img = make(str(tmp_path), VARIANTS[1][1], False)
    run(RBLOCK, "snapshot", "-c", "s1", img)
    before = digest(img)
    cases = [
        (["-c", "s1"], "already exists"),
        (["-a", "nope"], "no snapshot 'nope'"),
        (["-d", "nope"], "no snapshot 'nope'"),
        (["-U", "-c", "x"], "-U can only be used with -l"),
        (["-l", "-c", "x"], "cannot mix"),
        (["-c", ""], "must not be empty"),
    ]
    for args, msg in cases:
        r = run(RBLOCK, "snapshot", *args, img, check=False)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert digest(img) == before, args
    # an image another process writes: refused (locked), and -l -U reads it
    srv = Server(img)
    try:
        run("nbdinfo", "--size", srv.uri)
        r = run(RBLOCK, "snapshot", "-c", "x", img, check=False)
        assert r.returncode == 1 and "locked" in r.stderr, r.stderr
        assert "s1" in run(RBLOCK, "snapshot", "-l", "-U", img).stdout
        r = run(RBLOCK, "snapshot", "-l", img, check=False)
        assert r.returncode == 1 and "locked" in r.stderr, r.stderr
    finally:
        srv.stop()
    assert digest(img) == before
    # raw has none: listing shows nothing (as qemu-img), changes are refused
    raw = str(tmp_path / "r.raw")
    with open(raw, "wb") as f:
        f.truncate(MiB)
    assert run(RBLOCK, "snapshot", "-l", "-f", "raw", raw).stdout == ""
    r = run(RBLOCK, "snapshot", "-c", "x", "-f", "raw", raw, check=False)
    assert r.returncode == 1 and "no internal snapshots" in r.stderr
    # 1-bit refcounts cannot count a second reference: refused, unchanged
    one = str(tmp_path / "one.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", one, "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write 0 64k", one)
    h = digest(one)
    r = run(RBLOCK, "snapshot", "-c", "x", one, check=False)
    assert r.returncode == 1 and "refcount" in r.stderr, r.stderr
    assert digest(one) == h
    qcheck(img)


def test_empty_disk_and_overlay(tmp_path):
    """A disk of 0 bytes (an empty L1 table at offset 0, as qemu keeps it)
    and an overlay over a raw backing file: snapshots made, applied and
    deleted by rblock, and qemu-img's, leave qemu-img check clean."""
    z = str(tmp_path / "zero.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", z, "0")
    run(RBLOCK, "snapshot", "-c", "a", z)
    run("qemu-img", "snapshot", "-c", "b", z)
    qcheck(z)
    for args in (["-a", "a"], ["-d", "a"], ["-a", "b"], ["-d", "b"]):
        run(RBLOCK, "snapshot", *args, z)
        qcheck(z)
    assert qlist(z) == []
    base = str(tmp_path / "base.raw")
    with open(base, "wb") as f:
        f.write(bytes([9]) * (2 * MiB))
    o = str(tmp_path / "o.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", o)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 1 1M 64k", o)
    run(RBLOCK, "snapshot", "-c", "s", o)
    want = content(o)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 2 1M 64k", "-c", "write -P 3 0 4k", o)
    assert content(o) != want and content(o, "s") == want
    run(RBLOCK, "snapshot", "-a", "s", o)
    qcheck(o)
    assert content(o) == want
