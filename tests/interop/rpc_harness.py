# SPDX-License-Identifier: MIT
"""Shared helpers of the JSON-RPC interop tests: a captive `rblock serve`
(--run, so no sleeps and no polling) and a line-oriented client."""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile

RBLOCK = os.environ.get("RBLOCK", "build/rblock")

# How long a test waits for a reply before calling the server hung (a
# safety net against a deadlocked test, never a measure of speed).
REPLY_TIMEOUT = 120


class Server:
    """`rblock serve IMAGE --rpc unix:... [args]` in captive mode: the --run
    command prints the addresses and then waits on our pipe; closing the
    pipe ends it, and with it the server (clean shutdown)."""

    def __init__(self, image, *args, rpc=None):
        self.dir = tempfile.mkdtemp(prefix="rpct-")
        rpc = rpc or ["unix:" + os.path.join(self.dir, "rpc.sock")]
        cmd = [RBLOCK, "serve"]
        for a in rpc:
            cmd += ["--rpc", a]
        if "--nbd" not in args:  # NBD in our own folder too
            cmd += ["--nbd", "unix:" + os.path.join(self.dir, "nbd.sock")]
        cmd += list(args)
        cmd += ["--run", 'printf "%s\\n%s\\n" "$rpc" "$uri"; exec cat >/dev/null', image]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.rpc = self.proc.stdout.readline().decode().strip()
        self.uri = self.proc.stdout.readline().decode().strip()
        if not self.rpc:
            err = self.proc.stderr.read().decode()
            self.proc.wait()
            raise RuntimeError("rblock serve did not start: " + err)

    def stop(self):
        """End the server; returns its exit status and stderr."""
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode()
        status = self.proc.wait(timeout=REPLY_TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return status, err

    def client(self):
        return Client(self.rpc)

    def nbd(self):
        import nbd
        h = nbd.NBD()
        h.connect_uri(self.uri)
        return h


def connect(addr):
    kind, rest = addr.split(":", 1)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(rest)
    else:
        host, port = rest.rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)))
    s.settimeout(REPLY_TIMEOUT)
    return s


class Client:
    def __init__(self, addr):
        self.sock = connect(addr)
        self.file = self.sock.makefile("rb")
        self.next_id = 1

    def close(self):
        self.file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        """The next reply line, raw bytes (b"" at end of stream)."""
        return self.file.readline()

    def ask(self, text):
        """Send one line, return the parsed reply."""
        self.send(text + "\n")
        ln = self.line()
        assert ln.endswith(b"\n"), ln
        return json.loads(ln)

    def call(self, method, params=None, rid=None):
        """A request; returns the whole reply object."""
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        req = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            req["params"] = params
        r = self.ask(json.dumps(req))
        assert r["jsonrpc"] == "2.0"
        assert r["id"] == rid
        return r

    def result(self, method, params=None):
        r = self.call(method, params)
        assert "error" not in r, r
        return r["result"]

    def error(self, method, params=None):
        r = self.call(method, params)
        assert "result" not in r, r
        return r["error"]

    def read(self, offset, length):
        return base64.b64decode(self.result("read", {"offset": offset, "length": length})["data"])

    def write(self, offset, data, **kw):
        p = {"offset": offset, "data": base64.b64encode(data).decode()}
        p.update(kw)
        return self.result("write", p)


def qemu_json(*args):
    return json.loads(subprocess.run(["qemu-img"] + list(args), check=True,
                                     capture_output=True).stdout)
