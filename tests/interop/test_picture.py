# SPDX-License-Identifier: MIT
"""`rblock map --output=svg|html`: the picture of an image's layout, on
images qemu-img made (a chain of three, compressed, a leaked cluster, 2 MiB
clusters, 1 TiB sparse, a bitmap).  Each SVG parses as XML, renders with
rsvg-convert, stays small, and its caption holds the figures of qemu-img
check and qemu-img info; what the bands draw matches what the images hold.
The JSON-RPC `layout` method returns the same SVG for a served image."""

import html.parser
import json
import os
import re
import struct
import subprocess
import xml.etree.ElementTree as ET

import pytest

from rpc_harness import Server

RBLOCK = os.environ.get("RBLOCK", "build/rblock")
SVG = "{http://www.w3.org/2000/svg}"
MiB = 1 << 20


def run(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True,
                          **kw)


def qemu_io(img, *cmds, fmt="qcow2"):
    run("qemu-io", "-f", fmt, *[a for c in cmds for a in ("-c", c)], img)


def create(img, size, *opts, backing=None):
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", os.path.basename(backing), "-F", "qcow2"]
    for o in opts:
        args += ["-o", o]
    run(*args, img, size)


def qemu_check(img):
    r = run("qemu-img", "check", "--output=json", img, check=False)
    assert r.returncode in (0, 3), r.stderr  # clean, or leaks only
    return json.loads(r.stdout)


def qemu_info(img):
    return json.loads(run("qemu-img", "info", "--output=json", img).stdout)


def svg_of(img, *args):
    r = run(RBLOCK, "map", "--output=svg", *args, img)
    return r.stdout.decode()


def caption(root):
    c = root.find(f".//{SVG}text[@id='caption']")
    assert c is not None
    return " ".join("".join(c.itertext()).split())


def number(text, pattern):
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return int(m.group(1))


def titles(root, band):
    """The classes drawn in a band: the titles of its paths."""
    g = root.find(f".//{SVG}g[@id='{band}-band']")
    assert g is not None
    return {p.find(f"{SVG}title").text for p in g.iter(f"{SVG}path")}


def assert_picture(img, tmp_path, *args):
    """Parse, render and size-check the SVG of @img; compare its caption
    with qemu-img check/info.  Returns (root, caption text)."""
    text = svg_of(img, *args)
    assert len(text) < 300 * 1024, len(text)
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    svg = tmp_path / (os.path.basename(img) + ".svg")
    png = tmp_path / (os.path.basename(img) + ".png")
    svg.write_text(text)
    run("rsvg-convert", "-o", png, svg)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    cap = caption(root)
    q, info = qemu_check(img), qemu_info(img)
    assert number(cap, r"virtual size [^(]*\((\d+) bytes\)") == info["virtual-size"]
    assert number(cap, r"file size [^(]*\((\d+) bytes\)") == os.path.getsize(img)
    assert number(cap, r"image end offset (\d+)") == q["image-end-offset"]
    assert number(cap, r"allocated (\d+)/") == q.get("allocated-clusters", 0)
    assert number(cap, r"allocated \d+/(\d+) clusters") == q["total-clusters"]
    assert number(cap, r"fragmented (\d+)") == q.get("fragmented-clusters", 0)
    assert number(cap, r"compressed (\d+)") == q.get("compressed-clusters", 0)
    assert number(cap, r"leaked (\d+)") == q.get("leaks", 0)
    assert number(cap, r"corruptions (\d+)") == q.get("corruptions", 0)
    return root, cap


@pytest.fixture
def chain(tmp_path):
    """base <- mid <- top, each with data of its own; a zero cluster in
    mid, compressed data in top."""
    base, mid, top = (str(tmp_path / n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    create(base, "64M")
    qemu_io(base, "write -P 1 0 8M", "write -P 2 32M 4M")
    create(mid, "64M", backing=base)
    qemu_io(mid, "write -P 3 4M 8M", "write -z 40M 1M")
    create(top, "64M", backing=mid)
    qemu_io(top, "write -P 4 20M 2M", "write -c -P 5 50M 1M")
    return top


def test_chain_of_three(chain, tmp_path):
    root, cap = assert_picture(chain, tmp_path)
    guest = titles(root, "guest")
    assert guest == {"this layer (" + chain + ")", "backing 1 (mid.qcow2)",
                     "backing 2 (base.qcow2)", "zero", "unallocated"}
    assert root.find(f".//{SVG}path[@id='compressed-marks']") is not None
    host = titles(root, "host")
    assert {"header", "refcount table", "refcount blocks", "L1 table", "L2 tables", "data",
            "compressed data"} <= host
    assert "leaked" not in host


def test_compressed(tmp_path):
    raw, img = str(tmp_path / "src.raw"), str(tmp_path / "c.qcow2")
    run("qemu-img", "create", "-q", "-f", "raw", raw, "32M")
    qemu_io(raw, "write -P 7 0 6M", "write -P 9 20M 3M", fmt="raw")
    run("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, img)
    root, cap = assert_picture(img, tmp_path)
    assert number(cap, r"compressed (\d+)") > 0
    assert "compressed data" in titles(root, "host")
    assert "data" not in titles(root, "host")
    marks = root.find(f".//{SVG}path[@id='compressed-marks']")
    assert marks is not None and marks.get("d").count("M") == 2  # the two runs


def set_refcount(img, cluster, value):
    """Write 16-bit refcount @value of @cluster in the first refcount block."""
    with open(img, "r+b") as f:
        hdr = f.read(104)
        reftable = struct.unpack(">Q", hdr[48:56])[0]
        f.seek(reftable)
        block = struct.unpack(">Q", f.read(8))[0] & ~0x1ff
        f.seek(block + cluster * 2)
        f.write(struct.pack(">H", value))


def test_leaked_cluster(tmp_path):
    """A cluster past the end with refcount 1 that nothing references: a
    leak, made on purpose, drawn red at the end of the host band."""
    img = str(tmp_path / "leak.qcow2")
    create(img, "64M")
    qemu_io(img, "write -P 1 0 1M")
    end = os.path.getsize(img)
    assert end % 65536 == 0
    with open(img, "r+b") as f:
        f.truncate(end + 65536)
    set_refcount(img, end // 65536, 1)
    assert qemu_check(img)["leaks"] == 1
    root, cap = assert_picture(img, tmp_path)
    assert number(cap, r"leaked (\d+)") == 1
    leaked = [p for p in root.find(f".//{SVG}g[@id='host-band']").iter(f"{SVG}path")
              if p.find(f"{SVG}title").text == "leaked"]
    assert len(leaked) == 1
    # the last cluster: at the right end of the band (x0 20, width 1000)
    x = float(re.match(r"M([\d.]+) ", leaked[0].get("d")).group(1))
    assert abs(x - (20 + 1000 * end / (end + 65536))) < 2
    assert leaked[0].get("d").count("M") == 1


def test_2m_clusters(tmp_path):
    img = str(tmp_path / "c2m.qcow2")
    create(img, "1G", "cluster_size=2M")
    qemu_io(img, "write -P 7 0 5M", "write -P 8 100M 3M", "write -P 9 50M 2M")
    root, cap = assert_picture(img, tmp_path)
    assert number(cap, r"fragmented (\d+)") > 0


def test_1t_sparse_small_and_bounded(tmp_path):
    """1 TiB with a few MiB of data: under 64 MiB of memory (measured by
    /usr/bin/time -v; the time is reported, not asserted)."""
    img = str(tmp_path / "big.qcow2")
    create(img, "1T")
    qemu_io(img, "write -P 7 0 1M", "write -P 8 512G 64k", "write -P 9 1023G 1M")
    root, cap = assert_picture(img, tmp_path)
    r = run("/usr/bin/time", "-v", RBLOCK, "map", "--output=svg", img)
    rss_kib = number(r.stderr.decode(), r"Maximum resident set size \(kbytes\): (\d+)")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", r.stderr.decode()).group(1)
    print(f"1 TiB sparse: {rss_kib} KiB max RSS, {wall} wall clock")
    assert rss_kib < 64 * 1024
    # data at the start, the middle and the end of the guest band
    guest = root.find(f".//{SVG}g[@id='guest-band']")
    this = [p for p in guest.iter(f"{SVG}path") if p.find(f"{SVG}title").text.startswith(
        "this layer")]
    xs = [float(x) for x in re.findall(r"M([\d.]+) ", this[0].get("d"))]
    assert len(xs) == 3 and xs[0] == 20 and 515 <= xs[1] <= 525 and xs[2] >= 1018


def test_bitmap(tmp_path):
    img = str(tmp_path / "bm.qcow2")
    create(img, "64M")
    qemu_io(img, "write -P 1 0 1M")
    run("qemu-img", "bitmap", "--add", img, "b0")
    qemu_io(img, "write -P 2 4M 64k", "write -P 3 9M 192k")
    root, cap = assert_picture(img, tmp_path, "--bitmap", "b0")
    assert "dirty in the bitmap: 256 KiB." in cap
    marks = root.find(f".//{SVG}path[@id='dirty-marks']")
    assert marks is not None and marks.get("d").count("M") == 2
    # without --bitmap: no strip
    assert ET.fromstring(svg_of(img)).find(f".//{SVG}path[@id='dirty-marks']") is None
    r = run(RBLOCK, "map", "--output=svg", "--bitmap", "nope", img, check=False)
    assert r.returncode == 1 and r.stdout == b""
    assert b"nope" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run(RBLOCK, "map", "--bitmap", "b0", img, check=False)
    assert r.returncode == 1 and b"--output=svg" in r.stderr


def test_raw(tmp_path):
    raw = str(tmp_path / "disk.raw")
    run("qemu-img", "create", "-q", "-f", "raw", raw, "16M")
    qemu_io(raw, "write -P 1 1M 2M", fmt="raw")
    text = run(RBLOCK, "map", "--output=svg", "-f", "raw", raw).stdout.decode()
    root = ET.fromstring(text)
    assert titles(root, "host") == {"data", "free"}
    assert "raw image: 2 MiB of data" in caption(root)


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.data, self.in_data, self.svgs = None, False, 0

    def handle_starttag(self, tag, attrs):
        self.in_data = tag == "script" and ("id", "layout-data") in attrs
        self.svgs += tag == "svg"

    def handle_data(self, data):
        if self.in_data:
            self.data = (self.data or "") + data


def test_html(chain):
    page = run(RBLOCK, "map", "--output=html", chain).stdout.decode()
    assert page.startswith("<!DOCTYPE html>")
    p = _Page()
    p.feed(page)
    assert p.svgs == 1
    d = json.loads(p.data)
    guest, host = d["bands"]
    # the hover data adds up: every guest byte once, by class
    total = [0] * len(guest["names"])
    for first, end, v in guest["runs"]:
        for k, n in enumerate(v):
            total[k] += n * (end - first)
    assert sum(total) == 64 * MiB
    names = dict(zip(guest["names"], total))
    assert names["this layer (" + chain + ")"] == 2 * MiB + 1 * MiB
    assert names["zero"] == 1 * MiB
    assert host["span"] >= os.path.getsize(chain)
    assert "<table id=\"legend\">" in page


def test_rpc_layout_is_map_svg(chain):
    want = svg_of(chain)
    s = Server(chain, "-r")
    try:
        c = s.client()
        got = c.result("layout")
        c.close()
    finally:
        status, err = s.stop()
    assert status == 0, err
    assert got == want


def test_snapshot_and_bitmap_tables(tmp_path):
    """Every kind of metadata qemu-img writes has its class in the host view."""
    img = str(tmp_path / "sb.qcow2")
    create(img, "64M")
    qemu_io(img, "write -P 1 0 2M")
    run("qemu-img", "snapshot", "-c", "snap1", img)
    run("qemu-img", "bitmap", "--add", img, "b0")
    qemu_io(img, "write -P 2 1M 2M")
    root, cap = assert_picture(img, tmp_path, "--bitmap", "b0")
    assert titles(root, "host") == {
        "header", "refcount table", "refcount blocks", "L1 table", "L2 tables", "data",
        "snapshot tables", "bitmap directory and tables", "bitmap data", "free"}
    assert "dirty in the bitmap: 2 MiB." in cap
    # the legend's bytes: the snapshot table and the snapshot's L1 table are
    # snapshot tables, one cluster each; the active L1 table is one cluster
    legend = {"".join(t.itertext()) for t in root.iter(f"{SVG}text")}
    assert {"L1 table (64 KiB)", "snapshot tables (128 KiB)", "bitmap data (64 KiB)",
            "bitmap directory and tables (128 KiB)"} <= legend


def test_html_hover_in_chromium(chain, tmp_path):
    """The page's script in a real browser: a pointer over the guest band at
    21 MiB (the 2 MiB top.qcow2 wrote at 20 MiB) tells that column's range
    and bytes of this layer."""
    page = run(RBLOCK, "map", "--output=html", chain).stdout.decode()
    # the test's own pointer: a mousemove 330 px into the guest band
    page = page.replace("</body>", """<script>
var svg = document.querySelector('#picture svg'), r = svg.getBoundingClientRect();
var band = document.querySelector('#guest-band rect').getBoundingClientRect();
svg.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + 350 * r.width / 1040,
                                               clientY: band.top + 10}));
</script></body>""")
    html_file = tmp_path / "layout.html"
    html_file.write_text(page)
    r = run("chromium", "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", f"file://{html_file}",
            timeout=300)
    dom = r.stdout.decode()
    m = re.search(r'<div id="details">guest bytes (\d+)\.\.(\d+) [^\n]*\n([^<]*)</div>', dom)
    assert m, dom[:3000]
    start, end = int(m.group(1)), int(m.group(2))
    assert start <= 22 * MiB - 65536 and end > 21 * MiB and end - start == 67109
    assert m.group(3).strip() == f"this layer ({chain}): 65.54 KiB"
