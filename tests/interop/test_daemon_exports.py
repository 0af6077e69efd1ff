# SPDX-License-Identifier: MIT
"""rblock serve as a storage daemon: several exports (qcow2 and raw) in one
process read and written by nbdcopy and qemu-io through their names, exports
added and removed over JSON-RPC while clients are connected (safe and hard
removal: no flushed write lost, the image closed and unlocked after), the
bitmap methods, and a 48 MiB request from a client that negotiated no block
size.  Every image is compared with a copy on which qemu-io did the same
writes, and passes qemu-img check."""
import errno
import json
import os
import shutil
import subprocess
import threading

import nbd
import pytest

from daemon_helpers import Daemon

MiB = 1 << 20


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True,
                          **kw)


def qemu_io(target, *cmds, fmt=None):
    args = ["qemu-io"] + (["-f", fmt] if fmt else [])
    for c in cmds:
        args += ["-c", c]
    return run(*args, target)


def check_clean(path):
    r = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def same(a, b):
    r = subprocess.run(["qemu-img", "compare", str(a), str(b)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def images(tmp_path):
    """a.qcow2 (64M, some data), b.raw (32M), c.qcow2 (16M), and reference
    copies of each."""
    a, b, c = tmp_path / "a.qcow2", tmp_path / "b.raw", tmp_path / "c.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", a, 64 * MiB)
    qemu_io(a, "write -P 0x11 0 3M", "write -P 0x12 40M 1M")
    run("qemu-img", "create", "-q", "-f", "raw", b, 32 * MiB)
    qemu_io(b, "write -P 0x21 8M 1M", fmt="raw")
    run("qemu-img", "create", "-q", "-f", "qcow2", c, 16 * MiB)
    for p in (a, b, c):
        shutil.copy(p, tmp_path / ("ref-" + p.name))
    return tmp_path


def uri(sock, name):
    return f"nbd+unix:///{name}?socket={sock}"


@pytest.mark.parametrize("count", [2, 3])
def test_exports_by_name(images, count):
    t = images
    sock, rpc = t / "nbd.sock", t / "rpc.sock"
    src = t / "src.raw"
    src.write_bytes(os.urandom(4 * MiB))
    args = [t / "a.qcow2", "-f", "qcow2", "-x", "alpha", "-D", "first disk",
            "--export", f"beta={t / 'b.raw'},format=raw,description=second,, disk",
            "--nbd", f"unix:{sock}", "--rpc", f"unix:{rpc}"]
    if count == 3:
        args += ["--export", f"gamma={t / 'c.qcow2'},format=qcow2"]
    d = Daemon(*args)
    try:
        assert d.nbd_uris == [uri(sock, "alpha")]
        listed = json.loads(run("nbdinfo", "--list", "--json", uri(sock, "")).stdout)
        got = {e["export-name"]: e.get("description") for e in listed["exports"]}
        want = {"alpha": "first disk", "beta": "second, disk"}
        if count == 3:
            want["gamma"] = None
        assert got == want
        # the empty name is the default export
        assert run("nbdinfo", "--size", uri(sock, "")).stdout.strip() == str(64 * MiB)
        assert run("nbdinfo", "--size", uri(sock, "beta")).stdout.strip() == str(32 * MiB)
        r = subprocess.run(["nbdinfo", uri(sock, "nope")], capture_output=True, text=True)
        assert r.returncode != 0 and "nope" in r.stderr

        # nbdcopy into alpha and out of beta; qemu-io into beta (and gamma)
        run("nbdcopy", src, uri(sock, "alpha"))
        qemu_io(uri(sock, "beta"), "write -P 0x5b 1M 2M", "write -z 8M 512k", fmt="raw")
        if count == 3:
            qemu_io(uri(sock, "gamma"), "write -P 0x6c 0 64k", "write -P 0x6d 15M 1M",
                    fmt="raw")
        out = t / "beta-out.raw"
        run("nbdcopy", uri(sock, "beta"), out)
        with d.rpc() as c:
            assert [e["name"] for e in c.result("export_list")] == \
                ["alpha", "beta"] + (["gamma"] if count == 3 else [])
            info = c.result("export_info", {"name": "beta"})
            assert info["format"] == "raw" and info["size"] == 32 * MiB
            assert info["description"] == "second, disk" and info["read-only"] is False
    finally:
        status, err = d.stop()
    assert status == 0, err

    # the same writes on the reference copies, by qemu-io directly; alpha
    # got src's bytes over its first 4 MiB
    ra, rb, rc = t / "ref-a.qcow2", t / "ref-b.raw", t / "ref-c.qcow2"
    run("qemu-img", "convert", "-O", "raw", ra, t / "want-a.raw")
    run("qemu-img", "convert", "-O", "raw", t / "a.qcow2", t / "got-a.raw")
    want = bytearray((t / "want-a.raw").read_bytes())
    want[:4 * MiB] = src.read_bytes()
    assert (t / "got-a.raw").read_bytes() == bytes(want)
    check_clean(t / "a.qcow2")
    qemu_io(rb, "write -P 0x5b 1M 2M", "write -z 8M 512k", fmt="raw")
    same(t / "b.raw", rb)
    assert out.read_bytes() == (t / "b.raw").read_bytes()
    if count == 3:
        qemu_io(rc, "write -P 0x6c 0 64k", "write -P 0x6d 15M 1M")
        same(t / "c.qcow2", rc)
        check_clean(t / "c.qcow2")


def nbd_handle(sock, name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(str(sock))
    return h


def listed_names(sock):
    return [e["export-name"] for e in
            json.loads(run("nbdinfo", "--list", "--json", uri(sock, "")).stdout)["exports"]]


@pytest.mark.parametrize("mode", ["safe", "hard"])
def test_add_remove_with_clients(images, mode):
    t = images
    sock, rpc = t / "nbd.sock", t / "rpc.sock"
    c_img = t / "c.qcow2"
    d = Daemon(t / "a.qcow2", "-f", "qcow2", "--nbd", f"unix:{sock}", "--rpc", f"unix:{rpc}")
    try:
        with d.rpc() as c, d.rpc() as c2:
            assert c.result("export_add", {"name": "x", "image": str(c_img),
                                           "format": "qcow2", "description": "added"}) \
                == {"name": "x"}
            # visible to the very next NBD_OPT_LIST
            assert listed_names(sock) == ["", "x"]
            e = c.error("export_add", {"name": "x", "image": str(c_img)})
            assert e["code"] == -32008, e
            e = c.error("export_add", {"name": "y", "image": str(t / "missing.qcow2")})
            assert e["code"] == -32009 and e["data"]["name"] == "ENOENT", e

            h = nbd_handle(sock, "x")
            h.pwrite(b"\x71" * MiB, 0)
            h.flush()
            if mode == "safe":
                done = {}
                th = threading.Thread(
                    target=lambda: done.update(r=c2.call(
                        "export_remove", {"name": "x", "mode": "safe"})))
                th.start()
                # out of the table at once (the call itself waits for h)
                while "x" in [x["name"] for x in c.result("export_list")]:
                    pass
                assert listed_names(sock) == [""]
                assert th.is_alive() and not done
                # the connected client is still served until it leaves
                h.pwrite(b"\x72" * MiB, 2 * MiB)
                h.flush()
                assert h.pread(MiB, 0) == b"\x71" * MiB
                h.shutdown()
                th.join(120)
                assert done["r"]["result"] == {"name": "x", "mode": "safe"}, done
            else:
                h.pwrite(b"\x72" * MiB, 2 * MiB)
                h.flush()
                assert c.result("export_remove", {"name": "x", "mode": "hard"}) == \
                    {"name": "x", "mode": "hard"}
                assert listed_names(sock) == [""]
                with pytest.raises(nbd.Error):
                    h.pread(4096, 0)
            del h
            e = c.error("export_remove", {"name": "x"})
            assert e["code"] == -32007, e
            e = c.error("read", {"export": "x", "offset": 0, "length": 1})
            assert e["code"] == -32007, e
            # closed and unlocked: another writer may open it now
            qemu_io(c_img, "write -P 0x73 4M 64k")
            # and the same name can be served again
            c.result("export_add", {"name": "x", "image": str(c_img), "read_only": True})
            got = c.result("read", {"export": "x", "offset": 2 * MiB, "length": 4})
            assert got["data"] == "cnJycg=="  # 0x72 * 4
            e = c.error("write", {"export": "x", "offset": 0, "data": "AA=="})
            assert e["code"] == -32002, e
    finally:
        status, err = d.stop()
    assert status == 0, err
    ref = t / "ref-c.qcow2"
    qemu_io(ref, "write -P 0x71 0 1M", "write -P 0x72 2M 1M", "write -P 0x73 4M 64k")
    same(c_img, ref)
    check_clean(c_img)


def test_bitmap_methods(images):
    t = images
    sock, rpc = t / "nbd.sock", t / "rpc.sock"
    d = Daemon(t / "a.qcow2", "-f", "qcow2", "--export", f"raw={t / 'b.raw'},format=raw",
               "--export", f"ro={t / 'c.qcow2'},read-only",
               "--nbd", f"unix:{sock}", "--rpc", f"unix:{rpc}")
    try:
        with d.rpc() as c:
            assert c.result("bitmap_add", {"name": "b0", "granularity": 65536}) == {}
            assert c.result("bitmap_add", {"name": "b1", "disabled": True}) == {}
            assert c.result("bitmap_merge", {"name": "b1", "source": "b0"}) == {}
            assert c.result("bitmap_clear", {"name": "b0"}) == {}
            assert c.result("bitmap_disable", {"name": "b0"}) == {}
            assert c.result("bitmap_enable", {"name": "b1"}) == {}
            info = json.loads(run("qemu-img", "info", "-U", "--output=json",
                                  t / "a.qcow2").stdout)
            bms = {b["name"]: b for b in info["format-specific"]["data"]["bitmaps"]}
            assert set(bms) == {"b0", "b1"}
            assert bms["b0"]["granularity"] == 65536
            assert "auto" not in bms["b0"]["flags"] and "auto" in bms["b1"]["flags"]
            assert c.result("bitmap_remove", {"name": "b1"}) == {}
            e = c.error("bitmap_remove", {"name": "b1"})
            assert e["code"] == -32010 and e["data"]["name"] == "ENOENT", e
            e = c.error("bitmap_add", {"name": "b0"})
            assert e["code"] == -32010 and e["data"]["name"] == "EEXIST", e
            e = c.error("bitmap_add", {"name": "z", "export": "raw"})
            assert e["code"] == -32010 and e["data"]["errno"] == errno.ENOTSUP, e
            e = c.error("bitmap_add", {"name": "z", "export": "ro"})
            assert e["code"] == -32002, e
            e = c.error("bitmap_add", {"name": "z", "granularity": 1000})
            assert e["code"] == -32602, e
    finally:
        status, err = d.stop()
    assert status == 0, err
    check_clean(t / "a.qcow2")
    info = json.loads(run("qemu-img", "info", "--output=json", t / "a.qcow2").stdout)
    assert [b["name"] for b in info["format-specific"]["data"]["bitmaps"]] == ["b0"]


def test_large_request_without_block_size(images):
    """48 MiB in one request from a client that asked for no block size
    (the NBD reference server takes it; qemu-nbd does not)."""
    t = images
    sock = t / "nbd.sock"
    d = Daemon(t / "a.qcow2", "-f", "qcow2", "--nbd", f"unix:{sock}", listeners=1)
    try:
        data = os.urandom(48 * MiB)
        h = nbd.NBD()
        h.set_request_block_size(False)
        h.connect_uri(uri(sock, ""))
        h.pwrite(data, 8 * MiB)
        assert h.pread(48 * MiB, 8 * MiB) == data
        h.flush()
        # more than 64 MiB is still refused
        with pytest.raises(nbd.Error):
            h.pread(64 * MiB + 4096, 0)
        h.shutdown()
        # a client that asked is told 32 MiB
        h = nbd.NBD()
        h.connect_uri(uri(sock, ""))
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB
        h.shutdown()
    finally:
        status, err = d.stop()
    assert status == 0, err
    out = t / "a.raw"
    run("qemu-img", "convert", "-O", "raw", t / "a.qcow2", out)
    with open(out, "rb") as f:
        f.seek(8 * MiB)
        assert f.read(48 * MiB) == data
    check_clean(t / "a.qcow2")
