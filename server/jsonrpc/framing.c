/* SPDX-License-Identifier: MIT */
/*
 * framing.c - newline-delimited JSON over a stream socket, with bounded
 * buffers both ways (see framing.h for the bounds and why).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "jsonrpc/framing.h"

/* A buffer that grew for one big line shrinks back once it is empty. */
#define IN_SMALL (RB_RPC_READ_CHUNK * 2)
#define OUT_SMALL (256u << 10)

void rb_rpc_in_init(struct rb_rpc_in *in, size_t max_line)
{
    memset(in, 0, sizeof(*in));
    in->max_line = max_line;
}

void rb_rpc_in_free(struct rb_rpc_in *in)
{
    free(in->buf);
    in->buf = NULL;
    in->cap = in->len = in->start = in->scanned = 0;
}

int rb_rpc_in_space(struct rb_rpc_in *in, char **p, size_t *room)
{
    size_t need, cap_max = in->max_line + RB_RPC_READ_CHUNK;

    if (in->len == 0 && in->cap > IN_SMALL) {
        free(in->buf);
        in->buf = NULL;
        in->cap = 0;
    }
    if (in->len == 0)
        in->start = 0;
    /* Move the unconsumed tail to the front before growing. */
    if (in->start > 0 && in->cap - in->start - in->len < RB_RPC_READ_CHUNK) {
        memmove(in->buf, in->buf + in->start, in->len);
        in->start = 0;
    }
    need = in->len + RB_RPC_READ_CHUNK;
    if (need > cap_max)
        need = cap_max; /* len <= max_line here, so room stays >= 1 */
    if (in->cap < need) {
        size_t cap = in->cap ? in->cap : IN_SMALL;
        while (cap < need)
            cap *= 2;
        if (cap > cap_max)
            cap = cap_max;
        char *b = realloc(in->buf, cap);
        if (!b)
            return -ENOMEM;
        in->buf = b;
        in->cap = cap;
    }
    *p = in->buf + in->start + in->len;
    *room = in->cap - in->start - in->len;
    if (*room > RB_RPC_READ_CHUNK)
        *room = RB_RPC_READ_CHUNK;
    return 0;
}

void rb_rpc_in_added(struct rb_rpc_in *in, size_t n)
{
    in->len += n;
}

enum rb_rpc_in_event rb_rpc_in_next(struct rb_rpc_in *in, const char **line, size_t *len)
{
    if (!in->buf) /* nothing read yet (NULL + 0 is undefined in C) */
        return RB_RPC_IN_NONE;
    for (;;) {
        char *base = in->buf + in->start;
        char *nl = in->len > in->scanned
                       ? memchr(base + in->scanned, '\n', in->len - in->scanned)
                       : NULL;

        if (!nl) {
            in->scanned = in->len;
            if (in->skipping) {
                in->start = in->len = in->scanned = 0; /* drop as it comes */
                return RB_RPC_IN_NONE;
            }
            if (in->len > in->max_line) {
                in->start = in->len = in->scanned = 0;
                in->skipping = true;
                return RB_RPC_IN_TOO_LONG;
            }
            return RB_RPC_IN_NONE;
        }
        size_t n = (size_t)(nl - base);
        in->start += n + 1;
        in->len -= n + 1;
        in->scanned = 0;
        if (in->skipping) { /* the end of the over-long line */
            in->skipping = false;
            continue;
        }
        if (n > in->max_line) {
            /* Arrived whole in one read: same answer as when it trickles. */
            return RB_RPC_IN_TOO_LONG;
        }
        *line = base;
        *len = n;
        return RB_RPC_IN_LINE;
    }
}

void rb_rpc_out_init(struct rb_rpc_out *out)
{
    memset(out, 0, sizeof(*out));
}

void rb_rpc_out_free(struct rb_rpc_out *out)
{
    free(out->buf);
    memset(out, 0, sizeof(*out));
}

int rb_rpc_out_append(struct rb_rpc_out *out, const char *p, size_t n)
{
    if (out->len == 0)
        out->start = 0;
    if (out->cap - out->start - out->len < n && out->start > 0) {
        memmove(out->buf, out->buf + out->start, out->len);
        out->start = 0;
    }
    if (out->cap - out->len < n) {
        size_t cap = out->cap ? out->cap : 4096;
        while (cap - out->len < n)
            cap *= 2;
        char *b = realloc(out->buf, cap);
        if (!b)
            return -ENOMEM;
        out->buf = b;
        out->cap = cap;
    }
    memcpy(out->buf + out->start + out->len, p, n);
    out->len += n;
    return 0;
}

void rb_rpc_out_consumed(struct rb_rpc_out *out, size_t n)
{
    out->start += n;
    out->len -= n;
    if (out->len == 0) {
        out->start = 0;
        if (out->cap > OUT_SMALL) {
            free(out->buf);
            out->buf = NULL;
            out->cap = 0;
        }
    }
}

/* ---- the socket loop ---------------------------------------------------- */

int rb_rpc_sniff_http(const char *p, size_t n)
{
    /* RFC 9110's methods, each followed by a space: random bytes (or a
     * JSON text) start so with a chance of 2^-32 at most. */
    static const char *const methods[] = {"GET ",     "POST ",    "HEAD ",  "PUT ",
                                          "DELETE ",  "OPTIONS ", "PATCH ", "TRACE ",
                                          "CONNECT "};

    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        size_t m = strlen(methods[i]);
        if (memcmp(p, methods[i], n < m ? n : m) == 0)
            return n >= m ? 1 : -1;
    }
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Handle one event of the input; queue the reply.  0 or -ENOMEM. */
static int handle(const struct rb_rpc_backend *be, struct rb_rpc_out *out,
                  enum rb_rpc_in_event ev, const char *line, size_t len, size_t max_line)
{
    char *resp;
    size_t n;
    int ret;

    if (ev == RB_RPC_IN_TOO_LONG) {
        char msg[256];
        int k =
            snprintf(msg, sizeof(msg),
                     "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":%d,\"message\":\"parse "
                     "error: line longer than %zu bytes; skipped up to its newline\"},"
                     "\"id\":null}\n",
                     RB_RPC_PARSE_ERROR, max_line);
        return rb_rpc_out_append(out, msg, (size_t)k);
    }
    ret = rb_rpc_handle(be, line, len, &resp, &n);
    if (ret < 0)
        return ret;
    if (resp) {
        ret = rb_rpc_out_append(out, resp, n);
        free(resp);
    }
    return ret;
}

enum rb_rpc_end rb_rpc_serve_fd(int fd, const struct rb_rpc_backend *be,
                                const struct rb_rpc_limits *lim)
{
    size_t max_line = lim && lim->max_line ? lim->max_line : RB_RPC_MAX_LINE;
    size_t max_backlog =
        lim && lim->max_backlog ? lim->max_backlog : RB_RPC_DEFAULT_MAX_BACKLOG;
    unsigned timeout_ms = lim && lim->send_timeout_ms ? lim->send_timeout_ms
                                                      : RB_RPC_DEFAULT_SEND_TIMEOUT_MS;
    enum rb_rpc_end end = RB_RPC_END_EOF;
    struct rb_rpc_in in;
    struct rb_rpc_out out;
    long long progress_ms = 0; /* last time pending output moved */
    bool eof = false, sniffing = true;
    int fl;

    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return RB_RPC_END_ERROR;
    rb_rpc_in_init(&in, max_line);
    rb_rpc_out_init(&out);

    for (;;) {
        enum rb_rpc_in_event ev;
        const char *line;
        size_t len;

        /* Every complete line, answered in order. */
        for (;;) {
            ev = rb_rpc_in_next(&in, &line, &len);
            if (ev == RB_RPC_IN_NONE) {
                if (!eof || in.len == 0 || in.skipping)
                    break;
                /* The last line had no newline: take it all the same. */
                ev = RB_RPC_IN_LINE;
                line = in.buf + in.start;
                len = in.len;
                in.len = 0;
            }
            /* Another request while the replies pile up unread. */
            if (rb_rpc_out_pending(&out) > max_backlog) {
                end = RB_RPC_END_BACKLOG;
                goto done;
            }
            bool was_idle = rb_rpc_out_pending(&out) == 0;
            if (handle(be, &out, ev, line, len, max_line) < 0) {
                end = RB_RPC_END_NOMEM;
                goto done;
            }
            if (was_idle)
                progress_ms = now_ms();
        }

        /* Send what we can without blocking. */
        while (rb_rpc_out_pending(&out)) {
            ssize_t n = send(fd, rb_rpc_out_data(&out), rb_rpc_out_pending(&out),
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                rb_rpc_out_consumed(&out, (size_t)n);
                progress_ms = now_ms();
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else {
                end = RB_RPC_END_ERROR;
                goto done;
            }
        }
        if (eof && !rb_rpc_out_pending(&out))
            break;

        struct pollfd pfd = {.fd = fd};
        int wait_ms = -1;
        if (!eof)
            pfd.events |= POLLIN;
        if (rb_rpc_out_pending(&out)) {
            long long left = progress_ms + timeout_ms - now_ms();
            if (left <= 0) {
                end = RB_RPC_END_TIMEOUT;
                goto done;
            }
            pfd.events |= POLLOUT;
            wait_ms = (int)left;
        }
        int r = poll(&pfd, 1, wait_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            end = RB_RPC_END_ERROR;
            goto done;
        }
        if (r == 0 || eof || !(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
            continue; /* timeouts are judged at the top */

        char *p;
        size_t room;
        if (rb_rpc_in_space(&in, &p, &room) < 0) {
            end = RB_RPC_END_NOMEM;
            goto done;
        }
        ssize_t n = recv(fd, p, room, MSG_DONTWAIT);
        if (n > 0) {
            rb_rpc_in_added(&in, (size_t)n);
            if (sniffing) {
                /* An HTTP request line where JSON would start with '{',
                 * '[' or white space: the same listener speaks HTTP/1.1. */
                int h = rb_rpc_sniff_http(in.buf + in.start, in.len);
                if (h > 0) {
                    end = rb_rpc_serve_http(fd, be, lim, in.buf + in.start, in.len);
                    goto done;
                }
                sniffing = h < 0;
            }
        } else if (n == 0) {
            eof = true; /* answer what is buffered, then end */
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            end = RB_RPC_END_ERROR;
            goto done;
        }
    }
done:
    rb_rpc_in_free(&in);
    rb_rpc_out_free(&out);
    return end;
}
