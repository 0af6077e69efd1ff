# SPDX-License-Identifier: MIT
"""JSON-RPC over HTTP/1.1 on the JSON-RPC listener: curl -d with a request,
a batch, a notification, a bad method, a body over the limit; keep-alive
and pipelining; and hostile clients (a bad request line, huge headers, too
many headers, chunked bodies, conflicting lengths, a slow sender) that get
their status and never stop the server or other clients."""
import json
import socket
import subprocess
import threading

import pytest

from daemon_helpers import Daemon

MiB = 1 << 20
# The line protocol's limit, also HTTP's largest body (docs/jsonrpc.md).
MAX_BODY = (4 * MiB + 2) // 3 * 4 + MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    t = tmp_path_factory.mktemp("http")
    img = t / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), str(64 * MiB)],
                   check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x61 0 4k", str(img)], check=True,
                   capture_output=True)
    d = Daemon(img, "-f", "qcow2", "--nbd", f"unix:{t / 'nbd.sock'}",
               "--rpc", "tcp:127.0.0.1:0", "--rpc", f"unix:{t / 'rpc.sock'}",
               listeners=3)
    url = d.rpc_uris[0]
    host, port = url[len("http://"):].rstrip("/").rsplit(":", 1)
    d.url, d.addr = url, (host, int(port))
    yield d
    status, err = d.stop()
    assert status == 0, err
    assert "Sanitizer" not in err and "runtime error" not in err, err


def curl(url, *args, data=None):
    cmd = ["curl", "-s", "-S", "-i", "--max-time", "120", *args, url]
    if data is not None:
        cmd += ["-d", data]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = r.stdout.replace("\r\n", "\n")
    while text.startswith("HTTP/1.1 100"):  # curl prints "100 Continue" heads too
        text = text.split("\n\n", 1)[1]
    head, _, body = text.partition("\n\n")
    status = int(head.split()[1]) if head else 0
    return status, head, body


def test_curl_request(server):
    status, head, body = curl(server.url, data='{"jsonrpc":"2.0","method":"read",'
                                               '"params":{"offset":0,"length":4},"id":1}')
    assert status == 200
    assert "Content-Type: application/json" in head
    assert json.loads(body) == {"jsonrpc": "2.0", "result": {"data": "YWFhYQ=="}, "id": 1}


def test_curl_batch_and_bad_method(server):
    status, _, body = curl(server.url, data='[{"method":"get_version","id":"a"},'
                                            '{"method":"frobnicate","id":"b"},'
                                            '{"method":"flush"}]')
    assert status == 200
    r = json.loads(body)
    assert [x["id"] for x in r] == ["a", "b"]
    assert r[0]["result"]["name"] == "rblock"
    assert r[1]["error"]["code"] == -32601


def test_notification_is_204(server):
    status, _, body = curl(server.url, data='{"method":"flush"}')
    assert status == 204 and body == ""


def test_wrong_http_method_and_path(server):
    status, head, body = curl(server.url)  # GET /: the page, a row of the table
    assert status == 200 and "Content-Type: text/html" in head and "<html" in body.lower()
    status, _, _ = curl(server.url + "?x=1")  # the query does not route
    assert status == 200
    status, head, _ = curl(server.url, "-X", "PUT", data="{}")
    assert status == 405
    status, _, _ = curl(server.url + "nowhere", data="{}")
    assert status == 404


def test_body_over_the_limit(server, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_BODY + 1))
    status, _, body = curl(server.url, "--data-binary", f"@{big}")
    assert status == 413
    assert json.loads(body)["error"]["code"] == -32700
    # exactly at the limit is taken (white space: a blank request, no reply)
    big.write_bytes(b" " * MAX_BODY)
    status, _, _ = curl(server.url, "--data-binary", f"@{big}")
    assert status == 204


def http(body, extra=b""):
    return (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def read_response(f):
    status_line = f.readline()
    if not status_line:
        return None, {}, b""
    headers = {}
    while True:
        ln = f.readline().rstrip(b"\r\n")
        if not ln:
            break
        k, _, v = ln.partition(b":")
        headers[k.decode().lower()] = v.strip().decode()
    body = f.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def connect(server):
    s = socket.create_connection(server.addr)
    s.settimeout(120)
    return s, s.makefile("rb")


def test_keep_alive_and_pipelining(server):
    s, f = connect(server)
    reqs = [http(b'{"method":"get_version","id":%d}' % i) for i in range(5)]
    s.sendall(reqs[0])
    st, h, body = read_response(f)
    assert st == 200 and json.loads(body)["id"] == 0 and "connection" not in h
    s.sendall(b"".join(reqs[1:]))  # pipelined: answered in order
    for i in range(1, 5):
        st, _, body = read_response(f)
        assert st == 200 and json.loads(body)["id"] == i
    s.sendall(http(b'{"method":"get_version","id":9}', b"Connection: close\r\n"))
    st, h, _ = read_response(f)
    assert st == 200 and h["connection"] == "close"
    assert f.read() == b""  # closed by the server
    s.close()


def assert_alive(server):
    """Another client is served, over HTTP and over lines."""
    status, _, body = curl(server.url, data='{"method":"get_version","id":1}')
    assert status == 200 and json.loads(body)["result"]["name"] == "rblock"
    with server.rpc() as c:
        assert c.result("get_version")["name"] == "rblock"


@pytest.mark.parametrize("raw,status", [
    (b"POST /\r\n\r\n", 400),
    (b"POST  / HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1 extra\r\n\r\n", 400),
    (b"POST nowhere HTTP/1.1\r\n\r\n", 400),
    (b"POST /\x00 HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/2.0\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nX: " + b"a" * (20 << 10) + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 431),
    (b"DELETE / HTTP/1.1\r\n\r\n", 405),
])
def test_hostile_requests(server, raw, status):
    s, f = connect(server)
    try:
        s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the rest arrived
    st, _, body = read_response(f)
    assert st == status, (st, body)
    assert f.read() == b""  # and closed the connection
    s.close()
    assert_alive(server)


def test_endless_headers_are_cut(server):
    """A client that sends headers forever is answered 431 and dropped once
    past the limit: the server buffers no more than that."""
    s, f = connect(server)
    s.sendall(b"POST / HTTP/1.1\r\n")
    sent = 0
    try:
        while sent < 4 * MiB:
            s.sendall(b"X-Filler: " + b"z" * 1000 + b"\r\n")
            sent += 1012
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 4 * MiB
    st, _, _ = read_response(f)
    assert st == 431
    s.close()
    assert_alive(server)


def test_slow_sender(server):
    """A request trickled a few bytes at a time is answered when complete,
    and other clients are served meanwhile."""
    s, f = connect(server)
    req = http(b'{"method":"read","params":{"offset":0,"length":2},"id":7}')
    served = []
    for i in range(0, len(req), 7):
        s.sendall(req[i:i + 7])
        if i % 35 == 0:  # another client, while this one is half-sent
            t = threading.Thread(target=lambda: served.append(assert_alive(server)))
            t.start()
            t.join(120)
    st, _, body = read_response(f)
    assert st == 200 and json.loads(body) == {"jsonrpc": "2.0", "result": {"data": "YWE="},
                                              "id": 7}
    assert len(served) == len(range(0, len(req), 35))
    s.close()


def test_line_protocol_still_works_on_the_same_port(server):
    s, f = connect(server)
    s.sendall(b'{"method":"get_version","id":1}\n')
    assert json.loads(f.readline())["result"]["name"] == "rblock"
    s.close()
    # what is not an HTTP method and a space is a (bad) JSON line
    for junk in (b"POST\r\n", b"GETX / HTTP/1.1\r\n", b"Gopher\n"):
        s, f = connect(server)
        s.sendall(junk)
        assert json.loads(f.readline())["error"]["code"] == -32700
        s.close()


def test_jsonrpc_over_tls(tmp_path):
    """With --tls-cert, JSON-RPC on TCP is TLS only (HTTPS for curl, TLS
    lines for socat), and may then listen beyond loopback without
    --rpc-insecure; the unix socket stays plain."""
    import tls_pki
    tls_pki.make(str(tmp_path))
    img = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), str(MiB)], check=True)
    d = Daemon(img, "-f", "qcow2", "--nbd", f"unix:{tmp_path / 'nbd.sock'}",
               "--tls-cert", tmp_path / "pki", "--rpc", "tcp:127.0.0.1:0",
               "--rpc", "tcp:0.0.0.0:0", "--rpc", f"unix:{tmp_path / 'rpc.sock'}",
               listeners=4)
    try:
        url = d.rpc_uris[0]
        assert url.startswith("https://127.0.0.1:") and d.rpc_uris[1].startswith("https://")
        ca = str(tmp_path / "pki" / "ca-cert.pem")
        status, _, body = curl(url, "--cacert", ca, data='{"method":"get_version","id":1}')
        assert status == 200 and json.loads(body)["result"]["name"] == "rblock"
        hostport = url[len("https://"):].rstrip("/")
        r = subprocess.run(["socat", "-", f"OPENSSL:{hostport},cafile={ca}"],
                           input=b'{"method":"get_version","id":2}\n', capture_output=True,
                           timeout=120)
        assert json.loads(r.stdout)["id"] == 2, r
        # plain text on the TLS port gets nothing
        r = subprocess.run(["curl", "-s", "--max-time", "60", "-d", "{}",
                            url.replace("https", "http")], capture_output=True)
        assert r.returncode != 0 and r.stdout == b""
        # another CA's client refuses the server
        r = subprocess.run(["curl", "-s", "--max-time", "60", "--cacert",
                            str(tmp_path / "other" / "ca-cert.pem"), "-d", "{}", url],
                           capture_output=True)
        assert r.returncode != 0
        from rpc_harness import Client
        with Client(f"unix:{tmp_path / 'rpc.sock'}") as c:  # plain
            assert c.result("get_version")["name"] == "rblock"
    finally:
        status, err = d.stop()
    assert status == 0, err
