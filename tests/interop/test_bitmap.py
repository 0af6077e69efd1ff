# SPDX-License-Identifier: MIT
"""Persistent dirty bitmaps, interchangeable with QEMU on the same files:
`rblock bitmap` against `qemu-img bitmap` on copies of one image (same
qemu-img info, same dirty map through qemu-nbd -B, qemu-img check clean),
writes through `rblock serve` recorded in the bitmaps and written back at
a clean stop, a kill -9 leaving them in_use, and `rblock serve -B`
serving qemu:dirty-bitmap:NAME as qemu-nbd -B does."""
import json
import os
import shutil
import subprocess

import nbd
import pytest

from nbd_helpers import RBLOCK, Server

MiB = 1 << 20
K64 = 64 * 1024


def run(*args, check=True):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          text=True, timeout=120)


def qcheck(path):
    c = run("qemu-img", "check", path, check=False)
    assert c.returncode == 0, c.stdout + c.stderr


def bitmaps(path):
    info = json.loads(run("qemu-img", "info", "-f", "qcow2", "--output=json", path).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def parse_map(text):
    out = []
    for line in text.splitlines():
        off, length, status = line.split()[:3]
        out.append((int(off), int(length), int(status)))
    return out


def qemu_map(path, name):
    """The dirty map of bitmap @name as qemu-nbd -B serves it (the server
    is started by nbdinfo through socket activation: no waiting)."""
    r = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
            "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, path, "]")
    return parse_map(r.stdout)


def dirty(m):
    return [(off, n) for off, n, st in m if st & 1]


def make(path, size="64M", cluster=None):
    opts = ["-o", f"cluster_size={cluster}"] if cluster else []
    run("qemu-img", "create", "-q", "-f", "qcow2", *opts, path, size)


@pytest.fixture
def base(tmp_path):
    """64 MiB, data, two enabled bitmaps (64k, 128k) that recorded writes,
    and a disabled one."""
    img = str(tmp_path / "base.qcow2")
    make(img)
    run("qemu-io", "-c", "write -P 1 0 1M", img)
    run("qemu-img", "bitmap", "--add", img, "b0")
    run("qemu-img", "bitmap", "--add", "-g", "128k", img, "b1")
    run("qemu-io", "-c", "write -P 2 4M 64k", "-c", "write -P 3 9M 200k", img)
    run("qemu-img", "bitmap", "--add", "--disable", img, "b2")
    run("qemu-img", "bitmap", "--disable", img, "b1")
    run("qemu-io", "-c", "write -P 4 20M 64k", img)
    return img


def same_as_qemu(tmp_path, src, args, name):
    """Apply `bitmap ARGS IMAGE NAME` with rblock and qemu-img on two copies
    of @src; both must succeed, pass qemu-img check and agree."""
    ours, theirs = str(tmp_path / "ours.qcow2"), str(tmp_path / "theirs.qcow2")
    shutil.copy(src, ours)
    shutil.copy(src, theirs)
    r = run(RBLOCK, "bitmap", *args, ours, name, check=False)
    assert r.returncode == 0, r.stderr
    run("qemu-img", "bitmap", *args, theirs, name)
    qcheck(ours)
    assert run(RBLOCK, "check", ours, check=False).returncode == 0
    assert bitmaps(ours) == bitmaps(theirs)
    for b in bitmaps(theirs):
        assert qemu_map(ours, b["name"]) == qemu_map(theirs, b["name"]), b
    return ours


def test_add_listed_by_qemu(tmp_path):
    img = str(tmp_path / "a.qcow2")
    make(img)
    run(RBLOCK, "bitmap", "--add", img, "first")
    run(RBLOCK, "bitmap", "--add", "-g", "512", "--disable", img, "tiny")
    run(RBLOCK, "bitmap", "--add", "-g", "2G", img, "huge")
    name = "n" * 1023
    run(RBLOCK, "bitmap", "--add", img, name)
    qcheck(img)
    assert bitmaps(img) == [
        {"flags": ["auto"], "name": "first", "granularity": 65536},
        {"flags": [], "name": "tiny", "granularity": 512},
        {"flags": ["auto"], "name": "huge", "granularity": 1 << 31},
        {"flags": ["auto"], "name": name, "granularity": 65536},
    ]
    # qemu-nbd serves it (all clean), and our info says the same as qemu's
    assert qemu_map(img, "first") == [(0, 64 * MiB, 0)]
    ours = json.loads(run(RBLOCK, "info", "--output=json", img).stdout)
    assert ours["format-specific"]["data"]["bitmaps"] == bitmaps(img)
    # qemu's own writes land in our bitmap
    run("qemu-io", "-c", "write 1M 64k", img)
    assert dirty(qemu_map(img, "first")) == [(MiB, K64)]
    assert dirty(qemu_map(img, "tiny")) == []
    qcheck(img)


def test_add_refused_like_qemu(tmp_path):
    img = str(tmp_path / "a.qcow2")
    make(img)
    run(RBLOCK, "bitmap", "--add", img, "x")
    before = open(img, "rb").read()
    for args in (["--add"], ["--add", "-g", "1000"], ["--add", "-g", "256"],
                 ["--add", "-g", "4G"], ["--clear", "--add"]):
        r = run(RBLOCK, "bitmap", *args, img, "x" if "-g" not in args else "y",
                check=False)
        assert r.returncode == 1 and r.stderr.startswith("rblock: "), (args, r.stderr)
    for args in (["--remove"], ["--merge", "x"], ["--enable"]):
        r = run(RBLOCK, "bitmap", *args, img, "nope", check=False)
        assert r.returncode == 1 and "nope" in r.stderr, r.stderr
    r = run(RBLOCK, "bitmap", "--add", img, "n" * 1024, check=False)
    assert r.returncode == 1
    r = run(RBLOCK, "bitmap", img, "x", check=False)
    assert r.returncode == 1
    # a failed sequence changes nothing (the --add before the failure too)
    r = run(RBLOCK, "bitmap", "--add", "--remove", "--remove", img, "z", check=False)
    assert r.returncode == 1
    assert open(img, "rb").read() == before
    v2 = str(tmp_path / "v2.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M")
    r = run(RBLOCK, "bitmap", "--add", v2, "x", check=False)
    assert r.returncode == 1 and "v2" in r.stderr


@pytest.mark.parametrize("args,name", [
    (["--clear"], "b0"),
    (["--disable"], "b0"),
    (["--enable"], "b1"),
    (["--remove"], "b1"),
    (["--merge", "b1"], "b0"),
    (["--merge", "b0"], "b1"),
    (["--merge", "b0", "--merge", "b1"], "b2"),
    (["--add", "-g", "512", "--merge", "b1", "--disable"], "n"),
    (["--add", "-g", "1M", "--merge", "b0"], "n"),
    (["--clear", "--merge", "b1", "--enable"], "b2"),
    (["--remove", "--add"], "b0"),
])
def test_ops_match_qemu(tmp_path, base, args, name):
    same_as_qemu(tmp_path, base, args, name)


def test_default_granularity_and_remove_all(tmp_path):
    for cluster in ("512", "4k", "2M"):
        img = str(tmp_path / f"c{cluster}.qcow2")
        make(img, "8M", cluster)
        run("qemu-io", "-c", "write 0 1M", img)
        out = same_as_qemu(tmp_path, img, ["--add"], "d")
        shutil.copy(out, img)
    # removing the last bitmap drops the extension and the autoclear bit
    out = same_as_qemu(tmp_path, img, ["--remove"], "d")
    assert bitmaps(out) == []
    with open(out, "rb") as f:
        f.seek(88)
        assert int.from_bytes(f.read(8), "big") & 1 == 0


def test_merge_from_other_image(tmp_path, base):
    other = str(tmp_path / "other.qcow2")
    make(other)
    run("qemu-img", "bitmap", "--add", "-g", "256k", other, "o")
    run("qemu-io", "-c", "write 30M 1k", "-c", "write 50M 3M", other)
    same_as_qemu(tmp_path, base, ["--merge", "o", "-b", other, "-F", "qcow2"], "b0")
    small = str(tmp_path / "small.qcow2")
    make(small, "32M")
    run("qemu-img", "bitmap", "--add", small, "s")
    r = run(RBLOCK, "bitmap", "--merge", "s", "-b", small, base, "b0", check=False)
    assert r.returncode == 1 and "bytes" in r.stderr


def serve_writes(img, *args):
    """Writes, zeroes and a trim through rblock serve, then SIGTERM."""
    srv = Server(img, *args)
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        h.pwrite(b"\x55" * 4096, 2 * MiB + 100)          # one 64k granule
        h.pwrite(b"\x66" * (K64 + 1), 7 * MiB)          # two granules
        h.zero(MiB, 12 * MiB)                           # 16 granules
        h.trim(K64, 30 * MiB)                           # one granule
        h.flush()
        h.shutdown()
    finally:
        status, err = srv.stop()
    assert status == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


def test_serve_writes_recorded(tmp_path):
    img = str(tmp_path / "s.qcow2")
    make(img)
    run("qemu-io", "-c", "write -P 1 0 64M", img)
    run("qemu-img", "bitmap", "--add", img, "inc")
    run("qemu-img", "bitmap", "--add", "-g", "1M", img, "coarse")
    run("qemu-img", "bitmap", "--add", "--disable", img, "off")
    serve_writes(img)
    qcheck(img)
    assert run(RBLOCK, "check", img, check=False).returncode == 0
    # written back at the clean stop: consistent, no longer in_use
    assert bitmaps(img) == [
        {"flags": ["auto"], "name": "inc", "granularity": K64},
        {"flags": ["auto"], "name": "coarse", "granularity": MiB},
        {"flags": [], "name": "off", "granularity": K64},
    ]
    assert dirty(qemu_map(img, "inc")) == [(2 * MiB, K64), (7 * MiB, 2 * K64),
                                           (12 * MiB, MiB), (30 * MiB, K64)]
    assert dirty(qemu_map(img, "coarse")) == [(2 * MiB, MiB), (7 * MiB, MiB),
                                              (12 * MiB, MiB), (30 * MiB, MiB)]
    assert dirty(qemu_map(img, "off")) == []
    # a second session adds to what the first recorded
    srv = Server(img)
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        h.pwrite(b"\x77" * 512, 40 * MiB)
        h.shutdown()
    finally:
        assert srv.stop()[0] == 0
    qcheck(img)
    assert dirty(qemu_map(img, "inc"))[-1] == (40 * MiB, K64)
    assert len(dirty(qemu_map(img, "inc"))) == 5


def test_kill9_leaves_in_use(tmp_path):
    img = str(tmp_path / "k.qcow2")
    make(img)
    run("qemu-img", "bitmap", "--add", img, "b")
    srv = Server(img)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"\x11" * K64, 5 * MiB)
    h.flush()
    srv.kill()
    assert bitmaps(img) == [{"flags": ["in-use", "auto"], "name": "b",
                             "granularity": K64}]
    # an inconsistent bitmap is not recorded into and stays in_use, while a
    # fresh one next to it is kept up to date
    run(RBLOCK, "bitmap", "--add", img, "fresh")
    serve_writes(img)
    qcheck(img)
    assert bitmaps(img) == [
        {"flags": ["in-use", "auto"], "name": "b", "granularity": K64},
        {"flags": ["auto"], "name": "fresh", "granularity": K64},
    ]
    assert len(dirty(qemu_map(img, "fresh"))) == 4
    # only --remove works on it, as with qemu-img bitmap
    for op in ("--clear", "--enable", "--disable"):
        r = run(RBLOCK, "bitmap", op, img, "b", check=False)
        assert r.returncode == 1 and "inconsistent" in r.stderr, r.stderr
    r = run(RBLOCK, "bitmap", "--merge", "b", img, "fresh", check=False)
    assert r.returncode == 1 and "inconsistent" in r.stderr
    run(RBLOCK, "bitmap", "--remove", img, "b")
    qcheck(img)
    assert [b["name"] for b in bitmaps(img)] == ["fresh"]


def rblock_map(path, name, *extra):
    r = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
            "[", RBLOCK, "serve", "-r", "-B", name, *extra, path, "]")
    return parse_map(r.stdout)


def test_serve_bitmap_same_as_qemu_nbd(tmp_path, base):
    run("qemu-img", "bitmap", "--add", "-g", "512", base, "fine")
    run("qemu-io", "-c", "write 3000 10", "-c", "write 33M 1000", "-c", "write 63M 1M",
        "-c", "write 40M 5000", base)
    for name in ("b0", "b1", "b2", "fine"):
        assert rblock_map(base, name) == qemu_map(base, name), name
    assert len(dirty(qemu_map(base, "fine"))) == 4
    # with the other contexts, on one connection, as qemu-nbd offers them
    r = run("nbdinfo", "--json", "--list", "--", "[", RBLOCK, "serve", "-r", "-B", "b0",
            "-B", "fine", base, "]")
    ctx = json.loads(r.stdout)["exports"][0]["contexts"]
    assert ctx == ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0",
                   "qemu:dirty-bitmap:fine"]
    srv = Server(base, "-r", "-B", "b1", "-B", "fine")
    try:
        for query, want in (("qemu:dirty-bitmap:", ["qemu:dirty-bitmap:b1",
                                                    "qemu:dirty-bitmap:fine"]),
                            ("qemu:", ["qemu:allocation-depth", "qemu:dirty-bitmap:b1",
                                       "qemu:dirty-bitmap:fine"]),
                            ("qemu:dirty-bitmap:b0", [])):
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.add_meta_context(query)
            h.connect_uri(srv.uri)
            got = []
            h.opt_list_meta_context(lambda name: got.append(name) or 0)
            h.opt_abort()
            assert got == want, query
        # base:allocation and a bitmap in one block status reply
        h = nbd.NBD()
        for m in ("base:allocation", "qemu:dirty-bitmap:b1"):
            h.add_meta_context(m)
        h.connect_uri(srv.uri)
        seen = {}
        h.block_status(8 * MiB, 8 * MiB,
                       lambda meta, off, ents, err: seen.__setitem__(meta, ents) or 0)
        h.shutdown()
        assert set(seen) == {"base:allocation", "qemu:dirty-bitmap:b1"}
        assert seen["qemu:dirty-bitmap:b1"][:4] == [MiB, 0, 256 * 1024, 1]
    finally:
        assert srv.stop()[0] == 0


def test_serve_bitmap_live_and_refused(tmp_path):
    img = str(tmp_path / "l.qcow2")
    make(img)
    run("qemu-img", "bitmap", "--add", img, "b")
    srv = Server(img, "-B", "b")
    try:
        h = nbd.NBD()
        h.add_meta_context("qemu:dirty-bitmap:b")
        h.connect_uri(srv.uri)
        h.pwrite(b"\x01" * 512, 6 * MiB + 512)
        seen = []
        h.block_status(16 * MiB, 0, lambda meta, off, ents, err: seen.extend(ents) or 0)
        h.shutdown()
    finally:
        assert srv.stop()[0] == 0
    assert seen == [6 * MiB, 0, K64, 1, 10 * MiB - K64, 0]
    assert dirty(rblock_map(img, "b")) == dirty(qemu_map(img, "b")) == [(6 * MiB, K64)]
    # refused at start-up, as qemu-nbd -B
    for args, why in ((["-B", "nope"], "no bitmap 'nope'"),
                      (["-B", "b", "-B", "b"], "twice")):
        r = run(RBLOCK, "serve", "-r", *args, img, check=False)
        assert r.returncode == 1 and why in r.stderr, r.stderr
    raw = str(tmp_path / "r.raw")
    run("qemu-img", "create", "-q", "-f", "raw", raw, "1M")
    r = run(RBLOCK, "serve", "-r", "-B", "b", raw, check=False)
    assert r.returncode == 1 and "bitmaps" in r.stderr
    srv = Server(img)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"\x11" * K64, 5 * MiB)
    h.flush()
    srv.kill()
    r = run(RBLOCK, "serve", "-r", "-B", "b", img, check=False)
    assert r.returncode == 1 and "inconsistent" in r.stderr, r.stderr


def state(path):
    """The bitmaps as QEMU reads them: qemu-img info's list and, for each
    consistent one, its dirty map through qemu-nbd -B."""
    bms = bitmaps(path)
    return bms, {b["name"]: qemu_map(path, b["name"]) for b in bms
                 if "in-use" not in b["flags"]}


def fault_plans(env_run):
    r = env_run("count")
    assert r.returncode == 0, r.stderr
    w, s = (int(x) for x in r.stderr.split("rblock-fault: writes=")[1].split(" syncs="))
    assert w >= 3 and s >= 2, r.stderr
    plans = [f"power-write:{n}" for n in range(1, w + 1)]
    plans += [f"power-sync:{n}" for n in range(1, s + 1)]
    for seed in (7, 8):  # a disk that reorders: unsynced writes kept at random
        plans += [f"power-write:{n}:{n + seed}" for n in range(1, w + 1)]
        plans += [f"power-sync:{n}:{n + seed}" for n in range(1, s + 1)]
    return plans


def no_corruption(path):
    c = run("qemu-img", "check", path, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr  # leaks are harmless


def test_bitmap_command_power_loss(tmp_path, base):
    """A power loss at any write or sync of `rblock bitmap` leaves the old
    bitmaps or the new ones, never a mix, and no corruption."""
    name = "b2"
    done = str(tmp_path / "done.qcow2")
    shutil.copy(base, done)
    ok = run(RBLOCK, "bitmap", "--merge", "b0", done, "b2", check=False)
    assert ok.returncode == 0, ok.stderr
    before, after = state(base), state(done)
    assert before != after
    copy = str(tmp_path / "crash.qcow2")

    def attempt(plan):
        shutil.copy(base, copy)
        env = {**os.environ, "RBLOCK_FAULT": plan}
        return subprocess.run([RBLOCK, "bitmap", "--merge", "b0", copy, name],
                              capture_output=True, text=True, env=env, timeout=60)

    for plan in fault_plans(attempt):
        r = attempt(plan)
        assert r.returncode == 99, (plan, r.returncode, r.stderr)
        no_corruption(copy)
        assert state(copy) in (before, after), plan


def test_close_write_back_power_loss(tmp_path):
    """A power loss while serve writes and then writes the bitmap back:
    afterwards the bitmap is in_use, or consistent and marks every cluster
    the client wrote (and had flushed); never a written cluster clean."""
    img = str(tmp_path / "w.qcow2")
    make(img, "16M")
    run("qemu-img", "bitmap", "--add", img, "b")
    script = tmp_path / "client.py"
    script.write_text(
        "import nbd, os\n"
        "h = nbd.NBD()\nh.connect_uri(os.environ['uri'])\n"
        "h.pwrite(b'\\x42' * 4096, 3 * 1048576)\n"
        "h.zero(65536, 9 * 1048576)\nh.flush()\nh.shutdown()\n")
    copy = str(tmp_path / "crash.qcow2")

    def attempt(plan):
        shutil.copy(img, copy)
        env = {**os.environ, "RBLOCK_FAULT": plan}
        return subprocess.run([RBLOCK, "serve", "--run", f"/usr/bin/python3 {script}",
                               copy], capture_output=True, text=True, env=env,
                              timeout=60)

    written = [(3 * MiB, K64), (9 * MiB, K64)]
    outcomes = set()
    for plan in fault_plans(attempt):
        r = attempt(plan)
        assert r.returncode == 99, (plan, r.returncode, r.stderr)
        no_corruption(copy)
        bms = bitmaps(copy)
        assert [b["name"] for b in bms] == ["b"], plan
        if "in-use" not in bms[0]["flags"]:
            got = dirty(qemu_map(copy, "b"))
            # consistent: either from before any write (nothing recorded) when
            # the client's writes never happened, or with every write in it
            assert got in ([], written), (plan, got)
            outcomes.add("written back" if got else "untouched")
            if got == []:
                c = run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", copy, img,
                        check=False)
                assert c.returncode == 0, (plan, c.stdout)
        else:
            outcomes.add("in use")
    # the crash points cover the whole story: before the first write, while
    # in use, and after the write-back
    assert outcomes == {"untouched", "in use", "written back"}, outcomes


def bitmap_dir(path):
    """(offset, size) of the bitmap directory, from the header extension."""
    with open(path, "rb") as f:
        h = f.read(65536)
    pos = int.from_bytes(h[100:104], "big")
    while True:
        typ, length = int.from_bytes(h[pos:pos + 4], "big"), int.from_bytes(
            h[pos + 4:pos + 8], "big")
        assert typ != 0
        if typ == 0x23852875:
            d = h[pos + 8:pos + 32]
            return int.from_bytes(d[16:24], "big"), int.from_bytes(d[8:16], "big")
        pos += 8 + (length + 7) // 8 * 8


def poke(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


@pytest.mark.parametrize("damage", ["gbits", "reserved-flag", "table-past-end",
                                    "table-entry", "name-past-dir", "type"])
def test_damaged_bitmaps_refused(tmp_path, damage):
    img = str(tmp_path / "d.qcow2")
    make(img, "8M")
    run(RBLOCK, "bitmap", "--add", img, "b")
    run("qemu-io", "-c", "write 0 64k", img)  # a data cluster in the table
    doff, _ = bitmap_dir(img)
    with open(img, "rb") as f:
        f.seek(doff)
        toff = int.from_bytes(f.read(8), "big")
    if damage == "gbits":
        poke(img, doff + 17, bytes([40]))
    elif damage == "reserved-flag":
        poke(img, doff + 12, (0x80).to_bytes(4, "big"))
    elif damage == "table-past-end":
        poke(img, doff, (1 << 40).to_bytes(8, "big"))
    elif damage == "table-entry":
        poke(img, toff, (0xff00000000000000 | 65536 * 3).to_bytes(8, "big"))
    elif damage == "name-past-dir":
        poke(img, doff + 18, (60000).to_bytes(2, "big"))
    elif damage == "type":
        poke(img, doff + 16, bytes([7]))
    before = open(img, "rb").read()
    for cmd in ([RBLOCK, "bitmap", "--clear", img, "b"],
                [RBLOCK, "bitmap", "--add", img, "c"],
                [RBLOCK, "serve", "-r", "-B", "b", img]):
        r = run(*cmd, check=False)
        assert r.returncode == 1, (cmd, r.stderr)
        assert r.stderr.startswith("rblock: " + img + ": ") and "\n" == r.stderr[-1], \
            r.stderr
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
    assert open(img, "rb").read() == before
    # info and check still run and say something
    r = run(RBLOCK, "info", img, check=False)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
    r = run(RBLOCK, "check", img, check=False)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
    if damage == "table-entry":
        assert r.returncode == 2 and "ERROR: bitmap table at " in r.stdout, r.stdout


def test_serve_bitmap_of_backing_layer(tmp_path):
    """As qemu-nbd -B, a bitmap the top image lacks is looked for down the
    backing chain; writes into the top do not touch it."""
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    make(base, "16M")
    run("qemu-img", "bitmap", "--add", base, "bb")
    run("qemu-io", "-c", "write 1M 64k", "-c", "write 7M 1M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    assert rblock_map(top, "bb") == qemu_map(top, "bb")
    assert dirty(rblock_map(top, "bb")) == [(MiB, K64), (7 * MiB, MiB)]
    srv = Server(top, "-B", "bb")
    try:
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        h.pwrite(b"\x05" * 512, 12 * MiB)
        h.shutdown()
    finally:
        assert srv.stop()[0] == 0
    assert dirty(qemu_map(top, "bb")) == [(MiB, K64), (7 * MiB, MiB)]
    qcheck(top)
    qcheck(base)
    r = run(RBLOCK, "serve", "-r", "-B", "nowhere", top, check=False)
    assert r.returncode == 1 and r.stderr == f"rblock: {top}: no bitmap 'nowhere'\n"
