# SPDX-License-Identifier: MIT
"""Images rblock must not write are refused before anything is written:
an external data file, encryption (images with internal snapshots are
written with copy-on-write: test_snapshot.py).  For each: `rblock serve` read-write exits 1 with one line
naming the image and the reason, the --run command never runs, the files
are unchanged byte for byte and qemu-img check finds them clean.  Read-only
serving of an image with a snapshot and of a data-file image works and refuses
writes with EPERM."""
import hashlib
import os
import subprocess

import pytest

RBLOCK = os.environ.get("RBLOCK", "build/rblock")
MiB = 1 << 20


def run(*args, cwd=None, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                       timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: exit {r.returncode}: {r.stderr}")
    return r


def sha(*paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def snapshots(d):
    img = d / "snap.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
    run("qemu-io", "-c", "write -P 0x11 0 1M", img)
    run("qemu-img", "snapshot", "-c", "s1", img)
    return img, [img], None


def data_file(d):
    img = d / "ext.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=ext.raw", img, "4M",
        cwd=d)
    run("qemu-io", "-c", "write -P 0x22 0 1M", img, cwd=d)
    return img, [img, d / "ext.raw"], \
        "writing images with an external data file is not supported"


def encrypted(fmt):
    def make(d):
        img = d / f"enc-{fmt}.qcow2"
        opts = f"encrypt.format={fmt},encrypt.key-secret=sec0"
        if fmt == "luks":
            opts += ",encrypt.iter-time=10"
        # LUKS times its key derivation; on a busy machine qemu-img may
        # fail that ("Unable to get accurate CPU usage"): try again
        for attempt in range(5):
            r = run("qemu-img", "create", "-q", "-f", "qcow2", "--object",
                    "secret,id=sec0,data=secret", "-o", opts, img, "4M", check=False)
            if r.returncode == 0 or "accurate CPU usage" not in r.stderr:
                break
        assert r.returncode == 0, r.stderr
        return img, [img], "encrypted images are not supported"
    make.__name__ = f"encrypted_{fmt}"
    return make


CASES = [data_file, encrypted("luks"), encrypted("aes")]


@pytest.mark.parametrize("make", CASES, ids=lambda m: m.__name__)
def test_serve_read_write_is_refused(tmp_path, make):
    img, files, why = make(tmp_path)
    before = sha(*files)
    marker = tmp_path / "ran"
    # the command would write through NBD: it must never run
    r = run(RBLOCK, "serve", img, "--run",
            f'touch {marker}; qemu-io -f raw -c "write -P 0x99 0 2M" "$uri"',
            cwd=tmp_path, check=False)
    assert r.returncode == 1, r
    assert r.stderr == f"rblock: {img}: {why}\n" or \
        (r.stderr.startswith(f"rblock: {img}: ") and why in r.stderr
         and r.stderr.count("\n") == 1), r.stderr
    assert not marker.exists()
    assert sha(*files) == before
    if "encrypt" not in make.__name__:
        run("qemu-img", "check", "-q", img, cwd=tmp_path)


@pytest.mark.parametrize("make", [snapshots, data_file], ids=lambda m: m.__name__)
def test_read_only_serve_reads_and_refuses_writes(tmp_path, make):
    img, files, _ = make(tmp_path)
    before = sha(*files)
    script = ("import nbd, os, errno\n"
              "h = nbd.NBD(); h.connect_uri(os.environ['uri'])\n"
              "assert h.is_read_only()\n"
              "assert h.pread(65536, 0) == bytes([0x11 if 'snap' in os.environ['IMG']"
              " else 0x22]) * 65536\n"
              "h.set_strict_mode(0)\n"
              "try:\n"
              "    h.pwrite(b'x' * 512, 0)\n"
              "    raise SystemExit('write accepted')\n"
              "except nbd.Error as e:\n"
              "    assert e.errnum == errno.EPERM, e\n"
              "h.shutdown()\n")
    (tmp_path / "client.py").write_text(script)
    env = dict(os.environ, IMG=str(img))
    r = subprocess.run([RBLOCK, "serve", "-r", str(img), "--run",
                        f"/usr/bin/python3 {tmp_path}/client.py"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sha(*files) == before
    run("qemu-img", "check", "-q", img, cwd=tmp_path)

