/* SPDX-License-Identifier: MIT */
/*
 * compress.c - compressed clusters: zlib as raw deflate with a 4 KiB
 * window (windowBits -12, as QEMU writes them) and zstd (compression_type
 * 1).  The stored size is rounded up to 512-byte sectors, so input may
 * carry trailing bytes after the end of the stream: both decoders stop
 * when the output cluster is full.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2/qcow2.h"

static int zlib_decompress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    ret = inflate(&z, Z_FINISH);
    /* Z_BUF_ERROR with a full output: the stream goes on past the cluster,
     * qemu accepts it as long as the cluster is filled */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0)
        ret = 0;
    else
        ret = -EIO;
    inflateEnd(&z);
    return ret;
}

static int zstd_decompress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_len, 0};
    int ret = -EIO;

    if (!dctx)
        return -ENOMEM;
    while (out.pos < out.size) {
        size_t last_in = in.pos, last_out = out.pos;
        size_t r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r))
            goto done;
        if (r == 0 && out.pos < out.size)
            goto done; /* a frame ended before the cluster was full */
        if (in.pos == last_in && out.pos == last_out)
            goto done; /* no progress: truncated input */
    }
    ret = 0;
done:
    ZSTD_freeDCtx(dctx);
    return ret;
}

int qcow2_decompress(uint8_t type, const void *src, size_t src_len, void *dst,
                     size_t dst_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return zlib_decompress(src, src_len, dst, dst_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_decompress(src, src_len, dst, dst_len);
    default:
        return -ENOTSUP;
    }
}

static long zlib_compress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    z_stream z;
    long ret;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    ret = deflate(&z, Z_FINISH) == Z_STREAM_END ? (long)(dst_len - z.avail_out) : 0;
    deflateEnd(&z);
    return ret;
}

static long zstd_compress(const void *src, size_t src_len, void *dst, size_t dst_len)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_len, 0};
    long ret = 0;

    if (!cctx)
        return -ENOMEM;
    for (;;) {
        size_t r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(r))
            break; /* includes "destination too small": store uncompressed */
        if (r == 0) {
            ret = (long)out.pos;
            break;
        }
        if (out.pos == out.size)
            break;
    }
    ZSTD_freeCCtx(cctx);
    return ret;
}

long qcow2_compress(uint8_t type, const void *src, size_t src_len, void *dst,
                    size_t dst_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return zlib_compress(src, src_len, dst, dst_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_compress(src, src_len, dst, dst_len);
    default:
        return -ENOTSUP;
    }
}
