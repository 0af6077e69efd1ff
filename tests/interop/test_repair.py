# SPDX-License-Identifier: MIT
"""rblock check -r leaks|all against qemu-img check -r on the same damage,
the repair of an image left dirty (lazy refcounts) when a writer opens it,
and writes into an image holding persistent bitmaps.

Each damaged image is copied: qemu-img check -r repairs one copy, rblock
the other.  Both must report the same numbers, leave qemu-img check clean
(exit 0) and hold the same guest data (qemu-img compare)."""
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess

import nbd
import pytest

from nbd_helpers import RBLOCK, Server

MiB = 1 << 20
CLUSTER = 64 * 1024


def run(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, **kw)


def qcheck(path, *opts):
    return run("qemu-img", "check", *opts, path, check=False)


def header(path):
    with open(path, "rb") as f:
        h = f.read(104)
    return {
        "incompat": struct.unpack(">Q", h[72:80])[0],
        "autoclear": struct.unpack(">Q", h[88:96])[0],
        "l1_off": struct.unpack(">Q", h[40:48])[0],
        "reftable_off": struct.unpack(">Q", h[48:56])[0],
    }


def be64_at(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(">Q", f.read(8))[0]


def put(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def refblock0(path):
    return be64_at(path, header(path)["reftable_off"]) & ~0x1ff


def set_refcount(path, cluster, value):
    """Write refcount @value (16-bit, the default width) of @cluster."""
    put(path, refblock0(path) + cluster * 2, struct.pack(">H", value))


def l2_table(path):
    return be64_at(path, header(path)["l1_off"]) & 0x00fffffffffffe00


def make_image(path, *qemu_io, lazy=False, size="64M"):
    opts = ["-o", "lazy_refcounts=on"] if lazy else []
    run("qemu-img", "create", "-q", "-f", "qcow2", *opts, path, size)
    if qemu_io:
        run("qemu-io", *[a for c in qemu_io for a in ("-c", c)], path)


def killed_writer(path):
    """A lazy-refcounts image whose writer died: qemu-io is killed by
    SIGKILL after its writes, so the refcounts on disk lag the L2 tables
    and the dirty bit stays set."""
    make_image(path, lazy=True)
    r = subprocess.run(["qemu-io", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 8M 512k",
                        "-c", "write -P 0x33 40M 64k", "-c", "sigraise 9", path],
                       capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert header(path)["incompat"] & 1, "qemu-io left no dirty bit"
    assert qcheck(path).returncode == 2


def fixed_counts(text):
    m = re.search(r"The following inconsistencies were found and repaired:\s+"
                  r"(\d+) leaked clusters\s+(\d+) corruptions", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def repair_both(img, tmp_path, mode):
    """qemu-img check -r MODE on a copy, rblock check -r MODE on @img;
    returns (rblock result, qemu result, qemu's copy)."""
    ref = tmp_path / ("qemu-" + os.path.basename(img))
    shutil.copyfile(img, ref)
    q = qcheck(ref, "-r", mode)
    r = run(RBLOCK, "check", "-r", mode, img, check=False)
    return r, q, ref


def assert_like_qemu(img, tmp_path, mode, expect_fixed=None):
    r, q, ref = repair_both(img, tmp_path, mode)
    assert r.returncode == q.returncode == 0, r.stdout + r.stderr + q.stdout + q.stderr
    assert fixed_counts(r.stdout) == fixed_counts(q.stdout), (r.stdout, q.stdout)
    if expect_fixed is not None:
        assert fixed_counts(r.stdout) == expect_fixed
    assert "No errors were found on the image." in r.stdout
    c = qcheck(img)
    assert c.returncode == 0, c.stdout + c.stderr
    run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, ref)
    return r


def test_leaks_repaired_as_qemu(tmp_path):
    img = str(tmp_path / "leaks.qcow2")
    make_image(img, "write -P 0x5a 0 1M", "write -P 0x6b 20M 128k")
    end = os.path.getsize(img) // CLUSTER
    put(img, os.path.getsize(img), bytes(3 * CLUSTER))
    for c in range(end, end + 3):  # refcount 1, referenced by nothing
        set_refcount(img, c, 1)
    before = run(RBLOCK, "check", img, check=False)
    assert before.returncode == 3, before.stdout + before.stderr
    json_copy = str(tmp_path / "json.qcow2")
    shutil.copyfile(img, json_copy)

    r = assert_like_qemu(img, tmp_path, "leaks", expect_fixed=(3, 0))
    assert "Double checking the fixed image now..." in r.stdout
    assert run(RBLOCK, "check", img, check=False).returncode == 0

    # --output=json: the keys and values of qemu-img check -r --output=json
    jq = str(tmp_path / "json-qemu.qcow2")
    shutil.copyfile(json_copy, jq)
    r = run(RBLOCK, "check", "-r", "leaks", "--output=json", json_copy, check=False)
    q = qcheck(jq, "-r", "leaks", "--output=json")
    assert r.returncode == q.returncode == 0
    rj, qj = json.loads(r.stdout), json.loads(q.stdout)
    assert rj["leaks-fixed"] == qj["leaks-fixed"] == 3
    assert "corruptions-fixed" not in rj and "corruptions-fixed" not in qj
    assert rj.get("leaks", 0) == 0 and rj["image-end-offset"] == qj["image-end-offset"]


def test_refcount_above_one_and_copied(tmp_path):
    """A data cluster with refcount 2 (one reference) is a leak and makes
    its COPIED flag wrong; -r leaks fixes both, as qemu's does."""
    img = str(tmp_path / "two.qcow2")
    make_image(img, "write -P 0x5a 0 1M")
    data = be64_at(img, l2_table(img)) & 0x00fffffffffffe00
    set_refcount(img, data // CLUSTER, 2)
    assert run(RBLOCK, "check", img, check=False).returncode == 2
    assert_like_qemu(img, tmp_path, "leaks", expect_fixed=(1, 0))


def test_shared_cluster_refcount_too_low(tmp_path):
    """Two L2 entries point at one data cluster whose refcount is 1: a
    refcount below the references (and wrong COPIED flags, and the cluster
    the second entry pointed at before is leaked).  -r all fixes it in
    place; -r leaks leaves the corruption (exit 2), as qemu's does."""
    img = str(tmp_path / "shared.qcow2")
    make_image(img, "write -P 0x5a 0 128k")
    l2 = l2_table(img)
    put(img, l2 + 8, struct.pack(">Q", be64_at(img, l2)))
    leaks_only = str(tmp_path / "leaks-only.qcow2")
    shutil.copyfile(img, leaks_only)

    r, q, _ = repair_both(leaks_only, tmp_path, "leaks")
    assert r.returncode == q.returncode == 2, r.stdout + r.stderr
    assert fixed_counts(r.stdout) == fixed_counts(q.stdout) == (1, 0)

    assert_like_qemu(img, tmp_path, "all", expect_fixed=(1, 3))
    assert be64_at(img, l2) >> 63 == 0, "COPIED still set on a shared cluster"


def test_wrong_copied_flag(tmp_path):
    img = str(tmp_path / "copied.qcow2")
    make_image(img, "write -P 0x5a 0 256k")
    l2 = l2_table(img)
    put(img, l2 + 16, struct.pack(">Q", be64_at(img, l2 + 16) & ~(1 << 63)))
    assert run(RBLOCK, "check", img, check=False).returncode == 2
    assert_like_qemu(img, tmp_path, "all", expect_fixed=(0, 1))
    assert be64_at(img, l2 + 16) >> 63 == 1


def test_dirty_lazy_refcounts_rebuilt(tmp_path):
    img = str(tmp_path / "dirty.qcow2")
    killed_writer(img)
    # leaks only cannot fix refcounts of 0 for clusters in use: both refuse
    # and leave the image as it was
    copy = str(tmp_path / "leaks-only.qcow2")
    shutil.copyfile(img, copy)
    r, q, _ = repair_both(copy, tmp_path, "leaks")
    assert r.returncode == q.returncode == 1
    assert "-r all" in r.stderr
    with open(img, "rb") as a, open(copy, "rb") as b:
        assert a.read() == b.read()

    r = assert_like_qemu(img, tmp_path, "all")
    leaks, corruptions = fixed_counts(r.stdout)
    assert corruptions > 0
    assert header(img)["incompat"] & 1 == 0, "dirty bit still set"
    info = json.loads(run("qemu-img", "info", "--output=json", img).stdout)
    assert info["dirty-flag"] is False
    # same layout decisions as qemu's rebuild
    rj = json.loads(run(RBLOCK, "check", "--output=json", img, check=False).stdout)
    qj = json.loads(qcheck(str(tmp_path / "qemu-dirty.qcow2"), "--output=json").stdout)
    assert rj["image-end-offset"] == qj["image-end-offset"]


def test_dirty_bit_only(tmp_path):
    """A lazy-refcounts image whose header says dirty but whose refcounts
    are right: -r all clears the bit and repairs nothing."""
    img = str(tmp_path / "flag.qcow2")
    make_image(img, "write -P 1 0 1M", lazy=True)
    put(img, 72, struct.pack(">Q", header(img)["incompat"] | 1))
    r = assert_like_qemu(img, tmp_path, "all", expect_fixed=(0, 0))
    assert header(img)["incompat"] & 1 == 0


def test_corrupt_bit_cleared(tmp_path):
    """An image marked corrupt (QEMU does so when it finds metadata
    overlapping) is refused for writing, but -r all may open it and, once
    it checks clean, clears the bit, as qemu-img check -r all does."""
    img = str(tmp_path / "marked.qcow2")
    make_image(img, "write -P 1 0 1M")
    l2 = l2_table(img)
    put(img, l2 + 8, struct.pack(">Q", be64_at(img, l2 + 8) & ~(1 << 63)))
    put(img, 72, struct.pack(">Q", header(img)["incompat"] | 2))
    r = run(RBLOCK, "serve", "--run", "true", img, check=False)
    assert r.returncode != 0 and "corrupt" in r.stderr
    assert_like_qemu(img, tmp_path, "all", expect_fixed=(0, 1))
    assert header(img)["incompat"] & 2 == 0


def test_missing_refcount_block_rebuilt(tmp_path):
    """The refcount table entry of the only refcount block is zeroed: every
    cluster reads refcount 0, so the structure is rebuilt into new clusters
    and the header switched to it."""
    img = str(tmp_path / "norefblock.qcow2")
    make_image(img, "write -P 0x77 0 2M", "write -P 0x78 30M 1M")
    old_table = header(img)["reftable_off"]
    put(img, old_table, bytes(8))
    assert run(RBLOCK, "check", img, check=False).returncode == 2
    assert_like_qemu(img, tmp_path, "all")
    assert header(img)["reftable_off"] != old_table


def test_repair_refused_while_in_use(tmp_path):
    img = str(tmp_path / "held.qcow2")
    make_image(img, "write -P 1 0 1M")
    put(img, os.path.getsize(img), bytes(CLUSTER))
    set_refcount(img, os.path.getsize(img) // CLUSTER - 1, 1)
    before = open(img, "rb").read()
    sock = str(tmp_path / "nbd.sock")
    pidfile = str(tmp_path / "qemu-nbd.pid")
    # --fork returns once the socket is listening
    run("qemu-nbd", "--fork", "--persistent", "--pid-file", pidfile, "-f", "qcow2",
        "-k", sock, img)
    pid = int(open(pidfile).read())
    try:
        for mode in ("leaks", "all"):
            r = run(RBLOCK, "check", "-r", mode, img, check=False)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "locked by another process" in r.stderr, r.stderr
    finally:
        # not our child: wait for its exit on a pidfd, then the lock is gone
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGTERM)
        select.select([pidfd], [], [], 60)
        os.close(pidfd)
    assert open(img, "rb").read() == before
    # rblock serve holds it the same way
    r = run(RBLOCK, "serve", "--run",
            f"{RBLOCK} check -r leaks {img}; test $? -eq 1", img, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert open(img, "rb").read() == before
    assert run(RBLOCK, "check", "-r", "leaks", img, check=False).returncode == 0


def test_serve_repairs_dirty_image(tmp_path):
    img = str(tmp_path / "served.qcow2")
    killed_writer(img)
    dirty = open(img, "rb").read()
    # read-only users keep working and change nothing
    assert run(RBLOCK, "info", img).returncode == 0
    r = run(RBLOCK, "serve", "--read-only", "--run",
            'nbdinfo --size "$uri"', img, check=False)
    assert r.returncode == 0 and r.stdout.strip() == str(64 * MiB), r.stderr
    assert open(img, "rb").read() == dirty

    ref = str(tmp_path / "ref.qcow2")
    shutil.copyfile(img, ref)
    assert qcheck(ref, "-r", "all").returncode == 0
    run("qemu-io", "-c", "write -P 0x44 4M 1M", "-c", "write -P 0x55 8M 64k", ref)

    r = run(RBLOCK, "serve", "--run",
            'qemu-io -f raw -c "write -P 0x44 4M 1M" -c "write -P 0x55 8M 64k" "$uri"',
            img, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    c = qcheck(img)
    assert c.returncode == 0, c.stdout + c.stderr
    assert header(img)["incompat"] & 1 == 0
    run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, ref)


def bitmap_flags(path):
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    return {b["name"]: b["flags"]
            for b in info["format-specific"]["data"].get("bitmaps", [])}


def test_bitmaps_kept_through_serve(tmp_path):
    img = str(tmp_path / "bitmaps.qcow2")
    make_image(img, "write -P 1 0 1M")
    run("qemu-img", "bitmap", "--add", img, "b0")
    run("qemu-img", "bitmap", "--add", "-g", "128k", img, "b1")
    run("qemu-io", "-c", "write -P 2 4M 1M", img)  # b0 and b1 get data
    assert bitmap_flags(img) == {"b0": ["auto"], "b1": ["auto"]}

    srv = Server(img, tmpdir=tmp_path)
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        h.pwrite(b"\x33" * 65536, 6 * MiB)
        h.flush()
        h.shutdown()
    finally:
        status, err = srv.stop()
    assert status == 0, err
    c = qcheck(img)
    assert c.returncode == 0, c.stdout + c.stderr
    assert run(RBLOCK, "check", img, check=False).returncode == 0
    # the writes were recorded and the bitmaps written back at the clean
    # stop: consistent again (tests/interop/test_bitmap.py checks the bits)
    flags = bitmap_flags(img)
    assert flags == {"b0": ["auto"], "b1": ["auto"]}, flags
    assert header(img)["autoclear"] & 1
    ours = json.loads(run(RBLOCK, "info", "--output=json", img).stdout)
    ours = {b["name"]: b["flags"] for b in ours["format-specific"]["data"]["bitmaps"]}
    assert ours == flags

    # the data is there, and QEMU's tools remove the bitmaps
    ref = str(tmp_path / "ref.raw")
    run("qemu-img", "create", "-q", "-f", "raw", ref, "64M")
    run("qemu-io", "-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 4M 1M",
        "-c", "write -P 0x33 6M 64k", ref)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, ref)
    run("qemu-img", "bitmap", "--remove", img, "b0")
    run("qemu-img", "bitmap", "--remove", img, "b1")
    c = qcheck(img)
    assert c.returncode == 0, c.stdout + c.stderr
    assert bitmap_flags(img) == {}


def fault_counts(img, tmp_path):
    """Writes and syncs of `rblock check -r all` on a copy of @img."""
    copy = str(tmp_path / "count.qcow2")
    shutil.copyfile(img, copy)
    r = run(RBLOCK, "check", "-r", "all", copy, check=False,
            env={**os.environ, "RBLOCK_FAULT": "count"})
    assert r.returncode == 0, r.stderr
    m = re.search(r"rblock-fault: writes=(\d+) syncs=(\d+)", r.stderr)
    return int(m.group(1)), int(m.group(2))


def too_low(path):
    """qemu-img check's refcounts below the references, and whether it
    found other errors than those and COPIED flags."""
    r = qcheck(path)
    low = set(re.findall(r"ERROR cluster (\d+) refcount=(\d+) reference=(\d+)", r.stderr))
    other = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")
             and not ln.startswith(("ERROR cluster ", "ERROR OFLAG_COPIED"))]
    return r.returncode, low, other


@pytest.mark.parametrize("damage", ["dirty", "in-place"])
def test_repair_survives_power_loss(tmp_path, damage):
    """Power lost at every write and every sync of a repair (unsynced
    writes undone, or kept at random): the image is never worse than
    before: qemu-img check finds no refcount below the references that
    it did not find before, and nothing else but COPIED flags; the guest
    data never changes, and a second repair finishes the job."""
    img = str(tmp_path / "orig.qcow2")
    if damage == "dirty":  # rebuilt: new structure, header switch
        killed_writer(img)
    else:  # fixed in place: leaks, a refcount too low, COPIED flags
        make_image(img, "write -P 0x5a 0 1M", "write -P 0x6b 20M 128k")
        end = os.path.getsize(img) // CLUSTER
        put(img, os.path.getsize(img), bytes(2 * CLUSTER))
        for c in (end, end + 1):
            set_refcount(img, c, 1)
        l2 = l2_table(img)
        put(img, l2 + 8, struct.pack(">Q", be64_at(img, l2)))
    rc, low_before, other = too_low(img)
    assert rc == 2 and low_before and not other
    writes, syncs = fault_counts(img, tmp_path)
    assert writes >= 2 and syncs >= 2
    plans = [f"power-write:{n}" for n in range(1, writes + 1)]
    plans += [f"power-sync:{n}" for n in range(1, syncs + 1)]
    for seed in (7, 8, 9):  # a disk that reorders: unsynced writes kept at random
        plans += [f"power-write:{n}:{n + seed}" for n in range(1, writes + 1)]
        plans += [f"power-sync:{n}:{n + seed}" for n in range(1, syncs + 1)]
    for plan in plans:
        copy = str(tmp_path / "crash.qcow2")
        shutil.copyfile(img, copy)
        r = run(RBLOCK, "check", "-r", "all", copy, check=False,
                env={**os.environ, "RBLOCK_FAULT": plan})
        assert r.returncode == 99, (plan, r.returncode, r.stderr)
        rc, low, other = too_low(copy)
        assert low <= low_before and not other, (plan, low, other)
        run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", copy, img)
        r = run(RBLOCK, "check", "-r", "all", copy, check=False)
        assert r.returncode == 0, (plan, r.stdout, r.stderr)
        assert qcheck(copy).returncode == 0, plan
