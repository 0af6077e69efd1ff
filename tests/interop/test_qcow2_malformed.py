# SPDX-License-Identifier: MIT
"""Malformed qcow2 images: every command gives a one-line error naming the
file and exits 1 (never a crash, a hang or a sanitizer report)."""
import os
import struct
import subprocess

import pytest

RBLOCK = os.environ.get("RBLOCK", "build/rblock")


def run(*args, cwd=None):
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    img = str(d / "good.qcow2")
    assert run("qemu-img", "create", "-q", "-f", "qcow2", img, "4M").returncode == 0
    assert run("qemu-io", "-c", "write -P 1 0 128k", img).returncode == 0
    with open(img, "rb") as f:
        return f.read()


def put(data, off, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def expect_error(path, needle, commands=("info", "map", "check"), fmt="qcow2"):
    for cmd in commands:
        args = [RBLOCK, cmd] + (["-f", fmt] if fmt else []) + [path]
        p = run(*args)
        assert p.returncode == 1, f"{cmd}: exit {p.returncode} {p.stderr} {p.stdout[:200]}"
        lines = p.stderr.splitlines()
        assert len(lines) == 1, f"{cmd}: stderr {p.stderr!r}"
        assert lines[0].startswith("rblock: "), lines[0]
        assert needle in lines[0], f"{cmd}: {needle!r} not in {lines[0]!r}"


# (name, offset, struct format, value, words expected in the message)
HEADER_CASES = [
    ("version1", 4, ">I", 1, "version"),
    ("version4", 4, ">I", 4, "version"),
    ("cluster_bits8", 20, ">I", 8, "cluster_bits"),
    ("cluster_bits22", 20, ">I", 22, "cluster_bits"),
    ("header_length100", 100, ">I", 100, "header_length"),
    ("header_length_unaligned", 100, ">I", 108, "header_length"),
    ("header_length_big", 100, ">I", 70000, "header_length"),
    ("refcount_order7", 96, ">I", 7, "refcount_order"),
    ("l1_small", 36, ">I", 0, "L1 table is too small"),
    ("l1_huge", 36, ">I", 0x1000000, "L1 table is too large"),
    ("l1_unaligned", 40, ">Q", 0x30200, "not cluster-aligned"),
    ("l1_past_eof", 40, ">Q", 1 << 40, "past the end"),
    ("reftable_unaligned", 48, ">Q", 0x10200, "not cluster-aligned"),
    ("reftable_past_eof", 48, ">Q", 1 << 40, "past the end"),
    ("reftable_zero", 56, ">I", 0, "no refcount table"),
    ("reftable_huge", 56, ">I", 100000, "refcount table is too large"),
    ("snapshots_many", 60, ">I", 70000, "too many snapshots"),
    ("backing_offset", 8, ">Q", 0x100000, "backing_file_offset"),
    ("unknown_incompat", 72, ">Q", 1 << 10, "bit 10"),
    ("crypt", 32, ">I", 1, "encrypted"),
    ("compression_type", 104, ">B", 1, "compression"),
    ("size_huge", 24, ">Q", 1 << 62, "too large"),
]


@pytest.mark.parametrize("case", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_field(tmp_path, good, case):
    name, off, fmt, value, needle = case
    path = str(tmp_path / f"{name}.qcow2")
    with open(path, "wb") as f:
        f.write(put(good, off, fmt, value))
    expect_error(path, needle)


def test_snapshot_table_past_eof(tmp_path, good):
    path = str(tmp_path / "s.qcow2")
    open(path, "wb").write(put(put(good, 60, ">I", 3), 64, ">Q", 1 << 40))
    expect_error(path, "snapshot table")
    open(path, "wb").write(put(put(good, 60, ">I", 3), 64, ">Q", 0x10200))
    expect_error(path, "snapshot table")


def test_backing_name_too_long(tmp_path, good):
    data = put(put(good, 8, ">Q", 0x200), 16, ">I", 2000)
    path = str(tmp_path / "b.qcow2")
    open(path, "wb").write(data)
    expect_error(path, "backing_file_size")


@pytest.mark.parametrize("size", [0, 10, 71, 100])
def test_truncated(tmp_path, good, size):
    path = str(tmp_path / "t.qcow2")
    open(path, "wb").write(good[:size])
    expect_error(path, "t.qcow2")


def test_bad_magic(tmp_path, good):
    path = str(tmp_path / "m.qcow2")
    open(path, "wb").write(b"XXXX" + good[4:])
    expect_error(path, "bad magic")
    # probed, it is a raw file: no error
    assert run(RBLOCK, "info", path).returncode == 0


def l2_entry_offset(data):
    l1_off = struct.unpack_from(">Q", data, 40)[0]
    return l1_off  # the first L1 entry


def test_l2_unaligned_and_past_eof(tmp_path, good):
    l1 = l2_entry_offset(good)
    l2 = struct.unpack_from(">Q", good, l1)[0]
    path = str(tmp_path / "u.qcow2")
    open(path, "wb").write(put(good, l1, ">Q", l2 + 0x200))
    expect_error(path, "not cluster-aligned", commands=("info", "map"))
    assert run(RBLOCK, "check", path).returncode == 2
    open(path, "wb").write(put(good, l1, ">Q", (1 << 63) | (1 << 44)))
    expect_error(path, "past the end", commands=("info", "map"))
    assert run(RBLOCK, "check", path).returncode == 2


def test_data_cluster_unaligned(tmp_path, good):
    l1 = l2_entry_offset(good)
    l2 = struct.unpack_from(">Q", good, l1)[0] & ((1 << 56) - 512)
    e = struct.unpack_from(">Q", good, l2)[0]
    path = str(tmp_path / "d.qcow2")
    open(path, "wb").write(put(good, l2, ">Q", e + 0x200))
    expect_error(path, "not cluster-aligned", commands=("map",))
    assert run(RBLOCK, "check", path).returncode == 2


def test_backing_loop_and_missing(tmp_path):
    d = str(tmp_path)
    for a, b in (("a.qcow2", "b.qcow2"), ("b.qcow2", "a.qcow2")):
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", b, "-F", "qcow2",
            a, "1M", cwd=d)
    p = run(RBLOCK, "map", "a.qcow2", cwd=d)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "loop" in p.stderr
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "nope.qcow2", "-F", "qcow2",
        "m.qcow2", "1M", cwd=d)
    p = run(RBLOCK, "map", "m.qcow2", cwd=d)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "nope" in p.stderr
    # info without --backing-chain does not need the backing file (as qemu-img)
    assert run(RBLOCK, "info", "m.qcow2", cwd=d).returncode == 0
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "json:{}", "-F", "qcow2",
        "j.qcow2", "1M", cwd=d)
    p = run(RBLOCK, "map", "j.qcow2", cwd=d)
    assert p.returncode == 1 and "json:" in p.stderr


def test_corrupt_bit_read_only(tmp_path, good):
    path = str(tmp_path / "c.qcow2")
    open(path, "wb").write(put(good, 72, ">Q", 2))
    p = run(RBLOCK, "info", "--output=json", path)
    assert p.returncode == 0 and '"corrupt": true' in p.stdout
    assert run(RBLOCK, "map", path).returncode == 0
