# SPDX-License-Identifier: MIT
"""The page of the daemon (server/web/index.html, GET / on the JSON-RPC
listener), in a real browser: headless Chromium loads it from `rblock serve`
and runs its script, and the DOM it dumps holds every export's name, its
counters and the <svg> of its layout, the SVG of `rblock map --output=svg`.
An export added over JSON-RPC shows after a reload; the images are the same
bytes after the page has been loaded (it only reads).  Hostile requests for
the page path (traversal, other paths, huge headers) get 4xx and never a
file of the host."""
import hashlib
import json
import socket
import subprocess
import urllib.request

import pytest

from daemon_helpers import Daemon
from rpc_harness import RBLOCK

MiB = 1 << 20


def run(*cmd):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    t = tmp_path_factory.mktemp("page")
    a, b, c = t / "a.qcow2", t / "b.raw", t / "c.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", a, 64 * MiB)
    run("qemu-io", "-c", "write -P 1 0 3M", "-c", "write -c -P 2 8M 1M", a)
    run("qemu-img", "create", "-q", "-f", "raw", b, 32 * MiB)
    run("qemu-io", "-f", "raw", "-c", "write -P 3 4M 1M", b)
    run("qemu-img", "create", "-q", "-f", "qcow2", c, 16 * MiB)
    # each picture as map --output=svg draws it, before the daemon locks the image
    svg = {n: run(RBLOCK, "map", "--output=svg", p).stdout
           for n, p in (("alpha", a), ("beta", b), ("gamma", c))}
    d = Daemon(a, "-f", "qcow2", "-x", "alpha", "--export", f"beta={b},format=raw",
               "--nbd", f"unix:{t / 'nbd.sock'}", "--rpc", "tcp:127.0.0.1:0")
    url = d.rpc_uris[0]
    assert url.startswith("http://127.0.0.1:"), url
    host, port = url[len("http://"):].rstrip("/").rsplit(":", 1)
    d.url, d.addr, d.images, d.svg = url, (host, int(port)), (a, b, c), svg
    yield d
    status, err = d.stop()
    assert status == 0, err
    assert "Sanitizer" not in err and "runtime error" not in err, err


def browse(server, profile):
    """The DOM of the page once its script ran: --virtual-time-budget lets
    the page's fetches be answered and its timers run for 5 s of virtual
    time before the DOM is dumped (no waiting on the clock)."""
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--no-proxy-server", "--no-first-run", f"--user-data-dir={profile}",
                        "--virtual-time-budget=5000", "--dump-dom", server.url],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr[-2000:]


def post(server, method, params=None):
    """One JSON-RPC call over HTTP (POST /), as any client would."""
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    rq = urllib.request.Request(server.url, data=json.dumps(req).encode(),
                                headers={"Content-Type": "application/json"})
    with opener.open(rq, timeout=120) as resp:
        return json.loads(resp.read())


def caption(svg):
    cap = svg[svg.index('<text id="caption"'):]
    return cap[:cap.index("</text>")].split(">", 1)[1]


def section_of(dom, name):
    start = dom.index(f'data-export="{name}"')
    end = dom.find("<section", start)
    return dom[start:end if end >= 0 else len(dom)]


def test_page_in_chromium(server, tmp_path):
    a, b, c = server.images
    before = {p: digest(p) for p in (a, b)}

    dom, err = browse(server, tmp_path / "profile")
    assert 'id="status" class="">2 exports,' in dom, dom[:3000] + err
    assert 'class="problem"' not in dom, dom
    for name, size in (("alpha", "64.00 MiB"), ("beta", "32.00 MiB")):
        sec = section_of(dom, name)
        assert f"<h2>{name}</h2>" in sec
        assert f"<th>size</th><td>{size}</td>" in sec
        assert "clients " in sec and "requests " in sec and "read " in sec
        assert sec.count("<svg") == 1, sec[:2000]
    # each export's picture is the one map --output=svg draws for its image
    assert "allocated 64/1024 clusters" in caption(server.svg["alpha"])
    assert caption(server.svg["alpha"]) != caption(server.svg["beta"])
    for name in ("alpha", "beta"):
        assert caption(server.svg[name]) in section_of(dom, name), name

    # a second export added over JSON-RPC shows after a reload
    r = post(server, "export_add", {"name": "gamma", "image": str(c), "format": "qcow2"})
    assert "error" not in r, r
    dom, err = browse(server, tmp_path / "profile2")
    assert 'id="status" class="">3 exports,' in dom, dom[:3000] + err
    assert 'class="problem"' not in dom, dom
    sec = section_of(dom, "gamma")
    assert "<h2>gamma</h2>" in sec and "<th>size</th><td>16.00 MiB</td>" in sec
    assert sec.count("<svg") == 1 and caption(server.svg["gamma"]) in sec
    assert dom.count("<svg") == 3
    # the page changed nothing: the images it showed are the same bytes
    assert {p: digest(p) for p in (a, b)} == before
    assert post(server, "export_remove", {"name": "gamma"}).get("result") is not None


def read_response(f):
    status_line = f.readline()
    if not status_line:
        return None, b""
    headers = {}
    while True:
        ln = f.readline().rstrip(b"\r\n")
        if not ln:
            break
        k, _, v = ln.partition(b":")
        headers[k.decode().lower()] = v.strip().decode()
    return int(status_line.split()[1]), f.read(int(headers.get("content-length", "0")))


def request(server, raw):
    s = socket.create_connection(server.addr)
    s.settimeout(120)
    f = s.makefile("rb")
    try:
        s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the rest arrived
    try:
        return read_response(f)
    finally:
        f.close()
        s.close()


def get(target, extra=b""):
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + \
        b"Connection: close\r\n\r\n"


@pytest.mark.parametrize("raw,status", [
    (get(b"/../../etc/passwd"), 404),
    (get(b"/%2e%2e/%2e%2e/etc/passwd"), 404),
    (get(b"/%2e%2e/"), 404),
    (get(b"//etc/passwd"), 404),
    (get(b"/etc/passwd"), 404),
    (get(b"/index.html"), 404),
    (get(b"/./"), 404),
    (get(b"/..%2f..%2fetc%2fpasswd"), 404),
    (get(b"/\\..\\..\\etc\\passwd"), 404),
    (get(b"/favicon.ico"), 404),
    (get(b"http://127.0.0.1/../../etc/passwd"), 400),
    (get(b"../../etc/passwd"), 400),
    (get(b"/", b"X: " + b"a" * (64 << 10) + b"\r\n"), 431),
    (get(b"/", b"X: y\r\n" * 1000), 431),
    (get(b"/" + b"../" * 1000 + b"etc/passwd"), 431),
])
def test_hostile_page_requests(server, raw, status):
    st, body = request(server, raw)
    assert st == status, (st, body[:200])
    assert 400 <= st < 500
    assert b"root:x:0:0" not in body and b"<html" not in body.lower()
    # and the page itself is still served to the next client
    st, body = request(server, get(b"/"))
    assert st == 200 and b"<html" in body.lower() and b"export_list" in body
