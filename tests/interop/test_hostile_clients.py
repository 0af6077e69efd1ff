# SPDX-License-Identifier: MIT
"""Hostile NBD clients beyond the protocol cases of test_nbd_hostile.py:
offset + length overflowing 64 bits on every command,
clients that pipeline reads and never read a reply (slow readers), more
clients than --max-connections, and stopping the server while such clients
hang on.  After each: the server process is alive and a real client
(libnbd, nbdinfo) is served.  Timeouts below are deadlock guards only."""
import os
import signal
import socket
import struct
import subprocess
import time

import nbd
import pytest

from nbd_helpers import Server, go, greet, is_closed, request, simple_reply

SIZE = 8 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(SIZE)
    return str(path)


def stop_ok(srv):
    rc, err = srv.stop()
    assert rc == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


def served(srv, image):
    """A real client gets the right bytes, and nbdinfo sees the size."""
    assert srv.proc.poll() is None, "the server died"
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    data = h.pread(4096, 4096)
    h.shutdown()
    with open(image, "rb") as f:
        f.seek(4096)
        assert data == f.read(4096)
    out = subprocess.run(["nbdinfo", "--size", srv.uri], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == str(SIZE), out
    return True


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def connect_go(srv, cflags=3, settle=False):
    s = srv.connect_raw()
    greet(s, cflags=cflags)
    go(s)
    if settle:
        # One round trip: the server's thread is past its handshake (and no
        # longer evictable) once it answers a request.
        request(s, 0, 0, 512, handle=0xfeed)
        assert simple_reply(s, 512)[:2] == (0, 0xfeed)
    return s


def test_offset_plus_length_overflow(image, tmp_path):
    srv = Server(image, tmpdir=tmp_path)
    try:
        s = connect_go(srv)
        top = (1 << 64) - 512
        cases = [  # (command, flags, offset, length, payload, expected error)
            (0, 0, top, 1024, b"", 22),            # READ
            (0, 0, SIZE, 0xFFFFFFFF, b"", 22),      # READ, huge and past the end
            (1, 0, top, 16, b"x" * 16, 28),         # WRITE: ENOSPC as the spec says
            (4, 0, top, 1024, b"", 28),             # TRIM
            (6, 0, top, 1024, b"", 28),             # WRITE_ZEROES
            (5, 0, top, 1024, b"", 22),             # CACHE
            (7, 0, top, 1024, b"", 22),             # BLOCK_STATUS (no context)
            (0, 0, SIZE - 1, 2, b"", 22),           # one byte past the end
            (0, 1 << 15, 0, 512, b"", 22),          # unknown command flag
        ]
        for i, (cmd, flags, off, length, payload, want) in enumerate(cases):
            request(s, cmd, off, length, flags=flags, handle=100 + i, data=payload)
            err, handle, _ = simple_reply(s)
            assert (err, handle) == (want, 100 + i), (cmd, off, length)
        # the connection is still good after all of them
        request(s, 0, 0, 512, handle=7)
        err, handle, data = simple_reply(s, 512)
        assert (err, handle, len(data)) == (0, 7, 512)
        s.close()
        assert served(srv, image)
    finally:
        stop_ok(srv)


def slow_reader(srv, nreads, length):
    """Pipeline nreads READs of length bytes and never read a reply."""
    s = connect_go(srv)
    s.setblocking(False)
    buf = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, (i * length) % SIZE, length)
                   for i in range(nreads))
    sent = 0
    deadline = time.monotonic() + 30
    while sent < len(buf) and time.monotonic() < deadline:
        try:
            sent += s.send(buf[sent:])
        except BlockingIOError:
            time.sleep(0.01)  # the server stopped taking requests: it is full
    return s


def growth_with_slow_readers(srv, image, count, nreads):
    """How much the server's RSS grows while `count` slow readers, each
    asking `nreads` reads of 4 MiB, hang on; real clients and a raw
    request on a fresh connection are served meanwhile, and again after
    the slow readers leave."""
    slow = []
    try:
        assert served(srv, image)
        base = rss_bytes(srv.proc.pid)
        for _ in range(count):
            slow.append(slow_reader(srv, nreads, 4 << 20))
        for _ in range(3):
            assert served(srv, image)
        grown = rss_bytes(srv.proc.pid) - base
        print(f"server RSS grew by {grown >> 20} MiB with {count} slow readers")
        s = connect_go(srv)
        request(s, 0, 0, 512, handle=9)
        assert simple_reply(s, 512)[:2] == (0, 9)
        s.close()
    finally:
        for s in slow:
            s.close()
    assert served(srv, image)
    return grown


def test_slow_readers_cannot_starve_or_bloat(image, tmp_path):
    srv = Server(image, tmpdir=tmp_path)
    try:
        # 1000 reads of 4 MiB each = 4 GB asked per client, none read back:
        # bounded per connection by the in-flight cap (64 MiB), not by what
        # was asked (12 GB); generous for sanitizer builds.
        grown = growth_with_slow_readers(srv, image, 3, 1000)
        assert grown < 3 * (128 << 20) + (256 << 20), grown
    finally:
        stop_ok(srv)


def test_server_wide_budget_bounds_slow_readers(image, tmp_path):
    """--max-inflight caps what all connections together buffer: eight slow
    readers would hold 8 x 8 workers x 4 MiB = 256 MiB of read buffers
    with only the per-connection cap; under a 16 MiB budget they hold the
    budget plus one request each, and real clients are still served."""
    srv = Server(image, "--max-inflight", "16M", tmpdir=tmp_path)
    try:
        grown = growth_with_slow_readers(srv, image, 8, 200)
        # budget 16 + one 4 MiB request per slow reader 32 + thread stacks
        # and sanitizer slack; without the budget it is 256 MiB or more
        assert grown < (120 << 20), grown
    finally:
        stop_ok(srv)


def test_tiny_budget_still_copies_everything(image, tmp_path):
    """Under the smallest budget a pipelining client (nbdcopy, many
    requests in flight) still gets every byte: a connection with nothing
    in flight always gets a request through."""
    srv = Server(image, "--max-inflight", "1M", tmpdir=tmp_path)
    try:
        out = tmp_path / "copy.raw"
        r = subprocess.run(["nbdcopy", "--request-size=4194304", srv.uri, str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        with open(image, "rb") as a, open(out, "rb") as b:
            assert a.read() == b.read()
        assert served(srv, image)
    finally:
        stop_ok(srv)


def test_stop_with_a_client_that_never_reads(image, tmp_path):
    """SIGTERM must not hang on a client that never reads its replies: the
    server lets connections finish for its grace period, then cuts them."""
    srv = Server(image, tmpdir=tmp_path)
    s = slow_reader(srv, 2000, 64 << 10)
    try:
        assert served(srv, image)
        stop_ok(srv)
    finally:
        s.close()


def test_slow_readers_that_leave_free_everything(image, tmp_path):
    srv = Server(image, tmpdir=tmp_path)
    try:
        for _ in range(3):
            for s in [slow_reader(srv, 200, 1 << 20) for _ in range(4)]:
                s.close()
            assert served(srv, image)
    finally:
        stop_ok(srv)


def test_more_clients_than_max_connections(image, tmp_path):
    srv = Server(image, "--max-connections", "16", tmpdir=tmp_path)
    held = []
    try:
        # 16 clients in transmission fill the server; later ones are
        # refused (closed at once) without harm to anyone.
        for _ in range(16):
            held.append(connect_go(srv, settle=True))
        refused = 0
        for _ in range(50):
            s = srv.connect_raw()
            try:
                data = s.recv(18)
            except ConnectionResetError:
                data = b""
            refused += data == b""
            s.close()
        assert refused == 50
        for s in held:  # the ones in, still work
            request(s, 0, 0, 512, handle=3)
            assert simple_reply(s, 512)[:2] == (0, 3)
        for s in held:
            s.close()
        held = []
        # The server counts a client gone when its thread reads the EOF,
        # which happens after close() returns here: wait (bounded) until a
        # new connection gets a greeting again, then everyone is served.
        deadline = time.monotonic() + 10
        while True:
            s = srv.connect_raw()
            try:
                greeting = s.recv(18)
            except ConnectionResetError:
                greeting = b""
            s.close()
            if greeting or time.monotonic() > deadline:
                break
        assert greeting, "slots were not freed after the clients left"
        for _ in range(20):
            assert served(srv, image)
    finally:
        for s in held:
            s.close()
        stop_ok(srv)


def test_abrupt_disconnects_mid_everything(image, tmp_path):
    srv = Server(image, tmpdir=tmp_path)
    try:
        for i in range(60):
            s = srv.connect_raw()
            stage = i % 5
            if stage >= 1:
                s.recv(18)
                s.sendall(struct.pack(">I", 3))
            if stage >= 2:
                s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 100) + b"\0" * 10)
            if stage == 3:
                s.close()
                s = connect_go(srv)
                request(s, 1, 0, 1 << 20, handle=1, data=b"\0" * 1000)  # half a payload
            if stage == 4:
                s.close()
                s = connect_go(srv)
                request(s, 0, 0, 32 << 20, handle=1)  # a big read, then leave
            # RST instead of FIN for some
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        assert served(srv, image)
    finally:
        stop_ok(srv)


def test_both_protocols_under_attack_at_once(image, tmp_path):
    """NBD slow readers, idle and non-reading JSON-RPC clients, and garbage
    on both sockets at the same time: real NBD and JSON-RPC clients are
    still served, and the server stops cleanly."""
    from rpc_harness import Client

    rpc_path = os.path.join(str(tmp_path), "rpc.sock")
    srv = Server(image, "--rpc", "unix:" + rpc_path, tmpdir=tmp_path)
    socks = []
    try:
        for _ in range(2):
            socks.append(slow_reader(srv, 500, 1 << 20))
        for i in range(60):  # idle JSON-RPC clients, some half a line in
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(rpc_path)
            if i % 3 == 0:
                s.sendall(b'{"jsonrpc":"2.0","id":1,"meth')
            socks.append(s)
        # a JSON-RPC client that asks for 4 MiB reads and never reads a reply
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(rpc_path)
        s.setblocking(False)
        req = b'{"jsonrpc":"2.0","id":1,"method":"read","params":{"offset":0,"length":4194304}}\n'
        try:
            for _ in range(200):
                s.send(req)
        except BlockingIOError:
            pass
        socks.append(s)
        for garbage in (os.urandom(4096), b"\xff" * 70000, b"[" * 100000):
            for path in (srv.path, rpc_path):
                g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                g.connect(path)
                try:
                    g.sendall(garbage)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                socks.append(g)
        assert served(srv, image)
        c = Client("unix:" + rpc_path)
        assert c.result("get_version")["name"] == "rblock"
        assert c.read(4096, 4096) == open(image, "rb").read(8192)[4096:]
        c.close()
    finally:
        for s in socks:
            s.close()
        stop_ok(srv)
