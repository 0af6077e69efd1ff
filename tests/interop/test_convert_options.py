# SPDX-License-Identifier: MIT
"""`rblock convert` options shared with qemu-img convert: -n (an existing
output written in place), --target-is-zero and -S (sparse detection).

Each case runs rblock and qemu-img convert with the same options on copies
of the same inputs (raw and qcow2 sources written by qemu-io) and compares
the results: `qemu-img compare`, `qemu-img check`, and for -S the
allocation of both outputs (`qemu-img map --output=json`, `du`).  An
existing output smaller than the source and --target-is-zero without -n
are refused with one line, nothing changed.
"""
import json
import os
import shutil
import subprocess

import pytest

from nbd_helpers import RBLOCK

MiB = 1 << 20
SIZE = 4 * MiB


def run(*args, check=True):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, timeout=120)


def compare(a, b, *opts):
    c = run("qemu-img", "compare", *opts, a, b, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def qcheck(path):
    c = run("qemu-img", "check", path, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def qmap(path, fmt):
    out = json.loads(run("qemu-img", "map", "-f", fmt, "--output=json", path).stdout)
    return [(e["start"], e["length"], e["data"], e["zero"]) for e in out]


def allocated(path):
    return os.stat(path).st_blocks * 512


WRITES = [
    "write -P 0xaa 0 64k",
    "write -P 0 16k 16k",        # a 16k zero run inside data
    "write -z 1M 64k",
    "write -P 0x11 2M 4k",
    "write -P 0x11 2052k 4k",    # 2M+4k..2M+8k zero between data
    "write -P 0 3M 64k",         # zeros written as data
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("convopts")
    srcs = {}
    for fmt in ("raw", "qcow2"):
        p = d / f"src.{fmt}"
        run("qemu-img", "create", "-q", "-f", fmt, p, SIZE)
        args = []
        for w in WRITES:
            args += ["-c", w]
        run("qemu-io", "-f", fmt, *args, p)
        srcs[fmt] = p
    return d, srcs


def noisy(path, size):
    """An existing target full of non-zero bytes."""
    with open(path, "wb") as f:
        f.write(b"\x5a" * size)


@pytest.mark.parametrize("sfmt", ["raw", "qcow2"])
def test_n_raw_existing(sources, sfmt):
    d, srcs = sources
    src = srcs[sfmt]
    a, b = d / f"n-{sfmt}-a.raw", d / f"n-{sfmt}-b.raw"
    noisy(a, SIZE + MiB)   # larger than the source: allowed, the tail kept
    shutil.copy(a, b)
    ino = os.stat(a).st_ino
    run(RBLOCK, "convert", "-n", "-f", sfmt, "-O", "raw", src, a)
    run("qemu-img", "convert", "-n", "-f", sfmt, "-O", "raw", src, b)
    assert os.stat(a).st_ino == ino and os.path.getsize(a) == SIZE + MiB
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    # the zeros of the source became zeros in the target; the tail stays
    ref = d / f"n-{sfmt}-ref.raw"
    run("qemu-img", "convert", "-f", sfmt, "-O", "raw", src, ref)
    data = a.read_bytes()
    assert data[:SIZE] == ref.read_bytes() and data[SIZE:] == b"\x5a" * MiB


def test_n_qcow2_existing(sources):
    d, srcs = sources
    a, b = d / "n-a.qcow2", d / "n-b.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", a, SIZE)
    run("qemu-io", "-c", f"write -P 0x77 0 {SIZE}", a)
    shutil.copy(a, b)
    run(RBLOCK, "convert", "-n", "-O", "qcow2", srcs["qcow2"], a)
    run("qemu-img", "convert", "-n", "-O", "qcow2", srcs["qcow2"], b)
    qcheck(a)
    compare(a, b)
    compare(srcs["qcow2"], a)


def test_n_smaller_refused(sources):
    d, srcs = sources
    t = d / "small.raw"
    noisy(t, MiB)
    q = d / "small-q.raw"
    noisy(q, MiB)
    c = run("qemu-img", "convert", "-n", "-O", "raw", srcs["qcow2"], q, check=False)
    assert c.returncode != 0 and "smaller" in c.stderr
    before = t.read_bytes()
    c = run(RBLOCK, "convert", "-n", "-O", "raw", srcs["qcow2"], t, check=False)
    assert c.returncode != 0
    lines = c.stderr.strip().splitlines()
    assert len(lines) == 1 and "output file is smaller than input file" in lines[0], c.stderr
    assert str(t) in lines[0]
    assert t.read_bytes() == before


def test_n_missing_refused(sources):
    d, srcs = sources
    t = d / "missing.raw"
    c = run(RBLOCK, "convert", "-n", srcs["raw"], t, check=False)
    assert c.returncode != 0 and not t.exists()


def test_target_is_zero(sources):
    d, srcs = sources
    src = srcs["qcow2"]
    # a target that really is zero: same result as qemu-img
    a, b = d / "tz-a.raw", d / "tz-b.raw"
    run("qemu-img", "create", "-q", "-f", "raw", a, SIZE)
    run("qemu-img", "create", "-q", "-f", "raw", b, SIZE)
    run(RBLOCK, "convert", "-n", "--target-is-zero", "-O", "raw", src, a)
    run("qemu-img", "convert", "-n", "--target-is-zero", "-O", "raw", src, b)
    compare(a, b, "-f", "raw", "-F", "raw")
    assert qmap(a, "raw") == qmap(b, "raw")
    # zeros are not written: a noisy target keeps its bytes where the
    # source reads as zero, as with qemu-img
    a, b = d / "tzn-a.raw", d / "tzn-b.raw"
    noisy(a, SIZE)
    noisy(b, SIZE)
    run(RBLOCK, "convert", "-n", "--target-is-zero", "-O", "raw", src, a)
    run("qemu-img", "convert", "-n", "--target-is-zero", "-O", "raw", src, b)
    assert a.read_bytes() == b.read_bytes()
    assert run("qemu-img", "compare", src, a, check=False).returncode == 1


def test_target_is_zero_needs_n(sources):
    d, srcs = sources
    t = d / "tz-no-n.raw"
    q = run("qemu-img", "convert", "--target-is-zero", "-O", "raw", srcs["raw"], t,
            check=False)
    assert q.returncode != 0 and "-n" in q.stderr and not t.exists()
    c = run(RBLOCK, "convert", "--target-is-zero", "-O", "raw", srcs["raw"], t, check=False)
    assert c.returncode != 0 and "requires use of -n" in c.stderr
    assert len(c.stderr.strip().splitlines()) == 1 and not t.exists()


@pytest.mark.parametrize("sfmt", ["raw", "qcow2"])
@pytest.mark.parametrize("sparse", ["0", "512", "4k", "64k", "1M"])
def test_sparse_raw(sources, sfmt, sparse):
    d, srcs = sources
    src = srcs[sfmt]
    a, b = d / f"S{sparse}-{sfmt}-a.raw", d / f"S{sparse}-{sfmt}-b.raw"
    run(RBLOCK, "convert", "-S", sparse, "-f", sfmt, "-O", "raw", src, a)
    run("qemu-img", "convert", "-S", sparse, "-f", sfmt, "-O", "raw", src, b)
    compare(a, b, "-f", "raw", "-F", "raw")
    assert qmap(a, "raw") == qmap(b, "raw")
    assert allocated(a) == allocated(b)
    if sparse == "0":
        assert allocated(a) >= SIZE
    if sparse == "64k" and sfmt == "raw":
        # the 16k zero run inside data is written, the big holes are not
        assert allocated(a) < SIZE and (0, 64 * 1024, True, False) in qmap(a, "raw")


@pytest.mark.parametrize("sparse", ["0", "4k"])
def test_sparse_qcow2(sources, sparse):
    d, srcs = sources
    a, b = d / f"S{sparse}-a.qcow2", d / f"S{sparse}-b.qcow2"
    run(RBLOCK, "convert", "-S", sparse, "-O", "qcow2", srcs["qcow2"], a)
    run("qemu-img", "convert", "-S", sparse, "-O", "qcow2", srcs["qcow2"], b)
    qcheck(a)
    compare(a, b)
    assert qmap(a, "qcow2") == qmap(b, "qcow2")


def test_sparse_invalid(sources):
    d, srcs = sources
    t = d / "S-bad.raw"
    for bad in ("1000", "32M"):
        q = run("qemu-img", "convert", "-S", bad, srcs["raw"], t, check=False)
        assert q.returncode != 0
        c = run(RBLOCK, "convert", "-S", bad, srcs["raw"], t, check=False)
        assert c.returncode != 0 and "multiples of 512" in c.stderr and not t.exists()


def test_backing(tmp_path):
    base, new = tmp_path / "base.qcow2", tmp_path / "new.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", base, SIZE)
    run("qemu-io", "-c", "write -P 0xaa 0 2M", base)
    shutil.copy(base, new)
    # NEW differs from BASE in the clusters at 1M (data) and 1536k (zeros
    # over BASE's data) and 3M (data where BASE is unallocated); the
    # rest of NEW rewrites BASE's own bytes
    run("qemu-io", "-c", "write -P 0xbb 1M 64k", "-c", "write -z 1536k 64k",
        "-c", "write -P 0xaa 512k 64k", "-c", "write -P 0xcc 3M 64k", new)
    (tmp_path / "r").mkdir()
    (tmp_path / "q").mkdir()
    shutil.copy(base, tmp_path / "r" / "base.qcow2")
    shutil.copy(base, tmp_path / "q" / "base.qcow2")
    a, b = tmp_path / "r" / "out.qcow2", tmp_path / "q" / "out.qcow2"
    run(RBLOCK, "convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", new, a)
    run("qemu-img", "convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", new, b)
    qcheck(a)
    ia = json.loads(run("qemu-img", "info", "--output=json", a).stdout)
    ib = json.loads(run("qemu-img", "info", "--output=json", b).stdout)
    for k in ("backing-filename", "backing-filename-format", "virtual-size", "format"):
        assert ia.get(k) == ib.get(k), k
    assert ia["backing-filename"] == "base.qcow2"
    compare(a, b)
    compare(new, a)
    top = [(e["start"], e["length"], e["data"], e["zero"])
           for e in json.loads(run("qemu-img", "map", "--output=json", a).stdout)
           if e["depth"] == 0]
    K = 1024
    assert top == [(1024 * K, 64 * K, True, False), (1536 * K, 64 * K, False, True),
                   (3072 * K, 64 * K, True, False)]


def test_backing_needs_format_and_qcow2(sources):
    d, srcs = sources
    t = d / "B-bad.qcow2"
    for opts in (["-O", "qcow2", "-B", str(srcs["raw"])],
                 ["-O", "raw", "-B", str(srcs["raw"]), "-F", "raw"]):
        q = run("qemu-img", "convert", *opts, srcs["qcow2"], t, check=False)
        assert q.returncode != 0 and not t.exists()
        c = run(RBLOCK, "convert", *opts, srcs["qcow2"], t, check=False)
        assert c.returncode != 0 and len(c.stderr.strip().splitlines()) == 1
        assert not t.exists()
