# SPDX-License-Identifier: MIT
"""kill -9 loop for served.py: several client processes write to
interleaved 4 KiB stripes of one image (so they share clusters and race
for their allocation), each flushing often and reporting every
acknowledged flush on its stdout.  The driver counts those reports and
kills the server with SIGKILL once K flushes were acknowledged in all, K
different in every round: the client's progress, not a timer, picks the
moment.  Each client keeps the model of its own stripes and saves it when
the server is gone; the driver joins them and verifies the image as
served.py does.

    kill9.py client URI SEED INDEX NCLIENTS MODEL_FILE   (one client)
"""
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile

import nbd

import served

STRIPE = 4096
OPS_PER_CLIENT = 300
FLUSH_EVERY = 5


def client_ops(seed, index, nclients):
    rnd = random.Random(seed * 1000 + index)
    nstripes = served.SIZE // STRIPE
    mine = [s for s in range(nstripes) if s % nclients == index]
    out = []
    for i in range(OPS_PER_CLIENT):
        if i % FLUSH_EVERY == FLUSH_EVERY - 1:
            out.append(("flush", 0, 0, False))
            continue
        st = rnd.choice(mine) * STRIPE
        a = rnd.randrange(0, 8)
        b = rnd.randrange(a + 1, 9)
        off, ln = st + a * served.SECTOR, (b - a) * served.SECTOR
        r = rnd.random()
        if r < 0.65:
            out.append(("write", off, ln, rnd.random() < 0.15))
        elif r < 0.8:
            out.append(("zero", off, ln, rnd.random() < 0.2))
        elif r < 0.88:
            out.append(("trim", off, ln, False))
        else:
            out.append(("read", off, ln, False))
    return out


def client(uri, seed, index, nclients, model_file, base_file):
    with open(base_file, "rb") as f:
        model = served.Model(f.read())
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error as e:  # killed before this client got in: nothing written
        sys.stderr.write(f"client {index}: not connected: {e}\n")
        h = None

    def progress():
        sys.stdout.write("F\n")
        sys.stdout.flush()

    err = ""
    try:
        if h:
            served.drive(h, model, client_ops(seed, index, nclients), progress)
    except AssertionError as e:
        err = str(e)
    finally:  # whatever happened, what the client knows is durable
        with open(model_file, "wb") as f:
            f.write(bytes(model.state))
            f.write(bytes(model.durable))
    if err:
        sys.exit(f"client {index}: {err}")


def one_round(fmt, rnd_no, nclients, kill_after):
    with tempfile.TemporaryDirectory() as d:
        image, fmt, base = served.make_images(d, fmt)
        base_file = os.path.join(d, "model.base")
        with open(base_file, "wb") as f:
            f.write(base)
        srv = served.Server(d, image, fmt, None)
        procs = []
        sel = selectors.DefaultSelector()
        for i in range(nclients):
            mf = os.path.join(d, f"model.{i}")
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "client",
                                  srv.uri, str(rnd_no), str(i), str(nclients), mf,
                                  base_file],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append((p, mf))
            sel.register(p.stdout, selectors.EVENT_READ)
        flushes, killed, open_pipes = 0, False, nclients
        while open_pipes:
            for key, _ in sel.select():
                line = key.fileobj.readline()
                if not line:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                    continue
                flushes += 1
                if flushes >= kill_after and not killed:
                    srv.proc.send_signal(signal.SIGKILL)
                    killed = True
        msgs = []
        for p, mf in procs:
            _, err = p.communicate()
            if p.returncode != 0 or not os.path.exists(mf):
                msgs.append(f"client exit {p.returncode}: " +
                            err.decode(errors="replace").strip()[-500:])
        if msgs:
            srv.stop()
            return False, 0, False, "; ".join(msgs), flushes
        rc, err = srv.stop()
        if "Sanitizer" in err or "runtime error" in err:
            return True, 0, False, "sanitizer: " + err[-2000:], flushes
        if not killed:
            msgs.append(f"all clients ended after {flushes} flushes, before {kill_after}")
        model = served.Model(base)
        for i, (_, mf) in enumerate(procs):
            with open(mf, "rb") as f:
                state = f.read(served.NSECT)
                durable = f.read()
            for s in range(served.NSECT):
                if (s * served.SECTOR // STRIPE) % nclients == i:
                    a = s * served.SECTOR
                    model.state[s] = state[s]
                    model.durable[a:a + served.SECTOR] = durable[a:a + served.SECTOR]
        c, lost, leaks, vmsg = served.verify(d, image, fmt, model)
        if vmsg:
            msgs.append(vmsg)
        return c, lost, leaks, "; ".join(msgs), flushes


def run(fmt, rounds, nclients):
    total_flushes = nclients * (OPS_PER_CLIENT // FLUSH_EVERY)
    corrupt = lost = leaks = 0
    failures = []
    for r in range(rounds):
        # K spread over the whole run, a different one each round
        k = 1 + (r * 7919 + 13) % (total_flushes * 9 // 10)
        c, l, lk, msg, flushes = one_round(fmt, r, nclients, k)
        corrupt += c
        lost += l
        leaks += lk
        if c or l or msg:
            failures.append(f"  round {r} (kill after {k} flushes): {msg}")
    served.log(f"kill9 {fmt}: rounds={rounds} clients={nclients} corruptions={corrupt} "
               f"lost={lost} leaks={leaks}")
    for f in failures:
        served.log(f)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
               sys.argv[6], sys.argv[7])
    else:
        sys.exit(__doc__)
