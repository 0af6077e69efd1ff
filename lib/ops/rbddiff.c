/* SPDX-License-Identifier: MIT */
/*
 * rbddiff.c - Ceph's export-diff stream out of two rblock images, and into
 * a qcow2 overlay (rblock/rbd-diff.h).
 *
 * Writing walks rb_diff (or a dirty bitmap) in ascending order and emits
 * records as runs come: memory is the diff engine's chunks plus one
 * output buffer.  Reading checks every record before acting on it and
 * writes into a new file only, which is removed when anything is wrong: a
 * stream that is cut or corrupt leaves nothing behind.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rblock/diff.h"
#include "rblock/io.h"
#include "rblock/output.h"
#include "rblock/qcow2-create.h"
#include "rblock/rbd-diff.h"
#include "rblock/rbd.h"

#define BANNER_V1 "rbd diff v1\n"
#define BANNER_V2 "rbd diff v2\n"
#define BANNER_LEN 12
#define GRANULE 4096u
#define OUTBUF (1u << 20)
#define CHUNK ((size_t)4 << 20)
#define MAX_SNAP_NAME 4096u

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- writing ------------------------------------------------------------ */

struct writer {
    int fd;
    unsigned version;
    uint8_t *buf;
    size_t used;
    struct rb_rbd_diff_stats *st;
    const struct rb_rbd_diff_out_opts *o;
    struct rb_image *newi;
    uint8_t *chunk; /* bitmap mode: NEW's bytes */
};

static int write_all(int fd, const void *p, size_t n, struct rb_error *err)
{
    const uint8_t *b = p;

    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return rb_error_errno(err, errno, "cannot write the rbd diff stream");
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int out_flush(struct writer *w, struct rb_error *err)
{
    int ret = write_all(w->fd, w->buf, w->used, err);

    w->used = 0;
    return ret;
}

static int out_bytes(struct writer *w, const void *p, size_t n, struct rb_error *err)
{
    if (n >= OUTBUF) { /* large data goes straight through */
        int ret = out_flush(w, err);
        return ret < 0 ? ret : write_all(w->fd, p, n, err);
    }
    if (w->used + n > OUTBUF && out_flush(w, err) < 0)
        return -EIO;
    memcpy(w->buf + w->used, p, n);
    w->used += n;
    return 0;
}

/* Tag, then (v2) the length of what follows. */
static int out_tag(struct writer *w, char tag, uint64_t len, struct rb_error *err)
{
    uint8_t h[9] = {(uint8_t)tag};

    if (w->version == 2)
        put_le64(h + 1, len);
    return out_bytes(w, h, w->version == 2 ? 9 : 1, err);
}

static int out_snap(struct writer *w, char tag, const char *name, struct rb_error *err)
{
    uint8_t l[4];
    size_t n = strlen(name);

    put_le32(l, (uint32_t)n);
    if (out_tag(w, tag, 4 + n, err) < 0 || out_bytes(w, l, 4, err) < 0)
        return -EIO;
    return out_bytes(w, name, n, err);
}

static int out_extent(struct writer *w, const uint8_t *data, uint64_t off, uint64_t len,
                      struct rb_error *err)
{
    uint8_t h[16];

    if (len == 0)
        return 0;
    put_le64(h, off);
    put_le64(h + 8, len);
    if (out_tag(w, data ? 'w' : 'z', 16 + (data ? len : 0), err) < 0 ||
        out_bytes(w, h, 16, err) < 0)
        return -EIO;
    w->st->records++;
    if (!data) {
        w->st->zero_bytes += len;
        return 0;
    }
    w->st->data_bytes += len;
    return out_bytes(w, data, (size_t)len, err);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* [off, off + len) of NEW (@b, NULL: zeros): 'z' for zero granules, 'w'
 * for the others, consecutive granules of a kind merged. */
static int out_range(struct writer *w, const uint8_t *b, uint64_t off, uint64_t len,
                     struct rb_error *err)
{
    uint64_t start = 0, pos = 0;
    bool zero = true;

    if (!b)
        return out_extent(w, NULL, off, len, err);
    while (pos < len) {
        size_t n = len - pos < GRANULE ? (size_t)(len - pos) : GRANULE;
        bool z = all_zero(b + pos, n);
        if (pos > start && z != zero) {
            if (out_extent(w, zero ? NULL : b + start, off + start, pos - start, err) < 0)
                return -EIO;
            start = pos;
        }
        zero = z;
        pos += n;
    }
    return out_extent(w, zero ? NULL : b + start, off + start, len - start, err);
}

static int on_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    return out_range(opaque, run->b, run->off, run->len, err);
}

static void on_diff_progress(void *opaque, uint64_t done)
{
    struct writer *w = opaque;

    w->o->on_progress(w->o->opaque, done);
}

static int dirty_ranges(struct writer *w, struct rb_error *err)
{
    uint64_t size = w->newi->size, off = 0;

    while (off < size) {
        uint64_t n;
        bool dirty;
        int ret = rb_image_bitmap_extent(w->newi, w->o->bitmap, off, size - off, &dirty, &n,
                                         err);
        if (ret < 0)
            return ret;
        for (uint64_t p = off; dirty && p < off + n;) {
            size_t len = off + n - p < CHUNK ? (size_t)(off + n - p) : CHUNK;
            if ((ret = rb_image_read(w->newi, w->chunk, p, len, err)) < 0 ||
                (ret = out_range(w, w->chunk, p, len, err)) < 0)
                return ret;
            p += len;
        }
        off += n;
        if (w->o->on_progress)
            w->o->on_progress(w->o->opaque, off);
    }
    return 0;
}

int rb_rbd_diff_write(struct rb_image *base, struct rb_image *newi, int fd,
                      const struct rb_rbd_diff_out_opts *opts, struct rb_rbd_diff_stats *stats,
                      struct rb_error *err)
{
    struct rb_rbd_diff_stats st = {0};
    struct writer w = {.fd = fd, .st = &st, .o = opts, .newi = newi,
                       .version = opts->version ? opts->version : 1};
    uint8_t sz[8];
    int ret;

    if (w.version != 1 && w.version != 2)
        return rb_error_set(err, EINVAL, "rbd diff version %u is not 1 or 2", w.version);
    if (opts->bitmap && newi->size) {
        bool dirty;
        uint64_t n;
        /* a missing or inconsistent bitmap is refused before a byte is out */
        ret = rb_image_bitmap_extent(newi, opts->bitmap, 0, newi->size, &dirty, &n, err);
        if (ret < 0)
            return ret;
    }
    w.buf = malloc(OUTBUF);
    w.chunk = opts->bitmap ? malloc(CHUNK) : NULL;
    if (!w.buf || (opts->bitmap && !w.chunk)) {
        ret = rb_error_set(err, ENOMEM, "out of memory");
        goto out;
    }
    put_le64(sz, newi->size);
    ret = out_bytes(&w, w.version == 2 ? BANNER_V2 : BANNER_V1, BANNER_LEN, err);
    if (ret == 0 && opts->from_snap)
        ret = out_snap(&w, 'f', opts->from_snap, err);
    if (ret == 0 && opts->to_snap)
        ret = out_snap(&w, 't', opts->to_snap, err);
    if (ret == 0 && (ret = out_tag(&w, 's', 8, err)) == 0)
        ret = out_bytes(&w, sz, 8, err);
    if (ret == 0 && newi->size && opts->bitmap) {
        ret = dirty_ranges(&w, err);
    } else if (ret == 0 && newi->size) {
        struct rb_diff_opts d = {.granule_bytes = GRANULE, .limit_bytes = newi->size,
                                 .on_run = on_run, .opaque = &w,
                                 .on_progress = opts->on_progress ? on_diff_progress
                                                                  : NULL};
        ret = rb_diff(base, newi, &d, NULL, err);
    }
    if (ret == 0 && (ret = out_bytes(&w, "e", 1, err)) == 0)
        ret = out_flush(&w, err);
out:
    free(w.buf);
    free(w.chunk);
    if (stats)
        *stats = st;
    return ret;
}

/* ---- reading ------------------------------------------------------------ */

struct reader {
    int fd;
    const char *name;
    uint64_t pos; /* bytes consumed: where a problem is */
    uint8_t *buf;
    size_t have, at;
    bool eof;
};

/* Exactly @n bytes, or EINVAL "truncated". */
static int in_bytes(struct reader *r, void *p, size_t n, struct rb_error *err)
{
    uint8_t *d = p;

    while (n) {
        if (r->at == r->have) {
            ssize_t got;
            do
                got = read(r->fd, r->buf, OUTBUF);
            while (got < 0 && errno == EINTR);
            if (got < 0)
                return rb_error_errno(err, errno, "%s: read error at byte %" PRIu64, r->name,
                                      r->pos);
            if (got == 0)
                return rb_error_set(err, EINVAL, "%s: truncated rbd diff stream: it ends at "
                                    "byte %" PRIu64 " before its end record", r->name, r->pos);
            r->have = (size_t)got;
            r->at = 0;
        }
        size_t k = r->have - r->at < n ? r->have - r->at : n;
        memcpy(d, r->buf + r->at, k);
        r->at += k;
        r->pos += k;
        d += k;
        n -= k;
    }
    return 0;
}

static int in_skip(struct reader *r, uint64_t n, struct rb_error *err)
{
    uint8_t tmp[4096];

    while (n) {
        size_t k = n < sizeof(tmp) ? (size_t)n : sizeof(tmp);
        if (in_bytes(r, tmp, k, err) < 0)
            return -EINVAL;
        n -= k;
    }
    return 0;
}

struct import {
    struct reader r;
    unsigned version;
    uint64_t size;
    bool have_size;
    char from[MAX_SNAP_NAME + 1], to[MAX_SNAP_NAME + 1];
};

/* The record length of v2 (checked against @want when it is fixed). */
static int rec_len(struct import *im, char tag, uint64_t want, uint64_t *len,
                   struct rb_error *err)
{
    uint8_t l[8];
    uint64_t at = im->r.pos;

    if (im->version == 1) {
        *len = want;
        return 0;
    }
    if (in_bytes(&im->r, l, 8, err) < 0)
        return -EINVAL;
    *len = get_le64(l);
    if (want != UINT64_MAX && *len != want)
        return rb_error_set(err, EINVAL, "%s: corrupt rbd diff stream: '%c' record at byte "
                            "%" PRIu64 " has length %" PRIu64 ", expected %" PRIu64,
                            im->r.name, tag, at - 1, *len, want);
    return 0;
}

static int in_snap(struct import *im, char tag, char *out, struct rb_error *err)
{
    uint8_t l[4];
    uint64_t len, at = im->r.pos - 1;
    uint32_t n;

    if (rec_len(im, tag, UINT64_MAX, &len, err) < 0 || in_bytes(&im->r, l, 4, err) < 0)
        return -EINVAL;
    n = get_le32(l);
    if (n > MAX_SNAP_NAME || (im->version == 2 && len != 4 + (uint64_t)n))
        return rb_error_set(err, EINVAL, "%s: corrupt rbd diff stream: snapshot name of "
                            "%" PRIu32 " bytes in the '%c' record at byte %" PRIu64,
                            im->r.name, n, tag, at);
    if (in_bytes(&im->r, out, n, err) < 0)
        return -EINVAL;
    out[n] = '\0';
    return 0;
}

/* The metadata records, up to the first data record (whose tag is
 * returned in *@next). */
static int read_meta(struct import *im, char *next, struct rb_error *err)
{
    char banner[BANNER_LEN];
    uint8_t t, v[8];
    uint64_t len;

    if (in_bytes(&im->r, banner, BANNER_LEN, err) < 0)
        return rb_error_reset(err, EINVAL, "%s: not an rbd diff stream (%" PRIu64 " bytes, "
                              "shorter than its header)", im->r.name, im->r.pos);
    if (memcmp(banner, BANNER_V1, BANNER_LEN) == 0)
        im->version = 1;
    else if (memcmp(banner, BANNER_V2, BANNER_LEN) == 0)
        im->version = 2;
    else
        return rb_error_reset(err, EINVAL, "%s: not an rbd diff stream (no 'rbd diff v1' or "
                              "'v2' header)", im->r.name);
    for (;;) {
        if (in_bytes(&im->r, &t, 1, err) < 0)
            return -EINVAL;
        switch (t) {
        case 'f':
        case 't':
            if (in_snap(im, (char)t, t == 'f' ? im->from : im->to, err) < 0)
                return -EINVAL;
            break;
        case 's':
            if (rec_len(im, 's', 8, &len, err) < 0 || in_bytes(&im->r, v, 8, err) < 0)
                return -EINVAL;
            im->size = get_le64(v);
            im->have_size = true;
            break;
        case 'w':
        case 'z':
        case 'e':
            *next = (char)t;
            return 0;
        default:
            if (im->version == 2) { /* v2 lets a reader skip what it does not know */
                if (rec_len(im, (char)t, UINT64_MAX, &len, err) < 0 ||
                    in_skip(&im->r, len, err) < 0)
                    return -EINVAL;
                break;
            }
            return rb_error_set(err, EINVAL, "%s: corrupt rbd diff stream: unknown record "
                                "tag 0x%02x at byte %" PRIu64, im->r.name, t, im->r.pos - 1);
        }
    }
}

/* Data records from the one tagged @tag to 'e', into @out. */
static int apply(struct import *im, char tag, struct rb_image *out,
                 struct rb_rbd_diff_stats *st, struct rb_error *err)
{
    uint8_t *chunk = malloc(CHUNK);
    uint8_t h[16];
    int ret = 0;

    if (!chunk)
        return rb_error_set(err, ENOMEM, "out of memory");
    while (tag != 'e') {
        uint64_t at = im->r.pos - 1, off, len, rlen, end;

        if (tag != 'w' && tag != 'z') {
            if (im->version == 2 && tag != 'f' && tag != 't' && tag != 's') {
                if ((ret = rec_len(im, tag, UINT64_MAX, &rlen, err)) < 0 ||
                    (ret = in_skip(&im->r, rlen, err)) < 0)
                    break;
                goto next;
            }
            ret = rb_error_set(err, EINVAL, "%s: corrupt rbd diff stream: %s tag 0x%02x at "
                               "byte %" PRIu64, im->r.name,
                               strchr("fts", tag) ? "metadata record after data, " : "unknown",
                               (unsigned char)tag, at);
            break;
        }
        if ((ret = rec_len(im, tag, UINT64_MAX, &rlen, err)) < 0 ||
            (ret = in_bytes(&im->r, h, 16, err)) < 0)
            break;
        off = get_le64(h);
        len = get_le64(h + 8);
        if (!rb_add_ok(off, len, &end) || end > im->size ||
            (im->version == 2 && rlen != 16 + (tag == 'w' ? len : 0))) {
            ret = rb_error_set(err, EINVAL, "%s: corrupt rbd diff stream: '%c' record at byte "
                               "%" PRIu64 " (offset %" PRIu64 ", length %" PRIu64 ") is past "
                               "the image's end (%" PRIu64 ") or has a wrong length",
                               im->r.name, tag, at, off, len, im->size);
            break;
        }
        st->records++;
        if (tag == 'z') {
            st->zero_bytes += len;
            /* zero clusters: the range reads as zeros whatever BASE holds */
            if (len && (ret = rb_image_write_zeroes(out, off, len, RB_ZERO_MAY_UNMAP, err)) < 0)
                break;
        } else {
            st->data_bytes += len;
            while (len) {
                size_t n = len < CHUNK ? (size_t)len : CHUNK;
                if ((ret = in_bytes(&im->r, chunk, n, err)) < 0 ||
                    (ret = rb_image_write(out, chunk, off, n, 0, err)) < 0)
                    break;
                off += n;
                len -= n;
            }
            if (ret < 0)
                break;
        }
next:
        if ((ret = in_bytes(&im->r, &tag, 1, err)) < 0)
            break;
    }
    free(chunk);
    return ret;
}

static int backing_name(const char *base_path, const char *out_path, const char *given,
                        char **name, struct rb_error *err)
{
    struct rb_rbd_name *n;
    char buf[4 * RB_RBD_NAME_MAX];

    if (given) {
        *name = strdup(given);
    } else if (rb_rbd_is_name(base_path)) {
        if (!(n = malloc(sizeof(*n))))
            return rb_error_set(err, ENOMEM, "out of memory");
        if (rb_rbd_parse_name(base_path, n, err) < 0) {
            free(n);
            return -EINVAL;
        }
        *name = strdup(rb_rbd_plain_name(n, buf, sizeof(buf)));
        free(n);
    } else {
        *name = rb_delta_backing_name(base_path, out_path, err);
    }
    return *name ? 0 : rb_error_set(err, ENOMEM, "out of memory");
}

int rb_rbd_diff_to_qcow2(int in_fd, const char *stream_name, const char *base_path,
                         const char *out_path, const struct rb_rbd_diff_in_opts *opts,
                         struct rb_rbd_diff_stats *stats, struct rb_error *err)
{
    struct rb_open_opts bo = {.format = opts->base_format, .force_share = opts->force_share};
    struct rb_open_opts dopen = {.format = "qcow2", .write = true, .unsafe_no_barriers = true,
                                 .no_backing = true};
    struct rb_rbd_diff_stats st = {0};
    struct import *im = calloc(1, sizeof(*im));
    struct rb_image *base = NULL, *out = NULL;
    struct rb_output *o = NULL;
    struct rb_qcow2_create_opts co;
    char *name = NULL, *optstr = NULL, next = 0;
    int fd, ret;

    if (!im || !(im->r.buf = malloc(OUTBUF))) {
        ret = rb_error_set(err, ENOMEM, "out of memory");
        goto fail;
    }
    im->r.fd = in_fd;
    im->r.name = stream_name;
    if (!(base = rb_image_open(base_path, &bo, err))) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    /* the metadata first: a stream that is not one creates nothing */
    if ((ret = read_meta(im, &next, err)) < 0)
        goto fail;
    if (!im->have_size)
        im->size = base->size;
    if (im->from[0] && rb_rbd_is_name(base_path)) {
        struct rb_rbd_name n;
        if (rb_rbd_parse_name(base_path, &n, NULL) == 0 && strcmp(n.snap, im->from) != 0) {
            ret = rb_error_set(err, EINVAL, "%s: the stream starts at snapshot '%s', "
                               "not at BASE '%s'", stream_name, im->from, base_path);
            goto fail;
        }
    }
    if ((ret = backing_name(base_path, out_path, opts->backing_name, &name, err)) < 0)
        goto fail;
    rb_qcow2_create_opts_init(&co);
    if (opts->create_options) {
        if (!(optstr = strdup(opts->create_options))) {
            ret = rb_error_set(err, ENOMEM, "out of memory");
            goto fail;
        }
        if ((ret = rb_qcow2_parse_options(optstr, &co, err)) < 0)
            goto fail;
    }
    co.size = rb_qcow2_round_size(im->size);
    co.size_set = true;
    co.backing_file = name;
    co.backing_format = base->ops->format;
    if ((ret = rb_qcow2_check_opts(&co, err)) < 0)
        goto fail;
    if (!(o = rb_output_open(out_path, &base, 1, 0, err))) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    if ((ret = rb_qcow2_create(o->fd, out_path, &co, err)) < 0 ||
        (ret = fd = rb_output_dup(o, err)) < 0)
        goto fail;
    if (!(out = rb_image_open_fd(out_path, fd, &dopen, err))) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    out->backing = base; /* borrowed: detached before the close */
    if ((ret = apply(im, next, out, &st, err)) < 0 || (ret = rb_image_flush(out, err)) < 0)
        goto fail;
    out->backing = NULL;
    rb_image_close(out);
    rb_output_close(o, false);
    rb_image_close(base);
    free(name);
    free(optstr);
    free(im->r.buf);
    free(im);
    if (stats)
        *stats = st;
    return 0;
fail:
    if (out)
        out->backing = NULL;
    rb_image_close(out);
    if (o && err && err->msg[0] && rb_output_fate(o)[0]) {
        char msg[sizeof(err->msg)];
        memcpy(msg, err->msg, sizeof(msg));
        rb_error_reset(err, err->code, "%s%s", msg, rb_output_fate(o));
    }
    rb_output_close(o, true);
    rb_image_close(base);
    free(name);
    free(optstr);
    if (im)
        free(im->r.buf);
    free(im);
    return ret < 0 ? ret : -EIO;
}
