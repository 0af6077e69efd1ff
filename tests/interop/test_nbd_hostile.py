# SPDX-License-Identifier: MIT
"""rblock serve against broken and hostile clients, spoken to byte by byte:
each bad client is dropped (or refused) and a real client is still served.
Also the plain flows of the kernel's nbd-client (EXPORT_NAME or GO without
info requests, simple replies only)."""
import os
import socket
import struct

import nbd
import pytest

from nbd_helpers import (Server, go, greet, is_closed, recv_exact, recv_opt_reply,
                         request, send_opt, simple_reply, IHAVEOPT)

SIZE = 1 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(SIZE))
    return str(path)


def serve(image, tmp_path, *args):
    return Server(image, *args, tmpdir=tmp_path)


@pytest.fixture
def server(image, tmp_path):
    # A handshake timeout far longer than the test: only eviction can save
    # a real client from the idle ones.
    srv = serve(image, tmp_path, "--handshake-timeout", "3600", "--max-connections", "64")
    yield srv
    rc, err = srv.stop()
    assert rc == 0, err
    assert "AddressSanitizer" not in err and "runtime error" not in err, err


def real_client_works(srv, image):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    data = h.pread(4096, 8192)
    h.shutdown()
    with open(image, "rb") as f:
        f.seek(8192)
        return data == f.read(4096)


def test_bad_option_magic(server, image):
    s = server.connect_raw()
    greet(s)
    s.sendall(struct.pack(">QII", 0x1122334455667788, 7, 0))
    assert is_closed(s)
    assert real_client_works(server, image)


def test_huge_option_length(server, image):
    s = server.connect_raw()
    greet(s)
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, 0xFFFFFFFF) + b"x" * 100)
    assert is_closed(s)
    assert real_client_works(server, image)


def test_huge_name_lengths_in_go(server, image):
    s = server.connect_raw()
    greet(s)
    send_opt(s, 7, struct.pack(">I", 0xFFFFFFFF) + b"\0\0")
    _, rtype, _ = recv_opt_reply(s)
    assert rtype == 0x80000003  # NBD_REP_ERR_INVALID, haggling goes on
    send_opt(s, 5)  # STARTTLS: refused, haggling goes on
    _, rtype, _ = recv_opt_reply(s)
    assert rtype & 0x80000000
    send_opt(s, 10, struct.pack(">I", 0xFFFFFFF0))  # SET_META_CONTEXT before SR
    _, rtype, _ = recv_opt_reply(s)
    assert rtype == 0x80000003
    send_opt(s, 99, b"abc")  # unknown option
    _, rtype, _ = recv_opt_reply(s)
    assert rtype == 0x80000001  # NBD_REP_ERR_UNSUP
    send_opt(s, 3, b"junk")  # LIST with data
    _, rtype, _ = recv_opt_reply(s)
    assert rtype == 0x80000003
    size, tflags = go(s)
    assert size == SIZE and tflags & 1
    s.close()


def test_unknown_client_flags(server, image):
    s = server.connect_raw()
    greet(s, cflags=0x80000001)
    assert is_closed(s)
    assert real_client_works(server, image)


def test_request_before_handshake_end(server, image):
    s = server.connect_raw()
    greet(s)
    request(s, 0, 0, 512)
    assert is_closed(s)
    assert real_client_works(server, image)


def test_unknown_export_name_hangs_up(server, image):
    s = server.connect_raw()
    greet(s)
    send_opt(s, 1, b"nosuch")  # NBD_OPT_EXPORT_NAME cannot return an error
    assert is_closed(s)


def test_kernel_client_export_name_flow(server, image):
    """nbd-client's old flow: EXPORT_NAME "", 124 zero bytes, simple replies."""
    s = server.connect_raw()
    hflags = greet(s, cflags=1)
    assert hflags & 1
    send_opt(s, 1, b"")
    size, tflags = struct.unpack(">QH", recv_exact(s, 10))
    assert size == SIZE and tflags & 1 and not tflags & (1 << 7)  # no DF
    assert recv_exact(s, 124) == bytes(124)
    request(s, 0, 4096, 4096, handle=77)
    err, handle, data = simple_reply(s, 4096)
    assert (err, handle) == (0, 77)
    with open(image, "rb") as f:
        f.seek(4096)
        assert data == f.read(4096)
    request(s, 2)  # NBD_CMD_DISC
    assert is_closed(s)


def test_kernel_client_go_flow(server, image):
    """nbd-client 3.2x: GO without info requests, NO_ZEROES, simple replies."""
    s = server.connect_raw()
    greet(s, cflags=3)
    size, tflags = go(s)
    assert size == SIZE
    request(s, 1, 0, 8, handle=5, data=b"ABCDEFGH")       # write
    assert simple_reply(s)[:2] == (0, 5)
    # pipelined: replies may come in any order (a read may overtake a
    # write in flight, so the write was answered first)
    request(s, 3, handle=6)                                # flush
    request(s, 0, 0, 8, handle=7)                          # read
    replies = {5: 0}
    for _ in range(2):
        magic, err, handle = struct.unpack(">IIQ", recv_exact(s, 16))
        replies[handle] = err
        if handle == 7:
            assert recv_exact(s, 8) == b"ABCDEFGH"
    assert replies == {5: 0, 6: 0, 7: 0}
    s.close()


def test_bad_requests_in_transmission(server, image):
    s = server.connect_raw()
    greet(s, cflags=3)
    go(s)
    request(s, 42, 0, 512, handle=1)            # unknown command
    assert simple_reply(s)[:2] == (22, 1)
    request(s, 0, 0, 512, flags=0x8000, handle=2)  # unknown flag on READ
    assert simple_reply(s)[:2] == (22, 2)
    request(s, 0, 0, 64 << 20, handle=3)        # read over the 32 MiB cap
    assert simple_reply(s)[:2] == (22, 3)
    request(s, 0, SIZE, 1, handle=4)            # read past the end
    assert simple_reply(s)[:2] == (22, 4)
    request(s, 7, 0, 512, handle=5)             # block status, no context
    assert simple_reply(s)[:2] == (22, 5)
    request(s, 1, SIZE - 1, 2, handle=6, data=b"xy")  # write past the end
    assert simple_reply(s)[:2] == (28, 6)
    s.sendall(b"\xde\xad\xbe\xef" + bytes(24))  # bad request magic
    assert is_closed(s)
    assert real_client_works(server, image)


def test_oversize_write_payload_drops(server, image):
    s = server.connect_raw()
    greet(s, cflags=3)
    go(s)
    request(s, 1, 0, 0xFFFFFFFF, handle=1)
    assert is_closed(s)
    assert real_client_works(server, image)


def test_structured_error_chunk(server, image):
    s = server.connect_raw()
    greet(s, cflags=3)
    send_opt(s, 8)
    assert recv_opt_reply(s)[1] == 1
    go(s)
    request(s, 0, SIZE, 512, handle=9)
    magic, flags, rtype, handle, length = struct.unpack(">IHHQI", recv_exact(s, 20))
    payload = recv_exact(s, length)
    assert (magic, flags & 1, rtype, handle) == (0x668E33EF, 1, 0x8001, 9)
    assert struct.unpack(">I", payload[:4])[0] == 22
    s.close()


def test_idle_connections_cannot_starve(image, tmp_path):
    srv = serve(image, tmp_path, "--handshake-timeout", "3600", "--max-connections", "32")
    idle = []
    try:
        for i in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(srv.path)
            if i % 2:
                s.sendall(b"\0\0")  # half a client flags field
            idle.append(s)
        for _ in range(3):
            assert real_client_works(srv, image)
    finally:
        for s in idle:
            s.close()
        rc, err = srv.stop()
    assert rc == 0, err


def test_handshake_timeout_drops_idle(image, tmp_path):
    srv = serve(image, tmp_path, "--handshake-timeout", "1")
    try:
        s = srv.connect_raw()
        recv_exact(s, 18)
        assert is_closed(s)  # closed by the server after about 1 s
        assert real_client_works(srv, image)
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_many_clients_at_once(server, image):
    handles = []
    for i in range(40):
        h = nbd.NBD()
        h.connect_uri(server.uri)
        handles.append(h)
    for i, h in enumerate(handles):
        h.pwrite(bytes([i]) * 4096, i * 4096)
    for h in handles:
        h.flush()
    for i in range(len(handles)):
        assert handles[-1 - i].pread(4096, i * 4096) == bytes([i]) * 4096
    for h in handles:
        h.shutdown()


def test_client_that_never_reads_replies(server, image, tmp_path):
    """A client floods reads and never reads a reply: its connection
    stalls (bounded buffering), everyone else is served, and the server
    still stops cleanly afterwards (the fixture checks the exit)."""
    s = server.connect_raw()
    greet(s, cflags=3)
    go(s)
    s.setblocking(False)
    sent = 0
    stalled = False
    try:
        # up to 1M requests (28 MiB of them, 1 TiB of replies): a server
        # that kept reading them would queue without bound
        for i in range(1 << 20):
            s.send(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, 0, SIZE))
            sent += 1
    except BlockingIOError:
        stalled = True  # the server stopped reading our requests: back-pressure
    assert stalled, f"the server took all {sent} requests without back-pressure"
    assert sent > 10
    assert real_client_works(server, image)
    s.close()
