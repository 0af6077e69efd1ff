# SPDX-License-Identifier: MIT
"""NBD over TLS at the protocol level: raw-socket clients wrapped in
Python's ssl after NBD_OPT_STARTTLS, and libnbd with TLS.  Require mode
answers NBD_REP_ERR_TLS_REQD before TLS and hangs up on EXPORT_NAME;
STARTTLS twice or with data is NBD_REP_ERR_INVALID; option state from
before STARTTLS is forgotten; a client whose TLS handshake fails is
dropped while others are served.  Credentials from tls_pki.py."""
import os
import random
import socket
import ssl
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from nbd_helpers import (Server, greet, is_closed, recv_exact, recv_opt_reply,  # noqa: E402
                         request, send_opt, simple_reply)
import tls_pki  # noqa: E402

import nbd  # noqa: E402

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_TLS_REQD = (0x80000000 | n for n in (1, 2, 3, 5))
CMD_READ, CMD_BLOCK_STATUS = 0, 7
FLAG_SEND_DF = 1 << 7
SIZE = 4 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tls_pki.make(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("img") / "disk.raw")
    data = random.Random(7).randbytes(SIZE // 2) + bytes(SIZE // 2)
    with open(path, "wb") as f:
        f.write(data)
    return path, data


@pytest.fixture
def serve(image, pki):
    started = []

    def start(*args):
        srv = Server(image[0], "-r", *args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        rc, err = srv.stop()
        assert rc == 0, err


def tls_wrap(pki, s):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(pki, "pki", "ca-cert.pem"))
    return ctx.wrap_socket(s, server_hostname="localhost")


def starttls(pki, s):
    send_opt(s, OPT_STARTTLS)
    opt, rtype, payload = recv_opt_reply(s)
    assert (opt, rtype, payload) == (OPT_STARTTLS, REP_ACK, b"")
    t = tls_wrap(pki, s)
    t.settimeout(30)
    return t


def go(s):
    """NBD_OPT_GO on the default export; returns (size, transmission flags)."""
    send_opt(s, OPT_GO, struct.pack(">IH", 0, 0))
    size = tflags = None
    while True:
        opt, rtype, payload = recv_opt_reply(s)
        assert opt == OPT_GO
        if rtype == REP_INFO and payload[:2] == b"\0\0":
            size, tflags = struct.unpack(">QH", payload[2:12])
        elif rtype == REP_ACK:
            return size, tflags
        else:
            assert not rtype & 0x80000000, (hex(rtype), payload)


def meta_query(name):
    q = name.encode()
    return struct.pack(">II", 0, 1) + struct.pack(">I", len(q)) + q


def test_require_mode_answers_tls_reqd_before_starttls(serve, pki, image):
    srv = serve("--tls=require", "--tls-cert", os.path.join(pki, "pki"))
    s = srv.connect_raw()
    greet(s)
    for opt, data in [(OPT_LIST, b""), (OPT_INFO, struct.pack(">IH", 0, 0)),
                      (OPT_GO, struct.pack(">IH", 0, 0)), (OPT_STRUCTURED_REPLY, b""),
                      (OPT_LIST_META, meta_query("base:")),
                      (OPT_SET_META, meta_query("base:allocation")), (99, b"xyz")]:
        send_opt(s, opt, data)
        ropt, rtype, msg = recv_opt_reply(s)
        assert (ropt, rtype) == (opt, ERR_TLS_REQD), (opt, hex(rtype), msg)
        assert b"TLS" in msg
    t = starttls(pki, s)
    size, tflags = go(t)
    assert size == SIZE
    request(t, CMD_READ, 4096, 65536, handle=5)
    assert simple_reply(t, 65536) == (0, 5, image[1][4096:4096 + 65536])
    t.close()


def test_require_mode_export_name_before_tls_hangs_up(serve, pki):
    srv = serve("--tls=require", "--tls-cert", os.path.join(pki, "pki"))
    s = srv.connect_raw()
    greet(s)
    send_opt(s, OPT_EXPORT_NAME, b"")
    assert is_closed(s)
    s.close()
    # ABORT is still answered before TLS.
    s = srv.connect_raw()
    greet(s)
    send_opt(s, OPT_ABORT)
    assert recv_opt_reply(s)[:2] == (OPT_ABORT, REP_ACK)
    s.close()


def test_starttls_twice_or_with_data_is_invalid(serve, pki):
    srv = serve("--tls=on", "--tls-cert", os.path.join(pki, "pki"))
    s = srv.connect_raw()
    greet(s)
    send_opt(s, OPT_STARTTLS, b"x")
    assert recv_opt_reply(s)[:2] == (OPT_STARTTLS, ERR_INVALID)
    t = starttls(pki, s)
    send_opt(t, OPT_STARTTLS)
    assert recv_opt_reply(t)[:2] == (OPT_STARTTLS, ERR_INVALID)
    assert go(t)[0] == SIZE
    t.close()


def test_starttls_without_tls_is_policy(serve, pki):
    srv = serve()
    s = srv.connect_raw()
    greet(s)
    send_opt(s, OPT_STARTTLS)
    assert recv_opt_reply(s)[:2] == (OPT_STARTTLS, ERR_POLICY)
    # and the haggling goes on in plaintext
    assert go(s)[0] == SIZE
    s.close()


def test_option_state_is_reset_at_starttls(serve, pki, image):
    """Structured replies and a meta context chosen in plaintext are
    forgotten: after TLS, GO advertises no DF, a READ gets a simple reply
    and BLOCK_STATUS fails (no context)."""
    srv = serve("--tls=on", "--tls-cert", os.path.join(pki, "pki"))
    s = srv.connect_raw()
    greet(s)
    send_opt(s, OPT_STRUCTURED_REPLY)
    assert recv_opt_reply(s)[:2] == (OPT_STRUCTURED_REPLY, REP_ACK)
    send_opt(s, OPT_SET_META, meta_query("base:allocation"))
    assert recv_opt_reply(s)[:2] == (OPT_SET_META, REP_META)
    assert recv_opt_reply(s)[:2] == (OPT_SET_META, REP_ACK)
    t = starttls(pki, s)
    # Meta contexts now need structured replies again.
    send_opt(t, OPT_SET_META, meta_query("base:allocation"))
    assert recv_opt_reply(t)[:2] == (OPT_SET_META, ERR_INVALID)
    size, tflags = go(t)
    assert size == SIZE and not tflags & FLAG_SEND_DF
    request(t, CMD_READ, 0, 8192, handle=9)
    assert simple_reply(t, 8192) == (0, 9, image[1][:8192])
    request(t, CMD_BLOCK_STATUS, 0, 4096, handle=10)
    err, handle, _ = simple_reply(t)
    assert (err, handle) == (22, 10)  # NBD_EINVAL, a simple reply
    t.close()


def test_structured_replies_after_tls(serve, pki, image):
    srv = serve("--tls=require", "--tls-cert", os.path.join(pki, "pki"))
    s = srv.connect_raw()
    greet(s)
    t = starttls(pki, s)
    send_opt(t, OPT_STRUCTURED_REPLY)
    assert recv_opt_reply(t)[:2] == (OPT_STRUCTURED_REPLY, REP_ACK)
    size, tflags = go(t)
    assert tflags & FLAG_SEND_DF
    request(t, CMD_READ, 0, 4096, handle=3)
    magic, flags, rtype, handle, length = struct.unpack(">IHHQI", recv_exact(t, 20))
    assert magic == 0x668E33EF and handle == 3
    t.close()


def test_bad_tls_client_is_dropped_others_served(serve, pki, image):
    srv = serve("--tls=require", "--tls-cert", os.path.join(pki, "pki"),
                "--handshake-timeout", "2")
    # STARTTLS, then garbage instead of a ClientHello.
    bad = srv.connect_raw()
    greet(bad)
    send_opt(bad, OPT_STARTTLS)
    assert recv_opt_reply(bad)[:2] == (OPT_STARTTLS, REP_ACK)
    bad.sendall(b"\x16\x03\x01\xff\xff" + b"garbage" * 100)
    assert is_closed(bad)
    # STARTTLS, then a half handshake and silence: the deadline ends it.
    idle = srv.connect_raw()
    greet(idle)
    send_opt(idle, OPT_STARTTLS)
    assert recv_opt_reply(idle)[:2] == (OPT_STARTTLS, REP_ACK)
    idle.sendall(b"\x16\x03\x01\x00\x80")  # a record header, no body
    # A real TLS client meanwhile.
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(os.path.join(pki, "anon"))
    h.connect_unix(srv.path)
    assert h.get_tls_negotiated()
    assert h.pread(65536, 1 << 20) == image[1][1 << 20:(1 << 20) + 65536]
    h.shutdown()
    assert is_closed(idle)
    bad.close()
    idle.close()


def test_libnbd_tls_pipelined_reads_and_writes(tmp_path, pki):
    """Many requests in flight over one TLS session (replies from worker
    threads while the reader receives), and writes read back."""
    path = str(tmp_path / "rw.raw")
    data = bytearray(random.Random(3).randbytes(SIZE))
    with open(path, "wb") as f:
        f.write(data)
    srv = Server(path, "--tls-psk", os.path.join(pki, "keys.psk"))
    try:
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_username("alice")
        h.set_tls_psk_file(os.path.join(pki, "keys.psk"))
        h.connect_unix(srv.path)
        assert h.get_tls_negotiated()
        rng = random.Random(5)
        for i in range(16):
            off = rng.randrange(0, SIZE - 65536)
            buf = bytes([i + 1]) * rng.randrange(1, 65536)
            h.pwrite(buf, off)
            data[off:off + len(buf)] = buf
        bufs = []
        for i in range(64):
            off = rng.randrange(0, SIZE - 300000)
            n = rng.randrange(1, 300000)
            b = nbd.Buffer(n)
            h.aio_pread(b, off)
            bufs.append((b, off, n))
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for b, off, n in bufs:
            assert b.to_bytearray() == data[off:off + n]
        assert h.pread(SIZE, 0) == bytes(data)
        h.shutdown()
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    with open(path, "rb") as f:
        assert f.read() == bytes(data)


def test_sigterm_with_tls_client_connected(image, pki):
    """SIGTERM while a TLS client is connected and idle: the server stops
    reading, ends the connection and exits 0 (ASan: nothing leaked)."""
    srv = Server(image[0], "-r", "--tls-cert", os.path.join(pki, "pki"))
    try:
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(os.path.join(pki, "anon"))
        h.connect_unix(srv.path)
        assert h.pread(4096, 0) == image[1][:4096]
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
    with pytest.raises(nbd.Error):
        h.pread(4096, 0)
