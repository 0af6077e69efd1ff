/* SPDX-License-Identifier: MIT */
/*
 * transmission.c - the transmission phase (proto.md, "Transmission").
 *
 * The connection's thread reads requests (and WRITE payloads) and queues
 * them; up to NBD_WORKERS worker threads per connection, started on
 * demand, run them on the shared export and send the replies under the
 * connection's send lock, so replies go out in any order and one slow
 * request does not hold up the others.  The reader stops taking requests
 * while NBD_MAX_INFLIGHT requests or NBD_MAX_INFLIGHT_BYTES of payload
 * are queued, or while the server's budget for all connections is spent
 * (rb_server_take), before it allocates anything for the next one, so
 * clients cannot make us buffer without bound.
 *
 * A client that goes away (resets, or closes while replies are on their
 * way, rb_conn_gone) is noticed at once, also while the reader waits for
 * room: the reader waits on the socket too (rb_conn_wait), and a failed
 * send marks the connection broken.  Its queued requests are then dropped
 * unrun (none was acknowledged, so no write the client was told about is
 * lost), their budget is given back, and the connection's slot is freed
 * (rb_conn_release) while the requests already running finish -- writes
 * complete -- and the workers are joined before anything they use is
 * freed.  After an end of stream alone the client may still read (it may
 * have shut down only its sending side): what it sent is answered while
 * it is there.  After NBD_CMD_DISC every request before it is run, as the
 * spec asks.
 *
 * Small reads and writes (at most NBD_INLINE_MAX_BYTES, no FUA) are run
 * by the reader itself, into and out of its own buffers, and answered
 * before the next request is read: no hand-off to a worker and back (two
 * thread switches and four futex calls a request), which is what small
 * random I/O costs most.  Replies may still go out of order (the workers
 * answer theirs meanwhile); FLUSH and FUA requests go to the workers, and
 * a FLUSH still covers every write answered before it, inline or not.
 * When an inline request takes long (it waited for the disk: the page
 * cache missed, a metadata table was read, a cache was written back), the
 * next NBD_INLINE_BACKOFF requests go to the workers, so that requests
 * that wait for the disk overlap instead of queueing behind each other.
 * An inline request is the one request a connection always gets through:
 * it takes nothing from the budgets (its buffers are the reader's, of a
 * fixed size), and it is not run when the client is seen gone.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "nbd/nbd.h"
#include "nbd/proto.h"
#include "nbd/wire.h"
#include "rblock/io.h"

#define NBD_WORKERS 8
#define NBD_MAX_INFLIGHT 256
#define NBD_MAX_INFLIGHT_BYTES (64u << 20)
/* Most chunks in a sparse read reply; past it the rest is sent as data. */
#define NBD_MAX_READ_CHUNKS 64
/* Most descriptors per context in a block status reply, and most image
 * look-ups made for one request. */
#define NBD_MAX_DESCRIPTORS 1024
/* How far past a read block status looks for sparse reads. */
#define NBD_LOOKAHEAD_BYTES (16u << 20)
/* Worker buffers larger than this are freed after each request. */
#define NBD_KEEP_BUFFER_BYTES (4u << 20)
/* Reads and writes up to this size may run on the reader (see above). */
#define NBD_INLINE_MAX_BYTES (64u << 10)
/* An inline request that took longer than this waited for the disk... */
#define NBD_INLINE_SLOW_NS 1000000
/* ...and this many requests after it go to the workers. */
#define NBD_INLINE_BACKOFF 64

struct req {
    struct req *next;
    uint16_t flags;
    uint16_t type;
    uint64_t handle;
    uint64_t off;
    uint32_t len;
    uint8_t *payload; /* WRITE data, owned (from the server's stash) */
    size_t payload_cap;
};

struct tx {
    struct rb_conn *c;
    const struct nbd_session *s;
    struct rb_export *e;

    pthread_mutex_t lock;
    pthread_cond_t work; /* a request was queued, or stop */
    /* The reader waits for a request to finish (rb_conn_wait, which also
     * sees the client go): a worker that finishes one wakes it. */
    bool reader_waits;
    struct req *head, *tail;
    unsigned queued; /* in the queue */
    unsigned busy;   /* being run */
    unsigned idle;   /* workers waiting for work */
    unsigned nworkers;
    _Atomic size_t bytes; /* payload bytes admitted: queued or running */
    bool stop;
    /* A range block status last reported as data: reads inside it skip
     * the look-up.  Only data is remembered, never holes, so a stale
     * entry (a concurrent trim) still reads right, just not sparsely. */
    uint64_t data_lo, data_hi;
    pthread_t workers[NBD_WORKERS];
};

struct buf {
    uint8_t *p;
    size_t cap;
};

/* Bytes read from the socket ahead of the request being parsed: one
 * recv takes the headers (and small payloads) of every request the client
 * has pipelined, instead of one recv for each.  Plain sockets only (TLS
 * keeps its own record buffer). */
#define NBD_RX_BYTES (128u << 10)

struct rx {
    uint8_t *p;
    size_t pos, len;
    /* The last request was a large WRITE: the client is streaming data,
     * so read the next header alone, and its payload straight into its
     * buffer, instead of copying most of every payload out of @p. */
    bool exact;
};

/* The reader's own state for the requests it runs itself. */
struct inl {
    struct buf rbuf;  /* READ replies */
    struct buf wbuf;  /* WRITE payloads */
    struct rx rx;     /* read ahead, in rxbuf */
    struct buf rxbuf;
    unsigned backoff; /* requests left to hand to the workers */
};

/* A buffer of at least @len bytes in @b; buffers come from and go back to
 * the server's stash (rb_server_buf_take), page-aligned: the kernel copies
 * page cache into them (pread) and out of them (send) much faster than at
 * a 16-byte offset. */
static uint8_t *buf_get(struct rb_server *srv, struct buf *b, size_t len)
{
    if (len > b->cap || !b->p) {
        rb_server_buf_give(srv, b->p, b->cap);
        b->p = rb_server_buf_take(srv, len, &b->cap);
        if (!b->p)
            b->cap = 0;
    }
    return b->p;
}

static void buf_put(struct rb_server *srv, struct buf *b)
{
    rb_server_buf_give(srv, b->p, b->cap);
    b->p = NULL;
    b->cap = 0;
}

static void buf_trim(struct rb_server *srv, struct buf *b)
{
    if (b->cap > NBD_KEEP_BUFFER_BYTES)
        buf_put(srv, b);
}

/* Free queued request @r and its payload. */
static void req_free(struct rb_server *srv, struct req *r)
{
    rb_server_buf_give(srv, r->payload, r->payload_cap);
    free(r);
}

/* ---- replies -------------------------------------------------------------- */

static void simple_hdr(uint8_t *h, uint32_t error, uint64_t handle)
{
    put32(h, NBD_SIMPLE_REPLY_MAGIC);
    put32(h + 4, error);
    put64(h + 8, handle);
}

static void chunk_hdr(uint8_t *h, uint16_t flags, uint16_t type, uint64_t handle,
                      uint32_t len)
{
    put32(h, NBD_STRUCTURED_REPLY_MAGIC);
    put16(h + 4, flags);
    put16(h + 6, type);
    put64(h + 8, handle);
    put32(h + 16, len);
}

/* Reply without data: success or an error (with a message when
 * structured replies are on). */
static void reply_status(struct tx *t, const struct req *r, int ret, const char *msg)
{
    uint8_t h[NBD_CHUNK_HDR_BYTES + 6];
    uint32_t error = nbd_errno(ret);

    if (error && t->s->structured) {
        size_t mlen = msg ? strlen(msg) : 0;
        struct iovec iov[2];

        if (mlen > NBD_MAX_STRING)
            mlen = NBD_MAX_STRING;
        chunk_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->handle,
                  (uint32_t)(6 + mlen));
        put32(h + NBD_CHUNK_HDR_BYTES, error);
        put16(h + NBD_CHUNK_HDR_BYTES + 4, (uint16_t)mlen);
        iov[0] = (struct iovec){h, sizeof(h)};
        iov[1] = (struct iovec){(void *)msg, mlen};
        rb_conn_sendv(t->c, iov, mlen ? 2 : 1);
        return;
    }
    simple_hdr(h, error, r->handle);
    rb_conn_send(t->c, h, NBD_SIMPLE_REPLY_BYTES);
}

/* An error worth telling the operator about: the image failed, not the
 * client's request. */
static void log_error(struct tx *t, const struct req *r, int ret,
                      const struct rb_error *err)
{
    switch (-ret) {
    case EINVAL:
    case ENOSPC:
    case EROFS:
    case EPERM:
    case ENOTSUP:
    case 0:
        return;
    }
    fprintf(stderr, "rblock: nbd %s: command %u at %" PRIu64 " length %u: %s\n",
            t->c->peer, r->type, r->off, r->len, rb_error_msg(err, ret));
}

/* ---- READ --------------------------------------------------------------- */

struct run {
    uint64_t off;
    uint64_t len;
    bool zero;
};

/* Split [off, off+len) into data and zero runs by block status.  Returns
 * the number of runs (>= 1); when look-ups fail, the rest is data. */
static unsigned map_runs(struct tx *t, uint64_t off, uint32_t len, struct run *runs)
{
    uint64_t pos = off, end = off + len, size = rb_export_size(t->e);
    unsigned n = 0;
    bool known;

    pthread_mutex_lock(&t->lock);
    known = t->data_lo <= off && end <= t->data_hi;
    pthread_mutex_unlock(&t->lock);
    if (known) {
        runs[0] = (struct run){off, len, false};
        return 1;
    }
    while (pos < end && n < NBD_MAX_READ_CHUNKS - 1) {
        struct rb_extent ext;
        uint64_t ask = size - pos;
        bool zero;

        /* Look ahead past the request (sequential readers then skip the
         * look-up for the next requests), but not without bound. */
        if (ask > end - pos + NBD_LOOKAHEAD_BYTES)
            ask = end - pos + NBD_LOOKAHEAD_BYTES;
        if (rb_export_block_status(t->e, RB_PROTO_NONE, pos, ask, &ext, NULL) < 0)
            break;
        zero = ext.flags & RB_BS_ZERO;
        if (!zero) {
            pthread_mutex_lock(&t->lock);
            t->data_lo = pos;
            t->data_hi = pos + ext.length;
            pthread_mutex_unlock(&t->lock);
        }
        if (ext.length > end - pos)
            ext.length = end - pos;
        if (n && runs[n - 1].zero == zero) {
            runs[n - 1].len += ext.length;
        } else {
            runs[n++] = (struct run){pos, ext.length, zero};
        }
        pos += ext.length;
    }
    if (pos < end) {
        if (n && !runs[n - 1].zero)
            runs[n - 1].len += end - pos;
        else
            runs[n++] = (struct run){pos, end - pos, false};
    }
    return n;
}

static void do_read(struct tx *t, const struct req *r, struct buf *b)
{
    struct rb_error err = {0};
    struct run runs[NBD_MAX_READ_CHUNKS];
    uint8_t hdrs[NBD_MAX_READ_CHUNKS][NBD_CHUNK_HDR_BYTES + 12];
    struct iovec iov[2 * NBD_MAX_READ_CHUNKS];
    unsigned nruns = 1, niov = 0;
    uint8_t *data;
    int ret = 0;

    data = buf_get(t->c->srv, b, r->len);
    if (!data) {
        reply_status(t, r, -ENOMEM, "out of memory");
        return;
    }
    if (!t->s->structured) {
        ret = rb_export_read(t->e, RB_PROTO_NBD, data, r->off, r->len, &err);
        log_error(t, r, ret, &err);
        if (ret < 0) {
            reply_status(t, r, ret, NULL);
            return;
        }
        simple_hdr(hdrs[0], 0, r->handle);
        iov[0] = (struct iovec){hdrs[0], NBD_SIMPLE_REPLY_BYTES};
        iov[1] = (struct iovec){data, r->len};
        rb_conn_sendv(t->c, iov, 2);
        return;
    }
    if (r->len == 0) {
        chunk_hdr(hdrs[0], NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->handle, 0);
        rb_conn_send(t->c, hdrs[0], NBD_CHUNK_HDR_BYTES);
        return;
    }
    /* Structured: holes and zeros go as OFFSET_HOLE chunks, unless the
     * client asked not to fragment (DF: one data chunk, zeros included). */
    if (r->flags & NBD_CMD_FLAG_DF)
        runs[0] = (struct run){r->off, r->len, false};
    else
        nruns = map_runs(t, r->off, r->len, runs);
    for (unsigned i = 0; i < nruns && ret == 0; i++) {
        uint8_t *dst = data + (runs[i].off - r->off);
        if (runs[i].zero)
            continue;
        ret = rb_export_read(t->e, RB_PROTO_NBD, dst, runs[i].off, runs[i].len, &err);
    }
    log_error(t, r, ret, &err);
    if (ret < 0) {
        reply_status(t, r, ret, "read failed");
        return;
    }
    for (unsigned i = 0; i < nruns; i++) {
        uint16_t flags = i + 1 == nruns ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t *h = hdrs[i];

        if (runs[i].zero) {
            chunk_hdr(h, flags, NBD_REPLY_TYPE_OFFSET_HOLE, r->handle, 12);
            put64(h + NBD_CHUNK_HDR_BYTES, runs[i].off);
            put32(h + NBD_CHUNK_HDR_BYTES + 8, (uint32_t)runs[i].len);
            iov[niov++] = (struct iovec){h, NBD_CHUNK_HDR_BYTES + 12};
        } else {
            chunk_hdr(h, flags, NBD_REPLY_TYPE_OFFSET_DATA, r->handle,
                      (uint32_t)(8 + runs[i].len));
            put64(h + NBD_CHUNK_HDR_BYTES, runs[i].off);
            iov[niov++] = (struct iovec){h, NBD_CHUNK_HDR_BYTES + 8};
            iov[niov++] = (struct iovec){data + (runs[i].off - r->off), runs[i].len};
        }
    }
    rb_conn_sendv(t->c, iov, (int)niov);
}

/* ---- BLOCK_STATUS ----------------------------------------------------------- */

struct desc {
    uint32_t n;
    uint8_t (*v)[8]; /* length, flags */
};

static void desc_add(struct desc *d, uint32_t len, uint32_t flags)
{
    if (d->n && get32(d->v[d->n - 1] + 4) == flags) {
        put32(d->v[d->n - 1], get32(d->v[d->n - 1]) + len);
        return;
    }
    put32(d->v[d->n], len);
    put32(d->v[d->n] + 4, flags);
    d->n++;
}

/* Descriptors of bitmap row @row from r->off: its own walk (a bitmap's
 * runs are not the image's extents).  Returns 0 or -errno. */
static int bitmap_status(struct tx *t, const struct req *r,
                         const struct nbd_meta_context *row, struct desc *d,
                         struct rb_error *err)
{
    uint64_t pos = r->off, end = r->off + r->len;
    int ret = 0;

    while (pos < end && d->n < NBD_MAX_DESCRIPTORS) {
        uint64_t bytes;
        bool dirty;

        ret = rb_export_bitmap_extent(t->e, RB_PROTO_NBD, row->bitmap, pos, end - pos,
                                      &dirty, &bytes, err);
        if (ret < 0)
            break;
        /* QEMU's docs/interop/nbd.txt: bit 0 of qemu:dirty-bitmap is "dirty" */
        desc_add(d, (uint32_t)bytes, dirty ? 1 : 0);
        pos += bytes;
        if (r->flags & NBD_CMD_FLAG_REQ_ONE)
            break;
    }
    return d->n ? 0 : ret;
}

static void do_block_status(struct tx *t, const struct req *r)
{
    struct rb_error err = {0};
    uint64_t pos = r->off, end = r->off + r->len;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;
    unsigned rows[8 * sizeof(nbd_meta_set)], n = 0, extent_rows = 0;
    bool full = false;
    int ret = 0;

    for (unsigned i = 0; i < nbd_meta_count(t->e); i++)
        if (t->s->meta & ((nbd_meta_set)1 << i))
            rows[n++] = i;
    /* One descriptor list per selected context, with its chunk header. */
    struct nbd_meta_context *ctx = malloc(n * sizeof(*ctx));
    uint8_t(*hdr)[NBD_CHUNK_HDR_BYTES + 4] = malloc(n * sizeof(*hdr));
    uint8_t(*av)[8] = malloc(n * NBD_MAX_DESCRIPTORS * sizeof(*av));
    struct desc *lists = calloc(n, sizeof(*lists));
    struct iovec *iov = malloc(2 * n * sizeof(*iov));

    if (!ctx || !hdr || !av || !lists || !iov) {
        reply_status(t, r, -ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned k = 0; k < n; k++) {
        lists[k].v = av + k * NBD_MAX_DESCRIPTORS;
        nbd_meta_row(t->e, rows[k], &ctx[k]);
        extent_rows += ctx[k].status_of != NULL;
    }
    /* Extent rows share one walk of extents until the range is covered or
     * a context's list is full; each list merges neighbours with equal
     * status.  A merged length cannot overflow: it is at most r->len. */
    for (unsigned i = 0; extent_rows && pos < end && i < NBD_MAX_DESCRIPTORS && !full; i++) {
        struct rb_extent ext;

        ret = rb_export_block_status(t->e, RB_PROTO_NBD, pos, end - pos, &ext, &err);
        if (ret < 0)
            break;
        for (unsigned k = 0; k < n; k++) {
            if (!ctx[k].status_of)
                continue;
            desc_add(&lists[k], (uint32_t)ext.length, ctx[k].status_of(&ext));
            full |= lists[k].n == NBD_MAX_DESCRIPTORS;
        }
        pos += ext.length;
        full |= one;
    }
    if (ret < 0 && extent_rows && pos == r->off) {
        log_error(t, r, ret, &err);
        reply_status(t, r, ret, "block status failed");
        goto out;
    }
    log_error(t, r, ret, &err);
    ret = 0;
    for (unsigned k = 0; k < n && ret == 0; k++)
        if (!ctx[k].status_of)
            ret = bitmap_status(t, r, &ctx[k], &lists[k], &err);
    if (ret < 0) {
        log_error(t, r, ret, &err);
        reply_status(t, r, ret, "bitmap status failed");
        goto out;
    }
    /* (A later failure just ends the reply early, as the spec allows.) */
    for (unsigned k = 0; k < n; k++) {
        chunk_hdr(hdr[k], k + 1 == n ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS,
                  r->handle, 4 + 8 * lists[k].n);
        put32(hdr[k] + NBD_CHUNK_HDR_BYTES, nbd_meta_id(rows[k]));
        iov[2 * k] = (struct iovec){hdr[k], sizeof(hdr[k])};
        iov[2 * k + 1] = (struct iovec){lists[k].v, 8 * (size_t)lists[k].n};
    }
    rb_conn_sendv(t->c, iov, (int)(2 * n));
out:
    free(iov);
    free(lists);
    free(av);
    free(hdr);
    free(ctx);
}

/* ---- dispatch ------------------------------------------------------------- */

static uint16_t allowed_flags(const struct tx *t, uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ:
        return NBD_CMD_FLAG_FUA | (t->s->structured ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE:
    case NBD_CMD_FLUSH:
    case NBD_CMD_TRIM:
    case NBD_CMD_CACHE:
        return NBD_CMD_FLAG_FUA;
    case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
        return 0;
    }
}

static bool in_range(const struct tx *t, const struct req *r)
{
    uint64_t end;

    return rb_add_ok(r->off, r->len, &end) && end <= rb_export_size(t->e);
}

/*
 * Everything a request must be before it runs, in one place (proto.md
 * "Request types" and "Command flags"): a known type the export
 * can run, flags valid for it, and a length and range the server promised
 * to accept.  Writes past the end and writes to a read-only export are
 * left to the export, which answers ENOSPC and EPERM as the spec asks of
 * them.  NULL when valid, else why not.
 */
static const char *validate_request(const struct tx *t, const struct req *r)
{
    if (r->type > NBD_CMD_BLOCK_STATUS || r->type == NBD_CMD_DISC)
        return "unknown command";
    if (r->flags & ~allowed_flags(t, r->type))
        return "flag not valid for this command";
    switch (r->type) {
    case NBD_CMD_READ:
        if (r->len > t->s->max_request_bytes)
            return "read larger than the maximum block size";
        if (!in_range(t, r))
            return "read past the end of the export";
        return NULL;
    case NBD_CMD_BLOCK_STATUS:
        if (!t->s->structured || !t->s->meta)
            return "no metadata context was negotiated";
        if (r->len == 0 || !in_range(t, r))
            return "block status range is empty or past the end";
        return NULL;
    default:
        return NULL;
    }
}

static void run_request(struct tx *t, const struct req *r, struct buf *b)
{
    struct rb_error err = {0};
    unsigned wflags = r->flags & NBD_CMD_FLAG_FUA ? RB_WRITE_FUA : 0;
    const char *invalid = validate_request(t, r);
    int ret;

    if (invalid) {
        reply_status(t, r, -EINVAL, invalid);
        return;
    }
    switch (r->type) {
    case NBD_CMD_READ:
        do_read(t, r, b);
        return;
    case NBD_CMD_WRITE:
        ret =
            rb_export_write(t->e, RB_PROTO_NBD, r->payload, r->off, r->len, wflags, &err);
        break;
    case NBD_CMD_FLUSH:
        ret = rb_export_flush(t->e, RB_PROTO_NBD, &err);
        break;
    case NBD_CMD_TRIM:
        ret = rb_export_trim(t->e, RB_PROTO_NBD, r->off, r->len, wflags, &err);
        break;
    case NBD_CMD_CACHE:
        ret = rb_export_cache(t->e, RB_PROTO_NBD, r->off, r->len, &err);
        break;
    case NBD_CMD_WRITE_ZEROES:
        if (!(r->flags & NBD_CMD_FLAG_NO_HOLE))
            wflags |= RB_ZERO_MAY_UNMAP;
        if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
            wflags |= RB_ZERO_FAST;
        ret = rb_export_write_zeroes(t->e, RB_PROTO_NBD, r->off, r->len, wflags, &err);
        break;
    case NBD_CMD_BLOCK_STATUS:
        do_block_status(t, r);
        return;
    default:
        ret = -EINVAL;
        break;
    }
    log_error(t, r, ret, &err);
    reply_status(t, r, ret, ret < 0 ? (err.code ? err.msg : "failed") : NULL);
}

/* ---- the worker pool ---------------------------------------------------------- */

static size_t req_bytes(const struct tx *t, const struct req *r)
{
    /* an oversize READ is refused before any buffer is made */
    if (r->len > t->s->max_request_bytes)
        return 0;
    return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_READ ? r->len : 0;
}

static void *worker(void *arg)
{
    struct tx *t = arg;
    struct buf b = {0};

    pthread_mutex_lock(&t->lock);
    for (;;) {
        struct req *r;

        while (!t->head && !t->stop) {
            t->idle++;
            pthread_cond_wait(&t->work, &t->lock);
            t->idle--;
        }
        if (!t->head)
            break; /* stop and nothing left */
        r = t->head;
        t->head = r->next;
        if (!t->head)
            t->tail = NULL;
        t->queued--;
        t->busy++;
        pthread_mutex_unlock(&t->lock);

        run_request(t, r, &b);
        buf_trim(t->c->srv, &b);

        size_t n = req_bytes(t, r);
        bool wake;
        req_free(t->c->srv, r);
        pthread_mutex_lock(&t->lock);
        t->busy--;
        t->bytes -= n;
        wake = t->reader_waits;
        pthread_mutex_unlock(&t->lock);
        rb_server_give(t->c->srv, n);
        if (wake)
            rb_conn_wake(t->c);
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    buf_put(t->c->srv, &b);
    return NULL;
}

/* Wait until the connection and the server have room for @r's bytes, and
 * count them.  Only the connection's own thread adds to t->bytes, so the
 * room it waited for is still there.  Returns 0, or -ECONNRESET (-errno)
 * when the client went away meanwhile: nothing counted. */
static int admit(struct tx *t, struct req *r)
{
    size_t n = req_bytes(t, r);
    int ret;

    for (;;) {
        bool full;

        pthread_mutex_lock(&t->lock);
        full = t->queued + t->busy > 0 && (t->queued + t->busy >= NBD_MAX_INFLIGHT ||
                                           t->bytes + n > NBD_MAX_INFLIGHT_BYTES);
        t->reader_waits = full;
        pthread_mutex_unlock(&t->lock);
        if (!full)
            break;
        /* A worker that finishes a request after the check above sees
         * reader_waits and wakes us; that wake is not lost (rb_conn_wait). */
        if ((ret = rb_conn_wait(t->c)) < 0)
            return ret;
    }
    if ((ret = rb_server_take(t->c, n, &t->bytes)) < 0)
        return ret;
    t->bytes += n;
    return 0;
}

/* Give back what admit() counted for @r (a request that will not run). */
static void unadmit(struct tx *t, struct req *r)
{
    size_t n = req_bytes(t, r);

    pthread_mutex_lock(&t->lock);
    t->bytes -= n;
    pthread_mutex_unlock(&t->lock);
    rb_server_give(t->c->srv, n);
}

/* The client is gone: drop the requests no worker has started, giving
 * back their budget (t->stop is set: the workers end when idle). */
static void drop_queued(struct tx *t)
{
    struct req *r;

    pthread_mutex_lock(&t->lock);
    r = t->head;
    t->head = t->tail = NULL;
    t->queued = 0;
    pthread_mutex_unlock(&t->lock);
    while (r) {
        struct req *next = r->next;

        unadmit(t, r);
        req_free(t->c->srv, r);
        r = next;
    }
}

/* Answer what was queued: wait until the workers have run it all, or the
 * client is gone (then -ECONNRESET). */
static int drain(struct tx *t)
{
    for (;;) {
        bool done;
        int ret;

        pthread_mutex_lock(&t->lock);
        done = t->queued + t->busy == 0;
        t->reader_waits = !done;
        pthread_mutex_unlock(&t->lock);
        if (done)
            return 0;
        if ((ret = rb_conn_wait(t->c)) < 0)
            return ret;
    }
}

/* Queue admitted @r, starting a worker when none is idle. */
static void enqueue(struct tx *t, struct req *r)
{
    struct buf b = {0};

    pthread_mutex_lock(&t->lock);
    r->next = NULL;
    if (t->tail)
        t->tail->next = r;
    else
        t->head = r;
    t->tail = r;
    t->queued++;
    if (t->idle < t->queued && t->nworkers < NBD_WORKERS &&
        pthread_create(&t->workers[t->nworkers], NULL, worker, t) == 0)
        t->nworkers++;
    if (t->nworkers == 0) {
        /* Not even one worker could start: run it here, in order. */
        t->head = t->tail = NULL;
        t->queued--;
        pthread_mutex_unlock(&t->lock);
        run_request(t, r, &b);
        buf_put(t->c->srv, &b);
        unadmit(t, r);
        req_free(t->c->srv, r);
        return;
    }
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
}

/* Read exactly @len bytes, through the read-ahead buffer @x when there is
 * one: 0, -ECONNRESET at end of stream, or -errno (as rb_conn_recv). */
static int tx_recv(struct tx *t, struct rx *x, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        size_t n = x->len - x->pos;
        long got;

        if (n > 0) {
            if (n > len)
                n = len;
            memcpy(p, x->p + x->pos, n);
            x->pos += n;
            p += n;
            len -= n;
            continue;
        }
        if (!x->p || t->c->tr || x->exact || len >= NBD_RX_BYTES / 2)
            return rb_conn_recv(t->c, p, len); /* large: straight in */
        got = recv(t->c->fd, x->p, NBD_RX_BYTES, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0)
            return -errno;
        if (got == 0)
            return -ECONNRESET;
        x->pos = 0;
        x->len = (size_t)got;
    }
    return 0;
}

/* Read one request.  Returns 1 for a request, 0 for NBD_CMD_DISC, -errno
 * when the connection is to be dropped. */
static int read_request(struct tx *t, struct rx *x, struct req **out)
{
    uint8_t h[NBD_REQUEST_BYTES];
    struct req *r;
    int ret = tx_recv(t, x, h, sizeof(h));

    if (ret)
        return ret;
    if (get32(h) != NBD_REQUEST_MAGIC)
        return -EPROTO;
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->flags = get16(h + 4);
    r->type = get16(h + 6);
    r->handle = get64(h + 8);
    r->off = get64(h + 16);
    r->len = get32(h + 24);
    x->exact = r->type == NBD_CMD_WRITE && r->len >= NBD_RX_BYTES / 2;
    if (r->type == NBD_CMD_DISC) {
        free(r);
        return 0;
    }
    if (r->type == NBD_CMD_WRITE) {
        /* The payload follows whatever we think of the request; one we
         * will not buffer leaves the stream unusable: hang up. */
        if (r->len > t->s->max_request_bytes) {
            free(r);
            return -E2BIG;
        }
    }
    *out = r;
    return 1;
}

/* Receive the payload of admitted WRITE @r. */
static int read_payload(struct tx *t, struct rx *x, struct req *r)
{
    if (r->type != NBD_CMD_WRITE)
        return 0;
    /* Page-aligned, as the read buffers (see buf_get). */
    r->payload = rb_server_buf_take(t->c->srv, r->len, &r->payload_cap);
    if (!r->payload)
        return -ENOMEM;
    return tx_recv(t, x, r->payload, r->len);
}

/* May @r run on the reader?  Small READ and WRITE without FUA, unless the
 * last inline request waited for the disk (then a few go to workers). */
static bool inline_ok(struct inl *in, const struct req *r)
{
    if (r->type != NBD_CMD_READ && r->type != NBD_CMD_WRITE)
        return false;
    if (r->len > NBD_INLINE_MAX_BYTES || (r->flags & NBD_CMD_FLAG_FUA))
        return false;
    if (in->backoff) {
        in->backoff--;
        return false;
    }
    return true;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Run @r on the reader: receive its payload into the reader's buffer, run
 * it, answer it.  Frees @r.  Returns 0, or -errno when the connection is
 * to be dropped (the payload could not be read). */
static int run_inline(struct tx *t, struct inl *in, struct req *r)
{
    uint64_t t0;
    int ret = 0;

    if (r->type == NBD_CMD_WRITE) {
        r->payload = buf_get(t->c->srv, &in->wbuf, NBD_INLINE_MAX_BYTES);
        ret = r->payload ? tx_recv(t, &in->rx, r->payload, r->len) : -ENOMEM;
    }
    /* a client seen gone (a reply failed) has its requests dropped */
    if (ret == 0 && !atomic_load(&t->c->broken)) {
        t0 = now_ns();
        run_request(t, r, &in->rbuf);
        if (now_ns() - t0 > NBD_INLINE_SLOW_NS)
            in->backoff = NBD_INLINE_BACKOFF;
    }
    free(r);
    return ret;
}

void nbd_transmission(struct rb_conn *c, const struct nbd_session *s)
{
    struct tx t = {.c = c, .s = s, .e = s->export};
    struct inl in = {0};
    bool gone = false, disc = false;

    pthread_mutex_init(&t.lock, NULL);
    pthread_cond_init(&t.work, NULL);
    if (!c->tr) /* TLS: none, plain reads */
        in.rx.p = buf_get(c->srv, &in.rxbuf, NBD_RX_BYTES);
    for (;;) {
        struct req *r = NULL;
        int ret = read_request(&t, &in.rx, &r);

        if (ret > 0 && inline_ok(&in, r)) {
            ret = run_inline(&t, &in, r);
            if (ret == 0 && !atomic_load(&c->broken))
                continue;
            if (ret == 0)
                ret = -EPIPE;
        } else if (ret > 0) {
            ret = admit(&t, r);
            if (ret < 0) {
                rb_conn_abort(c); /* gone, or waiting failed: hang up */
            } else if ((ret = read_payload(&t, &in.rx, r)) < 0) {
                unadmit(&t, r);
            } else {
                enqueue(&t, r); /* the queue owns @r now */
                /* (a reset client's requests may still be read) */
                if (!atomic_load(&c->broken))
                    continue;
                ret = -EPIPE;
                r = NULL;
            }
            if (r)
                req_free(c->srv, r);
        }
        /* DISC: every request before it is run (the spec asks it), also
         * if the client does not wait for the replies; it had at most
         * one window (NBD_MAX_INFLIGHT*) queued.  (A client seen gone
         * before its DISC was read is gone.)  A broken protocol: hang
         * up.  The client is gone (a reset, a failed send): drop what it
         * queued.  End of stream: answer what is queued while the client
         * is there to read it (it may have closed only its sending side). */
        if (ret == -EPROTO || ret == -E2BIG)
            rb_conn_abort(c);
        disc = ret == 0;
        gone = !disc && rb_conn_gone(c);
        break;
    }
    pthread_mutex_lock(&t.lock);
    t.stop = true;
    pthread_cond_broadcast(&t.work);
    pthread_mutex_unlock(&t.lock);
    if (!disc && !gone && drain(&t) < 0) {
        rb_conn_abort(c); /* gone, or waiting failed: hang up */
        gone = true;
    }
    if (gone) {
        drop_queued(&t);
        /* A new client may take the slot now; the requests running
         * finish first, and the workers are joined before we return. */
        rb_conn_release(c);
    }
    for (unsigned i = 0; i < t.nworkers; i++)
        pthread_join(t.workers[i], NULL);
    buf_put(c->srv, &in.rbuf);
    buf_put(c->srv, &in.wbuf);
    buf_put(c->srv, &in.rxbuf);
    pthread_cond_destroy(&t.work);
    pthread_mutex_destroy(&t.lock);
}
