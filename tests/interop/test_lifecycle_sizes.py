# SPDX-License-Identifier: MIT
"""rblock measure, compare, resize and amend against qemu-img on copies of
the same images.

Images are made by qemu-img and qemu-io: v2 and v3, 512 B to 2 MiB
clusters, extended L2, compressed clusters, zero clusters, a backing
chain, persistent bitmaps.  measure and compare must print what qemu-img
prints (byte for byte) and exit as it does; resize and amend must leave an
image that reads as qemu-img's result (`qemu-img compare`), checks clean,
and shows the same `qemu-img info` fields; a refusal must change nothing.
"""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

RBLOCK = os.environ.get("RBLOCK", "build/rblock")
MiB = 1 << 20
KiB = 1 << 10


def run(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r


def qemu_io(img, *cmds, fmt="qcow2"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    run(*args, img)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# name: (create options, extra qemu-io commands)
KINDS = {
    "v3-64k": ("cluster_size=64k", []),
    "v2-4k": ("compat=0.10,cluster_size=4k", []),
    "v3-512": ("cluster_size=512", []),
    "v3-2M-lazy": ("cluster_size=2M,lazy_refcounts=on", []),
    "v3-extl2-32k": ("cluster_size=32k,extended_l2=on", ["write -P 5 45056 4k"]),
    "v3-compressed": ("cluster_size=64k", ["write -c -P 6 8M 64k", "write -c -P 7 9M 128k"]),
}


def make(path, kind, size=64 * MiB):
    opts, extra = KINDS[kind]
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, size)
    qemu_io(path, "write -P 1 0 1M", "write -P 2 3M 77k", "write -z 5M 1M",
            "write -P 3 40M 3M", "write -P 4 63M 1M", *extra)
    return str(path)


def info(path):
    d = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    for k in ("filename", "actual-size", "dirty-flag"):
        d.pop(k, None)
    return d


def same_result(qa, qb):
    """rblock's result qb equals qemu-img's qa."""
    r = run("qemu-img", "check", qb, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("qemu-img", "compare", qa, qb, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert info(qa) == info(qb)


# ---- measure --------------------------------------------------------------


def both_measure(*args):
    q = run("qemu-img", "measure", *args, check=False)
    r = run(RBLOCK, "measure", *args, check=False)
    assert r.returncode == q.returncode, (args, q.stderr, r.stderr)
    if q.returncode == 0:
        assert r.stdout == q.stdout, args
    return r


MEASURE_OPTS = [
    [], ["-O", "qcow2"], ["-O", "qcow2", "--output=json"],
    ["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1"],
    ["-O", "qcow2", "-o", "compat=0.10"],
    ["-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64"],
    ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"],
    ["-O", "qcow2", "-o", "preallocation=full"],
    ["-O", "qcow2", "-o", "backing_file=x.qcow2,backing_fmt=qcow2"],
]


def test_measure_qcow2_sources(tmp_path):
    for i, kind in enumerate(sorted(KINDS)):
        img = make(tmp_path / f"{kind}.qcow2", kind)
        for opts in MEASURE_OPTS[i % 3::3] + MEASURE_OPTS[1:3]:
            both_measure(*opts, img)


def test_measure_raw_chain_bitmaps_and_sizes(tmp_path):
    raw = tmp_path / "a.raw"
    with open(raw, "wb") as f:
        f.truncate(50 * MiB + 1000)  # not a whole sector: qemu rounds up
        for off in (0, 7 * MiB + 100, 30 * MiB):
            f.seek(off)
            f.write(b"\x42" * 70000)
    base = make(tmp_path / "base.qcow2", "v3-64k")
    top = tmp_path / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io(top, "write -P 9 20M 2M", "write -z 0 64k")
    bm = make(tmp_path / "bm.qcow2", "v3-64k", size=1 << 30)
    run("qemu-img", "bitmap", "--add", bm, "b0")
    run("qemu-img", "bitmap", "--add", "-g", "512", bm, "a-much-longer-bitmap-name")
    for src in (["-f", "raw", raw], [top], [bm]):
        for opts in MEASURE_OPTS:
            both_measure(*opts, *src)
    for size in ("1", "100G", "1000000"):
        for opts in MEASURE_OPTS[:7]:
            both_measure(*opts, "--size", size)
    # qemu-img's refusals
    assert both_measure("--size", "1G", raw).returncode == 1
    assert both_measure().returncode == 1
    r = run(RBLOCK, "measure", "-O", "qcow2", "-o", "cluster_size=512", "--size", "1P",
            check=False)
    assert r.returncode == 1 and "L1 table" in r.stderr


# ---- compare ----------------------------------------------------------------


def both_compare(*args):
    q = run("qemu-img", "compare", *args, check=False)
    r = run(RBLOCK, "compare", *args, check=False)
    assert (r.returncode, r.stdout) == (q.returncode, q.stdout), (args, q, r)
    return q.returncode


def test_compare(tmp_path):
    a = make(tmp_path / "a.qcow2", "v3-64k")
    b = str(tmp_path / "b.qcow2")
    shutil.copy(a, b)
    assert both_compare(a, b) == 0
    qemu_io(b, "write -P 3 41000123 1")  # inside data: both allocated
    assert both_compare(a, b) == 1
    shutil.copy(a, b)
    qemu_io(b, "write -P 3 20000077 3")  # unallocated in a
    assert both_compare(a, b) == 1
    shutil.copy(a, b)
    qemu_io(b, "write -z 40M 64k")  # data against zero cluster
    assert both_compare(a, b) == 1
    # raw copy: identical content, different allocation (strict tells)
    raw = str(tmp_path / "a.raw")
    run("qemu-img", "convert", "-O", "raw", a, raw)
    assert both_compare("-f", "qcow2", "-F", "raw", a, raw) == 0
    assert both_compare("-s", "-f", "qcow2", "-F", "raw", a, raw) == 1
    assert both_compare("-s", a, a) == 0
    # sizes differ: zero tail is fine, data in the tail is not
    big = make(tmp_path / "big.qcow2", "v2-4k", size=80 * MiB)
    assert both_compare(a, big) == 0
    assert both_compare("-s", a, big) == 1
    qemu_io(big, "write -P 9 73400997 1")
    assert both_compare(a, big) == 1
    assert both_compare(big, a) == 1
    # chain against its flattened copy; every kind against its raw copy
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", a, "-F", "qcow2", top)
    qemu_io(top, "write -P 8 2M 2M")
    flat = str(tmp_path / "flat.qcow2")
    run("qemu-img", "convert", "-O", "qcow2", top, flat)
    assert both_compare(top, flat) == 0
    assert both_compare(top, a) == 1
    for kind in ("v3-extl2-32k", "v3-compressed", "v3-512"):
        k = make(tmp_path / f"{kind}.qcow2", kind)
        assert both_compare(k, k) == 0
        assert both_compare(a, k) == (0 if kind == "v3-512" else 1)
    assert both_compare("-q", a, b) == 1
    # trouble: exit 2 for a missing image, usage errors exit 1
    r = run(RBLOCK, "compare", a, tmp_path / "missing", check=False)
    assert r.returncode == 2 and "missing" in r.stderr
    assert run(RBLOCK, "compare", a, check=False).returncode == 1


# ---- resize -------------------------------------------------------------------


def both_resize(tmp_path, img, *args):
    qa, qb = str(tmp_path / "qa.qcow2"), str(tmp_path / "qb.qcow2")
    shutil.copy(img, qa)
    shutil.copy(img, qb)
    run("qemu-img", "resize", "-q", *args[:-1], qa, args[-1])
    r = run(RBLOCK, "resize", *args[:-1], qb, args[-1])
    assert r.stdout == "Image resized.\n"
    same_result(qa, qb)
    return qa, qb


@pytest.mark.parametrize("kind", ["v3-64k", "v2-4k", "v3-512", "v3-extl2-32k",
                                  "v3-compressed"])
def test_resize_qcow2(tmp_path, kind):
    img = make(tmp_path / "a.qcow2", kind)
    both_resize(tmp_path, img, "300M" if kind == "v3-512" else "5G")
    # (qemu-img takes 5 to 20 s per shrink of a 512-byte-cluster image)
    both_resize(tmp_path, img, "--shrink", "-30M" if kind == "v3-512" else "4000256")
    if kind == "v3-64k":
        both_resize(tmp_path, img, "+1M")
        both_resize(tmp_path, img, "--shrink", "40M")
    # refusals change nothing
    before = digest(img)
    for args in (["40M"], ["--shrink", "1000001"], ["--shrink", "-64M"], ["1E"]):
        r = run(RBLOCK, "resize", *args[:-1], img, args[-1], check=False)
        assert r.returncode == 1 and r.stderr, args
        assert digest(img) == before, args
    r = run(RBLOCK, "resize", img, "-1M", check=False)
    assert r.returncode == 1 and "--shrink" in r.stderr and digest(img) == before


def test_resize_chain_bitmaps_raw(tmp_path):
    base = make(tmp_path / "base.qcow2", "v3-64k")
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io(top, "write -P 8 2M 2M", "write -P 8 62M 2M")
    both_resize(tmp_path, top, "100M")
    both_resize(tmp_path, top, "--shrink", "3M")
    # persistent bitmaps follow the size, as qemu-img
    bm = make(tmp_path / "bm.qcow2", "v3-64k")
    run("qemu-img", "bitmap", "--add", bm, "b0")
    run("qemu-img", "bitmap", "--add", "-g", "4k", bm, "b1")
    qemu_io(bm, "write -P 1 60M 1M")
    for args in (["2G"], ["--shrink", "10M"]):
        qa, qb = both_resize(tmp_path, bm, *args)  # info: bitmaps equal
        assert info(qb)["format-specific"]["data"]["bitmaps"]
    # an inconsistent (in use) bitmap is refused
    bad = str(tmp_path / "bad.qcow2")
    shutil.copy(bm, bad)
    d = json.loads(run("qemu-img", "info", "--output=json", bad).stdout)
    assert d["format-specific"]["data"]["bitmaps"]
    off = find_bitmap_dir(bad)
    with open(bad, "r+b") as f:
        f.seek(off + 12)  # set in_use in the directory
        flags = int.from_bytes(f.read(4), "big")
        f.seek(off + 12)
        f.write((flags | 1).to_bytes(4, "big"))
    before = digest(bad)
    r = run(RBLOCK, "resize", bad, "1G", check=False)
    assert r.returncode == 1 and "inconsistent" in r.stderr
    assert digest(bad) == before
    # raw: ftruncate, as qemu-img
    raw = str(tmp_path / "a.raw")
    with open(raw, "wb") as f:
        f.write(b"\x11" * 5000)
    for args in (["+1"], ["1M"], ["--shrink", "4097"], ["-f", "raw", "--shrink", "-97"]):
        ra, rb, cur = (str(tmp_path / f"{n}.raw") for n in ("ra", "rb", "cur"))
        shutil.copy(raw, cur)
        shutil.copy(cur, ra)
        shutil.copy(cur, rb)
        run("qemu-img", "resize", "-q", "-f", "raw", *[a for a in args if a != "-f" and
                                                      a != "raw"][:-1], ra, args[-1])
        run(RBLOCK, "resize", *args[:-1], rb, args[-1])
        assert open(ra, "rb").read() == open(rb, "rb").read(), args
        raw = rb
    before = digest(raw)
    assert run(RBLOCK, "resize", raw, "10", check=False).returncode == 1
    assert digest(raw) == before
    assert run(RBLOCK, "resize", tmp_path / "missing", "1M", check=False).returncode == 1
    assert not os.path.exists(tmp_path / "missing")


def find_bitmap_dir(path):
    with open(path, "rb") as f:
        h = f.read(4096)
    hl = int.from_bytes(h[100:104], "big")
    pos = hl
    while pos + 8 <= len(h):
        t = int.from_bytes(h[pos:pos + 4], "big")
        ln = int.from_bytes(h[pos + 4:pos + 8], "big")
        if t == 0x23852875:
            return int.from_bytes(h[pos + 8 + 16:pos + 8 + 24], "big")
        if t == 0:
            break
        pos += 8 + (ln + 7) // 8 * 8
    raise AssertionError("no bitmaps extension")


# ---- amend ---------------------------------------------------------------------

AMENDS = ["compat=0.10", "refcount_bits=1", "size=200M",
          "compat=1.1,lazy_refcounts=on,refcount_bits=64"]


@pytest.mark.parametrize("kind", ["v3-64k", "v2-4k", "v3-extl2-32k", "v3-compressed"])
def test_amend(tmp_path, kind):
    img = make(tmp_path / "a.qcow2", kind, size=64 * MiB + 512)
    qa, qb = str(tmp_path / "qa.qcow2"), str(tmp_path / "qb.qcow2")
    for opts in AMENDS:
        shutil.copy(img, qa)
        shutil.copy(img, qb)
        q = run("qemu-img", "amend", "-o", opts, qa, check=False)
        r = run(RBLOCK, "amend", "-o", opts, qb, check=False)
        assert r.returncode == q.returncode, (opts, q.stderr, r.stderr)
        if q.returncode:
            assert r.stderr and digest(qb) == digest(img), opts
        same_result(qa, qb)


def test_amend_refusals(tmp_path):
    img = make(tmp_path / "a.qcow2", "v3-64k")
    zstd = str(tmp_path / "z.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", zstd, "1M")
    qemu_io(zstd, "write -c 0 64k")
    bm = make(tmp_path / "bm.qcow2", "v3-64k")
    run("qemu-img", "bitmap", "--add", bm, "b0")
    ext = make(tmp_path / "e.qcow2", "v3-extl2-32k")
    cases = [
        (img, "backing_file=other.qcow2", "backing file"),
        (img, "cluster_size=4k", "creation"),
        (img, "compat=1.2", "compatibility level"),
        (img, "refcount_bits=3", "power of two"),
        (img, "lazy_refcounts=maybe", "'on' or 'off'"),
        (img, "compat=0.10,refcount_bits=8", "refcount"),
        (img, "compat=0.10,lazy_refcounts=on", "lazy refcounts"),
        (zstd, "compat=0.10", "zstd"),
        (ext, "compat=0.10", "incompatible features"),
        (bm, "compat=0.10", "bitmaps"),
    ]
    for path, opts, words in cases:
        before = digest(path)
        r = run(RBLOCK, "amend", "-o", opts, path, check=False)
        assert r.returncode == 1 and words in r.stderr, (opts, r.stderr)
        assert digest(path) == before, opts
        if "bitmaps" not in words:  # qemu-img refuses the same (it leaks there)
            assert run("qemu-img", "amend", "-o", opts, path, check=False).returncode == 1
            assert digest(path) == before, opts
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", zstd, "1M")
    qemu_io(zstd, "write -P 1 0 64k")
    qa, qb = str(tmp_path / "qa.qcow2"), str(tmp_path / "qb.qcow2")
    shutil.copy(zstd, qa)
    shutil.copy(zstd, qb)
    run("qemu-img", "amend", "-o", "compat=0.10", qa)
    run(RBLOCK, "amend", "-o", "compat=0.10", qb)
    same_result(qa, qb)
    r = run(RBLOCK, "amend", img, check=False)
    assert r.returncode == 1 and "-o" in r.stderr
    raw = str(tmp_path / "a.raw")
    open(raw, "wb").truncate(MiB)
    assert run(RBLOCK, "amend", "-o", "compat=1.1", "-f", "raw", raw,
               check=False).returncode == 1


# ---- map ranges, info -U ----------------------------------------------------------


def test_map_range_and_info_force_share(tmp_path):
    base = make(tmp_path / "base.qcow2", "v3-64k")
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io(top, "write -P 8 2M 2M", "write -z 41M 64k")
    for rng in (["--start-offset", "1M", "--max-length", "40M"],
                ["--start-offset", "3000000"], ["--max-length", "1"],
                ["--start-offset", "64M"], ["--start-offset", "1G"],
                ["--start-offset", "41M", "--max-length", "0"]):
        q = run("qemu-img", "map", "--output=json", *rng, top)
        r = run(RBLOCK, "map", "--output=json", *rng, top)
        assert r.stdout == q.stdout, rng
    # info -U reads an image another process holds open for writing
    p = subprocess.Popen(["qemu-io", "-f", "qcow2", top], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(2000):  # until qemu-io holds its lock (no sleep: poll)
            if run(RBLOCK, "info", top, check=False).returncode != 0:
                break
        r = run(RBLOCK, "info", top, check=False)
        assert r.returncode != 0 and "lock" in r.stderr
        r = run(RBLOCK, "info", "-U", "--output=json", top)
        assert json.loads(r.stdout)["virtual-size"] == 64 * MiB
    finally:
        p.communicate("quit\n", timeout=60)
