# SPDX-License-Identifier: MIT
"""Incremental backups from a persistent dirty bitmap: `rblock delta
--bitmap NAME BASE NEW OUT`, checked with QEMU's tools.

The whole cycle: a full backup (rblock convert), a bitmap added by
qemu-img bitmap, writes through `rblock serve` (libnbd) stopped by SIGTERM,
an incremental backed by the full backup, the bitmap cleared, more writes,
a second incremental backed by the first, and a restore by converting the
chain to raw.  Every output passes `qemu-img check`, reads as the live
image (`qemu-img compare` through its chain), and holds clusters (data or
zero) exactly where a granule of the bitmap was dirty, widened to the
output's clusters, as `qemu-img map` shows them; rblock reports reading
exactly those bytes of NEW and none of BASE.  `rblock diff --bitmap` lists
the ranges qemu-nbd -B serves as dirty.  An inconsistent bitmap (left
in_use by a kill -9 of the server), a missing one, a raw NEW and an output
that is an input are refused with one line, nothing created or changed.
"""
import hashlib
import json
import os
import subprocess

import nbd
import pytest

from nbd_helpers import RBLOCK, Server

MiB = 1 << 20
K64 = 64 * 1024
SIZE = 64 * MiB


def run(*args, check=True, cwd=None):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def qcheck(path):
    c = run("qemu-img", "check", path, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def compare(a, b):
    c = run("qemu-img", "compare", a, b, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def dirty_ranges(path, name):
    """Dirty ranges of bitmap @name as qemu-nbd -B serves them."""
    r = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
            "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, path, "]")
    out = []
    for line in r.stdout.splitlines():
        off, length, status = (int(x) for x in line.split()[:3])
        if status & 1:
            out.append((off, length))
    return out


def clusters_of(ranges, cluster, size):
    """Every cluster index that a range touches."""
    out = set()
    for off, n in ranges:
        end = min(off + n, size)
        out.update(range(off // cluster, (end + cluster - 1) // cluster))
    return out


def own_clusters(path, cluster):
    """Clusters that @path itself defines (depth 0 in qemu-img map): data
    and zero clusters, as two sets of indices."""
    m = json.loads(run("qemu-img", "map", "--output=json", path).stdout)
    data, zero = set(), set()
    for e in m:
        if e["depth"] != 0 or not e["present"]:
            continue
        assert e["start"] % cluster == 0 and e["length"] % cluster == 0, e
        idx = range(e["start"] // cluster, (e["start"] + e["length"]) // cluster)
        (data if e["data"] else zero).update(idx)
    return data, zero


def backing_of(path):
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    return info.get("full-backing-filename"), info.get("backing-filename-format")


def serve_writes(img, writes):
    """Apply @writes through rblock serve over NBD, then stop it cleanly."""
    srv = Server(img)
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        for kind, off, arg in writes:
            if kind == "w":
                h.pwrite(arg, off)
            elif kind == "z":
                h.zero(arg, off)
            else:
                h.trim(arg, off)
        h.flush()
        h.shutdown()
    finally:
        status, err = srv.stop()
    assert status == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


def incremental(base, new, out, name, cluster):
    """rblock delta --bitmap, and every promise of its output."""
    expect = clusters_of(dirty_ranges(new, name), cluster, SIZE)
    r = run(RBLOCK, "delta", "--bitmap", name, "-o", f"cluster_size={cluster}",
            base, new, out, check=False)
    assert r.returncode == 0, r.stderr
    qcheck(out)
    path, fmt = backing_of(out)
    assert os.path.samefile(path, base) and fmt == "qcow2"
    compare(out, new)
    data, zero = own_clusters(out, cluster)
    assert data | zero == expect and not data & zero
    # zero clusters exactly where NEW reads as zeros
    raw = out + ".new.raw"
    run("qemu-img", "convert", "-O", "raw", new, raw)
    with open(raw, "rb") as f:
        for c in sorted(expect):
            f.seek(c * cluster)
            assert (f.read(cluster).count(0) == cluster) == (c in zero), c
    os.unlink(raw)
    # it read exactly the dirty clusters of NEW and nothing of BASE
    assert f"read {len(expect) * cluster} bytes of new" in r.stdout, r.stdout
    assert "none of base" in r.stdout, r.stdout
    return data, zero


@pytest.mark.parametrize("granularity,cluster", [
    (K64, K64), (16 * 1024, K64), (MiB, K64), (K64, 256 * 1024)])
def test_backup_cycle(tmp_path, granularity, cluster):
    live = str(tmp_path / "live.qcow2")
    full = str(tmp_path / "full.qcow2")
    inc1 = str(tmp_path / "inc1.qcow2")
    inc2 = str(tmp_path / "inc2.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", live, str(SIZE))
    run("qemu-io", "-c", "write -P 1 0 8M", "-c", "write -P 2 20M 3M",
        "-c", "write -P 3 50M 64k", live)
    run(RBLOCK, "convert", "-O", "qcow2", live, full)
    qcheck(full)
    compare(full, live)
    run("qemu-img", "bitmap", "--add", "-g", str(granularity), live, "nightly")

    # writes of all kinds, aligned or not, over data and over holes
    serve_writes(live, [
        ("w", 100, b"\x55" * 4096),                 # inside the first cluster
        ("w", 3 * MiB - 10, b"\x66" * (K64 + 20)),  # across clusters
        ("z", 21 * MiB, 200 * 1024),                # zeroes over data
        ("t", 50 * MiB, K64),                       # trim of data
        ("w", 40 * MiB + 4096, b"\x77" * 512),      # into a hole
    ])
    qcheck(live)
    data, zero = incremental(full, live, inc1, "nightly", cluster)
    assert data and zero  # the zeroed and trimmed ranges became zero clusters

    # start again: clear the bitmap, write more, the next incremental is
    # backed by the first one
    run(RBLOCK, "bitmap", "--clear", live, "nightly")
    serve_writes(live, [
        ("w", 100, b"\x88" * 100),
        ("w", 60 * MiB, b"\x99" * (2 * MiB)),
    ])
    qcheck(live)
    data2, _ = incremental(inc1, live, inc2, "nightly", cluster)
    assert 60 * MiB // cluster in data2 and 3 * MiB // cluster not in data2

    # the incrementals stay as they were written: inc1 is still the
    # state after the first round (inc2's clusters are not in it)
    assert 60 * MiB // cluster not in own_clusters(inc1, cluster)[0]

    # restore: convert the chain
    restored = str(tmp_path / "restored.raw")
    run(RBLOCK, "convert", "-O", "raw", inc2, restored)
    compare(restored, live)
    qcheck(full)
    qcheck(inc1)
    qcheck(inc2)


def test_nothing_written(tmp_path):
    live = str(tmp_path / "live.qcow2")
    full = str(tmp_path / "full.qcow2")
    out = str(tmp_path / "out.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", live, "16M")
    run("qemu-io", "-c", "write -P 7 0 1M", live)
    run(RBLOCK, "convert", "-O", "qcow2", live, full)
    run(RBLOCK, "bitmap", "--add", live, "b")
    r = run(RBLOCK, "delta", "--bitmap", "b", full, live, out)
    assert "0 data clusters, 0 zero clusters; read 0 bytes" in r.stdout, r.stdout
    qcheck(out)
    compare(out, live)
    assert own_clusters(out, K64) == (set(), set())


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def refused(args, what, files, absent):
    before = {f: digest(f) for f in files}
    r = run(RBLOCK, "delta", *args, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rblock: ") and what in lines[0], \
        r.stderr
    assert "AddressSanitizer" not in r.stderr
    for f in files:
        assert digest(f) == before[f], f
    assert not os.path.exists(absent)
    return lines[0]


@pytest.fixture
def pair(tmp_path):
    live = str(tmp_path / "live.qcow2")
    full = str(tmp_path / "full.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", live, "16M")
    run("qemu-io", "-c", "write -P 7 0 1M", live)
    run(RBLOCK, "convert", "-O", "qcow2", live, full)
    run("qemu-img", "bitmap", "--add", live, "b")
    return live, full


def test_in_use_bitmap_refused(tmp_path, pair):
    live, full = pair
    out = str(tmp_path / "out.qcow2")
    srv = Server(live)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"\x11" * K64, 5 * MiB)
    h.flush()
    srv.kill()
    line = refused(["--bitmap", "b", full, live, out], "inconsistent", [live, full], out)
    assert "'b'" in line and live in line
    r = run(RBLOCK, "diff", "--bitmap", "b", full, live, check=False)
    assert r.returncode == 2 and "inconsistent" in r.stderr and not r.stdout, r.stdout + r.stderr
    # removed and added again, it is usable (and empty)
    run(RBLOCK, "bitmap", "--remove", live, "b")
    run(RBLOCK, "bitmap", "--add", live, "b")
    run(RBLOCK, "delta", "--bitmap", "b", full, live, out)
    qcheck(out)
    assert own_clusters(out, K64) == (set(), set())


def test_missing_bitmap_refused(tmp_path, pair):
    live, full = pair
    out = str(tmp_path / "out.qcow2")
    line = refused(["--bitmap", "other", full, live, out], "no bitmap 'other'",
                   [live, full], out)
    assert live in line
    # a bitmap of BASE is not NEW's
    run(RBLOCK, "bitmap", "--add", full, "f")
    refused(["--bitmap", "f", full, live, out], "no bitmap 'f'", [live, full], out)


def test_raw_new_refused(tmp_path, pair):
    live, full = pair
    raw = str(tmp_path / "live.raw")
    out = str(tmp_path / "out.qcow2")
    run("qemu-img", "convert", "-O", "raw", live, raw)
    refused(["--bitmap", "b", full, raw, out], "no dirty bitmaps", [raw, full], out)


def test_output_is_input_refused(tmp_path, pair):
    live, full = pair
    before = {f: digest(f) for f in (live, full)}
    for target in (live, full):
        r = run(RBLOCK, "delta", "--bitmap", "b", full, live, target, check=False)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "refusing to overwrite" in r.stderr, r.stderr
    assert {f: digest(f) for f in (live, full)} == before
    qcheck(live)
    qcheck(full)
    compare(full, live)


def test_diff_bitmap_lists_dirty_ranges(tmp_path, pair):
    """diff --bitmap lists what qemu-nbd -B serves as dirty, in sectors,
    reading nothing; exit status as cmp."""
    live, full = pair
    run("qemu-img", "bitmap", "--add", "-g", "16k", live, "fine")
    serve_writes(live, [("w", 100, b"\x55" * 4096), ("w", 5 * MiB - 10, b"\x66" * 20),
                        ("z", 9 * MiB, 200 * 1024)])
    for name in ("b", "fine"):
        want = dirty_ranges(live, name)
        assert want
        for ss in (512, 4096, 3000):
            r = run(RBLOCK, "diff", "--bitmap", name, "--sector-size", str(ss),
                    "--output=json", full, live, check=False)
            assert r.returncode == 1, r.stderr
            j = json.loads(r.stdout)
            assert j["bytes-read-a"] == 0 and j["bytes-read-b"] == 0
            sectors = set()
            for off, n in want:
                sectors.update(range(off // ss, (off + n + ss - 1) // ss))
            got = set()
            for rg in j["ranges"]:
                got.update(range(rg["start"], rg["start"] + rg["count"]))
            assert got == sectors and j["differing-sectors"] == len(sectors)
        r = run(RBLOCK, "diff", "--bitmap", name, full, live, check=False)
        assert r.returncode == 1 and f"(bitmap '{name}')" in r.stdout, r.stdout
    run(RBLOCK, "bitmap", "--clear", live, "b")
    r = run(RBLOCK, "diff", "--bitmap", "b", full, live, check=False)
    assert r.returncode == 0 and r.stdout == "nothing dirty (bitmap 'b')\n", r.stdout
    r = run(RBLOCK, "diff", "--bitmap", "nope", full, live, check=False)
    assert r.returncode == 2 and "no bitmap 'nope'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
