# SPDX-License-Identifier: MIT
"""Crash tests of the served write path (run by crash.sh and run, under
/usr/bin/python3 for the libnbd bindings).

    served.py faults FORMAT KIND SAMPLE   fault points of one kind
    served.py kill9 FORMAT ROUNDS CLIENTS kill -9 after K acked flushes
    served.py one FORMAT PLAN DIR          one plan, verbose, files kept in DIR

FORMAT is qcow2 (an overlay over a raw backing file, made by qemu-img) or
raw.  KIND is a $RBLOCK_FAULT plan without its number: power-write,
power-sync, power-write-seed (unsynced writes kept or dropped at random),
fail-write, fail-write-once, fail-sync; with "-meta" (power-write-meta)
the points are those around L2-table and refcount-block allocation, found
by a traced run (RBLOCK_FAULT=trace), and SAMPLE caps their number.  FORMAT
qcow2:SIZE[,OPT=V...] passes creation options to qemu-img (cluster_size=SIZE
first); FORMAT+snap first writes the overlay's first half and takes an
internal snapshot (qemu-img), which every run checks is intact.  SAMPLE is how many fault points
to run, spread evenly over 1..W (or S) and always with the first and the
last; 0 runs all of them; "A,B,..." runs those points.

One client drives a fixed sequence of writes, FUA writes, write_zeroes,
trims, flushes and reads, and keeps a model of the disk per 512-byte
sector: DURABLE (flushed, or written with FUA: must read back after any
crash), PENDING (acknowledged, not yet flushed: old or new may be there)
and UNKNOWN (trimmed, or the request failed: anything may be there).
After the server died or failed, every check is against the image file:
  - qemu-img check: 0 (clean) or 3 (leaks only); 2 is a corruption;
  - qemu-img info and rblock info open it;
  - every DURABLE sector reads back exactly (qemu-img convert -O raw).
One summary line per run: points, corruptions, lost (sectors), leaks.

FORMAT qcow2+bitmap (also qcow2:SIZE+bitmap) adds the bitmap workload: the
overlay gets a persistent dirty bitmap (qemu-img bitmap --add, 64 KiB
granularity) before it is served, and after recovery that bitmap must be
in_use (inconsistent: never used for a backup), or consistent and dirty
for every cluster of an acknowledged write, write_zeroes or trim and every
sector that reads differently from the image before the run (read through
qemu-nbd -B, as a backup tool would): never a written cluster clean.
"""
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile

import nbd

RBLOCK = os.environ.get("RBLOCK", "rblock")
SECTOR = 512
SIZE = 8 << 20
NSECT = SIZE // SECTOR
FAULT_EXIT = 99
DURABLE, PENDING, UNKNOWN = 0, 1, 2
VERBOSE = False
BITMAP = "cbt"
GRANULE = 65536


def log(*a):
    print(*a, flush=True)


class Model:
    def __init__(self, base):
        self.durable = bytearray(base)  # last durable content
        self.cur = bytearray(base)      # last acknowledged content
        self.state = bytearray(NSECT)   # DURABLE/PENDING/UNKNOWN
        self.base = bytes(base)         # content before the run
        self.touched = []               # (off, len) of acknowledged changes

    def _range(self, off, ln):
        return range(off // SECTOR, (off + ln) // SECTOR)

    def written(self, off, data, fua):
        self.cur[off:off + len(data)] = data
        for s in self._range(off, len(data)):
            self.state[s] = DURABLE if fua else PENDING
        if fua:
            self.durable[off:off + len(data)] = data

    def unknown(self, off, ln):
        for s in self._range(off, ln):
            self.state[s] = UNKNOWN

    def flushed(self):
        for s in range(NSECT):
            if self.state[s] == PENDING:
                a = s * SECTOR
                self.durable[a:a + SECTOR] = self.cur[a:a + SECTOR]
                self.state[s] = DURABLE

    def check_read(self, off, got):
        """Read-your-writes while the server lives: acked content."""
        for i, s in enumerate(self._range(off, len(got))):
            if self.state[s] != UNKNOWN:
                a = s * SECTOR
                if got[i * SECTOR:(i + 1) * SECTOR] != self.cur[a:a + SECTOR]:
                    return s
        return None

    def lost(self, image):
        """Sectors whose durable content did not survive."""
        bad = []
        for s in range(NSECT):
            if self.state[s] == DURABLE:
                a = s * SECTOR
                if image[a:a + SECTOR] != self.durable[a:a + SECTOR]:
                    bad.append(s)
        return bad


def make_images(d, fmt):
    """base.raw (data in some places, holes elsewhere) and the image to
    serve (raw, or qcow2[:CLUSTER_SIZE] over base.raw); returns (path,
    format, initial content)."""
    bitmap = fmt.endswith("+bitmap")
    fmt = fmt[:-len("+bitmap")] if bitmap else fmt
    rnd = random.Random(7)
    base = bytearray(SIZE)
    for i in range(0, SIZE, 256 << 10):
        if rnd.random() < 0.5:
            n = rnd.choice([4096, 65536, 200 << 10])
            base[i:i + n] = rnd.randbytes(n)
    path = os.path.join(d, "base.raw")
    with open(path, "wb") as f:
        f.write(base)
    if fmt == "raw":
        return path, "raw", bytes(base)
    img = os.path.join(d, "overlay.qcow2")
    snap = fmt.endswith("+snap")
    fmt = fmt[:-5] if snap else fmt
    # qcow2:SIZE[,OPTION=VALUE...]: cluster size and other creation options
    opts = ["-o", "cluster_size=" + fmt.split(":")[1]] if ":" in fmt else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts, "-b", "base.raw",
                    "-F", "raw", img], check=True, cwd=d)
    if bitmap:
        subprocess.run(["qemu-img", "bitmap", "--add", "-g", "64k", img, BITMAP], check=True)
    if snap:
        # FORMAT+snap: data in the overlay's first half, then an internal
        # snapshot sharing every cluster and L2 table with the disk: the
        # served writes copy them; verify() checks the snapshot kept it
        half = SIZE // 2
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {half}", img],
                       check=True, capture_output=True, cwd=d)
        base[0:half] = b"\x5a" * half
        subprocess.run(["qemu-img", "snapshot", "-c", "s1", img], check=True, cwd=d)
        with open(os.path.join(d, "snapshot-s1.raw"), "wb") as f:
            f.write(base)
    return img, "qcow2", bytes(base)


def ops(seed, count):
    """A fixed sequence of requests: (name, offset, length, fua)."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        r = rnd.random()
        if i % 7 == 6:
            out.append(("flush", 0, 0, False))
            continue
        if rnd.random() < 0.4:  # whole clusters
            off = rnd.randrange(0, SIZE // 65536) * 65536
            ln = min(rnd.choice([65536, 131072]), SIZE - off)
        else:
            off = rnd.randrange(0, NSECT) * SECTOR
            ln = min(rnd.randrange(1, 160) * SECTOR, SIZE - off)
        if r < 0.55:
            out.append(("write", off, ln, rnd.random() < 0.2))
        elif r < 0.7:
            out.append(("zero", off, ln, rnd.random() < 0.3))
        elif r < 0.8:
            out.append(("trim", off, ln, False))
        else:
            out.append(("read", off, ln, False))
    out.append(("flush", 0, 0, False))
    return out


class Server:
    """rblock serve on a socket made here (socket activation): reachable
    the moment it starts, no sleeps and no polling."""

    def __init__(self, d, image, fmt, fault):
        self.sock = os.path.join(d, "nbd.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(self.sock)
        ls.listen(64)
        fd = ls.fileno()
        move = "" if fd == 3 else f" 3<&{fd} {fd}<&-"
        env = dict(os.environ)
        env.pop("RBLOCK_FAULT", None)
        if fault:
            env["RBLOCK_FAULT"] = fault
        self.errpath = os.path.join(d, "serve.err")
        with open(self.errpath, "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"' + move,
                 RBLOCK, "serve", "-f", fmt, image],
                pass_fds=(fd,), stderr=err, env=env)
        ls.close()
        self.uri = "nbd+unix:///?socket=" + self.sock

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=120)
        os.unlink(self.sock)
        with open(self.errpath, errors="replace") as f:
            return rc, f.read()


def drive(h, model, seq, progress=None):
    """Run @seq until it ends or the server stops answering.  Returns the
    number of requests that failed (the server may go on after EIO)."""
    errors = 0
    for i, (name, off, ln, fua) in enumerate(seq):
        if VERBOSE:
            log(f"op {i}: {name} {off:#x}+{ln:#x}{' fua' if fua else ''}")
        try:
            if name == "write":
                data = random.Random(off * 7919 + ln).randbytes(ln)
                try:
                    h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
                except nbd.Error:
                    model.unknown(off, ln)
                    raise
                model.written(off, data, fua)
                model.touched.append((off, ln))
            elif name == "zero":
                flags = nbd.CMD_FLAG_FUA if fua else 0
                if off % 3:
                    flags |= nbd.CMD_FLAG_NO_HOLE
                try:
                    h.zero(ln, off, flags)
                except nbd.Error:
                    model.unknown(off, ln)
                    raise
                model.written(off, bytes(ln), fua)
                model.touched.append((off, ln))
            elif name == "trim":
                model.unknown(off, ln)  # unspecified from now on
                h.trim(ln, off)
                model.touched.append((off, ln))
            elif name == "read":
                got = h.pread(ln, off)
                bad = model.check_read(off, got)
                if bad is not None:
                    raise AssertionError(f"read at sector {bad} differs from "
                                         "what the server acknowledged")
            else:
                h.flush()
                model.flushed()
                if progress:
                    progress()
        except nbd.Error as e:
            if VERBOSE:
                log(f"  -> {e}")
            if h.aio_is_dead() or h.aio_is_closed():
                return errors + 1  # the connection is gone
            errors += 1
    return errors


def verify(d, image, fmt, model, bitmap=False):
    """(corrupt, lost sectors, leaks, message) for the image after a crash."""
    chk = subprocess.run(["qemu-img", "check", "-f", fmt, image],
                         capture_output=True, text=True)
    if fmt == "raw":  # nothing to check ("does not support checks")
        chk.returncode = 0
    if chk.returncode not in (0, 3):
        return True, 0, False, f"qemu-img check exit {chk.returncode}: {chk.stdout}{chk.stderr}"
    leaks = chk.returncode == 3
    for cmd in (["qemu-img", "info", "-f", fmt, image], [RBLOCK, "info", image]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return True, 0, leaks, f"{' '.join(cmd[:2])} failed: {r.stderr}"
    out = os.path.join(d, "out.raw")
    r = subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return True, 0, leaks, f"qemu-img convert failed: {r.stderr}"
    with open(out, "rb") as f:
        got = f.read()
    os.unlink(out)
    got = got.ljust(SIZE, b"\0")
    want = os.path.join(d, "snapshot-s1.raw")
    if os.path.exists(want):
        r = subprocess.run(["qemu-img", "convert", "-f", fmt, "-l", "s1", "-O", "raw", image,
                            out], capture_output=True, text=True)
        same = r.returncode == 0
        if same:
            with open(want, "rb") as f, open(out, "rb") as g:
                same = f.read() == g.read()
        if os.path.exists(out):
            os.unlink(out)
        if not same:
            return True, 0, leaks, f"snapshot s1 changed {r.stderr}"
    bad = model.lost(got)
    if bad:
        return False, len(bad), leaks, (f"{len(bad)} flushed sectors lost, first at "
                                        f"byte {bad[0] * SECTOR:#x}")
    if bitmap:
        msg = verify_bitmap(image, model, got)
        if msg:
            return True, 0, leaks, msg
    return False, 0, leaks, ""


BITMAP_OUTCOMES = {}


def verify_bitmap(image, model, got):
    """The bitmap workload's rule: in_use, or no written cluster clean."""
    import json
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json",
                                      image], capture_output=True, text=True).stdout)
    bms = info["format-specific"]["data"].get("bitmaps", [])
    if [b["name"] for b in bms] != [BITMAP]:
        return f"bitmap '{BITMAP}' is gone: {bms}"
    if "in-use" in bms[0]["flags"]:
        BITMAP_OUTCOMES["in use"] = BITMAP_OUTCOMES.get("in use", 0) + 1
        return ""
    r = subprocess.run(["nbdinfo", f"--map=qemu:dirty-bitmap:{BITMAP}", "--", "[",
                        "qemu-nbd", "-r", "-f", "qcow2", "-B", BITMAP, image, "]"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"qemu-nbd -B {BITMAP} failed: {r.stderr}"
    dirty = set()
    for line in r.stdout.splitlines():
        off, ln, st = (int(x) for x in line.split()[:3])
        if st & 1:
            dirty.update(range(off // GRANULE, (off + ln + GRANULE - 1) // GRANULE))
    for off, ln in model.touched:
        for g in range(off // GRANULE, (off + ln - 1) // GRANULE + 1):
            if g not in dirty:
                return (f"bitmap consistent but the acknowledged change at {off:#x}+{ln:#x}"
                        f" left granule {g * GRANULE:#x} clean")
    for g in range(SIZE // GRANULE):
        a = g * GRANULE
        if g not in dirty and got[a:a + GRANULE] != model.base[a:a + GRANULE]:
            return f"bitmap consistent but granule {a:#x} changed and is clean"
    kind = "consistent, marks all" if model.touched else "consistent, nothing written"
    BITMAP_OUTCOMES[kind] = BITMAP_OUTCOMES.get(kind, 0) + 1
    return ""


def one_run(fmt, fault, seq, keep=None):
    """Serve a fresh image under @fault, drive @seq, verify.  Returns
    (corrupt, lost, leaks, message, server exit, stderr).  With @keep,
    work in that folder and leave it."""
    fmtname = fmt
    with (tempfile.TemporaryDirectory() if keep is None else open(os.devnull)) as d:
        d = d if keep is None else keep
        image, fmt, base = make_images(d, fmt)
        model = Model(base)
        srv = Server(d, image, fmt, fault)
        h = nbd.NBD()
        msg = ""
        try:
            h.connect_uri(srv.uri)
            drive(h, model, seq)
        except nbd.Error as e:
            if srv.proc.poll() is None:
                msg = f"client: {e}"
        except AssertionError as e:
            msg = str(e)
        finally:
            try:
                h.shutdown()
            except nbd.Error:
                pass
            del h
        rc, err = srv.stop()
        if "Sanitizer" in err or "runtime error" in err:
            return True, 0, False, "sanitizer: " + err[-2000:], rc, err
        corrupt, lost, leaks, vmsg = verify(d, image, fmt, model,
                                            bitmap=fmtname.endswith("+bitmap"))
        return corrupt, lost, leaks, msg or vmsg, rc, err


def count(fmt, seq):
    rc_line = None
    corrupt, lost, leaks, msg, rc, err = one_run(fmt, "count", seq)
    if corrupt or lost or msg or rc != 0:
        sys.exit(f"served {fmt}: the run without faults failed (exit {rc}): {msg}\n{err}")
    for line in err.splitlines():
        if line.startswith("rblock-fault:"):
            rc_line = dict(kv.split("=") for kv in line.split()[1:3])
    if not rc_line:
        sys.exit(f"served {fmt}: no 'rblock-fault:' line from the server: {err}")
    return int(rc_line["writes"]), int(rc_line["syncs"])


def qcow2_metadata(path):
    """{cluster offset: kind} of an image's metadata clusters: "l1",
    "l2", "reftable", "refblock" (from its header, L1 and refcount table;
    rblock writes these in place, so the final image names every
    metadata cluster the run wrote), and its cluster size."""
    import struct
    with open(path, "rb") as f:
        hdr = f.read(104)
        cbits, = struct.unpack(">I", hdr[20:24])
        l1_size, l1_off, rt_off, rt_clusters = struct.unpack(">IQQI", hdr[36:60])
        c = 1 << cbits
        kinds = {}
        for k in range(0, max(l1_size * 8, 1), c):
            kinds[(l1_off + k) // c * c] = "l1"
        for k in range(rt_clusters):
            kinds[rt_off + k * c] = "reftable"
        mask = 0x00fffffffffffe00
        f.seek(l1_off)
        for i in range(l1_size):
            e, = struct.unpack(">Q", f.read(8))
            if e & mask:
                kinds[e & mask] = "l2"
        f.seek(rt_off)
        for i in range(rt_clusters * c // 8):
            e, = struct.unpack(">Q", f.read(8))
            if e & mask:
                kinds[e & mask] = "refblock"
    return kinds, c


def metadata_points(fmt, seq, limit):
    """Fault points (1-based write numbers) around the allocation of L2
    tables and refcount blocks, found by a traced run (RBLOCK_FAULT=trace):
      - the first write of each L2 table and refcount block (its
        allocation), and the write after it;
      - the first write after each sync that made L2 tables durable: a
        power loss there keeps those tables, so every cluster they point
        at must already have its refcount on disk (DESIGN.md 4).
    At most @limit points, the allocation ones first, the others spread."""
    with tempfile.TemporaryDirectory() as d:
        image, ifmt, base = make_images(d, fmt)
        ino = os.stat(image).st_ino
        srv = Server(d, image, ifmt, "trace")
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        drive(h, Model(base), seq)
        h.shutdown()
        del h
        rc, err = srv.stop()
        if rc != 0:
            sys.exit(f"served {fmt}: the traced run failed (exit {rc}): {err[-2000:]}")
        kinds, c = qcow2_metadata(image)
    first = {}       # metadata cluster -> its first write
    durable = set()  # first write after a sync that made L2 tables durable
    l2_pending = after_sync = False
    for line in err.splitlines():
        f = line.split()
        if len(f) < 4 or f[0] != "rblock-fault:" or f[1] not in ("write", "sync"):
            continue
        kv = dict(x.split("=") for x in f[3:])
        if int(kv["ino"]) != ino:
            continue
        n = int(f[2])
        if f[1] == "sync":
            after_sync, l2_pending = l2_pending, False
            continue
        if after_sync:
            durable.add(n)
            after_sync = False
        if not int(kv["len"]):
            continue  # a truncate
        at = int(kv["off"]) // c * c
        kind = kinds.get(at)
        if kind == "l2":
            l2_pending = True
        if kind in ("l2", "refblock") and at not in first:
            first[at] = n
    if not first:
        sys.exit(f"served {fmt}: the traced run wrote no L2 table or refcount block "
                 f"(no trace?): {err[-500:]}")
    alloc = sorted({p for n in first.values() for p in (n, n + 1)})
    rest = sorted(durable - set(alloc))
    room = max(limit - len(alloc), 0)
    if len(rest) > room:  # the first few (the prefix of meta_ops), the rest spread
        head = rest[:min(6, room)]
        tail = rest[len(head):]
        n = room - len(head)
        rest = head + ([tail[i - 1] for i in sample(len(tail), n)] if n else [])
    nl2 = sum(1 for at in first if kinds[at] == "l2")
    log(f"served {fmt}: first writes of {nl2} L2 tables, {len(first) - nl2} refcount blocks; "
        f"{len(durable)} syncs made L2 tables durable; {len(alloc) + len(rest)} points")
    return sorted(set(alloc) | set(rest))


def sample(total, n):
    if n <= 0 or n >= total:
        return list(range(1, total + 1))
    pts = {1 + round(i * (total - 1) / (n - 1)) for i in range(n)}
    return sorted(pts)


def meta_ops():
    """A prefix for the -meta runs: clusters allocated and, before any
    flush, others released (trim, zero with unmap), so that a release's
    L2 write-back happens while new clusters' refcounts are still only in
    the cache: the window the cache dependency closes (DESIGN.md 4)."""
    c = 65536
    out = [("write", 0, c, False), ("flush", 0, 0, False)]
    for k in (3, 6, 9):  # k * 65536 % 3 == 0: zero may unmap (see drive)
        out += [("write", k * c, c, False), ("trim", (k - 3) * c, c, False),
                ("write", (k + 1) * c, 4096, False), ("zero", k * c, c, False)]
    out += [("read", 0, 12 * c, False), ("flush", 0, 0, False)]
    return out


def faults(fmt, kind, n):
    seq = (meta_ops() if kind.endswith("-meta") else []) + ops(1, 90)
    writes, syncs = count(fmt, seq)
    base = kind.replace("-once", "").replace("-seed", "")
    total = syncs if base.endswith("sync") else writes
    if base.endswith("-meta"):  # around L2-table/refcount-block allocation
        base = base[:-len("-meta")]
        total = syncs if base.endswith("sync") else writes
        pts = [p for p in metadata_points(fmt, seq, int(n)) if p <= total]
    elif "," in n:  # chosen points
        pts = [int(x) for x in n.split(",") if x and int(x) <= total]
    else:
        pts = sample(total, int(n))
    corrupt = lost = leaks = 0
    failures = []
    for p in pts:
        plan = f"{base}:{p}" + (":once" if kind.endswith("once") else "") + \
            (f":{p * 2654435761 % 1000 + 1}" if kind.endswith("seed") else "")
        c, l, k, msg, rc, err = one_run(fmt, plan, seq)
        if kind.startswith("power") and rc not in (0, FAULT_EXIT):
            msg = msg or f"server exit {rc}: {err[-500:]}"
        corrupt += c
        lost += l
        leaks += k
        if c or l or msg:
            failures.append(f"  {plan}: {msg}")
    outcomes = "".join(f" {k}={v}" for k, v in sorted(BITMAP_OUTCOMES.items()))
    log(f"served {fmt} {kind}: points={len(pts)} of {total} (writes={writes} "
        f"syncs={syncs}) corruptions={corrupt} lost={lost} leaks={leaks}"
        + (f"; bitmap:{outcomes}" if outcomes else ""))
    for f in failures:
        log(f)
    return 1 if failures else 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "one":  # debugging one plan
        global VERBOSE
        VERBOSE = True
        os.makedirs(sys.argv[4])
        r = one_run(sys.argv[2], sys.argv[3], ops(1, 90), keep=sys.argv[4])
        log(f"corrupt={r[0]} lost={r[1]} leaks={r[2]} server exit={r[4]}\n{r[3]}\n{r[5]}")
        return 0
    if len(sys.argv) != 5 or sys.argv[1] not in ("faults", "kill9"):
        sys.exit(__doc__)
    mode, fmt = sys.argv[1], sys.argv[2]
    if mode == "faults":
        return faults(fmt, sys.argv[3], sys.argv[4])
    import kill9
    return kill9.run(fmt, int(sys.argv[3]), int(sys.argv[4]))


if __name__ == "__main__":
    sys.exit(main())
