/* SPDX-License-Identifier: MIT */
/*
 * exports.c - the one shared open image behind every protocol, with range
 * checks and per-protocol counters.  The image layer does the locking.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/socket.h>
#include <unistd.h>

#include "core/conn.h"
#include "core/export.h"
#include "rblock/io.h"
#include "rblock/qcow2.h"

struct counters {
    atomic_uint_fast64_t connections_total, connections_now, connections_closing,
        requests, errors, bytes_read, bytes_written;
};

struct rb_export {
    struct rb_image *img;
    char *path;
    bool no_trim;
    int detect_zeroes;
    bool remove_on_close;
    /* Under the table's lock (struct rb_exports): */
    unsigned users;          /* uses taken by rb_exports_get */
    struct rb_conn **conns;  /* the connections among them */
    size_t nconns, conns_cap;
    bool removed;            /* out of the table, closing */
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

/* An export's metadata cache: a served image takes random I/O over all of
 * itself for as long as it is served, so it gets QEMU's default on Linux
 * (32 MiB of L2 tables: 256 GiB of a 64 KiB-cluster image mapped without a
 * read) rather than the 8 MiB a command gets.  The cache is an anonymous
 * mapping: a slot costs memory only once it was used. */
#define RB_EXPORT_CACHE_BYTES ((size_t)40 << 20)

struct rb_export *rb_export_open(const struct rb_export_config *cfg, struct rb_error *err)
{
    struct rb_open_opts opts = {
        /* a snapshot is served read-only (qemu-nbd -l) */
        .format = cfg->format, .write = !cfg->read_only && !cfg->snapshot,
        .lock = !cfg->read_only, .force_share = cfg->force_share, .snapshot = cfg->snapshot,
        .cache_bytes = RB_EXPORT_CACHE_BYTES};
    struct rb_export *e = calloc(1, sizeof(*e));

    if (!e) {
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    e->name = strdup(cfg->name ? cfg->name : "");
    e->path = strdup(cfg->path);
    e->no_trim = cfg->no_trim;
    e->detect_zeroes = cfg->detect_zeroes;
    e->description = cfg->description ? strdup(cfg->description) : NULL;
    if (!e->name || !e->path || (cfg->description && !e->description)) {
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
    e->remove_on_close = cfg->remove_on_close;
    return e;
fail:
    rb_image_close(e->img);
    free(e->path);
    for (size_t i = 0; i < e->nb_bitmaps; i++)
        free(e->bitmaps[i]);
    free(e->bitmaps);
    free(e->bitmap_layer);
    free(e->name);
    free(e->description);
    free(e);
    return NULL;
}

struct rb_export *rb_export_bare(void)
{
    struct rb_export *e = calloc(1, sizeof(*e));

    if (e && !(e->name = strdup(""))) {
        free(e);
        return NULL;
    }
    if (e)
        clock_gettime(CLOCK_MONOTONIC, &e->start);
    return e;
}

int rb_export_close(struct rb_export *e, struct rb_error *err)
{
    int ret = 0;

    if (!e)
        return 0;
    if (e->img && !e->read_only)
        ret = rb_image_flush(e->img, err);
    rb_image_close(e->img);
    /* -s: the overlay was ours, made for this run only */
    if (e->remove_on_close && e->path)
        unlink(e->path);
    free(e->path);
    free(e->conns);
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
    if (ops->trim && !e->no_trim)
        caps |= RB_EXPORT_CAN_TRIM;
    if (ops->write_zeroes)
        caps |= RB_EXPORT_CAN_ZERO;
    return caps;
}

const char *rb_export_name(const struct rb_export *e)
{
    return e->name;
}
const char *rb_export_path(const struct rb_export *e)
{
    return e->path ? e->path : "";
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

    if (ret == 0 && len && e->detect_zeroes != RB_DETECT_ZEROES_OFF &&
        e->img->ops->write_zeroes && rb_is_zero(buf, len)) {
        /* --detect-zeroes: as qemu's, a write of zeroes stores none */
        unsigned zf = flags & RB_WRITE_FUA;
        if (e->detect_zeroes == RB_DETECT_ZEROES_UNMAP && !e->no_trim)
            zf |= RB_ZERO_MAY_UNMAP;
        ret = rb_image_write_zeroes(e->img, off, len, zf, err);
        return account(e, p, ret, 0, len);
    }
    if (ret == 0 && len)
        ret = rb_image_write(e->img, buf, off, len, flags & RB_WRITE_FUA, err);
    return account(e, p, ret, 0, len);
}

int rb_export_write_zeroes(struct rb_export *e, enum rb_proto_id p, uint64_t off,
                           uint64_t len, unsigned flags, struct rb_error *err)
{
    int ret = check_write(e, off, len, err);

    if (e->no_trim)
        flags &= ~(unsigned)RB_ZERO_MAY_UNMAP;
    if (ret == 0 && len)
        ret = rb_image_write_zeroes(e->img, off, len, flags, err);
    return account(e, p, ret, 0, 0);
}

int rb_export_trim(struct rb_export *e, enum rb_proto_id p, uint64_t off, uint64_t len,
                   unsigned flags, struct rb_error *err)
{
    int ret = check_write(e, off, len, err);

    if (ret == 0 && len && !e->no_trim) /* --discard=ignore: nothing */
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
    if (!e)
        return;
    struct counters *c = &e->stats[p < RB_PROTO_COUNT ? p : 0];

    if (delta > 0)
        atomic_fetch_add(&c->connections_total, 1);
    atomic_fetch_add(&c->connections_now, (uint_fast64_t)(int_fast64_t)delta);
}

void rb_export_count_closing(struct rb_export *e, enum rb_proto_id p, int delta)
{
    if (!e)
        return;
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

/* ---- the table of exports ------------------------------------------------ */

struct rb_exports {
    pthread_mutex_t lock;
    pthread_cond_t left; /* a user gave an export back */
    struct rb_export **v;
    size_t n, cap;
    struct rb_export *deflt; /* in v, or NULL */
};

struct rb_exports *rb_exports_new(void)
{
    struct rb_exports *t = calloc(1, sizeof(*t));

    if (!t)
        return NULL;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->left, NULL);
    return t;
}

int rb_exports_free(struct rb_exports *t, struct rb_error *err)
{
    int ret = 0;

    if (!t)
        return 0;
    for (size_t i = 0; i < t->n; i++) {
        int r = rb_export_close(t->v[i], ret ? NULL : err);
        if (r < 0 && !ret)
            ret = r;
    }
    free(t->v);
    pthread_cond_destroy(&t->left);
    pthread_mutex_destroy(&t->lock);
    free(t);
    return ret;
}

static struct rb_export *find_locked(struct rb_exports *t, const char *name, size_t len)
{
    if (len == 0)
        return t->deflt;
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->v[i]->name) == len && memcmp(t->v[i]->name, name, len) == 0)
            return t->v[i];
    return NULL;
}

struct rb_export *rb_exports_add(struct rb_exports *t, const struct rb_export_config *cfg,
                                 bool is_default, struct rb_error *err)
{
    struct rb_export *e;
    const char *name = cfg->name ? cfg->name : "";

    if (!*name && !is_default) {
        rb_error_set(err, EINVAL, "an export needs a name");
        return NULL;
    }
    if (strlen(name) > 4096) {
        rb_error_set(err, EINVAL, "export name is longer than 4096 bytes");
        return NULL;
    }
    /* Checked before the image is opened (no lock taken for nothing), and
     * again after, as another add may have raced. */
    pthread_mutex_lock(&t->lock);
    e = find_locked(t, name, strlen(name));
    pthread_mutex_unlock(&t->lock);
    if (e && *name) {
        rb_error_set(err, EEXIST, "export '%s' exists already", name);
        return NULL;
    }
    e = rb_export_open(cfg, err);
    if (!e)
        return NULL;
    pthread_mutex_lock(&t->lock);
    if ((*name && find_locked(t, name, strlen(name))) || (!*name && t->deflt) ||
        t->n >= RB_EXPORTS_MAX) {
        bool full = t->n >= RB_EXPORTS_MAX;
        pthread_mutex_unlock(&t->lock);
        rb_export_close(e, NULL);
        if (full)
            rb_error_set(err, ENOSPC, "at most %d exports can be served", RB_EXPORTS_MAX);
        else
            rb_error_set(err, EEXIST, "export '%s' exists already", name);
        return NULL;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 8;
        struct rb_export **v = realloc(t->v, cap * sizeof(*v));
        if (!v) {
            pthread_mutex_unlock(&t->lock);
            rb_export_close(e, NULL);
            rb_error_set(err, ENOMEM, "out of memory");
            return NULL;
        }
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = e;
    if (is_default && !t->deflt)
        t->deflt = e;
    pthread_mutex_unlock(&t->lock);
    return e;
}

struct rb_export *rb_exports_get(struct rb_exports *t, const char *name, size_t len,
                                 struct rb_conn *user)
{
    struct rb_export *e;

    pthread_mutex_lock(&t->lock);
    e = find_locked(t, name, len);
    if (e && user) {
        if (e->nconns == e->conns_cap) {
            size_t cap = e->conns_cap ? 2 * e->conns_cap : 8;
            struct rb_conn **v = realloc(e->conns, cap * sizeof(*v));
            if (!v) {
                pthread_mutex_unlock(&t->lock);
                return NULL;
            }
            e->conns = v;
            e->conns_cap = cap;
        }
        e->conns[e->nconns++] = user;
    }
    if (e)
        e->users++;
    pthread_mutex_unlock(&t->lock);
    return e;
}

void rb_exports_put(struct rb_exports *t, struct rb_export *e, struct rb_conn *user)
{
    if (!e)
        return;
    pthread_mutex_lock(&t->lock);
    if (user)
        for (size_t i = 0; i < e->nconns; i++)
            if (e->conns[i] == user) {
                e->conns[i] = e->conns[--e->nconns];
                break;
            }
    e->users--;
    if (e->removed && e->users == 0)
        pthread_cond_broadcast(&t->left);
    pthread_mutex_unlock(&t->lock);
}

int rb_exports_remove(struct rb_exports *t, const char *name, bool hard,
                      struct rb_error *err)
{
    struct rb_export *e;
    size_t i;

    pthread_mutex_lock(&t->lock);
    for (i = 0; i < t->n; i++)
        if (strcmp(t->v[i]->name, name) == 0)
            break;
    if (i == t->n) {
        pthread_mutex_unlock(&t->lock);
        return rb_error_set(err, ENOENT, "no export named '%s'", name);
    }
    e = t->v[i];
    memmove(&t->v[i], &t->v[i + 1], (t->n - i - 1) * sizeof(*t->v));
    t->n--;
    if (t->deflt == e)
        t->deflt = NULL;
    e->removed = true;
    /* Hard: each NBD connection on it stops reading requests, answers the
     * ones it has, and ends (a client still reading gets every reply). */
    if (hard)
        for (size_t k = 0; k < e->nconns; k++)
            shutdown(e->conns[k]->fd, SHUT_RD);
    while (e->users > 0)
        pthread_cond_wait(&t->left, &t->lock);
    pthread_mutex_unlock(&t->lock);
    /* No user left and none can come: flush, unlock, close. */
    return rb_export_close(e, err);
}

long rb_exports_names(struct rb_exports *t, struct rb_export_name **out)
{
    struct rb_export_name *v;
    long n;

    pthread_mutex_lock(&t->lock);
    n = (long)t->n;
    v = calloc(t->n + 1, sizeof(*v));
    for (long i = 0; v && i < n; i++) {
        v[i].name = strdup(t->v[i]->name);
        v[i].description = t->v[i]->description ? strdup(t->v[i]->description) : NULL;
        v[i].is_default = t->v[i] == t->deflt;
        if (!v[i].name || (t->v[i]->description && !v[i].description)) {
            rb_exports_names_free(v, i + 1);
            v = NULL;
        }
    }
    pthread_mutex_unlock(&t->lock);
    *out = v;
    return v ? n : -ENOMEM;
}

void rb_exports_names_free(struct rb_export_name *v, long n)
{
    for (long i = 0; v && i < n; i++) {
        free(v[i].name);
        free(v[i].description);
    }
    free(v);
}
