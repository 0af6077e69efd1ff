/* SPDX-License-Identifier: MIT */
/*
 * fuzz_jsonrpc.c - libFuzzer target: the input is what a client sends to
 * the JSON-RPC server.  It runs the real framing loop (rb_rpc_serve_fd)
 * with a small line cap on one end of a socketpair, over a backend on a
 * 1 MiB raw export in a memfd (server/core/exports.c, as served); a
 * thread writes the input and closes, another drains the replies.  Each
 * complete line is also handed to rb_rpc_handle directly.  The input's
 * first byte picks read-only or writable.
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fuzz_common.h"
#include "core/export.h"
#include "jsonrpc/framing.h"
#include "jsonrpc/rpc.h"

#define EXPORT_BYTES (1u << 20)

static struct rb_export *ex;

static uint64_t b_size(void *o) { return rb_export_size(o); }
static bool b_ro(void *o) { return rb_export_read_only(o); }
static int b_read(void *o, void *buf, uint64_t off, size_t len, struct rb_error *err)
{
    return rb_export_read(o, RB_PROTO_JSONRPC, buf, off, len, err);
}
static int b_write(void *o, const void *buf, uint64_t off, size_t len, unsigned flags,
                   struct rb_error *err)
{
    return rb_export_write(o, RB_PROTO_JSONRPC, buf, off, len, flags, err);
}
static int b_zero(void *o, uint64_t off, uint64_t len, unsigned flags, struct rb_error *err)
{
    return rb_export_write_zeroes(o, RB_PROTO_JSONRPC, off, len, flags, err);
}
static int b_trim(void *o, uint64_t off, uint64_t len, struct rb_error *err)
{
    return rb_export_trim(o, RB_PROTO_JSONRPC, off, len, 0, err);
}
static int b_flush(void *o, struct rb_error *err)
{
    return rb_export_flush(o, RB_PROTO_JSONRPC, err);
}
static int b_bs(void *o, uint64_t off, uint64_t len, struct rb_extent *ext,
                struct rb_error *err)
{
    return rb_export_block_status(o, RB_PROTO_JSONRPC, off, len, ext, err);
}
static json_t *b_info(void *o, bool chain, struct rb_error *err)
{
    return json_pack("{s:s, s:I}", "format", rb_export_format(o), "virtual-size",
                     (json_int_t)rb_export_size(o));
}
static json_t *b_check(void *o, struct rb_error *err)
{
    return json_pack("{s:i}", "corruptions", 0);
}
static json_t *b_stats(void *o, struct rb_error *err)
{
    struct rb_proto_stats st;
    rb_export_stats(o, RB_PROTO_JSONRPC, &st);
    return json_pack("{s:I}", "requests", (json_int_t)st.requests);
}

static const struct rb_rpc_backend_ops ops = {
    .size = b_size, .read_only = b_ro, .read = b_read, .write = b_write,
    .write_zeroes = b_zero, .trim = b_trim, .flush = b_flush, .block_status = b_bs,
    .info = b_info, .check = b_check, .stats = b_stats,
};

struct feed {
    int fd;
    const uint8_t *data;
    size_t size, done;
};

/* Send what fits without blocking; true when all of it went. */
static bool feed_now(struct feed *f)
{
    while (f->done < f->size) {
        ssize_t n = send(f->fd, f->data + f->done, f->size - f->done,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        f->done += (size_t)n;
    }
    shutdown(f->fd, SHUT_WR);
    return true;
}

static void *writer(void *arg)
{
    struct feed *f = arg;
    size_t done = f->done;

    while (done < f->size) {
        ssize_t n = send(f->fd, f->data + done, f->size - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

static void *drainer(void *arg)
{
    static __thread char buf[1 << 16];
    int fd = *(int *)arg;

    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rb_export_config cfg = {.format = "raw", .name = "fuzz"};
    struct rb_rpc_limits lim = {.max_line = 4096, .max_backlog = 1u << 20,
                                .send_timeout_ms = 5000};
    struct rb_error err = {0};
    struct rb_rpc_backend be;
    pthread_t wt, dt;
    char path[64];
    int sv[2], mfd;

    if (size < 1)
        return 0;
    cfg.read_only = data[0] & 1;
    data++;
    size--;

    mfd = fuzz_memfd("fuzz.raw", NULL, EXPORT_BYTES, 0, path);
    if (pwrite(mfd, "rblock", 6, 65536) != 6)
        abort();
    cfg.path = path;
    fuzz_sandbox = true;
    ex = rb_export_open(&cfg, &err);
    if (!ex) {
        fprintf(stderr, "fuzz_jsonrpc: %s\n", rb_error_msg(&err, -EIO));
        abort();
    }
    be.ops = &ops;
    be.opaque = ex;

    /* Each line straight through the envelope (no framing). */
    for (size_t start = 0; start < size;) {
        const uint8_t *nl = memchr(data + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - data) : size;
        char *out = NULL;
        size_t out_len = 0;

        rb_rpc_handle(&be, (const char *)data + start, end - start, &out, &out_len);
        free(out);
        start = end + 1;
    }

    /* The same bytes over a socket, framed. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    /* What fits the socket buffer goes in at once; a thread sends the rest. */
    struct feed f = {sv[1], data, size, 0};
    bool inline_write = feed_now(&f);
    if ((!inline_write && pthread_create(&wt, NULL, writer, &f)) ||
        pthread_create(&dt, NULL, drainer, &sv[1]))
        abort();
    rb_rpc_serve_fd(sv[0], &be, &lim);
    shutdown(sv[0], SHUT_RDWR);
    if (!inline_write)
        pthread_join(wt, NULL);
    pthread_join(dt, NULL);
    close(sv[0]);
    close(sv[1]);

    rb_export_close(ex, NULL);
    fuzz_sandbox = false;
    close(mfd);
    return 0;
}
