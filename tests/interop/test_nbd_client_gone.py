# SPDX-License-Identifier: MIT
"""Connections whose client is gone give their slot back at once.

Clients pipeline far more large READs than the server buffers for a
connection (64 MiB), fill --max-connections, and reset their connections.
The server must drop what they queued, give back the budget, and free
their slots at once -- not after running every READ they asked for (here
tens of GiB of data per client: minutes) -- so fresh clients are served
while the READs the gone clients had in progress finish.  JSON-RPC `stats`
shows the slots freed (connections-now) and the connections finishing
(connections-closing).  Timeouts below are deadlock guards, not measures of
speed."""
import os
import socket
import struct
import time
import urllib.parse

import nbd
import pytest

from nbd_helpers import go, greet, request, simple_reply
from rpc_harness import Server

READ = 32 << 20          # the largest READ the server takes
SIZE = 2 * READ
QUEUED = 4096            # READs each client pipelines: 128 GiB asked
MAX_CONNECTIONS = 4      # one JSON-RPC client for stats + three NBD clients
GUARD = 60               # seconds: a hung server, never a speed


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("gone") / "disk.raw"
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(SIZE >> 20):
            f.write(block)
    return str(path)


def connect(uri):
    u = urllib.parse.urlparse(uri)
    if u.scheme == "nbd+unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(urllib.parse.parse_qs(u.query)["socket"][0])
    else:
        s = socket.create_connection((u.hostname, u.port))
    s.settimeout(GUARD)
    return s


def established(uri):
    """A client past its handshake: one READ answered."""
    s = connect(uri)
    greet(s, cflags=3)
    go(s)
    request(s, 0, 0, 512, handle=1)
    assert simple_reply(s, 512)[:2] == (0, 1)
    return s


def pipeline_reads(s):
    """Send as many of QUEUED 32 MiB READs as the socket takes without
    reading a reply; returns how many went."""
    buf = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, 100 + i, (i % 2) * READ, READ)
                   for i in range(QUEUED))
    s.setblocking(False)
    sent = 0
    try:
        while sent < len(buf):
            sent += s.send(buf[sent:])
    except BlockingIOError:
        pass
    return sent // 28


def refused(uri):
    """True when the server closes a new connection without a greeting."""
    s = connect(uri)
    try:
        data = s.recv(18)
    except ConnectionResetError:
        data = b""
    s.close()
    return data == b""


def nbd_stats(rpc):
    return rpc.result("stats")["protocols"]["nbd"]


def wait_stats(rpc, what, pred):
    deadline = time.monotonic() + GUARD
    while True:
        st = nbd_stats(rpc)
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"{what}: {st}"
        time.sleep(0.02)  # polling a condition, under a deadline


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@pytest.mark.parametrize("transport, args", [
    ("unix", ()),
    # TCP resets (RST); a budget smaller than the clients' requests, so
    # their readers wait on the server-wide budget rather than their own.
    ("tcp", ("--nbd", "tcp:127.0.0.1:0", "--max-inflight", "64M")),
])
def test_reset_clients_free_their_slots(image, transport, args):
    srv = Server(image, "-f", "raw", "--max-connections", str(MAX_CONNECTIONS), *args)
    rpc = None
    socks = []
    try:
        assert srv.uri.startswith("nbd+unix" if transport == "unix" else "nbd://")
        rpc = srv.client()
        assert nbd_stats(rpc)["connections-now"] == 0  # and rpc holds a slot now
        for _ in range(MAX_CONNECTIONS - 1):
            s = established(srv.uri)
            socks.append(s)
            n = pipeline_reads(s)
            print("queued", n)
            assert n >= 256  # far more than one window
        assert refused(srv.uri), "the server is not full: the test proves nothing"
        assert nbd_stats(rpc)["connections-now"] == MAX_CONNECTIONS - 1

        for s in socks:
            reset(s)
        socks = []
        st = wait_stats(rpc, "slots of gone clients not freed",
                        lambda st: st["connections-now"] == 0)
        print("after the resets:", st)

        # Every slot is free: as many fresh clients as there were, all at
        # once, each through its handshake and a READ of the right bytes.
        with open(image, "rb") as f:
            want = f.read(1 << 20)
        fresh = []
        for _ in range(MAX_CONNECTIONS - 1):
            h = nbd.NBD()
            h.connect_uri(srv.uri)
            fresh.append(h)
        for h in fresh:
            assert h.pread(1 << 20, 0) == want
        assert refused(srv.uri)  # full again: the limit still holds
        for h in fresh:
            h.shutdown()

        # The gone clients' running READs end; nothing is left.
        st = wait_stats(rpc, "connections still open",
                        lambda st: st["connections-now"] == 0 and
                        st["connections-closing"] == 0)
        # the refused connections were never counted
        assert st["connections-total"] == 2 * (MAX_CONNECTIONS - 1)
    except BaseException:
        srv.proc.kill()  # a server that kept the slots may run for minutes
        raise
    finally:
        for s in socks:
            s.close()
        if rpc:
            rpc.close()
        status, err = srv.stop()
    assert status == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


def test_half_closed_client_still_gets_its_replies(image, tmp_path):
    """An end of stream alone is not a client gone: one that shuts down
    only its sending side after pipelining reads gets every reply."""
    srv = Server(image, "-f", "raw", "--nbd", "tcp:127.0.0.1:0")
    try:
        s = established(srv.uri)
        n, length = 48, 1 << 20
        for i in range(n):
            request(s, 0, i * length, length, handle=1000 + i)
        s.shutdown(socket.SHUT_WR)
        with open(image, "rb") as f:
            want = f.read(n * length)
        got = {}
        for _ in range(n):
            err, handle, data = simple_reply(s, length)
            assert err == 0
            got[handle] = data
        assert sorted(got) == [1000 + i for i in range(n)]
        for i in range(n):
            assert got[1000 + i] == want[i * length:(i + 1) * length]
        s.close()
    finally:
        status, err = srv.stop()
    assert status == 0, err


def test_disc_runs_and_answers_every_request_before_it(tmp_path):
    """NBD_CMD_DISC right behind pipelined writes, the client reading only
    afterwards: every write is acknowledged before the server closes, and
    a fresh client reads them all."""
    path = tmp_path / "w.raw"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    srv = Server(str(path), "-f", "raw")
    try:
        s = established(srv.uri)
        blocks = [os.urandom(64 << 10) for _ in range(64)]
        buf = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 1, i, i * len(b), len(b)) + b
                       for i, b in enumerate(blocks))
        s.sendall(buf + struct.pack(">IHHQQI", 0x25609513, 0, 2, 999, 0, 0))
        handles = sorted(simple_reply(s)[:2] for _ in blocks)
        assert handles == [(0, i) for i in range(len(blocks))]
        assert s.recv(1) == b""  # then the server closes
        s.close()
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        assert h.pread(64 * (64 << 10), 0) == b"".join(blocks)
        h.shutdown()
    finally:
        status, err = srv.stop()
    assert status == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err
