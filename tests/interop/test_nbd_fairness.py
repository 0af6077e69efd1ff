# SPDX-License-Identifier: MIT
"""Fairness under abuse: a well-behaved client (libnbd, one 4 KiB read or
write at a time) beside a storm of connections that connect, flood
pipelined writes without reading a reply and cut the socket, some in the
middle of a payload.  The well-behaved client keeps at least half of the
rate it has without the storm, and its longest wait for one request
stays within a bound relative to the same client unloaded.  Rates are
compared between two phases of one run on one machine (never an absolute
time); the bounds are generous for a loaded 2-core machine."""
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from nbd_helpers import Server, go, greet

SIZE = 64 << 20
PHASE_S = 3.0
# Two stormers, each opening hundreds of connections a second.  Against
# this storm on 2 cores, a well-behaved client kept 0.35-0.51 of its rate
# from qemu-nbd, 0.40 from rblock before small requests ran on the reader,
# and 0.27-0.44 under ASan before ended connections left their buffers
# for the next ones (rb_server_buf_take); one stormer pausing 10 ms
# between connections told none of them apart (0.88-0.94).
STORMERS = 2
STORM_PAUSE_S = 0.002

# The well-behaved client, in its own process (no GIL shared with the
# storm): QD1 4 KiB random reads and writes for a while; prints its count
# and its longest wait for one request.
CLIENT = r"""
import json, random, sys, time
import nbd
uri, secs, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
buf = b"\x5a" * 4096
rnd = random.Random(7)
n, worst = 0, 0.0
end = time.monotonic() + secs
last = time.monotonic()
while last < end:
    off = rnd.randrange(size // 4096) * 4096
    if n % 4 == 3:
        h.pwrite(buf, off)
    else:
        h.pread(4096, off)
    now = time.monotonic()
    worst = max(worst, now - last)
    last = now
    n += 1
h.shutdown()
print(json.dumps({"ops": n, "secs": secs, "worst": worst}))
"""

# One stormer, in its own process: connect, flood 64 KiB writes without
# reading a reply, cut the connection (every third one in the middle of a
# payload), again, until killed.
STORM = r"""
import socket, struct, sys, time
sys.path.insert(0, sys.argv[2])
from nbd_helpers import go, greet
path, size = sys.argv[1], int(sys.argv[3])
payload = b"\xee" * 65536
i = 0
while True:
    i += 1
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        greet(s, cflags=3)
        go(s)
        s.setblocking(False)
        for k in range(64):
            off = ((i * 64 + k) * 65536) % size
            msg = struct.pack(">IHHQQI", 0x25609513, 0, 1, k, off, 65536) + payload
            if i % 3 == 0 and k == 63:
                msg = msg[:30000]       # cut mid-payload
            try:
                s.send(msg)
            except BlockingIOError:
                break                   # the server pushes back: cut now
        s.close()
    except OSError:
        pass
    # a storm of connections, not a CPU hog: on 2 cores a stormer that
    # never sleeps takes the well-behaved client's CPU, whatever the server
    time.sleep(float(sys.argv[4]))
"""


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(SIZE)],
                   check=True)
    # half of it allocated, so the reads hit data
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x11 0 {SIZE // 2}",
                    str(path)], check=True, capture_output=True)
    return str(path)


def run_client(srv):
    r = subprocess.run([sys.executable, "-c", CLIENT, srv.uri, str(PHASE_S), str(SIZE)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_client_keeps_its_rate_under_a_storm(image, tmp_path):
    srv = Server(image, tmpdir=tmp_path)
    storm = []
    try:
        quiet = run_client(srv)
        here = os.path.dirname(os.path.abspath(__file__))
        storm = [subprocess.Popen([sys.executable, "-c", STORM, srv.path, here, str(SIZE),
                                   str(STORM_PAUSE_S)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(STORMERS)]
        loaded = run_client(srv)
        for p in storm:
            p.kill()
            p.wait()
        storm = []
        after = run_client(srv)
        base_rate = max(quiet["ops"], after["ops"]) / PHASE_S
        rate = loaded["ops"] / PHASE_S
        base_worst = max(quiet["worst"], after["worst"])
        print(f"well-behaved client: {base_rate:.0f} ops/s alone, {rate:.0f} under the "
              f"storm ({rate / base_rate:.2f}); longest wait {base_worst:.3f} s alone, "
              f"{loaded['worst']:.3f} s under the storm")
        assert rate >= 0.5 * base_rate, (quiet, loaded, after)
        # 0.2 s, or more when the machine alone already made it wait longer
        assert loaded["worst"] <= max(0.2, 2 * base_worst), (quiet, loaded, after)
        assert srv.proc.poll() is None, "the server died"
    finally:
        for p in storm:
            p.kill()
            p.wait()
        rc, err = srv.stop()
        assert rc == 0, err
        assert "AddressSanitizer" not in err and "runtime error" not in err, err
