# SPDX-License-Identifier: MIT
"""rblock commit, checked against qemu-img commit run on a copy of the same
chain: every layer reads the same (qemu-img compare), passes qemu-img check,
and qemu-img info agrees on every field but the file's size on disk.

Chains base <- mid <- top are made by qemu-img and qemu-io with data,
zero clusters (zeroing data below), compressed clusters and partial
clusters, for v2 and v3, several cluster sizes and extended L2.
"""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

RBLOCK = os.environ.get("RBLOCK", "build/rblock")
MiB, KiB = 1 << 20, 1 << 10
SIZE = 8 * MiB

# (name, qcow2 options); 512-byte clusters are left out: the write path's
# barriers (a sync per new L2 table) make a commit into them take seconds
LAYOUTS = [
    ("v3-64k", "compat=1.1,cluster_size=65536"),
    ("v2-64k", "compat=0.10,cluster_size=65536"),
    ("v3-4k", "compat=1.1,cluster_size=4096"),
    ("v3-2m", "compat=1.1,cluster_size=2097152"),
    ("v3-extl2", "compat=1.1,cluster_size=65536,extended_l2=on"),
]


def run(*args, cwd=None, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r


def qio(path, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    run(*args, path)


def make_chain(d, opts, base_size=SIZE):
    """base <- mid <- top in folder d; returns the three paths."""
    cs = int(dict(o.split("=") for o in opts.split(",")).get("cluster_size", 65536))
    mid_c, top_c = 5 * MiB // cs * cs, 4 * MiB // cs * cs  # compressed: whole clusters
    base, mid, top = (os.path.join(d, n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    # base: data, some of it compressed (a compressed copy of a raw file)
    raw = os.path.join(d, "base.raw")
    with open(raw, "wb") as f:
        f.truncate(base_size)
        for i, off in enumerate(range(0, base_size, 512 * KiB)):
            if i % 3 != 2:
                f.seek(off)
                f.write(bytes([(i * 7 + 1) % 251 or 1]) * (256 * KiB))
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, raw, base)
    os.unlink(raw)
    qio(base, "write -P 0x11 6M 300k")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.qcow2",
        "-F", "qcow2", mid)
    qio(mid, "write -P 0x22 1M 1M", "write -z 2M 128k", "write -P 0x23 3M 1000",
        f"write -c -P 0x24 {mid_c} {cs}")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "-b", "mid.qcow2",
        "-F", "qcow2", top)
    qio(top, "write -P 0x33 1536k 700k", "write -z 0 64k", "write -P 0x34 3M 4k",
        "write -z 6M 128k", "write -P 0x35 7M 3000", f"write -c -P 0x36 {top_c} {cs}",
        "write -P 0x37 8100k 1k")
    return base, mid, top


INFO_KEYS = ("virtual-size", "format", "cluster-size", "backing-filename",
             "backing-filename-format", "encrypted")


def info(path):
    i = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    spec = i.get("format-specific", {}).get("data", {})
    return ({k: i.get(k) for k in INFO_KEYS}, spec)


def same_layers(qdir, rdir, names=("base.qcow2", "mid.qcow2", "top.qcow2")):
    for n in names:
        q, r = os.path.join(qdir, n), os.path.join(rdir, n)
        run("qemu-img", "check", r)
        c = run("qemu-img", "compare", q, r, check=False)
        assert c.returncode == 0, f"{n}: {c.stdout}{c.stderr}"
        assert info(q) == info(r), n


def copies(tmp_path, d):
    q, r = os.path.dirname(d) + "/q", os.path.dirname(d) + "/r"
    for x in (q, r):
        shutil.rmtree(x, ignore_errors=True)
        shutil.copytree(d, x)
    return q, r


def digest(*paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module", params=LAYOUTS, ids=[n for n, _ in LAYOUTS])
def chain(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param[0]) / "orig"
    d.mkdir()
    make_chain(str(d), request.param[1])
    return None, str(d)


VARIANTS = {"default": [], "drop": ["-d"], "to-base": ["-b", "base.qcow2"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_commit_matches_qemu(chain, variant):
    tmp_path, d = chain
    if variant == "drop" and not d.endswith("v3-64k/orig") or \
            variant == "to-base" and not d.endswith(("v3-64k/orig", "v2-64k/orig")):
        pytest.skip("the options on the 64 KiB layouts only (time)")
    args = VARIANTS[variant]
    q, r = copies(tmp_path, d)
    run("qemu-img", "commit", "-q", *args, os.path.join(q, "top.qcow2"))
    out = run(RBLOCK, "commit", *args, os.path.join(r, "top.qcow2"))
    assert out.stdout == "Image committed.\n"
    same_layers(q, r)
    # TOP reads as before, whatever was committed
    run("qemu-img", "compare", os.path.join(d, "top.qcow2"), os.path.join(r, "top.qcow2"))
    if not args:
        # TOP emptied: nothing of its own left
        m = json.loads(run("qemu-img", "map", "--output=json",
                           os.path.join(r, "top.qcow2")).stdout)
        assert not [e for e in m if e["depth"] == 0 and e["present"]]


def test_commit_into_raw_base(tmp_path):
    """A raw backing file, shorter than the overlay: grown, as qemu-img does."""
    for side in ("q", "r"):
        d = tmp_path / side
        d.mkdir()
        with open(d / "base.raw", "wb") as f:
            f.write(b"\x5a" * (3 * MiB))
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
            d / "top.qcow2", str(4 * MiB))
        qio(str(d / "top.qcow2"), "write -P 0x61 1M 64k", "write -z 2M 64k",
            "write -P 0x62 3584k 64k")
    run("qemu-img", "commit", "-q", tmp_path / "q" / "top.qcow2")
    run(RBLOCK, "commit", tmp_path / "r" / "top.qcow2")
    assert (open(tmp_path / "q" / "base.raw", "rb").read() ==
            open(tmp_path / "r" / "base.raw", "rb").read())
    run("qemu-img", "compare", tmp_path / "q" / "top.qcow2", tmp_path / "r" / "top.qcow2")
    run("qemu-img", "check", tmp_path / "r" / "top.qcow2")


def test_commit_records_in_base_bitmap(tmp_path):
    """The writes into BASE are marked in its enabled persistent bitmap."""
    d = str(tmp_path)
    base, mid, top = make_chain(d, "compat=1.1,cluster_size=65536")
    run("qemu-img", "bitmap", "--add", base, "b0")
    run(RBLOCK, "commit", mid)
    run("qemu-img", "check", base)
    # mid's ranges (1M.., 2M.., 3M.., 5M..) are dirty, the rest is not
    dirty = run(RBLOCK, "diff", "--bitmap", "b0", base, base, check=False).stdout
    assert "bytes 0x100000-" in dirty and "bytes 0x500000-" in dirty, dirty
    assert "0x0-" not in dirty and "0x600000-" not in dirty, dirty
    i = json.loads(run("qemu-img", "info", "--output=json", base).stdout)
    bms = i["format-specific"]["data"]["bitmaps"]
    assert bms[0]["name"] == "b0" and "in-use" not in bms[0]["flags"]


def test_refusals_change_nothing(tmp_path):
    d = str(tmp_path)
    base, mid, top = make_chain(d, "compat=1.1,cluster_size=65536")
    before = digest(base, mid, top)
    cases = [
        ([base], "does not have a backing file"),
        (["-b", "nothere.qcow2", top], "did not find 'nothere.qcow2'"),
        (["-b", "top.qcow2", top], "did not find 'top.qcow2'"),
        # relative to TOP's folder, as qemu-img: not the current folder
        (["-b", os.path.join(d, "x", "..", "..", "base.qcow2"), top], "did not find"),
    ]
    for args, msg in cases:
        r = run(RBLOCK, "commit", *args, check=False)
        assert r.returncode == 1, args
        assert msg in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
    assert digest(base, mid, top) == before


def test_locked_base_refused(tmp_path):
    """BASE held by a writer: refused before anything is written."""
    d = str(tmp_path)
    base, mid, top = make_chain(d, "compat=1.1,cluster_size=65536")
    before = digest(base, mid, top)
    # qemu-io holds BASE open for writing while it waits on its stdin
    p = subprocess.Popen(["qemu-io", "-f", "qcow2", base], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p.stdin.write("help\n")
        p.stdin.flush()
        p.stdout.readline()  # it answered: the image is open and locked
        r = run(RBLOCK, "commit", mid, check=False)
        assert r.returncode == 1 and "lock" in r.stderr, r.stderr
    finally:
        p.stdin.close()
        p.wait()
    assert digest(base, mid, top) == before


def test_smaller_qcow2_base_refused(tmp_path):
    """qemu-img commit grows a smaller qcow2 BASE; rblock refuses it (a raw
    one is grown) with the fix in the message and every file unchanged."""
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(4 * MiB))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top,
        str(8 * MiB))
    qio(top, "write -P 0x61 6M 64k")
    before = digest(base, top)
    r = run(RBLOCK, "commit", top, check=False)
    assert r.returncode == 1 and "smaller than the image" in r.stderr, r.stderr
    assert digest(base, top) == before
