# SPDX-License-Identifier: MIT
"""rblock rebase, checked against qemu-img rebase run on a copy of the same
chain: the rebased image reads as before and as qemu-img's result (qemu-img
compare), passes qemu-img check, and qemu-img info agrees (backing name and
format, sizes, format-specific fields).  Safe mode onto another base, onto
a layer further down, onto an overlay of a common base, flattening (-b ""),
unsafe mode (-u), compressed copies (-c); v2 and v3, several cluster
sizes, extended L2, compressed clusters in the chain.
"""
import json
import os
import shutil
import subprocess

import pytest

from test_commit import (LAYOUTS, MiB, KiB, RBLOCK, digest, info, make_chain, qio,
                         run)


def make_world(d, opts):
    """The chain of test_commit plus nb.qcow2 (base's data, changed in
    places, standalone) and ov.qcow2 (an overlay of base, so that it shares
    base with top's chain)."""
    base, mid, top = make_chain(d, opts)
    nb = os.path.join(d, "nb.qcow2")
    run("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", "-o", opts, base, nb)
    qio(nb, "write -P 0x44 512k 1M", "write -z 6M 64k", "write -P 0x45 7M 1000")
    ov = os.path.join(d, "ov.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.qcow2",
        "-F", "qcow2", ov)
    qio(ov, "write -P 0x55 1M 64k", "write -z 6M 64k", "write -P 0x56 3M 512")
    return top


LAYERS = ("base.qcow2", "mid.qcow2", "top.qcow2", "nb.qcow2", "ov.qcow2")


LAYERS = ("base.qcow2", "mid.qcow2", "top.qcow2", "nb.qcow2", "ov.qcow2")

VARIANTS = {
    "new-base": ["-b", "nb.qcow2", "-F", "qcow2"],
    "down-chain": ["-b", "base.qcow2", "-F", "qcow2"],
    "shared-base": ["-b", "ov.qcow2", "-F", "qcow2"],
    "flatten": ["-b", ""],
    "unsafe": ["-u", "-b", "nb.qcow2", "-F", "qcow2"],
}


def same_result(orig, q, r):
    """Only top is written: it matches qemu-img's and reads as before; the
    other layers are byte for byte what they were."""
    t = os.path.join(r, "top.qcow2")
    run("qemu-img", "check", t)
    c = run("qemu-img", "compare", os.path.join(q, "top.qcow2"), t, check=False)
    assert c.returncode == 0, c.stdout + c.stderr
    assert info(os.path.join(q, "top.qcow2")) == info(t)
    run("qemu-img", "compare", os.path.join(orig, "top.qcow2"), t)
    others = [n for n in LAYERS if n != "top.qcow2"]
    assert digest(*(os.path.join(r, n) for n in others)) == \
        digest(*(os.path.join(orig, n) for n in others))


@pytest.fixture(scope="module", params=LAYOUTS, ids=[n for n, _ in LAYOUTS])
def world(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param[0]) / "orig"
    d.mkdir()
    make_world(str(d), request.param[1])
    return str(d)


def copies(d):
    """Fresh q/ and r/ copies of the world next to it."""
    q, r = os.path.dirname(d) + "/q", os.path.dirname(d) + "/r"
    for x in (q, r):
        shutil.rmtree(x, ignore_errors=True)
        shutil.copytree(d, x)
    return q, r


@pytest.mark.parametrize("variant", VARIANTS)
def test_rebase_matches_qemu(world, variant):
    if variant in ("down-chain", "unsafe") and not world.endswith("v3-64k/orig") or \
            variant == "shared-base" and not world.endswith(("v3-64k/orig", "v2-64k/orig")):
        pytest.skip("the other variants on the 64 KiB layouts only (time)")
    args = VARIANTS[variant]
    q, r = copies(world)
    run("qemu-img", "rebase", *args, os.path.join(q, "top.qcow2"))
    out = run(RBLOCK, "rebase", *args, os.path.join(r, "top.qcow2"))
    assert out.stdout == "" and out.stderr == ""
    if variant == "unsafe":
        # the name only: reads as qemu-img's result, which is not as before
        t = os.path.join(r, "top.qcow2")
        run("qemu-img", "check", t)
        assert info(os.path.join(q, "top.qcow2")) == info(t)
        run("qemu-img", "compare", os.path.join(q, "top.qcow2"), t)
        return
    same_result(world, q, r)


def test_rebase_compressed(world):
    """-c (qemu-img 8.2's option): the copied clusters are compressed."""
    if not world.endswith(("v3-64k/orig", "v3-4k/orig")):
        pytest.skip("two layouts (time)")
    q, r = copies(world)
    run(RBLOCK, "rebase", "-c", "-b", "", os.path.join(r, "top.qcow2"))
    run("qemu-img", "check", os.path.join(r, "top.qcow2"))
    run("qemu-img", "compare", os.path.join(world, "top.qcow2"), os.path.join(r, "top.qcow2"))
    m = json.loads(run("qemu-img", "map", "--output=json", os.path.join(r, "top.qcow2")).stdout)
    assert all(e["depth"] == 0 for e in m if e["present"])
    i = json.loads(run("qemu-img", "info", "--output=json", os.path.join(r, "top.qcow2")).stdout)
    assert "backing-filename" not in i
    # the data now in top is far smaller than stored plainly (compressible)
    plain = json.loads(run("qemu-img", "info", "--output=json",
                           os.path.join(world, "base.qcow2")).stdout)
    assert i["actual-size"] < plain["virtual-size"]


def test_rebase_relative_name_from_elsewhere(tmp_path):
    """The new name is stored as given and resolved from IMAGE's folder,
    whatever the current folder is."""
    d = str(tmp_path)
    top = make_world(d, "compat=1.1,cluster_size=65536")
    orig = tmp_path / "orig.qcow2"
    shutil.copy(top, orig)
    shutil.copy(os.path.join(d, "mid.qcow2"), tmp_path / "origmid.qcow2")
    run("qemu-img", "rebase", "-u", "-b", "origmid.qcow2", "-F", "qcow2", orig)
    run(RBLOCK, "rebase", "-b", "nb.qcow2", "-F", "qcow2", top, cwd="/")
    run("qemu-img", "compare", orig, top)
    i = json.loads(run("qemu-img", "info", "--output=json", top).stdout)
    assert i["backing-filename"] == "nb.qcow2"
    assert i["backing-filename-format"] == "qcow2"


def test_refusals_change_nothing(tmp_path):
    d = str(tmp_path)
    top = make_world(d, "compat=1.1,cluster_size=65536")
    raw = os.path.join(d, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(MiB)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2",
        os.path.join(d, "ov2.qcow2"))
    files = [os.path.join(d, n) for n in LAYERS + ("ov2.qcow2",)] + [raw]
    before = digest(*files)
    cases = [
        (["-b", "missing.qcow2", "-F", "qcow2", top], "could not open new backing file "
         "'missing.qcow2'"),
        (["-b", "nb.qcow2", top], "backing format must be specified"),
        (["-u", "-b", "nb.qcow2", top], "backing format must be specified"),
        (["-b", "top.qcow2", "-F", "qcow2", top], "itself in its chain"),
        (["-b", "ov2.qcow2", "-F", "qcow2", top], "itself in its chain"),
        (["-b", "top.qcow2", "-F", "qcow2", os.path.join(d, "base.qcow2")],
         "itself in its chain"),
        (["-b", "nb.qcow2", "-F", "qcow2", "-f", "raw", raw], "has no backing file"),
        (["-b", "x" * 1100, "-F", "qcow2", "-u", top], "too long"),
    ]
    for args, msg in cases:
        r = run(RBLOCK, "rebase", *args, check=False)
        assert r.returncode == 1, args
        assert msg in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
        assert digest(*files) == before, args
    r = run(RBLOCK, "rebase", top, check=False)
    assert r.returncode == 1 and "-b" in r.stderr


def test_rebase_backings_of_other_sizes(tmp_path):
    """Old and new backing files shorter than the image (and than each
    other) read as zeros past their ends, as qemu-img rebase has them."""
    for side in ("q", "r"):
        d = tmp_path / side
        d.mkdir()
        with open(d / "old.raw", "wb") as f:
            f.write(b"\x11" * (3 * MiB))
        run("qemu-img", "create", "-q", "-f", "qcow2", d / "new.qcow2", str(5 * MiB))
        qio(str(d / "new.qcow2"), "write -P 0x11 0 2M", "write -P 0x22 4M 1M")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "old.raw", "-F", "raw",
            d / "img.qcow2", str(8 * MiB))
        qio(str(d / "img.qcow2"), "write -P 0x33 1M 64k", "write -P 0x34 6M 64k")
        shutil.copy(d / "img.qcow2", d / "before.qcow2")
    run("qemu-img", "rebase", "-b", "new.qcow2", "-F", "qcow2", tmp_path / "q" / "img.qcow2")
    run(RBLOCK, "rebase", "-b", "new.qcow2", "-F", "qcow2", tmp_path / "r" / "img.qcow2")
    r = tmp_path / "r"
    run("qemu-img", "check", r / "img.qcow2")
    run("qemu-img", "compare", tmp_path / "q" / "img.qcow2", r / "img.qcow2")
    run("qemu-img", "compare", r / "before.qcow2", r / "img.qcow2")
    assert info(str(tmp_path / "q" / "img.qcow2")) == info(str(r / "img.qcow2"))


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_rebase_keeps_bitmaps_and_extensions(tmp_path, unsafe):
    """The header is rebuilt with its other extensions: a persistent bitmap
    (whose directory the copy's writes flag in use and the close writes
    back) survives, consistent, and records the copied clusters."""
    d = str(tmp_path)
    top = make_world(d, "compat=1.1,cluster_size=65536")
    run("qemu-img", "bitmap", "--add", top, "b0")
    orig = os.path.join(d, "orig.qcow2")
    shutil.copy(top, orig)
    args = ["-u"] if unsafe else []
    run(RBLOCK, "rebase", *args, "-b", "nb.qcow2", "-F", "qcow2", top)
    run("qemu-img", "check", top)
    i = json.loads(run("qemu-img", "info", "--output=json", top).stdout)
    assert i["backing-filename"] == "nb.qcow2"
    assert i["backing-filename-format"] == "qcow2"
    bms = i["format-specific"]["data"]["bitmaps"]
    assert [b["name"] for b in bms] == ["b0"] and "in-use" not in bms[0]["flags"]
    dirty = run(RBLOCK, "diff", "--bitmap", "b0", top, top, check=False).stdout
    if unsafe:
        assert "bytes" not in dirty, dirty
    else:
        run("qemu-img", "compare", orig, top)
        # nb changed 512k..1.5M: copied from the old chain where top is unallocated
        assert "bytes 0x80000-" in dirty, dirty
