/* SPDX-License-Identifier: MIT */
/*
 * exports.c - the one shared open image behind every protocol, with range
 * checks and per-protocol counters.  The image layer does the locking.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/export.h"
#include "rblock/io.h"

struct counters {
    atomic_uint_fast64_t connections_total, connections_now, connections_closing,
        requests, errors, bytes_read, bytes_written;
};

struct rb_export {
    struct rb_image *img;
    char *name;
    char *description;
    bool read_only;
    struct timespec start;
    struct counters stats[RB_PROTO_COUNT];
};

const char *rb_proto_name(enum rb_proto_id id)
{
    switch (id) {
    case RB_PROTO_NBD:
        return "nbd";
    case RB_PROTO_JSONRPC:
        return "jsonrpc";
    default:
        return "?";
    }
}

struct rb_export *rb_export_open(const struct rb_export_config *cfg, struct rb_error *err)
{
    struct rb_open_opts opts = {
        .format = cfg->format, .write = !cfg->read_only, .lock = !cfg->read_only,
        .force_share = cfg->force_share};
    struct rb_export *e = calloc(1, sizeof(*e));

    if (!e) {
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    e->name = strdup(cfg->name ? cfg->name : "");
    e->description = cfg->description ? strdup(cfg->description) : NULL;
    if (!e->name || (cfg->description && !e->description)) {
        rb_error_set(err, ENOMEM, "out of memory");
        goto fail;
    }
    e->img = rb_image_open(cfg->path, &opts, err);
    if (!e->img)
        goto fail;
    e->read_only = cfg->read_only || e->img->read_only;
    clock_gettime(CLOCK_MONOTONIC, &e->start);
    return e;
fail:
    free(e->name);
    free(e->description);
    free(e);
    return NULL;
}

int rb_export_close(struct rb_export *e, struct rb_error *err)
{
    int ret = 0;

    if (!e)
        return 0;
    if (!e->read_only)
        ret = rb_image_flush(e->img, err);
    rb_image_close(e->img);
    free(e->name);
    free(e->description);
    free(e);
    return ret;
}

uint64_t rb_export_size(const struct rb_export *e)
{
    return e->img->size;
}
bool rb_export_read_only(const struct rb_export *e)
{
    return e->read_only;
}
unsigned rb_export_caps(const struct rb_export *e)
{
    const struct rb_image_ops *ops = e->img->ops;
    unsigned caps = RB_EXPORT_CAN_FLUSH;

    if (e->read_only || !ops->write)
        return caps;
    caps |= RB_EXPORT_CAN_WRITE;
    if (ops->trim)
        caps |= RB_EXPORT_CAN_TRIM;
    if (ops->write_zeroes)
        caps |= RB_EXPORT_CAN_ZERO;
    return caps;
}

const char *rb_export_name(const struct rb_export *e)
{
    return e->name;
}
const char *rb_export_description(const struct rb_export *e)
{
    return e->description;
}
const char *rb_export_format(const struct rb_export *e)
{
    return e->img->ops->format;
}
struct rb_image *rb_export_image(struct rb_export *e)
{
    return e->img;
}

uint32_t rb_export_cluster_bytes(const struct rb_export *e)
{
    return e->img->cluster_bytes ? e->img->cluster_bytes : 4096;
}

unsigned rb_export_chain_length(const struct rb_export *e)
{
    return rb_image_chain_length(e->img);
}

bool rb_export_matches(const struct rb_export *e, const char *name, size_t len)
{
    return len == 0 || (strlen(e->name) == len && memcmp(e->name, name, len) == 0);
}

/* Count one request; returns @ret so callers can tail-call. */
static int account(struct rb_export *e, enum rb_proto_id p, int ret, uint64_t rd,
                   uint64_t wr)
{
    struct counters *c;

    if (p >= RB_PROTO_COUNT)
        return ret;
    c = &e->stats[p];
    atomic_fetch_add_explicit(&c->requests, 1, memory_order_relaxed);
    if (ret < 0)
        atomic_fetch_add_explicit(&c->errors, 1, memory_order_relaxed);
    else {
        if (rd)
            atomic_fetch_add_explicit(&c->bytes_read, rd, memory_order_relaxed);
        if (wr)
            atomic_fetch_add_explicit(&c->bytes_written, wr, memory_order_relaxed);
    }
    return ret;
}

static int check_range(struct rb_export *e, uint64_t off, uint64_t len, int code,
                       struct rb_error *err)
{
    uint64_t end;

    if (!rb_add_ok(off, len, &end) || end > e->img->size)
        return rb_error_set(err, code,
                            "request at offset %" PRIu64 " length %" PRIu64
                            " is past the end of the export (size %" PRIu64 ")",
                            off, len, e->img->size);
    return 0;
}

static int check_write(struct rb_export *e, uint64_t off, uint64_t len,
                       struct rb_error *err)
{
    if (e->read_only)
        return rb_error_set(err, EROFS, "the export is read-only");
    return check_range(e, off, len, ENOSPC, err);
}

int rb_export_read(struct rb_export *e, enum rb_proto_id p, void *buf, uint64_t off,
                   size_t len, struct rb_error *err)
{
    int ret = check_range(e, off, len, EINVAL, err);

    if (ret == 0 && len)
        ret = rb_image_read(e->img, buf, off, len, err);
    return account(e, p, ret, len, 0);
}

int rb_export_write(struct rb_export *e, enum rb_proto_id p, const void *buf,
                    uint64_t off, size_t len, unsigned flags, struct rb_error *err)
{
    int ret = check_write(e, off, len, err);

    if (ret == 0 && len)
        ret = rb_image_write(e->img, buf, off, len, flags & RB_WRITE_FUA, err);
    return account(e, p, ret, 0, len);
}

int rb_export_write_zeroes(struct rb_export *e, enum rb_proto_id p, uint64_t off,
                           uint64_t len, unsigned flags, struct rb_error *err)
{
    int ret = check_write(e, off, len, err);

    if (ret == 0 && len)
        ret = rb_image_write_zeroes(e->img, off, len, flags, err);
    return account(e, p, ret, 0, 0);
}

int rb_export_trim(struct rb_export *e, enum rb_proto_id p, uint64_t off, uint64_t len,
                   unsigned flags, struct rb_error *err)
{
    int ret = check_write(e, off, len, err);

    if (ret == 0 && len)
        ret = rb_image_trim(e->img, off, len, err);
    /* A discard that asked for durability: flush it (there is no trim
     * flag in the image layer). */
    if (ret == 0 && len && (flags & RB_WRITE_FUA))
        ret = rb_image_flush(e->img, err);
    return account(e, p, ret, 0, 0);
}

int rb_export_flush(struct rb_export *e, enum rb_proto_id p, struct rb_error *err)
{
    int ret = e->read_only ? 0 : rb_image_flush(e->img, err);

    return account(e, p, ret, 0, 0);
}

int rb_export_cache(struct rb_export *e, enum rb_proto_id p, uint64_t off, uint64_t len,
                    struct rb_error *err)
{
    return account(e, p, check_range(e, off, len, EINVAL, err), 0, 0);
}

int rb_export_block_status(struct rb_export *e, enum rb_proto_id p, uint64_t off,
                           uint64_t len, struct rb_extent *ext, struct rb_error *err)
{
    int ret = check_range(e, off, len, EINVAL, err);

    if (ret == 0 && len == 0)
        ret = rb_error_set(err, EINVAL, "block status of an empty range");
    if (ret == 0)
        ret = rb_image_block_status(e->img, off, len, ext, err);
    return account(e, p, ret, 0, 0);
}

void rb_export_count_connection(struct rb_export *e, enum rb_proto_id p, int delta)
{
    struct counters *c = &e->stats[p < RB_PROTO_COUNT ? p : 0];

    if (delta > 0)
        atomic_fetch_add(&c->connections_total, 1);
    atomic_fetch_add(&c->connections_now, (uint_fast64_t)(int_fast64_t)delta);
}

void rb_export_count_closing(struct rb_export *e, enum rb_proto_id p, int delta)
{
    struct counters *c = &e->stats[p < RB_PROTO_COUNT ? p : 0];

    atomic_fetch_add(&c->connections_closing, (uint_fast64_t)(int_fast64_t)delta);
}

void rb_export_stats(const struct rb_export *e, enum rb_proto_id p,
                     struct rb_proto_stats *out)
{
    const struct counters *c = &e->stats[p < RB_PROTO_COUNT ? p : 0];

    out->connections_total = atomic_load(&c->connections_total);
    out->connections_now = atomic_load(&c->connections_now);
    out->connections_closing = atomic_load(&c->connections_closing);
    out->requests = atomic_load(&c->requests);
    out->errors = atomic_load(&c->errors);
    out->bytes_read = atomic_load(&c->bytes_read);
    out->bytes_written = atomic_load(&c->bytes_written);
}

double rb_export_uptime(const struct rb_export *e)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - e->start.tv_sec) +
           (double)(now.tv_nsec - e->start.tv_nsec) / 1e9;
}
