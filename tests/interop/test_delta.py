# SPDX-License-Identifier: MIT
"""rblock delta BASE NEW DELTA, checked with QEMU's tools and raw bytes.

Every delta must pass `qemu-img check`, read as NEW (`qemu-img compare`,
run from another folder too), name BASE and its format as backing, and
hold clusters (data or zero) exactly where NEW differs from BASE: each
cluster that `qemu-img map` shows at depth 0 differs from BASE there (a
data cluster's stored bytes are read from the file and compared with
BASE's), and zeroed regions are zero clusters, not data.
"""
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import test_diff as td  # noqa: E402  (disk builders)

RBLOCK = td.RBLOCK
MiB, KiB = td.MiB, td.KiB


def run(*args, cwd=None, check=True):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, cwd=cwd)


def raw_bytes(path, fmt):
    if fmt == "raw":
        return open(path, "rb").read()
    out = f"{path}.asraw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, out)
    data = open(out, "rb").read()
    os.unlink(out)
    return data


def delta(base, new, out, *opts):
    r = run(RBLOCK, "delta", *opts, base, new, out, check=False)
    assert r.returncode == 0, r.stderr
    return r


def check_delta(base, new, out, base_fmt="raw", new_fmt="raw", cluster=64 * KiB,
                zeroed=()):
    """All the promises of a delta; @zeroed lists (off, len) regions that NEW
    zeroed over BASE's data and that must be zero clusters."""
    out = str(out)
    r = run("qemu-img", "check", out, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # reads as NEW, from the current folder and from elsewhere
    run("qemu-img", "compare", "-f", "qcow2", "-F", new_fmt, out, new)
    run("qemu-img", "compare", "-f", "qcow2", "-F", new_fmt,
        os.path.abspath(out), os.path.abspath(new), cwd="/")
    info = json.loads(run("qemu-img", "info", "--output=json", out).stdout)
    assert info["backing-filename-format"] == base_fmt
    assert os.path.samefile(info["full-backing-filename"], base)
    assert info["cluster-size"] == cluster
    if new_fmt == "raw":  # qcow2 sizes are whole sectors, as qemu-img rounds
        assert info["virtual-size"] == (os.path.getsize(new) + 511) // 512 * 512

    b = raw_bytes(base, base_fmt)
    n = raw_bytes(new, new_fmt)
    size = info["virtual-size"]
    n = n.ljust(size, b"\0")
    b = b[:size].ljust(size, b"\0")  # the overlay reads zeros past BASE's end
    stored = open(out, "rb").read()
    own = json.loads(run("qemu-img", "map", "--output=json", out).stdout)
    mine = [e for e in own if e["depth"] == 0 and e["present"]]
    data_clusters = zero_clusters = 0
    for e in mine:
        for off in range(e["start"], e["start"] + e["length"], cluster):
            n_here = n[off:off + cluster]
            # the delta holds nothing where NEW equals BASE
            assert b[off:off + cluster] != n_here, f"cluster {off:#x} equals base"
            if e["data"]:
                data_clusters += 1
                host = e["offset"] + (off - e["start"])
                held = stored[host:host + len(n_here)]
                assert held == n_here
                assert held != b[off:off + cluster]
                assert any(held), f"data cluster {off:#x} holds only zeros"
            else:
                assert e["zero"]
                zero_clusters += 1
                assert not any(n_here)
    # every differing cluster is in the delta (compare proves the content;
    # this proves nothing falls through to BASE by luck of equal bytes)
    covered = set()
    for e in mine:
        covered.update(range(e["start"] // cluster, (e["start"] + e["length"]) // cluster
                             + (1 if e["length"] % cluster else 0)))
    for c in range((size + cluster - 1) // cluster):
        if b[c * cluster:(c + 1) * cluster] != n[c * cluster:(c + 1) * cluster]:
            assert c in covered, f"differing cluster {c * cluster:#x} not in the delta"
    for off, length in zeroed:
        for e in own:
            if e["start"] <= off < e["start"] + e["length"]:
                assert e["depth"] == 0 and e["zero"] and not e["data"], (off, e)
    return data_clusters, zero_clusters


CASES = [td.case_single_sectors, td.case_unaligned_runs, td.case_whole_clusters,
         td.case_zeroed_regions, td.case_changes_in_holes, td.case_b_longer,
         td.case_a_longer_data_tail, td.case_identical]


@pytest.fixture
def q(tmp_path):
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_raw_base(q, case):
    base, new = case(q)
    os.mkdir(q / "sub")
    # DELTA in another folder than BASE: the stored name is relative to it
    out = q / "sub" / "d.qcow2"
    delta(base, new, out)
    info = json.loads(run("qemu-img", "info", "--output=json", out).stdout)
    assert info["backing-filename"] == "../" + os.path.basename(base)
    check_delta(base, new, out)
    # 4 KiB clusters, DELTA beside BASE
    delta(base, new, q / "d4.qcow2", "-o", "cluster_size=4096")
    info = json.loads(run("qemu-img", "info", "--output=json", q / "d4.qcow2").stdout)
    assert info["backing-filename"] == os.path.basename(base)
    check_delta(base, new, q / "d4.qcow2", cluster=4096)


def test_zeroed_regions_are_zero_clusters(q):
    base, new = td.case_zeroed_regions(q)
    delta(base, new, q / "d.qcow2")
    data, zero = check_delta(base, new, q / "d.qcow2",
                             zeroed=[(128 * KiB, 256 * KiB), (4 * MiB, MiB)])
    assert zero >= 4 + 16
    # zero clusters take no space: only the 3 MiB+1 change is data
    assert data == 1


@pytest.mark.parametrize("case", [td.case_whole_clusters, td.case_changes_in_holes,
                                  td.case_zeroed_regions], ids=lambda c: c.__name__[5:])
def test_qcow2_base_and_delta_of_delta(q, case):
    base, new = case(q)
    qbase = td.qcow2_of(base, q / "base.qcow2")
    delta(qbase, new, q / "d1.qcow2")
    check_delta(qbase, new, q / "d1.qcow2", base_fmt="qcow2")
    # a second generation: NEW2 changes NEW again; BASE is the first delta
    new2 = q / "new2"
    new2.write_bytes(open(new, "rb").read())
    with open(new2, "r+b") as f:
        f.seek(MiB + 5)
        f.write(b"second generation")
        f.seek(0)
        f.write(bytes(4096))
    delta(q / "d1.qcow2", new2, q / "d2.qcow2")
    check_delta(q / "d1.qcow2", new2, q / "d2.qcow2", base_fmt="qcow2")
    chain = run("qemu-img", "info", "--backing-chain", "--output=json",
                q / "d2.qcow2").stdout
    assert len(json.loads(chain)) == 3


def test_new_is_an_overlay_of_base(q):
    base = td.make_raw(q / "base", 32 * MiB, fill=[(0, 24 * MiB)])
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base", "-F", "raw",
        q / "new.qcow2")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 3M 100k", "-c", "write -z 8M 1M",
        "-c", "write -P 0 30M 64k", q / "new.qcow2")
    r = delta(base, q / "new.qcow2", q / "d.qcow2")
    check_delta(base, q / "new.qcow2", q / "d.qcow2", new_fmt="qcow2")
    # only NEW's own clusters were read: the base it shares was not
    read_new = int(re.search(r"and (\d+) of new", r.stdout).group(1))
    assert read_new <= 2 * MiB


def test_backing_name_override_and_failures(q):
    base, new = td.case_single_sectors(q)
    out = q / "d.qcow2"
    # -b: an absolute name is stored as given
    delta(base, new, out, "-b", os.path.abspath(base))
    info = json.loads(run("qemu-img", "info", "--output=json", out).stdout)
    assert info["backing-filename"] == os.path.abspath(base)
    check_delta(base, new, out)
    # -b that does not lead to BASE: refused, nothing left behind
    os.unlink(out)
    r = run(RBLOCK, "delta", "-b", "elsewhere.img", base, new, out, check=False)
    assert r.returncode == 1 and r.stderr.startswith("rblock: ")
    assert r.stderr.count("\n") == 1
    assert not out.exists()
    # a missing input: no DELTA either
    r = run(RBLOCK, "delta", base, q / "missing", out, check=False)
    assert r.returncode == 1 and "missing" in r.stderr and not out.exists()
    # DELTA may not overwrite an input
    before = open(new, "rb").read()
    r = run(RBLOCK, "delta", base, new, new, check=False)
    assert r.returncode == 1 and open(new, "rb").read() == before
    # bad options
    r = run(RBLOCK, "delta", "-o", "cluster_size=1000", base, new, out, check=False)
    assert r.returncode == 1 and not out.exists()
    r = run(RBLOCK, "delta", base, new, check=False)
    assert r.returncode == 1


def test_failure_during_the_walk_removes_delta(q):
    import struct
    new = q / "new.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", new, "4M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", new)
    with open(new, "r+b") as f:  # L1[0] -> an unaligned L2 table
        l1 = struct.unpack(">Q", f.read(48)[40:48])[0]
        f.seek(l1)
        e = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        f.write(struct.pack(">Q", (e & (1 << 63)) | 0x12345600))
    base = td.make_raw(q / "base", 4 * MiB, fill=[(0, MiB)])
    r = run(RBLOCK, "delta", base, new, q / "d.qcow2", check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"rblock: {new}: ")
    assert not (q / "d.qcow2").exists()
