/* SPDX-License-Identifier: MIT */
/*
 * framing.h - newline-delimited JSON on a stream socket: one request (or
 * batch) per line in, one response per line out.
 *
 * The input and output buffers are plain memory logic (unit-tested on
 * buffers); rb_rpc_serve_fd runs them over a socket with poll().
 *
 * Bounds, per connection:
 *   - input: at most max_line + RB_RPC_READ_CHUNK bytes buffered; a line
 *     longer than max_line is answered with one -32700 error and skipped
 *     up to its newline (the connection stays usable);
 *   - output: replies not yet taken by the client.  When another request
 *     arrives while more than max_backlog bytes of replies wait unread,
 *     the client is disconnected (it does not read its replies; one reply,
 *     however large, is always let through); pending output that makes no progress
 *     for send_timeout_ms disconnects it too.  So memory stays under
 *     max_line + max_backlog + one reply, and a stuck client costs a
 *     thread for at most send_timeout_ms.
 */
#ifndef RBLOCK_RPC_FRAMING_H
#define RBLOCK_RPC_FRAMING_H

#include <stdbool.h>
#include <stddef.h>

#include "jsonrpc/rpc.h"

#define RB_RPC_READ_CHUNK (64u << 10)
#define RB_RPC_DEFAULT_MAX_BACKLOG (8u << 20)
#define RB_RPC_DEFAULT_SEND_TIMEOUT_MS 30000

/* ---- input: bytes in, lines out ---------------------------------------- */

struct rb_rpc_in {
    char *buf;
    size_t start;   /* first unconsumed byte */
    size_t len;     /* unconsumed bytes from start */
    size_t scanned; /* bytes from start known to hold no newline */
    size_t cap;
    size_t max_line;
    bool skipping; /* inside an over-long line: drop up to its newline */
};

enum rb_rpc_in_event {
    RB_RPC_IN_NONE,     /* no complete line buffered: read more */
    RB_RPC_IN_LINE,     /* *line, *len: a line without its "\n" */
    RB_RPC_IN_TOO_LONG, /* a line passed max_line bytes; it is being skipped */
};

/* Set up with a line cap (bytes, without the newline).  No allocation. */
void rb_rpc_in_init(struct rb_rpc_in *in, size_t max_line);
void rb_rpc_in_free(struct rb_rpc_in *in);

/* Free space to read into: at least 1 byte (up to RB_RPC_READ_CHUNK),
 * growing the buffer as needed, never past max_line + RB_RPC_READ_CHUNK.
 * Returns 0 or -ENOMEM.  Call only after rb_rpc_in_next said NONE. */
int rb_rpc_in_space(struct rb_rpc_in *in, char **p, size_t *room);
/* @n bytes were written at the space returned. */
void rb_rpc_in_added(struct rb_rpc_in *in, size_t n);

/* The next event.  A LINE stays valid until the next call. */
enum rb_rpc_in_event rb_rpc_in_next(struct rb_rpc_in *in, const char **line, size_t *len);

/* ---- output: replies queued for the socket ----------------------------- */

struct rb_rpc_out {
    char *buf;
    size_t start, len, cap;
};

void rb_rpc_out_init(struct rb_rpc_out *out);
void rb_rpc_out_free(struct rb_rpc_out *out);
/* Queue @n bytes.  Returns 0 or -ENOMEM. */
int rb_rpc_out_append(struct rb_rpc_out *out, const char *p, size_t n);
/* @n bytes of the pending ones were sent. */
void rb_rpc_out_consumed(struct rb_rpc_out *out, size_t n);

static inline size_t rb_rpc_out_pending(const struct rb_rpc_out *out)
{
    return out->len;
}

static inline const char *rb_rpc_out_data(const struct rb_rpc_out *out)
{
    return out->buf + out->start;
}

/* ---- a connection ------------------------------------------------------ */

struct rb_rpc_limits {
    size_t max_line;          /* 0: RB_RPC_MAX_LINE (also HTTP's largest body) */
    size_t max_backlog;       /* 0: RB_RPC_DEFAULT_MAX_BACKLOG */
    unsigned send_timeout_ms; /* 0: RB_RPC_DEFAULT_SEND_TIMEOUT_MS */
    unsigned http_timeout_ms; /* 0: RB_HTTP_DEFAULT_TIMEOUT_MS */
    /* -v: the client's address; every HTTP error status is then logged
     * on stderr ("rblock: jsonrpc PEER: HTTP 404: not found").  NULL: not. */
    const char *log_peer;
};

/* HTTP (http.c): request line and headers, header lines, and the time one
 * request may take from its first byte to its last. */
#define RB_HTTP_MAX_HEAD (16u << 10)
#define RB_HTTP_MAX_HEADERS 100
#define RB_HTTP_DEFAULT_TIMEOUT_MS 30000

/* Why a connection ended. */
enum rb_rpc_end {
    RB_RPC_END_EOF,     /* the client closed (or the server shut it down) */
    RB_RPC_END_ERROR,   /* a socket error */
    RB_RPC_END_BACKLOG, /* replies piled up unread past max_backlog */
    RB_RPC_END_TIMEOUT, /* pending replies made no progress in time */
    RB_RPC_END_NOMEM,   /* out of memory */
};

/*
 * Serve JSON-RPC on the connected stream socket @fd until the client
 * closes it (or the server shuts it down: after SHUT_RD the replies
 * already due are still sent).  Sets O_NONBLOCK on @fd; does not close it.
 */
enum rb_rpc_end rb_rpc_serve_fd(int fd, const struct rb_rpc_backend *be,
                                const struct rb_rpc_limits *lim);

/* Does a stream starting with @p (@n bytes) speak HTTP?  1 yes (an
 * HTTP method and a space), 0 no, -1 cannot tell yet (a prefix of one). */
int rb_rpc_sniff_http(const char *p, size_t n);

/*
 * JSON-RPC over HTTP/1.1 (http.c) on @fd (non-blocking), the first
 * @pre_len bytes of the stream already read into @pre.  rb_rpc_serve_fd
 * hands a connection over when it starts with an HTTP method and a space.
 */
enum rb_rpc_end rb_rpc_serve_http(int fd, const struct rb_rpc_backend *be,
                                  const struct rb_rpc_limits *lim, const char *pre,
                                  size_t pre_len);

#endif
