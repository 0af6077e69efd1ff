# SPDX-License-Identifier: MIT
"""qcow2 read path against qemu: images made by qemu-img/qemu-io in many
configurations must give the same `map --output=json` text, the same bytes
(`rblock diff` against qemu-img's raw conversion), the same info fields and
the same `check` exit code as qemu-img.  Run with RBLOCK set (meson does)."""
import json
import os
import struct
import subprocess

import pytest

RBLOCK = os.environ.get("RBLOCK", "build/rblock")


def run(*args, check=True, cwd=None):
    p = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stderr}")
    return p


def qio(path, *cmds, fmt="qcow2"):
    """In the image's folder: qemu 7.2 opens a relative data file name from
    the working directory (rblock from the image's folder, as backing files)."""
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    run(*args, os.path.basename(path), cwd=os.path.dirname(path) or ".")


def create(path, size, opts="", backing=None, bfmt=None):
    """Run in the image's folder: relative names (data files) land there."""
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    if backing:
        args += ["-b", backing, "-F", bfmt]
    run(*args, os.path.basename(path), str(size), cwd=os.path.dirname(path) or ".")


def compare_all(path, cwd):
    """map text, data, info fields and check exit code equal qemu's."""
    q = run("qemu-img", "map", "--output=json", path, cwd=cwd).stdout
    r = run(RBLOCK, "map", "--output=json", path, cwd=cwd)
    assert r.stderr == ""
    assert r.stdout == q, f"map differs for {path}"
    qh = run("qemu-img", "map", path, check=False, cwd=cwd)
    if qh.returncode == 0:  # qemu refuses the table with compressed clusters
        rh = run(RBLOCK, "map", path, cwd=cwd).stdout
        assert rh.split("\n\n")[0] + "\n" == qh.stdout, f"human map differs for {path}"
    raw = os.path.join(cwd, "ref.raw")
    run("qemu-img", "convert", "-O", "raw", path, raw, cwd=cwd)
    d = run(RBLOCK, "diff", path, raw, check=False, cwd=cwd)
    assert d.returncode == 0, f"data differs for {path}: {d.stdout[:300]} {d.stderr}"
    # and byte for byte through rblock's own convert
    mine = os.path.join(cwd, "mine.raw")
    run(RBLOCK, "convert", "-O", "raw", path, mine, cwd=cwd)
    with open(raw, "rb") as a, open(mine, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            assert x == y, f"convert -O raw differs for {path}"
            if not x:
                break
    os.unlink(mine)
    os.unlink(raw)
    qi = json.loads(run("qemu-img", "info", "--output=json", path, cwd=cwd).stdout)
    ri = json.loads(run(RBLOCK, "info", "--output=json", path, cwd=cwd).stdout)
    for k in ("virtual-size", "cluster-size", "format", "backing-filename",
              "full-backing-filename", "backing-filename-format", "dirty-flag",
              "filename"):
        assert qi.get(k) == ri.get(k), f"info {k}: qemu {qi.get(k)} rblock {ri.get(k)}"
    if qi["format"] == "qcow2":
        qd, rd = qi["format-specific"]["data"], ri["format-specific"]["data"]
        for k in ("compat", "compression-type", "lazy-refcounts", "refcount-bits",
                  "corrupt", "extended-l2", "data-file", "data-file-raw", "bitmaps"):
            assert qd.get(k) == rd.get(k), f"info {k}: qemu {qd.get(k)} rblock {rd.get(k)}"
        qs = [(s["id"], s["name"], s["date-sec"]) for s in qi.get("snapshots", [])]
        rs = [(s["id"], s["name"], s["date-sec"]) for s in ri.get("snapshots", [])]
        assert qs == rs
        compare_check(path, cwd)
        qc = json.loads(run("qemu-img", "check", "--output=json", path, check=False,
                            cwd=cwd).stdout)
        cl = ri["rblock"]["clusters"]
        assert cl["allocated"] + cl["compressed"] == qc.get("allocated-clusters", 0)


def compare_check(path, cwd):
    """check: same exit code and the same counts as qemu-img check."""
    q = run("qemu-img", "check", "--output=json", path, check=False, cwd=cwd)
    r = run(RBLOCK, "check", "--output=json", path, check=False, cwd=cwd)
    assert q.returncode == r.returncode, f"check exit: qemu {q.returncode} rblock {r.returncode}"
    qj, rj = json.loads(q.stdout), json.loads(r.stdout)
    for k in ("image-end-offset", "total-clusters", "check-errors", "allocated-clusters",
              "fragmented-clusters", "compressed-clusters", "leaks", "corruptions"):
        assert qj.get(k, 0) == rj.get(k, 0), f"check {k}: qemu {qj.get(k)} rblock {rj.get(k)}"


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)


PATTERN = ["write -P 0x11 0 64k", "write -P 0x22 100k 7k", "write -z 300k 64k",
           "write -P 0x33 1M 128k", "discard 1M 64k", "write -P 0x44 3M 4k"]


@pytest.mark.parametrize("opts", [
    "compat=0.10", "compat=0.10,cluster_size=4096",
    "cluster_size=512", "cluster_size=4096", "cluster_size=65536",
    "cluster_size=2M", "lazy_refcounts=on",
    "refcount_bits=1", "refcount_bits=2", "refcount_bits=4", "refcount_bits=8",
    "refcount_bits=32", "refcount_bits=64",
    "preallocation=metadata", "preallocation=falloc", "preallocation=full",
    "extended_l2=on", "extended_l2=on,cluster_size=16k", "extended_l2=on,cluster_size=2M",
])
def test_config(tmp, opts):
    img = os.path.join(tmp, "a.qcow2")
    create(img, "4M", opts)
    qio(img, *PATTERN)
    compare_all("a.qcow2", tmp)


def test_extended_l2_subclusters(tmp):
    img = os.path.join(tmp, "e.qcow2")
    create(img, "8M", "extended_l2=on,cluster_size=64k")
    qio(img, "write -P 1 0 2k", "write -P 2 6k 1k", "write -z 64k 2k",
        "write -P 3 128k 64k", "write -z 130k 2k", "discard 136k 4k",
        "write -P 4 1M 4k", "write -P 5 1064960 8k")
    compare_all("e.qcow2", tmp)
    # over a backing file: unallocated subclusters read the backing
    base = os.path.join(tmp, "b.qcow2")
    create(base, "8M")
    qio(base, "write -P 9 0 8M")
    top = os.path.join(tmp, "t.qcow2")
    create(top, "8M", "extended_l2=on", backing="b.qcow2", bfmt="qcow2")
    qio(top, "write -P 1 2k 2k", "write -z 64k 2k", "write -P 3 200k 1k")
    compare_all("t.qcow2", tmp)
    # extended L2 over extended L2: unallocated subclusters at both depths
    create(os.path.join(tmp, "eb.qcow2"), "2M", "extended_l2=on")
    qio(os.path.join(tmp, "eb.qcow2"), "write -P 1 4k 4k", "write -z 100k 2k")
    create(os.path.join(tmp, "et.qcow2"), "4M", "extended_l2=on", backing="eb.qcow2",
           bfmt="qcow2")
    qio(os.path.join(tmp, "et.qcow2"), "write -P 2 0 2k", "write -P 3 1M 2k",
        "write -z 98k 4k")
    compare_all("et.qcow2", tmp)


@pytest.mark.parametrize("ctype", ["zlib", "zstd", "zlib,cluster_size=512",
                                   "zstd,cluster_size=2M", "zlib,extended_l2=on",
                                   "zstd,compat=0.10"])
def test_compressed(tmp, ctype):
    src = os.path.join(tmp, "s.raw")
    run("qemu-img", "create", "-q", "-f", "raw", src, "5M")
    qio(src, "write -P 0x5a 0 1M", "write -P 0x6b 2M 300k", "write -P 0 3M 64k",
        fmt="raw")
    with open(src, "r+b") as f:  # incompressible data too
        f.seek(4 << 20)
        f.write(os.urandom(200000))
    if "compat=0.10" in ctype:  # v2 has zlib only
        ctype = "zlib,compat=0.10"
    run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", f"compression_type={ctype}",
        src, os.path.join(tmp, "c.qcow2"))
    qio(os.path.join(tmp, "c.qcow2"), "write -P 7 512k 4k")
    compare_all("c.qcow2", tmp)


def test_chain_raw_qcow2(tmp):
    # raw base shorter than its overlays; three layers
    run("qemu-img", "create", "-q", "-f", "raw", os.path.join(tmp, "base.raw"), "1536k")
    qio(os.path.join(tmp, "base.raw"), "write -P 1 0 512k", "write -P 2 1M 100k", fmt="raw")
    create(os.path.join(tmp, "mid.qcow2"), "3M", backing="base.raw", bfmt="raw")
    qio(os.path.join(tmp, "mid.qcow2"), "write -P 3 256k 64k", "write -z 1M 64k",
        "write -P 4 2M 64k")
    create(os.path.join(tmp, "top.qcow2"), "4M", backing="mid.qcow2", bfmt="qcow2")
    qio(os.path.join(tmp, "top.qcow2"), "write -P 5 0 4k", "write -P 6 3146240 1k",
        "discard 2M 64k")
    for img in ("mid.qcow2", "top.qcow2"):
        compare_all(img, tmp)
    q = json.loads(run("qemu-img", "info", "--output=json", "--backing-chain",
                       "top.qcow2", cwd=tmp).stdout)
    r = json.loads(run(RBLOCK, "info", "--output=json", "--backing-chain",
                       "top.qcow2", cwd=tmp).stdout)
    assert [x["filename"] for x in q] == [x["filename"] for x in r]
    assert [x["virtual-size"] for x in q] == [x["virtual-size"] for x in r]


def test_chain_qcow2_subdir(tmp):
    os.mkdir(os.path.join(tmp, "d"))
    create(os.path.join(tmp, "d", "base.qcow2"), "1M", "cluster_size=4096")
    qio(os.path.join(tmp, "d", "base.qcow2"), "write -P 1 0 1M")
    create(os.path.join(tmp, "d", "mid.qcow2"), "2M", backing="base.qcow2", bfmt="qcow2")
    qio(os.path.join(tmp, "d", "mid.qcow2"), "write -P 2 64k 4k")
    create(os.path.join(tmp, "d", "top.qcow2"), "2M", "compat=0.10",
           backing="mid.qcow2", bfmt="qcow2")
    qio(os.path.join(tmp, "d", "top.qcow2"), "write -P 3 1M 64k")
    compare_all("d/top.qcow2", tmp)


def test_snapshots_and_bitmaps(tmp):
    img = os.path.join(tmp, "s.qcow2")
    create(img, "4M")
    qio(img, "write -P 1 0 1M")
    run("qemu-img", "snapshot", "-c", "first", img)
    qio(img, "write -P 2 512k 1M")
    run("qemu-img", "snapshot", "-c", "second", img)
    run("qemu-img", "bitmap", "--add", img, "bm0")
    run("qemu-img", "bitmap", "--add", "-g", "512k", img, "bm1")
    qio(img, "write -P 3 2M 64k", "discard 0 64k")
    compare_all("s.qcow2", tmp)
    r = json.loads(run(RBLOCK, "info", "--output=json", img).stdout)
    assert [s["name"] for s in r["snapshots"]] == ["first", "second"]


def test_data_file(tmp):
    for raw_flag in ("off", "on"):
        name = f"df{raw_flag}.qcow2"
        create(os.path.join(tmp, name), "2M", f"data_file=data{raw_flag}.bin,"
               f"data_file_raw={raw_flag}")
        qio(os.path.join(tmp, name), "write -P 1 0 64k", "write -P 2 1M 4k",
            "write -z 64k 64k")
        compare_all(name, tmp)


def test_one_tebibyte(tmp):
    img = os.path.join(tmp, "big.qcow2")
    create(img, "1T")
    qio(img, "write -P 1 0 64k", "write -P 2 512G 64k", "write -P 3 1099511562240 64k")
    q = run("qemu-img", "map", "--output=json", img).stdout
    assert run(RBLOCK, "map", "--output=json", img).stdout == q
    assert run(RBLOCK, "check", img, check=False).returncode == 0
    info = json.loads(run(RBLOCK, "info", "--output=json", img).stdout)
    assert info["virtual-size"] == 1 << 40


def test_lazy_refcounts_dirty(tmp):
    """qemu-io aborts after writing with lazy refcounts: dirty, refcounts
    missing; qemu and rblock both count the same errors."""
    img = os.path.join(tmp, "lz.qcow2")
    create(img, "4M", "lazy_refcounts=on")
    subprocess.run(["qemu-io", "-c", "write -P 1 0 1M", "-c", "abort", img],
                   capture_output=True)
    info = json.loads(run(RBLOCK, "info", "--output=json", img).stdout)
    assert info["dirty-flag"] is True
    compare_all("lz.qcow2", tmp)


def refcount_block(path):
    """(cluster_size, refcount_order, offset of the first refcount block)"""
    with open(path, "rb") as f:
        h = f.read(104)
    cbits = struct.unpack(">I", h[20:24])[0]
    rt_off = struct.unpack(">Q", h[48:56])[0]
    order = struct.unpack(">I", h[96:100])[0]
    with open(path, "rb") as f:
        f.seek(rt_off)
        rb_off = struct.unpack(">Q", f.read(8))[0]
    return 1 << cbits, order, rb_off


def set_refcount16(path, cluster, value):
    csize, order, rb_off = refcount_block(path)
    assert order == 4
    with open(path, "r+b") as f:
        f.seek(rb_off + 2 * cluster)
        f.write(struct.pack(">H", value))


def test_check_leak_and_corruption(tmp):
    img = os.path.join(tmp, "l.qcow2")
    create(img, "1M")
    qio(img, "write -P 1 0 128k")
    size = os.path.getsize(img)
    with open(img, "r+b") as f:  # one more cluster, counted but unused: a leak
        f.truncate(size + 65536)
    set_refcount16(img, size // 65536, 1)
    q = run("qemu-img", "check", img, check=False)
    r = run(RBLOCK, "check", img, check=False)
    assert q.returncode == 3 and r.returncode == 3, (q.returncode, r.returncode, r.stdout)
    compare_check(img, tmp)
    assert "leaked cluster" in r.stdout
    rj = json.loads(run(RBLOCK, "check", "--output=json", img, check=False).stdout)
    assert rj["leaks"] == 1

    img2 = os.path.join(tmp, "c.qcow2")
    create(img2, "1M")
    qio(img2, "write -P 1 0 128k")
    m = json.loads(run("qemu-img", "map", "--output=json", img2).stdout)
    data_off = m[0]["offset"]
    set_refcount16(img2, data_off // 65536, 0)  # referenced but free: corruption
    q = run("qemu-img", "check", img2, check=False)
    r = run(RBLOCK, "check", img2, check=False)
    assert q.returncode == 2 and r.returncode == 2, (q.returncode, r.returncode, r.stdout)
    assert f"0x{data_off:x}" in r.stdout
    compare_check(img2, tmp)

    img3 = os.path.join(tmp, "o.qcow2")  # two L2 entries share a cluster
    create(img3, "1M")
    qio(img3, "write -P 1 0 128k")
    with open(img3, "r+b") as f:
        l1_off = struct.unpack(">Q", (f.seek(40), f.read(8))[1])[0]
        l2_off = struct.unpack(">Q", (f.seek(l1_off), f.read(8))[1])[0] & ((1 << 56) - 512)
        f.seek(l2_off)
        e0 = f.read(8)
        f.seek(l2_off + 8)
        f.write(e0)
    q = run("qemu-img", "check", img3, check=False)
    r = run(RBLOCK, "check", img3, check=False)
    assert q.returncode == r.returncode == 2, (q.returncode, r.returncode)
    compare_check(img3, tmp)


def test_cli_shapes(tmp):
    img = os.path.join(tmp, "x.qcow2")
    create(img, "1M")
    assert run(RBLOCK, "--inspect", img).stdout == run(RBLOCK, "info", img).stdout
    for cmd in ("info", "map", "check"):
        assert run(RBLOCK, cmd, "--help").returncode == 0
        assert run(RBLOCK, cmd, "--output=xml", img, check=False).returncode == 1
        assert run(RBLOCK, cmd, "--bogus", img, check=False).returncode == 1
        assert run(RBLOCK, cmd, check=False).returncode == 1
        assert run(RBLOCK, cmd, "-f", "qcow2", img).returncode == 0
        p = run(RBLOCK, cmd, os.path.join(tmp, "missing.qcow2"), check=False)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "missing" in p.stderr
    # a raw file: info and map work, check is not supported (as qemu-img: 63)
    raw = os.path.join(tmp, "x.raw")
    open(raw, "wb").write(b"\1" * 4096)
    assert json.loads(run(RBLOCK, "info", "--output=json", raw).stdout)["format"] == "raw"
    assert run(RBLOCK, "check", raw, check=False).returncode == 63
    assert run("qemu-img", "check", "-f", "raw", raw, check=False).returncode == 63
    # human map of a qcow2 shows its L1/L2 tables
    qio(img, "write -P 1 0 64k")
    out = run(RBLOCK, "map", img).stdout
    assert "L1 table at 0x" in out and "L1[0]" in out


INJECTIONS = ["l2copied", "l1copied", "rc2", "l2overlap", "refblock_unaligned",
              "refblock_past_eof", "l2_beyond_eof", "l2_unaligned", "l1_to_header",
              "l2_reserved", "l1_reserved", "reft_reserved", "l1_unaligned", "l1_past_eof"]


@pytest.mark.parametrize("what", INJECTIONS)
def test_check_injected(tmp, what):
    """One damage at a time: the same exit code and counts as qemu-img check."""
    img = os.path.join(tmp, "i.qcow2")
    create(img, "1M")
    qio(img, "write -P 1 0 128k")
    with open(img, "r+b") as f:
        h = f.read(104)
        l1_off = struct.unpack(">Q", h[40:48])[0]
        rt_off = struct.unpack(">Q", h[48:56])[0]
        f.seek(l1_off)
        l1e = struct.unpack(">Q", f.read(8))[0]
        l2 = l1e & ((1 << 56) - 512)
        f.seek(l2)
        l2e = struct.unpack(">Q", f.read(8))[0]
        f.seek(rt_off)
        rb = struct.unpack(">Q", f.read(8))[0]
        host = l2e & ((1 << 56) - 512)
        patch = {
            "l2copied": (l2, l2e & ~(1 << 63)),
            "l1copied": (l1_off, l1e & ~(1 << 63)),
            "l2overlap": (l2, (1 << 63) | l1_off),
            "refblock_unaligned": (rt_off, rb + 512),
            "refblock_past_eof": (rt_off, 1 << 40),
            "l2_beyond_eof": (l2 + 8, (1 << 63) | (1 << 40)),
            "l2_unaligned": (l2 + 8, (1 << 63) | (host + 0x10200)),
            "l1_to_header": (l1_off, (1 << 63)),
            "l2_reserved": (l2, l2e | 2),
            "l1_reserved": (l1_off, l1e | (1 << 56)),
            "reft_reserved": (rt_off, rb | 1),
            "l1_unaligned": (l1_off, l1e + 0x200),
            "l1_past_eof": (l1_off, (1 << 63) | (1 << 40)),
        }
        if what == "rc2":
            f.seek(rb + 2 * (host // 65536))
            f.write(struct.pack(">H", 2))
        else:
            off, value = patch[what]
            f.seek(off)
            f.write(struct.pack(">Q", value))
    compare_check("i.qcow2", tmp)
