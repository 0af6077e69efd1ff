# SPDX-License-Identifier: MIT
"""JSON-RPC 2.0 beside NBD over real sockets: the seed's two
requests byte for byte, the specification's rules, every method, and one
image seen the same through both protocols."""

import base64
import json
import os
import stat
import subprocess
import tempfile

import pytest

from rpc_harness import RBLOCK, Client, Server, qemu_json

MiB = 1 << 20
SEED = bytes(range(256)) * 2  # at 4096 in the raw image


@pytest.fixture(scope="module")
def tmp():
    d = tempfile.mkdtemp(prefix="rpct-t-")
    yield d
    subprocess.run(["rm", "-rf", d])


@pytest.fixture(scope="module")
def raw_image(tmp):
    path = os.path.join(tmp, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(4096)
        f.write(SEED)
    return path


@pytest.fixture(scope="module")
def srv(raw_image):
    s = Server(raw_image, "-f", "raw")
    yield s
    status, err = s.stop()
    assert status == 0, err


@pytest.fixture
def c(srv):
    cl = srv.client()
    yield cl
    cl.close()


def version():
    out = subprocess.run([RBLOCK, "--version"], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


# ---- the seed's requests, exactly as written -----------------------------

def test_seed_read_byte_for_byte(c):
    c.send('{ "jsonrpc": "2.0", "method": "read", "params": { "offset": 4096, "length": 512 }, "id": 1 }\n')
    want = ('{"jsonrpc":"2.0","result":{"data":"%s"},"id":1}\n'
            % base64.b64encode(SEED).decode()).encode()
    assert c.line() == want


def test_seed_get_version_byte_for_byte(c):
    c.send('{ "method": "get_version", "id": 42 }\n')
    want = '{"jsonrpc":"2.0","result":{"name":"rblock","version":"%s"},"id":42}\n' % version()
    assert c.line() == want.encode()


# ---- the specification's rules -------------------------------------------

def err(reply, code, rid=None, needle=None):
    assert reply["jsonrpc"] == "2.0"
    assert "result" not in reply
    assert reply["error"]["code"] == code, reply
    assert reply["id"] == rid
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    if needle:
        assert needle in reply["error"]["message"], reply


def test_parse_error_has_null_id(c):
    err(c.ask('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'), -32700)
    err(c.ask('{"method": "get_version", "id": 1, "id": 2}'), -32700, None, "duplicate")


@pytest.mark.parametrize("line,rid,needle", [
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}', None, "'method' must be a string"),
    ('{"jsonrpc": "1.0", "method": "get_version", "id": 5}', 5, "'jsonrpc' must be"),
    ('{"jsonrpc": "2.0", "id": 5}', 5, "'method' is missing"),
    ('{"method": "read", "params": "x", "id": 5}', 5, "'params' must be an object or an array"),
    ('{"method": "get_version", "id": {"a": 1}}', None, "'id' must be"),
    ('{"method": "get_version", "id": 1, "extra": 2}', 1, "unknown member 'extra'"),
    ('42', None, "must be an object"),
    ('"get_version"', None, "must be an object"),
])
def test_invalid_request(c, line, rid, needle):
    err(c.ask(line), -32600, rid, needle)


def test_method_not_found(c):
    err(c.ask('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}'), -32601, "1", "'foobar'")


@pytest.mark.parametrize("params,needle", [
    ({"offset": "0", "length": 512}, "'offset' must be a non-negative integer, not a string"),
    ({"offset": -4096, "length": 512}, "'offset' must not be negative"),
    ({"offset": 0}, "missing parameter 'length'"),
    ({"offset": 0, "length": 1, "size": 1}, "unknown parameter 'size'"),
    ({"offset": 0, "length": 4 * MiB + 1}, "over the limit of 4194304"),
    ({"offset": 0.5, "length": 1}, "not a real number"),
    ([0, 1, "", 3], "takes 3 parameters"),
    ([0, 1, 2], "parameter 'export' must be a string"),
])
def test_invalid_params(c, params, needle):
    err(c.call("read", params, rid=7), -32602, 7, needle)


# every integer parameter of every method, each class of bad value
INT_METHODS = [
    ("read", {"offset": 0, "length": 512}),
    ("write", {"offset": 0, "data": "AAAA"}),
    ("write_zeroes", {"offset": 0, "length": 512}),
    ("trim", {"offset": 0, "length": 512}),
    ("block_status", {"offset": 0, "length": 512}),
    ("map", {"offset": 0, "length": 512}),
]
BAD_INTS = [
    (-1, "must not be negative (got -1)"),
    (-(2 ** 63), "must not be negative (got -9223372036854775808)"),
    ("1", "must be a non-negative integer, not a string"),
    (True, "must be a non-negative integer, not a boolean"),
    (None, "must be a non-negative integer, not null"),
    (1.0, "must be a non-negative integer, not a real number"),
    ([1], "must be a non-negative integer, not an array"),
    ({"n": 1}, "must be a non-negative integer, not an object"),
]


@pytest.mark.parametrize("method,good", INT_METHODS, ids=[m[0] for m in INT_METHODS])
def test_invalid_int_params_every_class(c, method, good):
    assert "error" not in c.call(method, good, rid=1), method  # the good call works
    for name in (k for k, v in good.items() if isinstance(v, int)):
        for bad, needle in BAD_INTS:
            params = dict(good, **{name: bad})
            err(c.call(method, params, rid=9), -32602, 9, f"parameter '{name}' {needle}")
        # too large: a read over 4 MiB is invalid params; past the end is
        # out of range (-32001, with the numbers)
        for big in (64 * MiB + 1, 2 ** 63 - 1):
            e = c.call(method, dict(good, **{name: big}), rid=10)
            if name == "length" and method == "read":
                err(e, -32602, 10, "over the limit of 4194304")
            else:
                err(e, -32001, 10, "past the end of the image (size 67108864)")
                assert e["error"]["data"]["size"] == 64 * MiB
        # one past it cannot be parsed at all: -32700 with a null id
        line = json.dumps({"jsonrpc": "2.0", "method": method,
                           "params": dict(good, **{name: 123454321}), "id": 12})
        line = line.replace("123454321", str(2 ** 64))
        err(c.ask(line), -32700, None, "too big integer")


def test_invalid_params_of_write(c):
    err(c.call("write", {"offset": 0, "data": "not base64!"}, rid=8), -32602, 8, "not base64")
    err(c.call("write", {"offset": 0, "data": "AAAA", "fua": "yes"}, rid=8), -32602, 8,
        "must be a boolean")


def test_out_of_range(c):
    e = c.error("read", {"offset": 64 * MiB - 512, "length": 1024})
    assert e["code"] == -32001
    assert "past the end of the image (size 67108864)" in e["message"]
    assert e["data"] == {"offset": 64 * MiB - 512, "length": 1024, "size": 64 * MiB}
    assert c.error("write_zeroes", {"offset": 2 ** 63 - 1, "length": 2})["code"] == -32001


def test_notifications_get_no_reply(c):
    # each notification is followed by a request: the next line must be
    # that request's reply
    for note in ['{"jsonrpc": "2.0", "method": "get_version"}',
                 '{"jsonrpc": "2.0", "method": "no_such_method"}',
                 '{"method": "read", "params": {"offset": -1, "length": 1}}',
                 '[{"method": "flush"}, {"method": "get_version"}]',
                 '']:
        c.send(note + "\n")
        r = c.ask('{"method": "get_version", "id": "after"}')
        assert r["id"] == "after", (note, r)
    # and they run: a write sent as a notification lands
    c.send('{"method": "write", "params": {"offset": 1048576, "data": "%s"}}\n'
           % base64.b64encode(b"notified").decode())
    assert c.read(1048576, 8) == b"notified"


def test_batches(c):
    # [] is one error object, not an array
    r = c.ask("[]")
    assert isinstance(r, dict)
    err(r, -32600, None, "empty batch")
    # [1] and [1,2,3]: an array of errors
    r = c.ask("[1]")
    assert isinstance(r, list) and len(r) == 1
    err(r[0], -32600)
    r = c.ask("[1,2,3]")
    assert len(r) == 3
    for x in r:
        err(x, -32600)
    # the specification's mixed example, with our methods
    r = c.ask('[{"jsonrpc": "2.0", "method": "get_version", "id": "1"},'
              '{"jsonrpc": "2.0", "method": "flush"},'
              '{"jsonrpc": "2.0", "method": "read", "params": {"offset": 4096, "length": 4}, "id": "2"},'
              '{"foo": "boo"},'
              '{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
              '{"jsonrpc": "2.0", "method": "list_methods", "id": "9"}]')
    assert [x["id"] for x in r] == ["1", "2", None, "5", "9"]
    assert r[1]["result"]["data"] == base64.b64encode(SEED[:4]).decode()
    err(r[2], -32600)
    err(r[3], -32601, "5")
    # invalid JSON in a batch: one parse error
    err(c.ask('[{"jsonrpc": "2.0", "method": "sum", "id": "1"},{"jsonrpc": "2.0", "method"]'),
        -32700)
    # all notifications: no reply at all
    c.send('[{"method": "get_version"}, {"method": "flush"}]\n')
    assert c.ask('{"method": "get_version", "id": 3}')["id"] == 3


def test_batch_reply_is_bounded(c):
    batch = [{"method": "read", "params": {"offset": 0, "length": 4 * MiB}, "id": i}
             for i in range(6)]
    r = c.ask(json.dumps(batch))
    assert [("result" in x) for x in r] == [True] * 2 + [False] * 4
    err(r[2], -32005, 2, "send the rest in another batch")
    # small reads after the big ones are still within the budget of extents
    r = c.ask(json.dumps(batch[:1] + [{"method": "read", "id": "s",
                                       "params": {"offset": 0, "length": 512}}]))
    assert all("result" in x for x in r)


# ---- every method --------------------------------------------------------

def test_list_methods(c):
    names = {m["name"] for m in c.result("list_methods")}
    assert names >= {"get_version", "info", "map", "read", "write", "write_zeroes", "trim",
                     "flush", "block_status", "check", "stats", "list_methods"}


def test_write_read_zeroes_trim_flush(c):
    data = os.urandom(64 * 1024)
    assert c.write(8 * MiB + 512, data) == {"length": len(data)}
    assert c.read(8 * MiB + 512, len(data)) == data
    assert c.write(8 * MiB, b"fua!", fua=True) == {"length": 4}
    assert c.read(8 * MiB, 4) == b"fua!"
    assert c.result("write_zeroes", {"offset": 8 * MiB + 1024, "length": 4096}) == {"length": 4096}
    assert c.read(8 * MiB + 1024, 4096) == bytes(4096)
    assert c.read(8 * MiB + 5120, 100) == data[4608:4708]
    assert c.result("write_zeroes", {"offset": 8 * MiB, "length": 65536, "may_unmap": True,
                                     "fua": True}) == {"length": 65536}
    assert c.result("trim", {"offset": 8 * MiB, "length": MiB}) == {"length": MiB}
    assert c.read(8 * MiB, 65536) == bytes(65536)
    assert c.result("flush") == {}
    assert c.read(0, 0) == b""
    big = os.urandom(4 * MiB)
    c.write(16 * MiB, big)
    assert c.read(16 * MiB, 4 * MiB) == big


def test_block_status_and_map_on_raw(c):
    c.write(32 * MiB, b"x" * 65536)
    ext = c.result("block_status", {"offset": 32 * MiB - 65536, "length": 3 * 65536})
    assert sum(e["length"] for e in ext) <= 3 * 65536
    pos = 32 * MiB - 65536
    for e in ext:
        assert e["offset"] == pos
        assert set(e) == {"offset", "length", "data", "zero", "allocated", "compressed", "depth"}
        pos += e["length"]
    covering = [e for e in ext if e["offset"] <= 32 * MiB < e["offset"] + e["length"]]
    assert covering and covering[0]["data"] and not covering[0]["zero"]
    m = c.result("map", {"offset": 32 * MiB, "length": 65536})
    assert m[0]["start"] == 32 * MiB and m[0]["data"]
    assert c.result("map", {"offset": 64 * MiB}) == []


def test_stats_count_both_protocols(srv, c):
    before = c.result("stats")
    h = srv.nbd()
    assert h.pread(512, 4096) == SEED  # data, not a hole: really read
    h.shutdown()
    c.read(0, 512)
    s = c.result("stats")
    assert s["uptime-ms"] >= before["uptime-ms"]
    for p in ("nbd", "jsonrpc"):
        assert set(s["protocols"][p]) >= {"connections-total", "connections-now", "requests",
                                          "errors", "bytes-read", "bytes-written"}
    assert s["protocols"]["nbd"]["connections-total"] >= 1
    assert s["protocols"]["nbd"]["bytes-read"] >= before["protocols"]["nbd"]["bytes-read"] + 512
    assert s["protocols"]["jsonrpc"]["connections-now"] >= 1
    assert s["protocols"]["jsonrpc"]["bytes-read"] >= before["protocols"]["jsonrpc"]["bytes-read"] + 512


def rblock_json(*args):
    return json.loads(subprocess.run([RBLOCK] + list(args), check=True,
                                     capture_output=True).stdout)


def test_info_raw(c, raw_image):
    i = c.result("info")
    # the server has the image open for writing: a reader needs -U
    assert i == rblock_json("info", "-U", "-f", "raw", "--output=json", raw_image)
    q = qemu_json("info", "-f", "raw", "--output=json", raw_image)
    for k in ("virtual-size", "format", "filename"):
        assert i[k] == q[k]
    s = c.result("stats")["export"]
    assert s == {"name": "", "format": "raw", "size": 64 * MiB, "read-only": False}


def test_check_raw_is_not_supported(c):
    e = c.error("check")
    assert e["code"] == -32004 and "format 'raw' does not support checks" in e["message"]


# ---- one image, two protocols ---------------------------------------------

def test_rpc_write_nbd_read(srv, c):
    data = os.urandom(3 * 4096 + 17)
    c.write(40 * MiB + 100, data)
    h = srv.nbd()
    assert h.pread(len(data), 40 * MiB + 100) == data
    h.shutdown()


def test_nbd_write_rpc_read(srv, c):
    data = os.urandom(65536 + 3)
    h = srv.nbd()
    h.pwrite(data, 41 * MiB - 1)
    h.flush()
    assert c.read(41 * MiB - 1, len(data)) == data
    h.zero(4096, 41 * MiB)
    assert c.read(41 * MiB - 1, 4098) == data[:1] + bytes(4096) + data[4097:4098]
    c.result("write_zeroes", {"offset": 41 * MiB + 8192, "length": 512})
    assert h.pread(512, 41 * MiB + 8192) == bytes(512)
    h.shutdown()


# ---- listeners, modes ------------------------------------------------------

def test_unix_socket_mode_0600(srv):
    path = srv.rpc.split(":", 1)[1]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_read_only_refuses_writes(raw_image):
    # -U: the module's server has this image open for writing
    s = Server(raw_image, "-f", "raw", "--read-only", "-U")
    try:
        c = s.client()
        for m, p in [("write", {"offset": 0, "data": "AAAA"}),
                     ("write_zeroes", {"offset": 0, "length": 1}),
                     ("trim", {"offset": 0, "length": 1})]:
            e = c.error(m, p)
            assert e["code"] == -32002 and "read-only" in e["message"], e
        assert c.read(4096, 512) == SEED
        assert c.result("stats")["export"]["read-only"] is True
        c.close()
    finally:
        status, err = s.stop()
    assert status == 0, err


def test_tcp_and_several_listeners(raw_image, tmp):
    # read-only with -U: the module's server already has this image open for
    # writing, and a second writer, or a reader sharing nothing, is refused
    # (image locking)
    sock = os.path.join(tmp, "second.sock")
    s = Server(raw_image, "-f", "raw", "--read-only", "-U",
               rpc=["tcp:127.0.0.1:0", "unix:" + sock])
    try:
        assert s.rpc.startswith("tcp:127.0.0.1:") and not s.rpc.endswith(":0")
        for addr in (s.rpc, "unix:" + sock):
            c = Client(addr)
            assert c.result("get_version")["name"] == "rblock"
            c.close()
    finally:
        status, err = s.stop()
    assert status == 0, err


def test_bad_address_is_a_startup_error(raw_image):
    p = subprocess.run([RBLOCK, "serve", "-f", "raw", "--rpc", "bogus:1", "--run", "true",
                        raw_image], capture_output=True, text=True)
    assert p.returncode != 0 and "bogus:1" in p.stderr


# ---- qcow2: map/info as qemu-img, check --------------------------------------

@pytest.fixture(scope="module")
def chain(tmp):
    base = os.path.join(tmp, "base.qcow2")
    top = os.path.join(tmp, "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 128k", "-c", "write -P 2 1M 64k",
                    "-c", "write -z 2M 64k", base], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    top], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 3 64k 64k", "-c", "write -z 1M 4k",
                    "-c", "write -P 4 5M 192k", top], check=True, capture_output=True)
    # a snapshot and a bitmap, so that info's every section is compared
    subprocess.run(["qemu-img", "snapshot", "-c", "snap1", top], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", top, "bm0"], check=True)
    return top


def clip(entries, lo, hi):
    """qemu-img map entries cut to [lo, hi)."""
    out = []
    for e in entries:
        s, t = max(e["start"], lo), min(e["start"] + e["length"], hi)
        if s >= t:
            continue
        e = dict(e)
        if "offset" in e:
            e["offset"] += s - e["start"]
        e["start"], e["length"] = s, t - s
        out.append(e)
    return out


def test_qcow2_chain_map_info_read(chain):
    s = Server(chain, "--read-only")
    try:
        c = s.client()
        assert c.result("map") == qemu_json("map", "--output=json", chain)
        assert c.result("map") == rblock_json("map", "--output=json", chain)
        full = qemu_json("map", "--output=json", chain)
        for lo, hi in [(0, 8 * MiB), (64 * 1024 + 512, MiB + 4096), (5 * MiB + 1, 16 * MiB)]:
            assert c.result("map", {"offset": lo, "length": hi - lo}) == clip(full, lo, hi)
        i = c.result("info")
        # one builder (rblock/view.h) for both: full-backing-filename too
        assert i == rblock_json("info", "--output=json", chain)
        assert c.result("info", {"backing_chain": True}) == \
            rblock_json("info", "--output=json", "--backing-chain", chain)
        q = qemu_json("info", "--output=json", chain)
        for k in ("virtual-size", "cluster-size", "format", "backing-filename",
                  "backing-filename-format", "full-backing-filename", "dirty-flag"):
            assert i[k] == q[k], k
        for k in ("compat", "compression-type", "lazy-refcounts", "refcount-bits", "corrupt",
                  "extended-l2"):
            assert i["format-specific"]["data"][k] == q["format-specific"]["data"][k], k
        subprocess.run(["qemu-img", "convert", "-O", "raw", chain, chain + ".raw"], check=True)
        with open(chain + ".raw", "rb") as f:
            raw = f.read()
        for off, ln in [(0, 256 * 1024), (MiB - 512, 8192), (5 * MiB, 192 * 1024)]:
            assert c.read(off, ln) == raw[off:off + ln]
        bs = c.result("block_status", {"offset": 64 * 1024, "length": 64 * 1024})
        assert bs[0]["allocated"] and bs[0]["depth"] == 0 and bs[0]["data"]
        bs = c.result("block_status", {"offset": 0, "length": 64 * 1024})
        assert bs[0]["allocated"] and bs[0]["depth"] == 1
        c.close()
    finally:
        status, err = s.stop()
    assert status == 0, err


def test_qcow2_check(chain):
    s = Server(chain, "--read-only")
    try:
        c = s.client()
        res = c.result("check")
        assert res == rblock_json("check", "--output=json", chain)
        q = qemu_json("check", "--output=json", chain)
        for k in ("image-end-offset", "total-clusters", "allocated-clusters", "check-errors"):
            assert res[k] == q[k], k
        assert "corruptions" not in res and "leaks" not in res
        assert res["rblock-problems"] == []
        c.close()
    finally:
        status, err = s.stop()
    assert status == 0, err


# ---- shutdown, socket activation --------------------------------------------

def own_image(tmp, name):
    """A raw image of its own: a second writer on the module's image would
    be refused (images are locked against two writers)."""
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    return path


def test_clean_shutdown_with_clients_connected(tmp):
    raw_image = own_image(tmp, "shutdown.raw")
    s = Server(raw_image, "-f", "raw")
    idle = s.client()
    busy = s.client()
    data = os.urandom(4096)
    busy.write(50 * MiB, data)
    # a pipelined burst still in flight when the server is told to stop
    busy.send("".join(json.dumps({"method": "read", "id": i,
                                  "params": {"offset": 50 * MiB, "length": 4096}}) + "\n"
                      for i in range(20)))
    status, err = s.stop()  # returns only when the server has exited
    assert status == 0, err
    got = 0
    while True:
        ln = busy.line()
        if not ln:
            break
        r = json.loads(ln)
        assert r["id"] == got and base64.b64decode(r["result"]["data"]) == data
        got += 1
    assert got == 20  # every request read before the stop was answered
    assert idle.line() == b""  # idle clients see the end of the stream
    idle.close()
    busy.close()
    with open(raw_image, "rb") as f:
        f.seek(50 * MiB)
        assert f.read(4096) == data


def test_socket_activation_with_rpc_listener(tmp):
    import nbd
    raw_image = own_image(tmp, "activated.raw")
    path = os.path.join(tmp, "activated.sock")
    h = nbd.NBD()
    h.connect_systemd_socket_activation([RBLOCK, "serve", "-f", "raw", "--rpc", "unix:" + path,
                                         raw_image])
    c = Client("unix:" + path)
    data = os.urandom(1000)
    c.write(60 * MiB, data)
    assert h.pread(1000, 60 * MiB) == data
    h.pwrite(data[::-1], 61 * MiB)
    assert c.read(61 * MiB, 1000) == data[::-1]
    c.close()
    h.shutdown()
    del h  # libnbd stops the server it started and waits for it
    assert not os.path.exists(path)  # which removed its socket on the way out


def test_qcow2_overlay_written_through_both_protocols(tmp):
    base = os.path.join(tmp, "wbase.qcow2")
    top = os.path.join(tmp, "wtop.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "8M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x11 0 2M", base], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "wbase.qcow2", "-F",
                    "qcow2", top], check=True)
    with open(base, "rb") as f:
        base_bytes = f.read()
    s = Server(top)
    want = bytearray(b"\x11" * 2 * MiB + bytes(6 * MiB))
    try:
        c = s.client()
        h = s.nbd()
        a = os.urandom(70000)
        c.write(65536 - 100, a)               # across clusters, partly over the backing
        want[65536 - 100:65536 - 100 + len(a)] = a
        assert h.pread(len(a) + 200, 65536 - 200) == bytes(want[65536 - 200:65536 + len(a)])
        b = os.urandom(4096)
        h.pwrite(b, 3 * MiB + 512)            # where the backing has nothing
        want[3 * MiB + 512:3 * MiB + 512 + 4096] = b
        assert c.read(3 * MiB, 8192) == bytes(want[3 * MiB:3 * MiB + 8192])
        c.result("write_zeroes", {"offset": MiB, "length": 128 * 1024})
        want[MiB:MiB + 128 * 1024] = bytes(128 * 1024)
        assert h.pread(256 * 1024, MiB - 64 * 1024) == bytes(want[MiB - 64 * 1024:MiB + 192 * 1024])
        c.result("trim", {"offset": 3 * MiB, "length": 65536})  # back to the backing: zeros
        want[3 * MiB:3 * MiB + 65536] = bytes(65536)
        assert c.read(3 * MiB, 65536 + 4096) == bytes(want[3 * MiB:3 * MiB + 65536 + 4096])
        assert c.result("flush") == {}
        assert c.result("check")["check-errors"] == 0
        c.close()
        h.shutdown()
    finally:
        status, err = s.stop()
    assert status == 0, err
    subprocess.run(["qemu-img", "check", top], check=True, capture_output=True)
    out = subprocess.run(["qemu-img", "convert", "-O", "raw", top, top + ".raw"], check=True)
    with open(top + ".raw", "rb") as f:
        assert f.read() == bytes(want)
    with open(base, "rb") as f:
        assert f.read() == base_bytes  # the backing file is never written
