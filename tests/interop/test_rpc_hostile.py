# SPDX-License-Identifier: MIT
"""JSON-RPC under load and under attack: 32 clients at once, each with
many requests, all answered correctly; a huge line, binary garbage, deep
nesting and a client that never reads its replies are each dealt with
while another client keeps being served (and NBD too)."""

import base64
import json
import os
import socket
import subprocess
import tempfile
import threading

import pytest

from rpc_harness import Client, Server

MiB = 1 << 20


@pytest.fixture(scope="module")
def srv():
    d = tempfile.mkdtemp(prefix="rpct-h-")
    path = os.path.join(d, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(128 * MiB)
    s = Server(path, "-f", "raw")
    yield s
    status, err = s.stop()
    subprocess.run(["rm", "-rf", d])
    assert status == 0, err


@pytest.fixture
def good(srv):
    """A well-behaved client that must keep being served."""
    c = srv.client()
    yield c
    c.close()


def still_served(srv, good):
    assert good.result("get_version")["name"] == "rblock"
    data = os.urandom(512)
    good.write(100 * MiB, data)
    assert good.read(100 * MiB, 512) == data
    h = srv.nbd()
    assert h.pread(512, 100 * MiB) == data
    h.shutdown()


def test_32_clients_many_requests(srv):
    run_clients(srv)


def test_32_clients_on_qcow2():
    """The same load on a qcow2 image: writes allocate clusters
    concurrently; afterwards the image passes qemu-img check."""
    d = tempfile.mkdtemp(prefix="rpct-h-")
    path = os.path.join(d, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    s = Server(path)
    try:
        run_clients(s)
    finally:
        status, err = s.stop()
    try:
        assert status == 0, err
        subprocess.run(["qemu-img", "check", path], check=True, capture_output=True)
    finally:
        subprocess.run(["rm", "-rf", d])


def run_clients(srv):
    clients, requests = 32, 150
    failures = []

    def worker(n):
        try:
            c = srv.client()
            base = n * MiB  # each client owns one MiB
            mine = {}
            for k in range(requests):
                off = base + (k % 64) * 4096
                if k % 3 == 0:
                    data = os.urandom(4096)
                    assert c.write(off, data) == {"length": 4096}
                    mine[off] = data
                elif k % 3 == 1 and mine:
                    o = list(mine)[k % len(mine)]
                    assert c.read(o, 4096) == mine[o]
                else:
                    r = c.call("get_version", rid="c%d-%d" % (n, k))
                    assert r["result"]["name"] == "rblock"
            # a pipelined burst: 50 requests sent at once, replies in order
            burst = "".join(json.dumps({"method": "read", "id": i,
                                        "params": {"offset": base, "length": 16}}) + "\n"
                            for i in range(50))
            c.send(burst)
            for i in range(50):
                r = json.loads(c.line())
                assert r["id"] == i and "result" in r
            for o, data in mine.items():
                assert c.read(o, 4096) == data
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append("client %d: %r" % (n, e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_huge_line_is_refused_and_skipped(srv, good):
    c = srv.client()
    # 8 MiB without a newline: more than the cap of 1 MiB + base64(4 MiB)
    chunk = b'{"method":"write","params":{"data":"' + b"A" * (MiB - 40)
    for _ in range(8):
        c.send(chunk)
        still_served(srv, good)
    c.send(b'"}}\n')
    r = json.loads(c.line())
    assert r["error"]["code"] == -32700 and r["id"] is None
    assert "line longer than" in r["error"]["message"]
    # the same connection goes on after the newline
    assert c.result("get_version")["name"] == "rblock"
    c.close()


def test_binary_garbage(srv, good):
    c = srv.client()
    junk = os.urandom(256 * 1024).replace(b"\n", b"x") + b"\n"
    c.send(junk)
    r = json.loads(c.line())
    assert r["error"]["code"] == -32700 and r["id"] is None
    c.send(b"\x00\x00\x00\x00\xff\xfe\n")
    assert json.loads(c.line())["error"]["code"] == -32700
    c.send(b'{"method": "get_\xc3\x28", "id": 1}\n')  # invalid UTF-8
    assert json.loads(c.line())["error"]["code"] == -32700
    assert c.result("get_version")["name"] == "rblock"
    still_served(srv, good)
    c.close()
    # garbage and hang up mid-line
    c = srv.client()
    c.send(os.urandom(4096))
    c.close()
    still_served(srv, good)


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_deep_nesting(srv, good, opener, closer):
    c = srv.client()
    n = 200000
    c.send((opener * n + "1" + closer * n + "\n").encode())
    r = json.loads(c.line())
    assert r["error"]["code"] == -32700 and "nesting deeper than" in r["error"]["message"]
    # nesting within the limit is parsed (and then refused for what it is)
    r = c.ask('{"method": "read", "params": {"offset": [[[[1]]]], "length": 1}, "id": 2}')
    assert r["error"]["code"] == -32602
    still_served(srv, good)
    c.close()


def test_millions_of_values_in_one_line(srv, good):
    c = srv.client()
    c.send(b"[" + b"1," * (3 * MiB) + b"1]\n")  # 6 MiB, 3 million values
    r = json.loads(c.line())
    assert r["error"]["code"] == -32700 and "values in one line" in r["error"]["message"]
    assert c.result("get_version")["name"] == "rblock"
    still_served(srv, good)
    c.close()


def test_client_that_never_reads_is_dropped(srv, good):
    c = srv.client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = (json.dumps({"method": "read", "params": {"offset": 0, "length": 4 * MiB}, "id": 1})
           + "\n").encode()
    dropped = False
    # 5.6 MiB of reply per request; the server's backlog cap is 8 MiB:
    # within a few dozen requests it must hang up on us
    for _ in range(200):
        try:
            c.sock.sendall(req)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
            break
        if _ == 10:
            still_served(srv, good)
    assert dropped
    still_served(srv, good)
    c.close()


def test_many_idle_and_half_open_clients(srv, good):
    still_served(srv, good)  # (a client that has spoken keeps its slot)
    # more than --max-connections (128): the oldest silent ones make room
    idle = [srv.client() for _ in range(200)]
    for c in idle[::2]:
        try:
            c.send(b'{"method": "get_vers')  # half a request
        except (BrokenPipeError, ConnectionResetError):
            pass  # already dropped for a newer one
    still_served(srv, good)
    c = srv.client()  # a newcomer is served too
    assert c.result("get_version")["name"] == "rblock"
    c.close()
    for c in idle:
        c.close()
    still_served(srv, good)


def ended(c):
    """True when the server closed the connection (EOF, or a reset when it
    closed with our request unread)."""
    try:
        return c.line() == b""
    except ConnectionResetError:
        return True


def small_server(d):
    path = os.path.join(d, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(MiB)
    return Server(path, "-f", "raw", "--max-connections", "4")


def test_silent_clients_make_room_for_real_ones():
    d = tempfile.mkdtemp(prefix="rpct-h-")
    s = small_server(d)
    try:
        # four clients that never say anything fill every slot ...
        silent = [s.client() for _ in range(4)]
        # ... yet a real client gets in, pushing the oldest silent one out
        c = s.client()
        assert c.result("get_version")["name"] == "rblock"
        assert ended(silent[0])
        h = s.nbd()  # NBD too
        assert h.pread(512, 0) == bytes(512)
        h.shutdown()
        assert c.result("get_version")["name"] == "rblock"
        c.close()
        for c in silent:
            c.close()
    finally:
        status, err = s.stop()
    assert status == 0, err
    # (a fresh server: closed clients' threads may still hold slots above)
    s = small_server(d)
    try:
        # clients that did speak keep their slot: the fifth is turned away
        talking = [s.client() for _ in range(4)]
        for c in talking:
            assert c.result("get_version")["name"] == "rblock"
        late = s.client()
        try:
            late.send(b'{"method": "get_version", "id": 1}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed even before we asked
        assert ended(late)
        late.close()
        for c in talking:
            assert c.result("get_version")["name"] == "rblock"
            c.close()
    finally:
        status, err = s.stop()
        subprocess.run(["rm", "-rf", d])
    assert status == 0, err
