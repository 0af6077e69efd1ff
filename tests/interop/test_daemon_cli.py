# SPDX-License-Identifier: MIT
"""rblock serve with qemu-nbd's command line: the way virtnbdbackup starts
qemu-nbd (-r -f qcow2 -x NAME -k SOCKET --pid-file FILE --fork, then
nbdinfo --list), start-up lines with the real port for port 0, --print-uri,
-s (a temporary overlay, the image untouched), --discard, --detect-zeroes,
-e, -v, and the options refused with a reason (-d, -l, JSON-RPC on a public
address without TLS)."""
import json
import os
import signal
import socket
import subprocess

import nbd
import pytest

from daemon_helpers import Daemon, wait_gone
from rpc_harness import RBLOCK

MiB = 1 << 20


def run(*cmd, check=True):
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "disk.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", p, 64 * MiB)
    run("qemu-io", "-c", "write -P 0x42 1M 2M", p)
    return p


def test_virtnbdbackup_style_fork(tmp_path, disk):
    sock, pid_file = tmp_path / "backup.sock", tmp_path / "qemu-nbd.pid"
    # returns once the socket listens: no wait, no retry afterwards
    r = run(RBLOCK, "serve", "-r", "-f", "qcow2", "-x", "sda", "-k", sock,
            "--pid-file", pid_file, "--fork", disk)
    assert r.returncode == 0, r.stderr
    pid = int(pid_file.read_text())
    try:
        listed = json.loads(run("nbdinfo", "--list", "--json",
                                f"nbd+unix:///?socket={sock}").stdout)
        assert [e["export-name"] for e in listed["exports"]] == ["sda"]
        assert listed["exports"][0]["is_read_only"] is True
        out = tmp_path / "copy.raw"
        run("nbdcopy", f"nbd+unix:///sda?socket={sock}", out)
        data = out.read_bytes()
        assert data[MiB:3 * MiB] == b"\x42" * (2 * MiB) and data[:MiB] == bytes(MiB)
        # read-only: another reader may open the image meanwhile
        run("qemu-img", "info", disk)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
    assert not pid_file.exists()
    assert not sock.exists()


def test_fork_failure_is_reported(tmp_path):
    r = run(RBLOCK, "serve", "-r", "-k", tmp_path / "s.sock", "--fork",
            tmp_path / "missing.qcow2", check=False)
    assert r.returncode == 1 and "missing.qcow2" in r.stderr


def test_port_zero_printed_and_reachable(tmp_path, disk):
    d = Daemon(disk, "-f", "qcow2", "-x", "d0", "--nbd", "tcp:127.0.0.1:0", "--print-uri",
               listeners=1)
    try:
        line = d.lines[0]
        uri = d.proc.stdout.readline().decode().strip()
        assert uri.startswith("nbd://127.0.0.1:") and uri.endswith("/d0"), uri
        port = int(uri.split(":")[2].split("/")[0])
        assert port != 0 and line == f"rblock: serving NBD on {uri}"
        assert run("nbdinfo", "--size", uri).stdout.strip() == str(64 * MiB)
    finally:
        status, err = d.stop()
    assert status == 0, err


def test_quiet_and_verbose(tmp_path, disk):
    sock = tmp_path / "s.sock"
    r = run(RBLOCK, "serve", "-q", "-k", sock, "--pid-file", tmp_path / "p", "--fork",
            "-f", "qcow2", disk)
    assert r.stderr == "" and r.stdout == ""
    pid = int((tmp_path / "p").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)

    rpc_sock = tmp_path / "rpc.sock"
    d = Daemon("-v", "-e", "1", disk, "-f", "qcow2", "-k", sock, "--rpc", f"unix:{rpc_sock}",
               listeners=2)
    try:
        # an HTTP error on the JSON-RPC listener is logged with -v
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(str(rpc_sock))
        s.sendall(b"GET /nosuch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 404"), reply
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        # the one slot is taken by a client in transmission: refused
        h2 = nbd.NBD()
        with pytest.raises(nbd.Error):
            h2.connect_uri(f"nbd+unix:///?socket={sock}")
        h.shutdown()
        h3 = nbd.NBD()
        with pytest.raises(nbd.Error):
            h3.connect_uri(f"nbd+unix:///nosuch?socket={sock}")
    finally:
        status, err = d.stop()
    assert status == 0
    assert "rblock: nbd: connection from unix on unix:" in err, err
    assert "rblock: nbd: refused a connection from unix: --max-connections (1) reached" \
        in err, err
    assert "rblock: nbd unix: unknown export 'nosuch'" in err, err
    assert "rblock: jsonrpc unix: HTTP 404: not found" in err, err
    # every connection's end, as its start
    ends = [ln for ln in err.splitlines() if "connection ended after" in ln]
    assert any(ln.startswith("rblock: nbd unix: connection ended after") for ln in ends), err
    assert any(ln.startswith("rblock: jsonrpc unix: connection ended after") for ln in ends), err


def test_snapshot_overlay(tmp_path, disk):
    before = disk.read_bytes()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    sock = tmp_path / "s.sock"
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([RBLOCK, "serve", "-s", "-f", "qcow2", "-k", str(sock), str(disk)],
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stderr.readline().startswith(b"rblock: serving NBD on ")
        overlays = list(tmpdir.iterdir())
        assert len(overlays) == 1
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        h.pwrite(b"\x99" * MiB, 0)
        h.flush()
        assert h.pread(2 * MiB, MiB // 2)[:MiB // 2] == b"\x99" * (MiB // 2)
        assert h.pread(MiB, 2 * MiB) == b"\x42" * MiB
        h.shutdown()
        info = json.loads(run("qemu-img", "info", "-U", "--output=json", overlays[0]).stdout)
        assert info["full-backing-filename"] == str(disk.resolve())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert disk.read_bytes() == before
    assert list(tmpdir.iterdir()) == []


def test_discard_and_detect_zeroes(tmp_path, disk):
    sock = tmp_path / "s.sock"
    d = Daemon(disk, "-f", "qcow2", "-k", sock, "--discard=ignore", listeners=1)
    try:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        assert not h.can_trim()
        h.shutdown()
    finally:
        d.stop()

    d = Daemon(disk, "-f", "qcow2", "-k", sock, "--detect-zeroes=unmap", listeners=1)
    try:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        assert h.can_trim()
        h.pwrite(bytes(2 * MiB), MiB)  # zeroes over the data at 1M..3M
        h.pwrite(bytes(MiB), 10 * MiB)  # zeroes where nothing was
        h.flush()
        h.shutdown()
    finally:
        d.stop()
    m = json.loads(run("qemu-img", "map", "--output=json", disk).stdout)
    assert all(not e["data"] for e in m), m
    run("qemu-img", "check", disk)


@pytest.mark.parametrize("args,needle", [
    (["-d", "x"], "-d disconnects a /dev/nbd device"),
    (["-l", "snap1"], "no snapshot 'snap1'"),
    (["--rpc", "tcp:0.0.0.0:0"], "--rpc-insecure"),
    (["--discard=sometimes"], "--discard must be ignore or unmap"),
    (["--detect-zeroes=maybe"], "--detect-zeroes must be off, on or unmap"),
    (["--export", "noimage"], "expected NAME=IMAGE"),
    (["--export", "x=y,colour=blue"], "unknown or invalid option 'colour=blue'"),
])
def test_refused_with_a_reason(tmp_path, disk, args, needle):
    r = run(RBLOCK, "serve", "-k", tmp_path / "s.sock", *args, disk, check=False)
    assert r.returncode == 1, r
    assert needle in r.stderr, r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_rpc_insecure_allows_public_address(tmp_path, disk):
    d = Daemon(disk, "-f", "qcow2", "-k", tmp_path / "s.sock", "--rpc", "tcp:0.0.0.0:0",
               "--rpc-insecure")
    try:
        assert d.rpc_uris[0].startswith("http://0.0.0.0:")
    finally:
        status, err = d.stop()
    assert status == 0, err
