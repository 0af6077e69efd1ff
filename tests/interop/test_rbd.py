# SPDX-License-Identifier: MIT
"""Ceph RBD: rbd: images as sources, targets and served images, and Ceph's
export-diff streams, against the real tools on a one-node cluster that
tests/ceph/cluster.sh starts (memstore, loopback) for this module.

Every result is checked with Ceph's and QEMU's own readers: `qemu-img
compare rbd:...` (QEMU's rbd driver), `rbd import-diff` / `rbd export-diff`,
`qemu-img check`, nbdcopy and qemu-io over NBD.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from nbd_helpers import Server  # noqa: E402

RBLOCK = os.environ.get("RBLOCK", "rblock")
SRCDIR = os.environ.get("SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
CLUSTER = os.path.join(SRCDIR, "tests", "ceph", "cluster.sh")
MiB = 1 << 20
POOL = "rbd"

TOOLS = ("ceph-mon", "ceph-osd", "ceph", "rbd", "rados", "monmaptool", "ceph-authtool")
missing = [t for t in TOOLS if not shutil.which(t)]
pytestmark = pytest.mark.skipif(
    bool(missing), reason="Ceph is not installed (scripts/install-deps installs ceph-mon "
    "ceph-osd ceph-common librbd-dev librados-dev qemu-block-extra); missing: "
    + " ".join(missing))


def run(*args, check=True, timeout=120, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("ceph")
    r = subprocess.run(["bash", CLUSTER, "start", str(d), POOL], capture_output=True,
                       text=True, timeout=180)
    if r.returncode != 0:
        subprocess.run(["bash", CLUSTER, "stop", str(d)], timeout=60)
        pytest.fail(f"cluster did not start: {r.stderr}")
    old = os.environ.get("CEPH_CONF")
    os.environ["CEPH_CONF"] = os.path.join(d, "ceph.conf")
    # rblock must have been built with librbd when Ceph is here
    r = run(RBLOCK, "info", f"rbd:{POOL}/none", check=False)
    assert "built without librbd" not in r.stderr, r.stderr
    yield d
    subprocess.run(["bash", CLUSTER, "stop", str(d)], timeout=60)
    if old is None:
        del os.environ["CEPH_CONF"]
    else:
        os.environ["CEPH_CONF"] = old


_n = [0]


def new_name(prefix="img"):
    _n[0] += 1
    return f"{prefix}{_n[0]}"


def qemu_io(img, *cmds, fmt=None):
    args = ["qemu-io"] + (["-f", fmt] if fmt else [])
    for c in cmds:
        args += ["-c", c]
    run(*args, img)


def make_source(path, size=24 * MiB):
    """A qcow2 with data, a zeroed range over data, holes, and an unaligned tail."""
    run("qemu-img", "create", "-f", "qcow2", path, str(size))
    qemu_io(path, "write -P 0x11 0 1M", "write -P 0x22 5M 4M", "write -z 6M 1M",
            "write -P 0x33 17M 64k", f"write -P 0x44 {size - 4096} 4096")
    return path


def small_source(path):
    run("qemu-img", "create", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 0x11 0 64k")
    return path


def compare(a, b, fa=None, fb=None):
    args = ["qemu-img", "compare"]
    if fa:
        args += ["-f", fa]
    if fb:
        args += ["-F", fb]
    r = run(*args, a, b, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def rbd_exists(name):
    return name in run("rbd", "ls", POOL).stdout.split()


# ---- convert ---------------------------------------------------------------


def test_round_trip_qcow2_rbd_qcow2(cluster, tmp_path):
    src = make_source(str(tmp_path / "src.qcow2"))
    name = new_name()
    r = run(RBLOCK, "convert", "-O", "rbd", src, f"rbd:{POOL}/{name}")
    # QEMU's rbd driver sees the same bytes
    compare(src, f"rbd:{POOL}/{name}", fb="raw")
    # only allocated data moved: the 5 objects (4 MiB) under the written ranges
    used = run("rbd", "du", "--format", "json", f"{POOL}/{name}").stdout
    used_bytes = json.loads(used)["images"][0]["used_size"]
    assert used_bytes <= 20 * MiB, used
    # rblock sees holes in the rbd image (block status from diff-iterate)
    m = run(RBLOCK, "map", "--output=json", f"rbd:{POOL}/{name}").stdout
    data = [e for e in json.loads(m) if e["data"]]
    assert sum(e["length"] for e in data) <= 20 * MiB
    out = str(tmp_path / "back.qcow2")
    run(RBLOCK, "convert", "-O", "qcow2", f"rbd:{POOL}/{name}", out)
    compare(src, out)
    run("qemu-img", "check", out)
    # sparse: the zeros inside whole objects were not written
    alloc = json.loads(run("qemu-img", "map", "--output=json", out).stdout)
    assert sum(e["length"] for e in alloc if e["data"]) <= 5 * MiB + 128 * 1024
    # qemu-img convert reading the rbd image agrees
    q = str(tmp_path / "q.raw")
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", f"rbd:{POOL}/{name}", q)
    compare(out, q, fb="raw")


def test_convert_into_existing_rbd_image(cluster, tmp_path):
    src = make_source(str(tmp_path / "src.qcow2"))
    name = new_name()
    run("rbd", "create", "-s", "28M", f"{POOL}/{name}")
    qemu_io(f"rbd:{POOL}/{name}", "write -P 0xee 0 28M", fmt="raw")
    # without -n an existing image is refused and left as it was
    r = run(RBLOCK, "convert", "-O", "rbd", src, f"rbd:{POOL}/{name}", check=False)
    assert r.returncode == 1 and "already exists (use -n" in r.stderr, r.stderr
    assert rbd_exists(name)
    run("qemu-io", "-f", "raw", "-c", "read -P 0xee 0 64k", "-c", "read -P 0xee 27M 64k",
        f"rbd:{POOL}/{name}")
    # -n writes into it, zeroing what the source does not hold; -m sets the depth
    run(RBLOCK, "convert", "-n", "-m", "4", src, f"rbd:{POOL}/{name}")
    # the image is larger than the source: compare the source's part, the rest kept
    part = str(tmp_path / "part.raw")
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", f"rbd:{POOL}/{name}", part)
    with open(part, "r+b") as f:
        f.truncate(24 * MiB)
    compare(src, part, fb="raw")
    # an image smaller than the source is refused
    small = new_name()
    run("rbd", "create", "-s", "16M", f"{POOL}/{small}")
    r = run(RBLOCK, "convert", "-n", src, f"rbd:{POOL}/{small}", check=False)
    assert r.returncode == 1 and "smaller than the source" in r.stderr, r.stderr


# ---- serve -----------------------------------------------------------------


def test_serve_rbd_image_nbdcopy_qemu_io(cluster, tmp_path):
    name = new_name()
    run("rbd", "create", "-s", "32M", f"{POOL}/{name}")
    data = bytearray(os.urandom(8 * MiB)) + bytes(24 * MiB)
    src = tmp_path / "in.raw"
    src.write_bytes(data)
    rpc = str(tmp_path / "rpc.sock")
    srv = Server(f"rbd:{POOL}/{name}", "--rpc", f"unix:{rpc}", tmpdir=str(tmp_path))
    try:
        run("nbdcopy", str(src), srv.uri)
        # JSON-RPC sees the same image, through the same open
        import base64
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(60)
            c.connect(rpc)
            c.sendall(b'{"jsonrpc":"2.0","method":"read","params":{"offset":4096,'
                      b'"length":16},"id":1}\n')
            reply = json.loads(c.makefile("rb").readline())
        assert base64.b64decode(reply["result"]["data"]) == bytes(data[4096:4112]), reply
        run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 16M 1M", "-c",
            "write -z 1M 64k", srv.uri)
        run("qemu-io", "-f", "raw", "-c", "read -P 0x5a 16M 1M", srv.uri)
        out = tmp_path / "out.raw"
        run("nbdcopy", srv.uri, str(out))
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    data[16 * MiB:17 * MiB] = b"\x5a" * MiB
    data[MiB:MiB + 65536] = bytes(65536)
    assert out.read_bytes() == bytes(data)
    # what the server wrote is in the cluster, as QEMU reads it
    src.write_bytes(data)
    compare(str(src), f"rbd:{POOL}/{name}", fa="raw", fb="raw")


def test_overlay_over_rbd_snapshot_served(cluster, tmp_path):
    name = new_name()
    run("rbd", "create", "-s", "32M", f"{POOL}/{name}")
    qemu_io(f"rbd:{POOL}/{name}", "write -P 0x61 0 8M", fmt="raw")
    run("rbd", "snap", "create", f"{POOL}/{name}@gold")
    qemu_io(f"rbd:{POOL}/{name}", "write -P 0x62 0 8M", fmt="raw")  # after the snapshot
    ov = str(tmp_path / "ov.qcow2")
    run("qemu-img", "create", "-f", "qcow2", "-b", f"rbd:{POOL}/{name}@gold", "-F", "raw", ov)
    qemu_io(ov, "write -P 0x63 1M 64k")
    expect = str(tmp_path / "expect.raw")
    run("qemu-img", "convert", "-O", "raw", ov, expect)
    with open(expect, "rb") as f:
        e = f.read()
    assert e[0] == 0x61 and e[MiB] == 0x63
    srv = Server(ov, tmpdir=str(tmp_path))
    try:
        out = tmp_path / "out.raw"
        run("nbdcopy", srv.uri, str(out))
        run("qemu-io", "-f", "raw", "-c", "write -P 0x64 2M 4k", srv.uri)
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    assert out.read_bytes() == e
    # the write went into the overlay; the snapshot is read-only and unchanged
    qemu_io(ov, "read -P 0x64 2M 4k")
    run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x61 2M 4k", f"rbd:{POOL}/{name}@gold")
    run("qemu-img", "check", ov)
    # rblock map names the rbd layer
    assert f"rbd:{POOL}/{name}@gold" in run(RBLOCK, "map", ov).stdout


def test_rbd_backing_rules(cluster, tmp_path):
    """Bytes on disk never choose a configuration, and only the image the
    user named may have an rbd backing."""
    name = new_name()
    run("rbd", "create", "-s", "4M", f"{POOL}/{name}")
    ov = str(tmp_path / "opts.qcow2")
    run("qemu-img", "create", "-f", "qcow2", "-u", "-b",
        f"rbd:{POOL}/{name}:conf=/etc/passwd", "-F", "raw", ov, "4M")
    r = run(RBLOCK, "map", ov, check=False)
    assert r.returncode == 1 and "carries options" in r.stderr, r.stderr
    mid = str(tmp_path / "mid.qcow2")
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-f", "qcow2", "-u", "-b", f"rbd:{POOL}/{name}", "-F", "raw",
        mid, "4M")
    run("qemu-img", "create", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    r = run(RBLOCK, "map", top, check=False)
    assert r.returncode == 1 and "only the image named on the command line" in r.stderr, \
        r.stderr
    assert run(RBLOCK, "map", mid).returncode == 0


# ---- streams ---------------------------------------------------------------


def changed_copy(src, dst):
    shutil.copy(src, dst)
    qemu_io(dst, "write -P 0x77 3M 128k", "write -z 5M 512k", "discard 17M 64k",
            "write -P 0x78 12M 4k")
    return dst


def test_delta_rbd_diff_into_rbd_import_diff(cluster, tmp_path):
    base = make_source(str(tmp_path / "base.qcow2"))
    new = changed_copy(base, str(tmp_path / "new.qcow2"))
    name = new_name()
    run(RBLOCK, "convert", "-O", "rbd", base, f"rbd:{POOL}/{name}")
    run("rbd", "snap", "create", f"{POOL}/{name}@s1")
    p1 = subprocess.Popen([RBLOCK, "delta", "--output-format=rbd-diff", "--from-snap", "s1",
                           "--to-snap", "s2", base, new, "-"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    p2 = subprocess.run(["rbd", "import-diff", "--no-progress", "-", f"{POOL}/{name}"],
                        stdin=p1.stdout, capture_output=True, text=True, timeout=120)
    p1.stdout.close()
    err = p1.stderr.read().decode()
    assert p1.wait() == 0, err
    assert p2.returncode == 0, p2.stderr
    assert "records" in err  # the summary went to stderr, not into the stream
    compare(new, f"rbd:{POOL}/{name}", fb="raw")
    compare(new, f"rbd:{POOL}/{name}@s2", fb="raw")  # import-diff made the 't' snapshot
    # NEW as an rbd image and BASE as an rbd snapshot: a qcow2 delta over rbd
    d = str(tmp_path / "d.qcow2")
    run(RBLOCK, "delta", f"rbd:{POOL}/{name}@s1", f"rbd:{POOL}/{name}", d)
    compare(d, new)
    run("qemu-img", "check", d)


def test_export_diff_to_qcow2_overlay(cluster, tmp_path):
    name = new_name()
    img = f"rbd:{POOL}/{name}"
    run("rbd", "create", "-s", "40M", f"{POOL}/{name}")
    qemu_io(img, "write -P 0x21 0 12M", fmt="raw")
    run("rbd", "snap", "create", f"{POOL}/{name}@a")
    qemu_io(img, "write -P 0x22 4M 1M", "write -z 8M 2M", "write -P 0x23 36M 8k", fmt="raw")
    run("rbd", "snap", "create", f"{POOL}/{name}@b")
    stream = str(tmp_path / "ab.diff")
    run("rbd", "export-diff", "--no-progress", "--from-snap", "a", f"{POOL}/{name}@b", stream)
    ov = str(tmp_path / "ov.qcow2")
    run(RBLOCK, "convert", "-f", "rbd-diff", stream, "-B", f"{img}@a", "-O", "qcow2", ov)
    run("qemu-img", "check", ov)
    compare(ov, f"{img}@b", fb="raw")
    # the same stream on standard input over a local copy of @a
    base = str(tmp_path / "a.qcow2")
    run(RBLOCK, "convert", "-O", "qcow2", f"{img}@a", base)
    ov2 = str(tmp_path / "ov2.qcow2")
    with open(stream, "rb") as f:
        r = subprocess.run([RBLOCK, "convert", "-f", "rbd-diff", "-", "-B", base, ov2],
                           stdin=f, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    compare(ov2, f"{img}@b", fb="raw")
    # a stream from another snapshot is refused for an rbd BASE
    r = run(RBLOCK, "convert", "-f", "rbd-diff", stream, "-B", f"{img}@b",
            str(tmp_path / "x.qcow2"), check=False)
    assert r.returncode == 1 and "starts at snapshot 'a'" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "x.qcow2")


def test_rbd_diff_v2_round_trip(cluster, tmp_path):
    base = make_source(str(tmp_path / "base.qcow2"))
    new = changed_copy(base, str(tmp_path / "new.qcow2"))
    s = str(tmp_path / "v2.diff")
    run(RBLOCK, "delta", "--output-format=rbd-diff-v2", base, new, s)
    with open(s, "rb") as f:
        assert f.read(12) == b"rbd diff v2\n"
    ov = str(tmp_path / "ov.qcow2")
    run(RBLOCK, "convert", "-f", "rbd-diff", s, "-B", base, ov)
    compare(ov, new)


# ---- bad input ---------------------------------------------------------------


def test_missing_pool_image_snapshot(cluster, tmp_path):
    name = new_name()
    run("rbd", "create", "-s", "4M", f"{POOL}/{name}")
    for spec, word in ((f"rbd:nopool/{name}", "pool 'nopool' does not exist"),
                       (f"rbd:{POOL}/missing", "image 'missing' in pool 'rbd' does not exist"),
                       (f"rbd:{POOL}/{name}@nosnap", "has no snapshot 'nosnap'")):
        r = run(RBLOCK, "map", spec, check=False)
        assert r.returncode == 1 and word in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run(RBLOCK, "convert", "-O", "qcow2", f"rbd:{POOL}/{name}@nosnap",
            str(tmp_path / "o.qcow2"), check=False)
    assert r.returncode == 1 and "has no snapshot 'nosnap'" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "o.qcow2")
    # a snapshot is read-only
    run("rbd", "snap", "create", f"{POOL}/{name}@s")
    r = run(RBLOCK, "convert", "-n", small_source(str(tmp_path / "s.qcow2")),
            f"rbd:{POOL}/{name}@s", check=False)
    assert r.returncode == 1 and "read-only" in r.stderr, r.stderr
    # check has nothing to check, and says so
    r = run(RBLOCK, "check", f"rbd:{POOL}/{name}")
    assert "nothing checked" in r.stdout


def test_unreachable_cluster_times_out(cluster, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    conf = tmp_path / "dead.conf"
    conf.write_text(f"[global]\nmon_host = v1:127.0.0.1:{port}\n"
                    "auth_client_required = none\n")
    start = time.monotonic()
    r = run(RBLOCK, "info", f"rbd:{POOL}/x:conf={conf}:timeout=2", check=False, timeout=90)
    assert r.returncode == 1
    assert "did not answer within 2 s" in r.stderr and str(port) in r.stderr, r.stderr
    # the time-out holds for CEPH_CONF too (the timeout from the configuration)
    conf.write_text(conf.read_text() + "client_mount_timeout = 2\n")
    env = dict(os.environ, CEPH_CONF=str(conf))
    out = tmp_path / "o.raw"
    r = run(RBLOCK, "convert", small_source(str(tmp_path / "s.qcow2")),
            f"rbd:{POOL}/x", check=False, timeout=90, env=env)
    assert r.returncode == 1 and "did not answer within 2 s" in r.stderr, r.stderr
    assert not out.exists()
    assert time.monotonic() - start < 85


def test_corrupt_and_truncated_streams_refused(cluster, tmp_path):
    base = make_source(str(tmp_path / "base.qcow2"))
    new = changed_copy(base, str(tmp_path / "new.qcow2"))
    s = str(tmp_path / "good.diff")
    run(RBLOCK, "delta", "--output-format=rbd-diff", base, new, s)
    good = open(s, "rb").read()
    first_w = good.index(b"w", 12 + 9)
    cases = {
        "truncated": (good[:len(good) // 2], "truncated rbd diff stream"),
        "no end": (good[:-1], "truncated rbd diff stream"),
        "bad tag": (good[:first_w] + b"q" + good[first_w + 1:], "tag 0x71"),
        "past end": (good[:first_w + 1] + (1 << 40).to_bytes(8, "little") +
                     good[first_w + 9:], "past the image's end"),
        "header": (b"rbd diff v9\n" + good[12:], "not an rbd diff stream"),
    }
    for what, (data, word) in cases.items():
        p = tmp_path / "bad.diff"
        p.write_bytes(data)
        out = tmp_path / "out.qcow2"
        r = run(RBLOCK, "convert", "-f", "rbd-diff", str(p), "-B", base, str(out),
                check=False)
        assert r.returncode == 1 and word in r.stderr, (what, r.stderr)
        assert not out.exists(), what  # nothing half-applied
    # rbd import-diff refuses a stream rblock cut short: the base image keeps its data
    name = new_name()
    run(RBLOCK, "convert", "-O", "rbd", base, f"rbd:{POOL}/{name}")
    p = tmp_path / "cut.diff"
    p.write_bytes(good[:len(good) // 2])
    r = run("rbd", "import-diff", "--no-progress", str(p), f"{POOL}/{name}", check=False)
    assert r.returncode != 0


def test_bitmap_incremental_into_rbd(cluster, tmp_path):
    """delta --bitmap NAME --output-format=rbd-diff: an incremental backup
    from NEW's dirty bitmap, BASE unread, applied by rbd import-diff."""
    base = make_source(str(tmp_path / "base.qcow2"))
    new = str(tmp_path / "new.qcow2")
    shutil.copy(base, new)
    qemu_io(new, "write -P 0x55 10M 64k")  # before the bitmap: not in the stream
    run("qemu-img", "bitmap", "--add", new, "b0")
    qemu_io(new, "write -P 0x91 2M 64k", "write -z 5M 128k", "write -P 0x92 23M 4k")
    name = new_name()
    run(RBLOCK, "convert", "-O", "rbd", base, f"rbd:{POOL}/{name}")
    s = str(tmp_path / "inc.diff")
    r = run(RBLOCK, "delta", "--output-format=rbd-diff", "--bitmap", "b0", base, new, s)
    size = os.path.getsize(s)
    assert size < 1 * MiB, size  # the dirty ranges only
    run("rbd", "import-diff", "--no-progress", s, f"{POOL}/{name}")
    # what the bitmap marks arrived; the earlier write did not (BASE was not read)
    run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x91 2M 64k", "-c", "read -P 0 5M 128k",
        "-c", "read -P 0x92 23M 4k", "-c", "read -P 0 10M 64k", f"rbd:{POOL}/{name}")
    r = run(RBLOCK, "delta", "--output-format=rbd-diff", "--bitmap", "nope", base, new,
            str(tmp_path / "x.diff"), check=False)
    assert r.returncode == 1 and "nope" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "x.diff")
