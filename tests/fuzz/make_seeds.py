#!/usr/bin/python3
"""Write the NBD, JSON-RPC and probe seed corpora (tests/fuzz/corpus/{nbd,jsonrpc,probe}).

Each seed is what a client sends, prefixed with one byte for the harness
(bit 0: serve read-only; bit 1: a qcow2 export, else raw).  Run from anywhere; rewrites the seeds.
The qcow2 seeds are small images made once with qemu-img/qemu-io (see
tests/fuzz/README.md).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513


def opt(n, data=b""):
    return struct.pack(">QII", IHAVEOPT, n, len(data)) + data


def name(s):
    b = s.encode()
    return struct.pack(">I", len(b)) + b


def go(export="", infos=(3,)):
    return opt(7, name(export) + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def meta(n, export, *queries):
    return opt(n, name(export) + struct.pack(">I", len(queries)) +
               b"".join(name(q) for q in queries))


def req(cmd, off=0, length=0, flags=0, handle=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, handle, off, length) + payload


CF = struct.pack(">I", 3)  # fixed newstyle + no zeroes

nbd = {
    "structured_rw": b"\0" + CF + opt(8) + meta(10, "", "base:allocation",
                                              "qemu:allocation-depth") + go() +
    req(0, 0, 4096) + req(1, 4096, 512, 1, 2, b"x" * 512) + req(7, 0, 1 << 20, 0, 3) +
    req(7, 0, 1 << 20, 8, 4) + req(0, 65536, 8192, 4, 5) + req(6, 0, 65536, 2, 6) +
    req(4, 131072, 4096, 0, 7) + req(5, 0, 4096, 0, 8) + req(3, handle=9) + req(2),
    "simple_export_name": b"\0" + struct.pack(">I", 1) + opt(1, b"fuzz") +
    req(0, 0, 512) + req(1, 512, 16, 0, 2, b"y" * 16) + req(3, handle=3) + req(2),
    "read_only": b"\1" + CF + go("fuzz", (0, 1, 2, 3)) + req(1, 0, 4, 0, 1, b"abcd") +
    req(0, 1 << 20, 1) + req(0, (1 << 64) - 512, 1024) + req(2),
    "options": b"\0" + CF + opt(3) + opt(6, name("fuzz") + struct.pack(">H", 0)) +
    meta(9, "", "base:", "qemu:") + opt(99, b"zz") + opt(5) + opt(4) + opt(2),
    "bad_magic": b"\0" + CF + struct.pack(">QII", 0x1234, 7, 0) + go(),
    "bad_lengths": b"\0" + CF + struct.pack(">QII", IHAVEOPT, 7, 0xFFFFFFFF) +
    b"\0" * 64,
    "oversize_read": b"\0" + CF + opt(8) + go() + req(0, 0, 64 << 20) +
    req(1, 0, 0xFFFFFFFF) + req(9, 0, 0, 0xFFFF) + req(2),
    "no_flags": b"\0" + struct.pack(">I", 0) + opt(1, b""),
}

rpc = {
    "methods": b"\0" + b"\n".join([
        b'{"jsonrpc":"2.0","id":1,"method":"get_version"}',
        b'{"jsonrpc":"2.0","id":2,"method":"list_methods"}',
        b'{"jsonrpc":"2.0","id":3,"method":"info"}',
        b'{"jsonrpc":"2.0","id":4,"method":"read","params":{"offset":4096,"length":16}}',
        b'{"jsonrpc":"2.0","id":5,"method":"write","params":{"offset":0,"data":"aGVsbG8=","fua":true}}',
        b'{"jsonrpc":"2.0","id":6,"method":"write_zeroes","params":{"offset":0,"length":4096,"may_unmap":true}}',
        b'{"jsonrpc":"2.0","id":7,"method":"trim","params":{"offset":4096,"length":4096}}',
        b'{"jsonrpc":"2.0","id":8,"method":"flush"}',
        b'{"jsonrpc":"2.0","id":9,"method":"block_status","params":{"offset":0,"length":65536}}',
        b'{"jsonrpc":"2.0","id":10,"method":"map"}',
        b'{"jsonrpc":"2.0","id":11,"method":"check"}',
        b'{"jsonrpc":"2.0","id":12,"method":"stats"}',
    ]) + b"\n",
    "batch": b"\1" + b'[{"jsonrpc":"2.0","id":1,"method":"read","params":[0,8]},'
    b'{"jsonrpc":"2.0","method":"flush"},{"jsonrpc":"2.0","id":"x","method":"nope"},'
    b'{"jsonrpc":"2.0","id":2,"method":"write","params":{"offset":0,"data":"AA=="}}]\n[]\n',
    "errors": b"\0" + b"\n".join([
        b'{', b'[1,2', b'{"jsonrpc":"1.0","id":1,"method":"info"}', b'null', b'"x"',
        b'{"jsonrpc":"2.0","id":1.5,"method":"read","params":{"offset":-1,"length":1}}',
        b'{"jsonrpc":"2.0","id":2,"method":"read","params":{"offset":18446744073709551615,"length":4294967296}}',
        b'{"jsonrpc":"2.0","id":3,"method":"write","params":{"offset":0,"data":"!!!"}}',
        b'[' * 40 + b']' * 40, b'', b'  ',
    ]) + b"\n",
}

# HTTP/1.1 on the same listener (server/jsonrpc/http.c), and the control
# plane: exports and bitmaps (a qcow2 export)
rpc["http"] = b"\0" + (
    b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 47\r\n\r\n'
    b'{"jsonrpc":"2.0","id":1,"method":"get_version"}'
    b'POST /?q HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 18\r\n\r\n'
    b'{"method":"flush"}'
    b'GET / HTTP/1.1\r\n\r\nGET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n'
    b'POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc')
rpc["control"] = b"\2" + b"\n".join([
    b'{"id":1,"method":"export_list"}',
    b'{"id":2,"method":"export_info","params":{"name":"fuzz"}}',
    b'{"id":3,"method":"bitmap_add","params":{"name":"b","granularity":65536}}',
    b'{"id":4,"method":"write","params":{"offset":0,"data":"aGVsbG8=","export":"fuzz"}}',
    b'{"id":5,"method":"bitmap_add","params":{"name":"c","disabled":true}}',
    b'{"id":6,"method":"bitmap_merge","params":{"name":"c","source":"b"}}',
    b'{"id":7,"method":"bitmap_clear","params":{"name":"b"}}',
    b'{"id":8,"method":"bitmap_remove","params":{"name":"c"}}',
    b'{"id":9,"method":"export_add","params":{"name":"x","image":"/nonexistent"}}',
    b'{"id":10,"method":"read","params":{"export":"x","offset":0,"length":1}}',
    b'{"id":11,"method":"export_remove","params":{"name":"fuzz","mode":"hard"}}',
    b'{"id":12,"method":"read","params":{"offset":0,"length":1}}',
]) + b"\n"

# the same sessions over a qcow2 export (the write path through the server)
nbd["structured_rw_qcow2"] = b"\2" + nbd["structured_rw"][1:]
nbd["read_only_qcow2"] = b"\3" + nbd["read_only"][1:]
rpc["methods_qcow2"] = b"\2" + rpc["methods"][1:]
# the bitmap parameter of map and block_status (no bitmap is served here:
# string parameters checked, then refused as not served)
rpc["bitmap_params"] = b"\2" + b"\n".join([
    b'{"jsonrpc":"2.0","id":1,"method":"map","params":{"bitmap":"nightly"}}',
    b'{"jsonrpc":"2.0","id":2,"method":"block_status","params":[0,65536,"b"]}',
    b'{"jsonrpc":"2.0","id":3,"method":"map","params":{"offset":0,"bitmap":""}}',
    b'{"jsonrpc":"2.0","id":4,"method":"block_status","params":{"offset":0,"length":1,"bitmap":7}}',
    b'{"jsonrpc":"2.0","id":5,"method":"map","params":{"bitmap":"a\\u0000b"}}',
]) + b"\n"



# fuzz_probe: files with every signature rblock names (first sector, or the
# last 512 bytes for fixed VHD and dmg), and raw files whose first 5 bytes
# script a change of the first sector (offset LE16, length LE16, kind:
# 0 write of the bytes from 5 on, 1 write_zeroes, 2 trim).
def sector(data, size=1024):
    return data.ljust(size, b"\0")


def tail(data, size=2048):
    return bytes(size - 512) + data.ljust(512, b"\0")


def script(off, length, kind, payload=b""):
    return struct.pack("<HHB", off, length, kind) + payload


def qcow2_header(backing=b"/etc/passwd"):
    h = struct.pack(">IIQIIQIIQQIIQ", 0x514649FB, 2, 72, len(backing), 16, 1 << 20, 0, 1,
                    0x30000, 0x10000, 1, 0, 0) + backing
    return h


probe = {
    "qcow2": sector(qcow2_header()),
    "vmdk_sparse": sector(b"KDMV\1\0\0\0\3\0\0\0"),
    "vmdk_hosted": sector(b"COWD\1\0\0\0"),
    "vmdk_descriptor": sector(b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n"
                              b"parentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"),
    "vmdk_version_line": sector(b"# comment\n  \r\nversion=3\r\n"),
    "vdi": sector(b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(0x40, b"\0") +
                  struct.pack("<II", 0xBEDA107F, 0x00010001)),
    "vhdx": sector(b"vhdxfile"),
    "vpc_dynamic": sector(b"conectix\0\0\0\2"),
    "vpc_fixed": tail(b"conectix\0\0\0\2"),
    "qed": sector(b"QED\0" + struct.pack("<III", 65536, 16, 4)),
    "luks1": sector(b"LUKS\xba\xbe\0\1aes"),
    "luks2": sector(b"LUKS\xba\xbe\0\2"),
    "parallels": sector(b"WithoutFreeSpace" + struct.pack("<I", 2)),
    "parallels_ext": sector(b"WithouFreSpacExt" + struct.pack("<I", 2)),
    "bochs": sector(b"Bochs Virtual HD Image".ljust(32, b"\0") + b"Redolog".ljust(16, b"\0") +
                    b"Growing".ljust(16, b"\0") + struct.pack("<II", 0x20000, 512)),
    "cloop": sector(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 "
                    b"/dev/cloop $1\n"),
    "dmg": tail(b"koly" + struct.pack(">II", 4, 512)),
    "raw_write_qcow2_header": sector(script(0, 512, 0, qcow2_header()), 4096),
    "raw_write_magic_at_0": sector(script(0, 4, 0, b"QFI\xfb")),
    "raw_write_vhdx_at_0": sector(script(0, 8, 0, b"vhdxfile")),
    "raw_zero_head": sector(script(3, 2, 1, b"QEDx")),
    "raw_trim_head": sector(script(0, 512, 2)),
    "raw_write_mbr": sector(script(0, 512, 0, b"\xeb\x63\x90".ljust(505, b"\0") + b"\x55\xaa")),
    "raw_write_past_sector": sector(script(510, 600, 0, b"LUKS\xba\xbe" * 100), 2048),
}

for sub, seeds in (("nbd", nbd), ("jsonrpc", rpc), ("probe", probe)):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    for k, v in seeds.items():
        with open(os.path.join(d, k), "wb") as f:
            f.write(v)


def bitmap_seeds():
    """qcow2 and qcow2w seeds holding persistent dirty bitmaps, made with
    qemu-img/qemu-io when they are there: several granularities (512 B,
    the cluster size, 1 MiB), an enabled and a disabled one with dirty bits,
    an empty one; and a copy with them all flagged in_use (as a writer that
    never closed leaves them).  The qcow2w copies end with c4k's write script."""
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        return
    with open(os.path.join(HERE, "corpus", "qcow2w", "c4k"), "rb") as f:
        script_tail = f.read()[-24:]
    with tempfile.TemporaryDirectory() as d:
        def q(*a):
            subprocess.run(list(a), check=True, capture_output=True, cwd=d)
        for name, cluster in (("bitmaps", "4k"), ("bitmaps512", "512")):
            img = os.path.join(d, name + ".qcow2")
            q("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}",
              img, "1M")
            q("qemu-io", "-c", "write -P 1 0 16k", img)
            q("qemu-img", "bitmap", "--add", "-g", "512", img, "fine")
            q("qemu-img", "bitmap", "--add", img, "c")
            q("qemu-img", "bitmap", "--add", "-g", "1M", img, "coarse")
            q("qemu-io", "-c", "write -P 2 100k 3000", "-c", "write -z 512k 8k",
              "-c", "discard 900k 4k", img)
            q("qemu-img", "bitmap", "--disable", img, "fine")
            q("qemu-img", "bitmap", "--add", "--disable", img, "empty")
            q("qemu-io", "-c", "write -P 3 200k 512", img)
            # compacted (the bitmap commands leave freed clusters behind)
            q("qemu-img", "convert", "--bitmaps", "-O", "qcow2", "-o",
              f"cluster_size={cluster}", img, img + ".c")
            os.replace(img + ".c", img)
            seeds = [(name, img)]
            if name == "bitmaps":  # a copy with every bitmap flagged in_use, as a
                # writer that never closed leaves it (qemu or rblock killed)
                with open(img, "rb") as f:
                    data = bytearray(f.read())
                pos = struct.unpack(">I", data[100:104])[0]  # header_length
                while True:
                    typ, ln = struct.unpack(">II", data[pos:pos + 8])
                    if typ in (0, 0x23852875):
                        break
                    pos += 8 + (ln + 7) // 8 * 8
                nb, _, _, doff = struct.unpack(">IIQQ", data[pos + 8:pos + 32])
                for _ in range(nb):
                    flags = struct.unpack(">I", data[doff + 12:doff + 16])[0]
                    data[doff + 12:doff + 16] = struct.pack(">I", flags | 1)
                    nlen, extra = struct.unpack(">HI", data[doff + 18:doff + 24])
                    doff += (24 + nlen + extra + 7) // 8 * 8
                inuse = os.path.join(d, "bitmaps_inuse.qcow2")
                with open(inuse, "wb") as f:
                    f.write(data)
                seeds.append(("bitmaps_inuse", inuse))
            for seed, path in seeds:
                with open(path, "rb") as f:
                    data = f.read()
                with open(os.path.join(HERE, "corpus", "qcow2", seed + ".qcow2"), "wb") as f:
                    f.write(data)
                with open(os.path.join(HERE, "corpus", "qcow2w", seed), "wb") as f:
                    f.write(data + script_tail)


bitmap_seeds()
