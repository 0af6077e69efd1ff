# SPDX-License-Identifier: MIT
"""A served qcow2 image stays consistent to every observer while it is
written: three pipelined libnbd writers (writes at random and at growing
offsets, some unaligned, some write-zeroes and trims) run against
`rblock serve` while JSON-RPC clients loop `check`, `info`, `map` and
`block_status`.  Every live check must be clean (no leak, no corruption,
no check error: a cluster a write has allocated but not linked yet is in
flight, not leaked), the server must survive without a sanitizer report,
and afterwards the image passes `qemu-img check` and holds exactly what
the writers wrote.

For 512-byte clusters the refcount table starts covering 8 MiB of file, so
the writers' sequential sweep makes it grow several times under the
checks.

RBLOCK_STRESS_SECONDS (default 15) is how long the writers run per cluster
size beyond the minimum work (the sequential sweep); set it high for a
long stress run, e.g. RBLOCK_STRESS_SECONDS=600.  RBLOCK_STRESS_SEED fixes
the writers' random choices (default: a fresh seed, printed on failure).
"""

import os
import random
import subprocess
import tempfile
import threading
import time

import nbd
import pytest

from rpc_harness import Server

KiB = 1024
MiB = 1 << 20
SIZE = 64 * MiB       # virtual size
CHUNK = 64 * KiB      # writers own disjoint chunks: writer k has chunk % 3 == k
WRITERS = 3
DEPTH = 8             # writes in flight per writer
SWEEP = 64            # chunks each writer writes in order first (12 MiB in all)
SECONDS = float(os.environ.get("RBLOCK_STRESS_SECONDS", "15"))
SEED = int(os.environ.get("RBLOCK_STRESS_SEED", "0")) or random.randrange(1, 1 << 30)

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                   "UndefinedBehaviorSanitizer")


class Shared:
    def __init__(self):
        self.model = bytearray(SIZE)      # what the guest must read at the end
        self.stop = threading.Event()     # set: writers finish what is in flight
        self.failed = threading.Event()   # set by any thread that failed
        self.errors = []
        self.swept = 0                    # writers done with their sweep
        self.lock = threading.Lock()

    def fail(self, what):
        with self.lock:
            self.errors.append(what)
        self.failed.set()


def writer(uri, k, sh):
    """Writer k: its sweep (chunks in order), then random ops on its chunks,
    DEPTH in flight, never two at once on one chunk (so the model is the
    order of completion)."""
    rng = random.Random(SEED * 31 + k)
    mine = list(range(k, SIZE // CHUNK, WRITERS))
    pending = {}  # cookie -> (offset, bytes the range reads afterwards)
    busy = set()
    swept = 0
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
        can_trim = h.can_trim()
        while True:
            stopping = sh.stop.is_set() or sh.failed.is_set()
            while not stopping and len(pending) < DEPTH:
                sweeping = swept < SWEEP
                if sweeping:
                    chunk = mine[swept]
                    swept += 1
                    if swept == SWEEP:
                        with sh.lock:
                            sh.swept += 1
                else:
                    chunk = rng.choice(mine)
                if chunk in busy:
                    break
                base = chunk * CHUNK
                op = 1.0 if sweeping else rng.random()
                if op < 0.04 and can_trim:
                    # whole clusters of an image without a backing file: rblock
                    # makes them unallocated, which reads as zeros
                    cookie = h.aio_trim(CHUNK, base)
                    pending[cookie] = (chunk, base, bytes(CHUNK))
                elif op < 0.08:
                    o = rng.randrange(0, CHUNK, 512)
                    n = rng.randrange(512, CHUNK - o + 1, 512)
                    cookie = h.aio_zero(n, base + o)
                    pending[cookie] = (chunk, base + o, bytes(n))
                else:
                    if op < 0.4 or sweeping:
                        o, n = 0, CHUNK  # whole chunk
                    elif op < 0.7:
                        o = rng.randrange(0, CHUNK, 512)
                        n = rng.randrange(512, CHUNK - o + 1, 512)
                    else:  # unaligned: read-modify-write of partial clusters
                        o = rng.randrange(0, CHUNK - 1)
                        n = rng.randrange(1, min(CHUNK - o, 20000) + 1)
                    data = os.urandom(n)
                    cookie = h.aio_pwrite(data, base + o)
                    pending[cookie] = (chunk, base + o, data)
                busy.add(chunk)
            if not pending:
                if stopping:
                    break
                continue
            # bounded, so that a writer gives up when another thread has
            # already failed (a hung server must not hang the test)
            if h.poll(1000) == 0 and sh.failed.is_set():
                return
            for cookie in [c for c in pending if h.aio_command_completed(c)]:
                chunk, off, data = pending.pop(cookie)
                sh.model[off:off + len(data)] = data
                busy.discard(chunk)
        if not sh.failed.is_set():
            h.flush()
            h.shutdown()
    except Exception as e:  # an NBD error, or the server went away
        sh.fail(f"writer {k}: {e!r}")


def clean(r):
    return r["check-errors"] == 0 and "leaks" not in r and "corruptions" not in r \
        and r["rblock-problems"] == []


def checker(srv, sh, stats):
    """Loop `check` until the writers are done."""
    c = srv.client()
    try:
        while not sh.stop.is_set() and not sh.failed.is_set():
            r = c.result("check")
            stats["checks"] += 1
            stats["in_flight"] += r.get("rblock-in-flight-clusters", 0) > 0
            if not clean(r):
                sh.fail(f"live check {stats['checks']} reported: {r}")
    except Exception as e:
        sh.fail(f"check client: {e!r}")
    finally:
        c.close()


def inspector(srv, sh, stats):
    """Loop `info`, `map` and `block_status` over random ranges."""
    rng = random.Random(SEED * 31 + 99)
    c = srv.client()
    try:
        while not sh.stop.is_set() and not sh.failed.is_set():
            i = c.result("info")
            assert i["format"] == "qcow2" and i["virtual-size"] == SIZE, i
            off = rng.randrange(0, SIZE, 512)
            n = rng.randrange(1, min(4 * MiB, SIZE - off) + 1)
            m = c.result("map", {"offset": off, "length": n})
            assert m and m[0]["start"] == off, m
            assert all(e["length"] > 0 for e in m), m
            bs = c.result("block_status", {"offset": off, "length": n})
            assert bs and bs[0]["offset"] == off, bs
            stats["inspections"] += 1
    except Exception as e:
        sh.fail(f"inspection client: {e!r}")
    finally:
        c.close()


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="rb-live-")
    yield d
    subprocess.run(["rm", "-rf", d])


@pytest.mark.parametrize("cluster", [512, 4096, 65536])
def test_live_check_while_writing(tmp, cluster):
    img = os.path.join(tmp, f"live-{cluster}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"cluster_size={cluster}", img, str(SIZE)], check=True)
    sh = Shared()
    stats = {"checks": 0, "in_flight": 0, "inspections": 0}
    srv = Server(img)
    threads = []
    try:
        threads = [threading.Thread(target=writer, args=(srv.uri, k, sh))
                   for k in range(WRITERS)]
        threads.append(threading.Thread(target=checker, args=(srv, sh, stats)))
        threads.append(threading.Thread(target=inspector, args=(srv, sh, stats)))
        for t in threads:
            t.start()
        # run for SECONDS (a duration of the stress, never a measure), and at
        # least until every writer has done its sweep
        deadline = time.monotonic() + SECONDS
        while not sh.failed.is_set():
            if time.monotonic() >= deadline and sh.swept == WRITERS:
                break
            sh.failed.wait(0.2)
        sh.stop.set()
        for t in threads:
            t.join()
        # after the writers' flush: an idle check through the server too
        if not sh.failed.is_set():
            c = srv.client()
            final = c.result("check")
            reftable_clusters = c.result("info")["rblock"]["header"]["refcount-table-clusters"]
            c.close()
    finally:
        sh.stop.set()
        for t in threads:
            t.join()
        status, err = srv.stop()
    bad = [ln for ln in err.splitlines() if any(m in ln for m in SANITIZER_MARKS)]
    assert not bad, f"seed {SEED}: sanitizer report:\n{err}"
    assert not sh.errors, f"seed {SEED}: {sh.errors[:5]}\nserver stderr:\n{err}"
    assert status == 0, f"seed {SEED}: server exit {status}: {err}"
    assert clean(final), final
    assert "rblock-in-flight-clusters" not in final, final
    assert stats["checks"] > 0 and stats["inspections"] > 0, stats
    if cluster == 512:
        # 12 MiB of sweep alone outgrow the first table (8 MiB of file)
        assert reftable_clusters > 1, reftable_clusters
    q = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
    assert q.returncode == 0, q.stdout + q.stderr
    raw = img + ".raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", img, raw], check=True)
    with open(raw, "rb") as f:
        got = f.read()
    assert len(got) == SIZE
    if got != sh.model:
        first = next(i for i in range(SIZE) if got[i] != sh.model[i])
        pytest.fail(f"seed {SEED}: image differs from what was written at {first}")
    print(f"cluster {cluster}: {stats}")
