#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Crash tests of `rblock snapshot -c/-a/-d`, which change an image in
place: at every write and every sync, a failure (fail-write, once or for
good, fail-sync) and a power loss (power-write, power-sync; at each sync
also SEEDS power losses where the disk kept a random part of the unsynced
writes, and with "all" at each write too).  After each:
  - qemu-img check finds no corruption (exit 0, or 3 for leaks only);
  - the image is the one before the command or the one after it, never a
    mix: the same snapshot list (ids, names) and the same guest content of
    the disk and of every snapshot (qemu-img convert [-l]);
  - a power loss ended the process with 99; a command that said it
    succeeded left the image after.
Usage: snapshot.py SEEDS [all]   (RBLOCK: the rblock binary; without
"all" only the 64 KiB-cluster v3 image, with it also a 4 KiB v2 one)"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

RBLOCK = os.environ["RBLOCK"]
SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ALL = "all" in sys.argv[2:]


def run(*args, check=True, env=None):
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          env=env, timeout=120)


def state(img, tmp):
    """(snapshot list, hash of the disk, hashes of every snapshot)."""
    rows = run("qemu-img", "snapshot", "-l", img).stdout.splitlines()[2:]
    snaps = tuple(tuple(r.split()[:2]) for r in rows)
    out = os.path.join(tmp, "state.raw")
    hashes = []
    for sid in [None] + [s[0] for s in snaps]:
        run("qemu-img", "convert", "-f", "qcow2", *(["-l", "snapshot.id=" + sid] if sid else []),
            "-O", "raw", img, out)
        with open(out, "rb") as f:
            hashes.append(hashlib.sha256(f.read()).hexdigest()[:16])
    os.unlink(out)
    return snaps, tuple(hashes)


def make(tmp, opts, name):
    """A 2 MiB image: compressed and plain data, zeros; snapshot s1 by
    qemu-img, more writes, snapshot s2 by rblock, more writes."""
    img = os.path.join(tmp, name)
    raw = os.path.join(tmp, "src.raw")
    with open(raw, "wb") as f:
        for i in range(32):
            f.write(bytes([i + 1]) * 32768 + os.urandom(32768))
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, raw, img)
    os.unlink(raw)
    run("qemu-img", "snapshot", "-c", "s1", img)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 100k 200k", "-c", "write -z 1M 64k", img)
    run(RBLOCK, "snapshot", "-c", "s2", img)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x66 1500k 70k", img)
    return img


def crash_op(tmp, img, args, seeds):
    """Every fault point of `rblock snapshot ARGS IMG`; returns failures."""
    work = os.path.join(tmp, "work.qcow2")
    shutil.copy(img, work)
    before = state(work, tmp)
    r = run(RBLOCK, "snapshot", *args, work, check=False,
            env={**os.environ, "RBLOCK_FAULT": "count"})
    if r.returncode != 0:
        print(f"  {args}: the run without faults failed: {r.stderr}")
        return 1
    after = state(work, tmp)
    assert after != before
    counts = [l for l in r.stderr.splitlines() if l.startswith("rblock-fault: writes=")][0]
    writes, syncs = (int(x.split("=")[1]) for x in counts.split()[1:3])
    plans = []
    for n in range(1, writes + 1):
        plans += [f"fail-write:{n}", f"fail-write:{n}:once", f"power-write:{n}"]
        if ALL:
            plans += [f"power-write:{n}:{s}" for s in range(1, seeds + 1)]
    for n in range(1, syncs + 1):
        plans += [f"fail-sync:{n}", f"power-sync:{n}"]
        plans += [f"power-sync:{n}:{s}" for s in range(1, seeds + 1)]
    bad = 0
    for plan in plans:
        shutil.copy(img, work)
        r = run(RBLOCK, "snapshot", *args, work, check=False,
                env={**os.environ, "RBLOCK_FAULT": plan})
        problems = []
        if plan.startswith("power") and r.returncode != 99:
            problems.append(f"exit {r.returncode}, not the power loss (99)")
        if "Sanitizer" in r.stderr or "runtime error" in r.stderr:
            problems.append(r.stderr)
        chk = run("qemu-img", "check", work, check=False)
        if chk.returncode not in (0, 3):
            problems.append(f"qemu-img check exit {chk.returncode}: {chk.stdout}{chk.stderr}")
        else:
            now = state(work, tmp)
            if now not in (before, after):
                problems.append(f"neither before nor after: {now}")
            elif r.returncode == 0 and now != after:
                problems.append("exit 0 but the image is as before")
        if problems:
            bad += 1
            print(f"  snapshot {' '.join(args)} {plan}: " + "; ".join(problems))
    print(f"crash snapshot {' '.join(args)}: points={len(plans)} (writes={writes} "
          f"syncs={syncs}) failures={bad}")
    return bad


def main():
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        images = [("cluster_size=64k", "v3.qcow2")]
        if ALL:
            images.append(("compat=0.10,cluster_size=4k", "v2.qcow2"))
        for opts, name in images:
            img = make(tmp, opts, name)
            for args in (["-c", "s3"], ["-a", "s1"], ["-d", "s2"]):
                bad += crash_op(tmp, img, args, SEEDS)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
