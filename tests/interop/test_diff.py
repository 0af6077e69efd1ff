# SPDX-License-Identifier: MIT
"""rblock diff against an independent sector-by-sector comparison.

Disks are built here as raw files (sparse where the case says so); qcow2
inputs are made from them by qemu-img convert, and overlays by qemu-img
create -b ... -F ... plus qemu-io writes.  The expected ranges are computed
in Python from raw bytes (for qcow2 inputs: from the raw files they were
made from, or from `qemu-img convert -O raw` of overlays) -- never by
calling rblock.
"""
import json
import os
import subprocess

import pytest

RBLOCK = os.environ.get("RBLOCK", "build/rblock")
MiB = 1 << 20
KiB = 1 << 10


def run(*args, check=True):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True)


def qemu_img(*args):
    return run("qemu-img", *args)


def make_raw(path, size, writes=(), fill=None):
    """A sparse raw file of @size with (offset, bytes) writes.  @fill is a
    list of (offset, length) regions filled with pseudo-random data."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in fill or ():
            f.seek(off)
            f.write(pattern(off, length))
        for off, data in writes:
            f.seek(off)
            f.write(data)
    return path


def pattern(seed, length):
    # deterministic, incompressible-looking bytes
    out = bytearray()
    x = (seed * 2654435761 + 12345) & 0xFFFFFFFF
    while len(out) < length:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    return bytes(out[:length])


def expected_ranges(path_a, path_b, ss):
    """Sector ranges where two raw files differ, the shorter padded with zeros."""
    a = open(path_a, "rb").read()
    b = open(path_b, "rb").read()
    size = max(len(a), len(b))
    a = a.ljust(size, b"\0")
    b = b.ljust(size, b"\0")
    ranges = []
    for s in range((size + ss - 1) // ss):
        if a[s * ss:(s + 1) * ss] != b[s * ss:(s + 1) * ss]:
            if ranges and ranges[-1][0] + ranges[-1][1] == s:
                ranges[-1][1] += 1
            else:
                ranges.append([s, 1])
    return [{"start": s, "count": c} for s, c in ranges]


def rdiff(a, b, ss=512, extra=()):
    r = run(RBLOCK, "diff", "--sector-size", ss, "--output=json", *extra, a, b,
            check=False)
    assert r.returncode in (0, 1), r.stderr
    assert r.stderr == ""
    return r.returncode, json.loads(r.stdout)


def check_diff(a, b, raw_a, raw_b, ss, extra=()):
    rc, out = rdiff(a, b, ss, extra)
    exp = expected_ranges(raw_a, raw_b, ss)
    assert out["ranges"] == exp
    assert out["sector-size"] == ss
    assert out["differing-sectors"] == sum(r["count"] for r in exp)
    assert rc == (1 if exp else 0)
    assert list(out)[:5] == ["sector-size", "size-a", "size-b",
                             "differing-sectors", "ranges"]
    return out


# ---- the cases: (size_a, size_b, build_a, build_b) -------------------------

def base_fill(size):
    # data with holes: 0-1.5 MiB data, hole, 3-5 MiB data, hole to the end
    return [(0, min(size, 3 * MiB // 2)), (3 * MiB, max(0, min(size, 5 * MiB) - 3 * MiB))]


def case_single_sectors(d):
    size = 6 * MiB
    a = make_raw(d / "a", size, fill=base_fill(size))
    b = make_raw(d / "b", size, fill=base_fill(size),
                 writes=[(0, b"\x01"), (512 * 7, b"x" * 512), (3 * MiB + 4095, b"q"),
                         (size - 1, b"e")])
    return a, b


def case_unaligned_runs(d):
    size = 6 * MiB
    a = make_raw(d / "a", size, fill=base_fill(size))
    b = make_raw(d / "b", size, fill=base_fill(size),
                 writes=[(1000, b"r" * 3000), (MiB - 7, b"s" * 20),
                         (2 * MiB - 100, pattern(9, 300))])  # crosses into a hole
    return a, b


def case_whole_clusters(d):
    size = 8 * MiB
    a = make_raw(d / "a", size, fill=base_fill(size))
    b = make_raw(d / "b", size, fill=base_fill(size),
                 writes=[(64 * KiB, pattern(1, 64 * KiB)),
                         (3 * MiB + 5 * 64 * KiB, pattern(2, 3 * 64 * KiB)),
                         # a run crossing the 2 MiB chunk boundaries
                         (MiB, pattern(3, 3 * MiB))])
    return a, b


def case_zeroed_regions(d):
    size = 6 * MiB
    a = make_raw(d / "a", size, fill=base_fill(size))
    b = make_raw(d / "b", size, fill=base_fill(size),
                 writes=[(128 * KiB, bytes(256 * KiB)), (3 * MiB + 1, bytes(1000)),
                         (4 * MiB, bytes(MiB))])
    return a, b


def case_changes_in_holes(d):
    size = 16 * MiB
    a = make_raw(d / "a", size, fill=[(MiB, 64 * KiB)])
    b = make_raw(d / "b", size, fill=[(MiB, 64 * KiB)],
                 writes=[(5 * MiB + 3, b"hole!"), (9 * MiB, pattern(4, 4096)),
                         (size - 512, b"z" * 512),
                         (7 * MiB, bytes(4096))])  # zeros written into a hole: equal
    return a, b


def case_b_longer(d):
    a = make_raw(d / "a", 3 * MiB, fill=[(0, 3 * MiB)])
    b = make_raw(d / "b", 5 * MiB + 100, fill=[(0, 3 * MiB)],
                 writes=[(4 * MiB, b"tail"), (3 * MiB + 1, bytes(10))])
    return a, b


def case_a_longer_zero_tail(d):
    # A is longer but its extra part is zeros: same content
    a = make_raw(d / "a", 4 * MiB, fill=[(0, 2 * MiB)])
    b = make_raw(d / "b", 2 * MiB, fill=[(0, 2 * MiB)])
    return a, b


def case_a_longer_data_tail(d):
    a = make_raw(d / "a", 4 * MiB + 1000, fill=[(0, 4 * MiB + 1000)])
    b = make_raw(d / "b", 2 * MiB + 512, fill=[(0, 2 * MiB + 512)])
    return a, b


def case_identical(d):
    size = 6 * MiB
    a = make_raw(d / "a", size, fill=base_fill(size))
    b = make_raw(d / "b", size, fill=base_fill(size))
    return a, b


CASES = [case_single_sectors, case_unaligned_runs, case_whole_clusters,
         case_zeroed_regions, case_changes_in_holes, case_b_longer,
         case_a_longer_zero_tail, case_a_longer_data_tail, case_identical]


@pytest.mark.parametrize("ss", [512, 4096])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_raw(tmp_path, case, ss):
    a, b = case(tmp_path)
    check_diff(a, b, a, b, ss)
    # symmetric, and identical to itself
    check_diff(b, a, b, a, ss)
    rc, out = rdiff(a, a, ss)
    assert rc == 0 and out["ranges"] == [] and out["differing-sectors"] == 0


def qcow2_of(raw, out, *opts):
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *opts, raw, out)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_qcow2(tmp_path, case):
    a, b = case(tmp_path)
    qa = qcow2_of(a, tmp_path / "a.qcow2")
    qb = qcow2_of(b, tmp_path / "b.qcow2", "-o", "cluster_size=4096")
    for ss in (512, 4096):
        check_diff(qa, qb, a, b, ss)
        # any mix of formats
        check_diff(a, qb, a, b, ss)
        check_diff(qa, b, a, b, ss)


def test_odd_sector_size(tmp_path):
    a, b = case_unaligned_runs(tmp_path)
    check_diff(a, b, a, b, 1000)
    a, b = case_a_longer_data_tail(tmp_path)
    check_diff(a, b, a, b, 3000)


def qemu_io(img, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    run(*args, img)


def test_overlays_sharing_a_backing_file(tmp_path):
    base = make_raw(tmp_path / "base.raw", 16 * MiB, fill=[(0, 12 * MiB)])
    for name in ("o1", "o2"):
        qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
                 tmp_path / f"{name}.qcow2")
    qemu_io(tmp_path / "o1.qcow2", "write -P 0x11 1M 64k", "write -P 0x22 5M 8k",
            "write -z 8M 128k", "write -P 0x33 14M 4k")
    qemu_io(tmp_path / "o2.qcow2", "write -P 0x11 1M 64k",  # same content as o1
            "write -P 0x44 5M 4k", "write -P 0x55 10M 512", "write -z 11M 64k")
    raws = {}
    for name in ("o1", "o2"):
        raws[name] = tmp_path / f"{name}.raw"
        qemu_img("convert", "-f", "qcow2", "-O", "raw", tmp_path / f"{name}.qcow2",
                 raws[name])
    for ss in (512, 4096):
        out = check_diff(tmp_path / "o1.qcow2", tmp_path / "o2.qcow2", raws["o1"],
                         raws["o2"], ss)
        # only what the overlays hold is read; the shared base is not
        assert out["bytes-skipped-shared"] >= 11 * MiB
        assert out["bytes-skipped-shared"] + out["bytes-skipped-zero"] >= 15 * MiB
        assert out["bytes-read-a"] <= 2 * MiB and out["bytes-read-b"] <= 2 * MiB
        # an overlay against its own base
        out = check_diff(tmp_path / "o1.qcow2", base, raws["o1"], base, ss)
        assert out["bytes-read-a"] <= MiB


def test_overlay_chain_and_shorter_backing(tmp_path):
    base = make_raw(tmp_path / "base.raw", 4 * MiB, fill=[(0, 4 * MiB)])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
             tmp_path / "mid.qcow2", "8M")
    qemu_io(tmp_path / "mid.qcow2", "write -P 0x66 3M 2M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
             tmp_path / "top.qcow2", "10M")
    qemu_io(tmp_path / "top.qcow2", "write -P 0x77 100k 1k", "write -z 3M 64k",
            "write -P 0x78 9M 1M")
    top_raw = tmp_path / "top.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", tmp_path / "top.qcow2", top_raw)
    for ss in (512, 4096):
        check_diff(tmp_path / "top.qcow2", base, top_raw, base, ss)
        check_diff(base, tmp_path / "top.qcow2", base, top_raw, ss)
        check_diff(tmp_path / "top.qcow2", tmp_path / "mid.qcow2", top_raw,
                   mid_raw(tmp_path), ss)


def mid_raw(d):
    out = d / "mid.raw"
    if not out.exists():
        qemu_img("convert", "-f", "qcow2", "-O", "raw", d / "mid.qcow2", out)
    return out


def test_human_and_count(tmp_path):
    a, b = case_single_sectors(tmp_path)
    exp = expected_ranges(a, b, 512)
    total = sum(r["count"] for r in exp)
    r = run(RBLOCK, "diff", a, b, check=False)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert len(lines) == len(exp) + 1
    for line, rg in zip(lines, exp):
        s, c = rg["start"], rg["count"]
        assert line.startswith(f"sectors {s}-{s + c - 1} ({c}): ")
        assert f"0x{s * 512:x}-0x{(s + c) * 512 - 1:x}" in line
    assert lines[-1].startswith(f"{total} differing sectors")
    r = run(RBLOCK, "diff", "--count", a, b, check=False)
    assert (r.returncode, r.stdout) == (1, f"{total}\n")
    r = run(RBLOCK, "diff", "--count", "--sector-size", "4096", a, a, check=False)
    assert (r.returncode, r.stdout) == (0, "0\n")
    r = run(RBLOCK, "diff", "--count", "--output=json", a, b, check=False)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"sector-size": 512, "size-a": os.path.getsize(a),
                                    "size-b": os.path.getsize(b),
                                    "differing-sectors": total}
    # sizes differ: the note says so
    a, b = case_b_longer(tmp_path)
    r = run(RBLOCK, "diff", a, b, check=False)
    assert r.returncode == 1 and "sizes differ" in r.stderr
    a, b = case_a_longer_zero_tail(tmp_path)
    r = run(RBLOCK, "diff", a, b, check=False)
    assert r.returncode == 0 and "sizes differ" in r.stderr and "identical" in r.stdout


def test_trouble(tmp_path):
    a = make_raw(tmp_path / "a", MiB)
    for args in ([a], [a, a, a], ["--sector-size", "0", a, a],
                 ["--sector-size", "x", a, a], ["--output=xml", a, a], ["--bogus", a, a]):
        r = run(RBLOCK, "diff", *args, check=False)
        assert r.returncode == 2, args
    r = run(RBLOCK, "diff", a, tmp_path / "missing", check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"rblock: {tmp_path / 'missing'}: ")
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + bytes(100))
    r = run(RBLOCK, "diff", a, bad, check=False)
    assert r.returncode == 2 and r.stderr.startswith(f"rblock: {bad}: ")


def test_corrupt_image_found_during_the_walk(tmp_path):
    import struct
    q = tmp_path / "c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", q, "4M")
    qemu_io(q, "write -P 1 0 64k")
    with open(q, "r+b") as f:  # point L1[0] at an unaligned L2 table
        l1 = struct.unpack(">Q", f.read(48)[40:48])[0]
        f.seek(l1)
        e = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        f.write(struct.pack(">Q", (e & (1 << 63)) | 0x12345600))
    a = make_raw(tmp_path / "a", 4 * MiB)
    r = run(RBLOCK, "diff", "--output=json", q, a, check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"rblock: {q}: ") and r.stderr.count("\n") == 1
