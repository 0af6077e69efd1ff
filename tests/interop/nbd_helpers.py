# SPDX-License-Identifier: MIT
"""Helpers for the NBD interop tests (test_nbd*.py): start `rblock serve`
with a listening socket made here and handed over by socket activation
(LISTEN_PID/LISTEN_FDS), so the server is reachable the moment it starts:
no sleeps, no polling.  Also a tiny raw NBD client for hostile cases."""
import os
import signal
import socket
import struct
import subprocess
import tempfile

RBLOCK = os.environ.get("RBLOCK", "rblock")

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9


class Server:
    """rblock serve IMAGE on a unix socket in a private folder."""

    def __init__(self, image, *args, tmpdir=None):
        self.dir = tempfile.mkdtemp(dir=tmpdir)
        self.path = os.path.join(self.dir, "nbd.sock")
        self.uri = "nbd+unix:///?socket=" + self.path
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(512)
        fd = lsock.fileno()
        move = "" if fd == 3 else f" 3<&{fd} {fd}<&-"
        wrapper = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"' + move
        self.proc = subprocess.Popen(
            ["bash", "-c", wrapper, RBLOCK, "serve", *args, image],
            pass_fds=(fd,), stderr=subprocess.PIPE)
        lsock.close()

    def uri_for(self, name):
        return f"nbd+unix:///{name}?socket={self.path}"

    def connect_raw(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.path)
        return s

    def kill(self):
        """SIGKILL, as a crash: nothing is flushed or closed by the server;
        its socket and folder are removed here."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stderr.close()
        os.unlink(self.path)
        os.rmdir(self.dir)

    def stop(self):
        """SIGTERM, wait; returns (exit status, stderr text)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.rmdir(self.dir)
        return self.proc.returncode, err.decode(errors="replace")


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def is_closed(s):
    """True when the server closed the connection (EOF or reset)."""
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def greet(s, cflags=1):
    """Read the server's greeting, send client flags; returns handshake flags."""
    magic, opt, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    assert magic == NBDMAGIC and opt == IHAVEOPT
    s.sendall(struct.pack(">I", cflags))
    return hflags


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def recv_opt_reply(s):
    magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == REPLY_MAGIC, hex(magic)
    return opt, rtype, recv_exact(s, length)


def go(s, name=b"", infos=()):
    """NBD_OPT_GO; returns (size, transmission flags)."""
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
    data += b"".join(struct.pack(">H", i) for i in infos)
    send_opt(s, 7, data)
    size = tflags = None
    while True:
        _, rtype, payload = recv_opt_reply(s)
        if rtype == 3 and struct.unpack(">H", payload[:2])[0] == 0:
            size, tflags = struct.unpack(">QH", payload[2:12])
        elif rtype == 1:
            return size, tflags
        elif rtype & 0x80000000:
            raise RuntimeError(f"NBD_OPT_GO failed: {rtype:#x} {payload!r}")


def request(s, cmd, off=0, length=0, flags=0, handle=1, data=b""):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, cmd, handle, off, length) + data)


def simple_reply(s, length=0):
    """Read a simple reply; returns (error, handle, data)."""
    magic, error, handle = struct.unpack(">IIQ", recv_exact(s, 16))
    assert magic == 0x67446698, hex(magic)
    return error, handle, recv_exact(s, length) if length and not error else b""
