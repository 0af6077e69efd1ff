# SPDX-License-Identifier: MIT
"""Helpers of the storage-daemon tests (test_daemon_*.py): `rblock serve`
with its own listeners, ready when it has printed one start-up line per
listener (printed once every socket listens and every export is open): no
sleeps, no polling."""
import os
import select
import signal
import subprocess

from rpc_harness import RBLOCK, Client, REPLY_TIMEOUT


class Daemon:
    """`rblock serve ARGS...`; @listeners start-up lines are awaited."""

    def __init__(self, *args, listeners=2):
        self.proc = subprocess.Popen([RBLOCK, "serve", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines, other = [], []
        while len(self.lines) < listeners:
            ln = self.proc.stderr.readline().decode()
            if not ln:
                self.proc.wait()
                raise RuntimeError("rblock serve did not start: " + "".join(other))
            other.append(ln)
            if ln.startswith("rblock: serving "):
                self.lines.append(ln.rstrip("\n"))
        # e.g. "rblock: serving NBD on nbd+unix:///?socket=/x"
        self.nbd_uris = [ln.split(" on ", 1)[1] for ln in self.lines if " NBD on " in ln]
        self.rpc_uris = [ln.split(" on ", 1)[1] for ln in self.lines if "JSON-RPC on" in ln]

    def rpc(self):
        u = self.rpc_uris[0]
        if u.startswith("http://"):
            host, port = u[len("http://"):].rstrip("/").rsplit(":", 1)
            return Client(f"tcp:{host}:{port}")
        return Client(u)

    def stop(self):
        """SIGTERM; returns (status, stderr after the start-up lines)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=REPLY_TIMEOUT)
        return self.proc.returncode, err.decode(errors="replace")


def wait_gone(pid):
    """Wait for a process that is not our child (--fork) to end."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(REPLY_TIMEOUT * 1000), f"process {pid} did not end"
    finally:
        os.close(fd)
