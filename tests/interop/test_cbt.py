# SPDX-License-Identifier: MIT
"""Changed-block tracking, the parts around the bitmaps themselves:
`convert --bitmaps` against `qemu-img convert --bitmaps` on the same image
(same qemu-img info, same dirty maps through qemu-nbd -B, qemu-img check
clean, inconsistent bitmaps refused or skipped alike); the JSON-RPC
`bitmap` parameter of block_status and map against nbdinfo --map of
qemu-nbd -B, live while writes arrive; and the dirty bytes `info` reports
against the dirty map qemu-nbd -B serves."""
import json
import os
import shutil
import subprocess

import nbd
import pytest

from nbd_helpers import RBLOCK, Server
import rpc_harness

MiB = 1 << 20
K64 = 64 * 1024


def run(*args, check=True, cwd=None):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def qcheck(path):
    c = run("qemu-img", "check", path, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def bitmaps(path):
    info = json.loads(run("qemu-img", "info", "-f", "qcow2", "--output=json", path).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def qemu_map(path, name):
    r = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
            "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, path, "]")
    out = []
    for line in r.stdout.splitlines():
        off, length, status = line.split()[:3]
        out.append((int(off), int(length), int(status)))
    return out


def dirty_bytes(m):
    return sum(n for _, n, st in m if st & 1)


@pytest.fixture
def src(tmp_path):
    """64 MiB with data, bitmaps of 512 B, 64 KiB (enabled), 128 KiB
    (disabled after recording) and 1 MiB granularity, each with its own
    dirty pattern, and an empty disabled one."""
    img = str(tmp_path / "src.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
    run("qemu-io", "-c", "write -P 1 0 1M", img)
    run("qemu-img", "bitmap", "--add", img, "b0")
    run("qemu-img", "bitmap", "--add", "-g", "128k", img, "b1")
    run("qemu-io", "-c", "write -P 2 4M 64k", "-c", "write -P 3 9M 200k", img)
    run("qemu-img", "bitmap", "--disable", img, "b1")
    run("qemu-img", "bitmap", "--add", "-g", "512", img, "fine")
    run("qemu-img", "bitmap", "--add", "-g", "1M", img, "coarse")
    run("qemu-img", "bitmap", "--add", "--disable", img, "off")
    run("qemu-io", "-c", "write -P 4 20M 1000", "-c", "write 63M 1M", "-c", "write 3000 10",
        img)
    return img


def test_convert_bitmaps_as_qemu(tmp_path, src):
    ours, theirs = str(tmp_path / "ours.qcow2"), str(tmp_path / "theirs.qcow2")
    r = run(RBLOCK, "convert", "--bitmaps", "-O", "qcow2", src, ours, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    run("qemu-img", "convert", "--bitmaps", "-O", "qcow2", src, theirs)
    qcheck(ours)
    assert run(RBLOCK, "check", ours, check=False).returncode == 0
    assert bitmaps(ours) == bitmaps(theirs) == bitmaps(src)
    assert len(bitmaps(ours)) == 5
    for b in bitmaps(src):
        m = qemu_map(ours, b["name"])
        assert m == qemu_map(theirs, b["name"]) == qemu_map(src, b["name"]), b
    assert dirty_bytes(qemu_map(ours, "fine")) > 0
    run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", ours, src)
    # another cluster size for the output: bitmaps are the disk's, not the file's
    small = str(tmp_path / "small.qcow2")
    run(RBLOCK, "convert", "--bitmaps", "-O", "qcow2", "-o", "cluster_size=4k", src, small)
    qcheck(small)
    assert bitmaps(small) == bitmaps(src)
    assert qemu_map(small, "b0") == qemu_map(src, "b0")
    # the copies are live bitmaps: qemu records into the enabled ones
    run("qemu-io", "-c", "write 40M 4k", ours)
    assert (40 * MiB, K64, 1) in qemu_map(ours, "b0")
    assert all(st == 0 for off, n, st in qemu_map(ours, "off"))
    # without --bitmaps nothing is copied, as with qemu-img
    plain = str(tmp_path / "plain.qcow2")
    run(RBLOCK, "convert", "-O", "qcow2", src, plain)
    assert bitmaps(plain) == []


def crash_server(img):
    """A write through rblock serve, then kill -9: the bitmaps stay in_use."""
    srv = Server(img)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"\x11" * 4096, 5 * MiB)
    h.flush()
    srv.kill()


def test_convert_inconsistent_bitmaps(tmp_path, src):
    crash_server(src)
    run("qemu-img", "bitmap", "--add", src, "fresh")  # consistent, beside them
    assert sum("in-use" in b["flags"] for b in bitmaps(src)) == 5
    out = tmp_path / "out.qcow2"
    r = run(RBLOCK, "convert", "--bitmaps", "-O", "qcow2", src, out, check=False)
    assert r.returncode == 1 and "inconsistent bitmap" in r.stderr, r.stderr
    assert "--skip-broken-bitmaps" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()
    q = run("qemu-img", "convert", "--bitmaps", "-O", "qcow2", src, tmp_path / "q.qcow2",
            check=False)
    assert q.returncode == 1 and "inconsistent bitmap" in q.stderr
    # skipped with a warning each, the consistent one copied
    r = run(RBLOCK, "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", src,
            out, check=False)
    assert r.returncode == 0 and r.stderr.count("skipping inconsistent bitmap") == 5
    run("qemu-img", "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", src,
        tmp_path / "q.qcow2")
    qcheck(str(out))
    assert bitmaps(str(out)) == bitmaps(str(tmp_path / "q.qcow2")) == [
        {"flags": ["auto"], "name": "fresh", "granularity": K64}]


def test_convert_bitmaps_refused(tmp_path, src):
    raw = str(tmp_path / "r.raw")
    run("qemu-img", "create", "-q", "-f", "raw", raw, "1M")
    for args, why in ((["--bitmaps", "-O", "raw", src], "needs -O qcow2"),
                      (["--skip-broken-bitmaps", "-O", "qcow2", src], "needs --bitmaps"),
                      (["--bitmaps", "-O", "qcow2", raw], "no persistent bitmaps"),
                      (["--bitmaps", "-O", "qcow2", "-o", "compat=0.10", src], "v2")):
        out = tmp_path / "out.img"
        r = run(RBLOCK, "convert", *args, out, check=False)
        assert r.returncode == 1 and why in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("rblock: ") and r.stderr.count("\n") == 1, r.stderr
        assert not out.exists(), args


def rpc_runs(c, method, name, **kw):
    return c.result(method, {"bitmap": name, **kw})


def as_map(runs, key):
    return [(r[key], r["length"], int(r["dirty"])) for r in runs]


def test_rpc_bitmap_extents(tmp_path, src):
    wants = {name: qemu_map(src, name) for name in ("b0", "fine", "coarse")}
    srv = rpc_harness.Server(src, "-B", "b0", "-B", "fine", "-B", "coarse")
    try:
        c = srv.client()
        for name, want in wants.items():
            assert as_map(rpc_runs(c, "map", name), "start") == want, name
            got = rpc_runs(c, "block_status", name, offset=0, length=64 * MiB)
            assert as_map(got, "offset") == want, name
        # a window: cut at its ends, as NBD's block status
        got = rpc_runs(c, "block_status", "b0", offset=9 * MiB + 100, length=MiB)
        assert as_map(got, "offset") == [(9 * MiB + 100, 4 * K64 - 100, 1),
                                         (9 * MiB + 4 * K64, MiB - 4 * K64 + 100, 0)]
        # live: a write through JSON-RPC is dirty at once in enabled bitmaps
        c.write(30 * MiB + 5, b"x" * 10)
        assert (30 * MiB, K64, 1) in as_map(rpc_runs(c, "map", "b0"), "start")
        assert (30 * MiB, 512, 1) in as_map(rpc_runs(c, "map", "fine"), "start")
        # refused: a bitmap not served, a wrong type, an empty name
        for params, why in (({"bitmap": "b1"}, "not served"),
                            ({"bitmap": 7}, "must be a string"),
                            ({"bitmap": ""}, "1 to 1023 bytes")):
            e = c.error("map", params)
            assert e["code"] == -32602 and why in e["message"], e
        # length 0: an empty result, as for every method (docs/jsonrpc.md)
        assert c.result("block_status", {"offset": 0, "length": 0, "bitmap": "b0"}) == []
        assert c.result("map", {"offset": 0, "length": 0, "bitmap": "b0"}) == []
        e = c.error("block_status", {"offset": 64 * MiB, "length": 1, "bitmap": "b0"})
        assert e["code"] == -32001
        c.close()
    finally:
        status, err = srv.stop()
    assert status == 0, err
    # the live write was written back at the clean stop
    assert (30 * MiB, K64, 1) in qemu_map(src, "b0")


def test_info_dirty_bytes(tmp_path, src):
    info = json.loads(run(RBLOCK, "info", "--output=json", src).stdout)
    assert info["format-specific"]["data"]["bitmaps"] == bitmaps(src)
    got = {d["name"]: d for d in info["rblock"]["dirty-bitmaps"]}
    assert list(got) == [b["name"] for b in bitmaps(src)]
    for b in bitmaps(src):
        d = got[b["name"]]
        assert d["count"] == dirty_bytes(qemu_map(src, b["name"])), d
        assert d["granularity"] == b["granularity"]
        assert d["recording"] == ("auto" in b["flags"]) and d["inconsistent"] is False
    assert got["fine"]["count"] == 512 * 3 + MiB  # 1000 bytes: 2 sectors; 10: one
    # a last granule cut by the end of the disk counts only its bytes
    odd = str(tmp_path / "odd.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", odd, str(MiB + 512))
    run("qemu-img", "bitmap", "--add", "-g", "1M", odd, "g")
    run("qemu-io", "-c", f"write {MiB} 512", odd)
    d = json.loads(run(RBLOCK, "info", "--output=json", odd).stdout)["rblock"]["dirty-bitmaps"]
    assert d[0]["count"] == dirty_bytes(qemu_map(odd, "g")) == 512
    human = run(RBLOCK, "info", src).stdout
    assert f"'b0': {got['b0']['count']} dirty bytes" in human
    # live through JSON-RPC info: what is recorded now, not what is on disk
    srv = rpc_harness.Server(src)
    try:
        c = srv.client()
        c.write(50 * MiB, b"y" * 512)
        live = {d["name"]: d for d in c.result("info")["rblock"]["dirty-bitmaps"]}
        assert live["b0"]["count"] == got["b0"]["count"] + K64
        assert live["off"]["count"] == 0
        c.close()
    finally:
        assert srv.stop()[0] == 0
    # inconsistent: no count, said so
    crash_server(src)
    info = json.loads(run(RBLOCK, "info", "--output=json", src).stdout)
    for d in info["rblock"]["dirty-bitmaps"]:
        assert d["inconsistent"] is True and "count" not in d, d
    assert "inconsistent" in run(RBLOCK, "info", src).stdout


def test_bitmap_table_longer_than_a_refcount_block_covers(tmp_path):
    """512 B clusters, a 64 GiB disk, 512 B granules: the bitmap's table
    (256 KiB, 512 clusters) is longer than one refcount block covers (256
    clusters).  It must land in one run past the end of the file, not push
    the file to gigabytes of retries; served writes are then recorded."""
    img = str(tmp_path / "small-clusters.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", img, "64G")
    run("qemu-io", "-c", "write -P 1 0 1M", img)
    before = os.path.getsize(img)
    run(RBLOCK, "bitmap", "--add", "-g", "512", img, "b")
    srv = Server(img, "-f", "qcow2")
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        h.pwrite(b"\x22" * 4096, 40 << 30)
        h.flush()
        h.shutdown()
    finally:
        srv.stop()
    assert os.path.getsize(img) < before + 8 * MiB, os.path.getsize(img)
    qcheck(img)
    assert [b["name"] for b in bitmaps(img)] == ["b"]
    assert [(o, n) for o, n, st in qemu_map(img, "b") if st & 1] == [(40 << 30, 4096)]
