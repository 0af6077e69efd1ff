# SPDX-License-Identifier: MIT
"""The page for the daemon's HTTP listener (server/web/index.html), in a
real browser: headless Chromium loads it and runs its script against a real
`rblock serve`, and the DOM it dumps holds the export's name, its counters
and the <svg> of its layout, which is the SVG of `rblock map --output=svg`.
The page asks only export_list, stats and layout.

Until the daemon's HTTP listener lands, a stand-in in this file serves the
page's bytes at GET / and passes each POST / body, one line, to the
server's JSON-RPC socket (what the listener's framing will do)."""

import http.server
import json
import os
import socket
import subprocess
import threading

from rpc_harness import Server

RBLOCK = os.environ.get("RBLOCK", "build/rblock")
SRCDIR = os.environ.get("SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))


class StandIn(http.server.ThreadingHTTPServer):
    def __init__(self, rpc_path):
        with open(os.path.join(SRCDIR, "server", "web", "index.html"), "rb") as f:
            self.page = f.read()
        self.rpc_path = rpc_path
        self.methods = []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/":
            self.reply(404, "text/plain", b"not found\n")
            return
        self.reply(200, "text/html; charset=utf-8", self.server.page)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = json.loads(body)
        for r in req if isinstance(req, list) else [req]:
            self.server.methods.append(r["method"])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.server.rpc_path)
        s.sendall(json.dumps(req).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
        s.close()
        self.reply(200, "application/json", line)

    def log_message(self, *args):
        pass


def test_page_in_chromium(tmp_path):
    img = str(tmp_path / "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 3M", "-c", "write -c -P 2 8M 1M", img],
                   check=True, capture_output=True)
    want = subprocess.run([RBLOCK, "map", "--output=svg", img], check=True,
                          capture_output=True, text=True).stdout

    srv = Server(img, "-r", "-x", "disk-zero")
    web = StandIn(srv.rpc.split(":", 1)[1])
    t = threading.Thread(target=web.serve_forever, daemon=True)
    t.start()
    try:
        # --virtual-time-budget: the DOM is dumped once the page's fetches
        # are answered and its timers would have run for 5 s
        r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                            "--no-proxy-server", f"--user-data-dir={tmp_path / 'profile'}",
                            "--virtual-time-budget=5000", "--dump-dom",
                            f"http://127.0.0.1:{web.server_address[1]}/"],
                           capture_output=True, text=True, timeout=300)
    finally:
        web.shutdown()
        web.server_close()
        status, err = srv.stop()
    assert status == 0, err
    dom = r.stdout
    assert "<h2>disk-zero</h2>" in dom, dom[:2000] + r.stderr[-2000:]
    assert 'id="status" class="">1 export,' in dom
    assert 'class="problem"' not in dom
    # the counters of the export, and the picture, as map --output=svg draws it
    assert "<th>size</th><td>64.00 MiB</td>" in dom
    assert dom.count("<svg") == 1
    caption = want[want.index('<text id="caption"'):]
    caption = caption[:caption.index("</text>")]
    assert "allocated 64/1024 clusters" in caption
    assert caption.split(">", 1)[1] in dom
    # read-only: what the page asked
    assert web.methods and set(web.methods) <= {"export_list", "stats", "layout"}, web.methods
    assert {"stats", "layout"} <= set(web.methods)
