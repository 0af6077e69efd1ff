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
#include "rblock/qcow2.h"

struct counters {
    atomic_uint_fast64_t connections_total, connections_now, connections_closing,
        requests, errors, bytes_read, bytes_written;
};

struct rb_export {
    struct rb_image *img;
    char *name;
    char *description;
    bool read_only;
    char **bitmaps;
    struct rb_image **bitmap_layer; /* the layer of the chain holding each */
    size_t nb_bitmaps;
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
        .force_share = cfg->force_share, .snapshot = cfg->snapshot};
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
    if (cfg->nb_bitmaps > RB_EXPORT_MAX_BITMAPS) {
        rb_error_set(err, EINVAL, "%s: at most %d bitmaps can be served", cfg->path,
                     RB_EXPORT_MAX_BITMAPS);
        goto fail;
    }
    if (cfg->nb_bitmaps && !rb_qcow2_is(e->img)) {
        rb_error_set(err, EINVAL, "%s: format '%s' has no bitmaps", cfg->path,
                     e->img->ops->format);
        goto fail;
    }
    e->bitmaps = calloc(cfg->nb_bitmaps + 1, sizeof(*e->bitmaps));
    e->bitmap_layer = calloc(cfg->nb_bitmaps + 1, sizeof(*e->bitmap_layer));
    if (!e->bitmaps || !e->bitmap_layer) {
        rb_error_set(err, ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < cfg->nb_bitmaps; i++) {
        /* as qemu-nbd -B: the first layer of the chain that has it; refused
         * at start-up when none has it, or when it is inconsistent */
        struct rb_image *layer = e->img;
        int ret;
        for (;;) {
            struct rb_error lerr = {0};
            ret = rb_qcow2_bitmap_use(layer, cfg->bitmaps[i], &lerr);
            if (ret == 0)
                break;
            if (ret != -ENOENT || !layer->backing || !rb_qcow2_is(layer->backing)) {
                /* report the top image's error when no layer has it */
                if (ret == -ENOENT && layer != e->img)
                    rb_qcow2_bitmap_use(e->img, cfg->bitmaps[i], err);
                else if (err)
                    *err = lerr;
                goto fail;
            }
            layer = layer->backing;
        }
        if (layer->size != e->img->size) {
            rb_error_set(err, EINVAL, "%s: bitmap '%s' is for a disk of %" PRIu64
                         " bytes, the export has %" PRIu64, layer->filename,
                         cfg->bitmaps[i], layer->size, e->img->size);
            goto fail;
        }
        e->bitmap_layer[i] = layer;
        for (size_t k = 0; k < i; k++)
            if (strcmp(e->bitmaps[k], cfg->bitmaps[i]) == 0) {
                rb_error_set(err, EINVAL, "bitmap '%s' given twice", cfg->bitmaps[i]);
                goto fail;
            }
        e->bitmaps[i] = strdup(cfg->bitmaps[i]);
        if (!e->bitmaps[i]) {
            rb_error_set(err, ENOMEM, "out of memory");
            goto fail;
        }
        e->nb_bitmaps = i + 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &e->start);
    return e;
fail:
    rb_image_close(e->img);
    for (size_t i = 0; i < e->nb_bitmaps; i++)
        free(e->bitmaps[i]);
    free(e->bitmaps);
    free(e->bitmap_layer);
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
    for (size_t i = 0; i < e->nb_bitmaps; i++)
        free(e->bitmaps[i]);
    free(e->bitmaps);
    free(e->bitmap_layer);
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

size_t rb_export_nb_bitmaps(const struct rb_export *e)
{
    return e->nb_bitmaps;
}

const char *rb_export_bitmap(const struct rb_export *e, size_t i)
{
    return i < e->nb_bitmaps ? e->bitmaps[i] : NULL;
}

int rb_export_bitmap_extent(struct rb_export *e, enum rb_proto_id p, size_t i,
                            uint64_t off, uint64_t len, bool *dirty, uint64_t *bytes,
                            struct rb_error *err)
{
    int ret = check_range(e, off, len, EINVAL, err);

    if (ret == 0 && (len == 0 || i >= e->nb_bitmaps))
        ret = rb_error_set(err, EINVAL, "bitmap status of an empty range or no bitmap");
    if (ret == 0)
        ret = rb_qcow2_bitmap_extent(e->bitmap_layer[i], e->bitmaps[i], off, len, dirty,
                                     bytes, err);
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
