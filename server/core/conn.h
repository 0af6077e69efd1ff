/* SPDX-License-Identifier: MIT */
/*
 * conn.h - protocols, the server, and client connections.
 *
 * A protocol (server/nbd, server/jsonrpc) is a struct rb_protocol: a name,
 * a statistics slot and one function, serve(), that runs a whole
 * connection on its own thread and returns when the connection is over.
 * Listeners (listen.h) carry the protocol of the clients they accept; the
 * core knows nothing else about a protocol, and a protocol reaches the
 * image only through export.h.  Adding a protocol means: write its
 * serve(), define its struct rb_protocol, and let cmd/serve.c attach it
 * to listeners (rb_listener_add).
 *
 * A connection's I/O goes through rb_conn_recv / rb_conn_send*, which
 * honour the handshake deadline and serialise replies from several
 * threads (a per-connection send lock), so a protocol may answer
 * requests out of order from worker threads.
 *
 * A connection holds a slot of --max-connections from rb_conn_start until
 * rb_conn_release: when it is evicted, when its protocol sees that the
 * client is gone (rb_conn_gone), or at the latest when its thread ends.
 * The connection itself (struct rb_conn, its socket and thread) lives on
 * until serve() returns, so the protocol's workers may still use it.
 */
#ifndef RBLOCK_SERVER_CONN_H
#define RBLOCK_SERVER_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

#include "core/export.h"

struct rb_conn;
struct rb_server;
struct rb_tls;

struct rb_protocol {
    const char *name;       /* "nbd", "jsonrpc" */
    enum rb_proto_id id;    /* statistics slot */
    /* True when a new connection gets the server's handshake deadline:
     * reads fail with -ETIMEDOUT once it passes, until the protocol calls
     * rb_conn_handshake_done. */
    bool handshake_deadline;
    /* True when a new connection starts evictable (as one in its
     * handshake) but without a deadline, until rb_conn_handshake_done:
     * for protocols without a handshake (JSON-RPC: until the first real
     * request).  rb_conn_recv applies no deadline to it. */
    bool evictable_until_done;
    /* Run the connection; the core closes the socket afterwards.  Must
     * return when rb_conn_recv fails (the core shuts the socket down at
     * quit, so reads fail). */
    void (*serve)(struct rb_conn *conn);
};

/* Threads kept for the next connection, and how long each waits. */
#define RB_IDLE_THREADS 16
#define RB_IDLE_MS 10000
/* Buffers rb_server_buf_give keeps, and the largest it keeps. */
#define RB_STASH_BUFFERS 32
#define RB_STASH_MAX_BYTES ((size_t)256 << 10)

/* Server-wide settings and state shared by every connection. */
struct rb_server {
    /* Counts the connections of every protocol (an export without an
     * image, rb_export_bare); the exports themselves are in @exports. */
    struct rb_export *export;
    struct rb_exports *exports;
    /* -v: one line on stderr per connection, refusal and error. */
    bool verbose;
    unsigned max_connections;     /* 0 = RB_DEFAULT_MAX_CONNECTIONS */
    unsigned handshake_timeout_ms; /* 0 = RB_DEFAULT_HANDSHAKE_MS */
    /* Transport hooks for TLS: NULL for plain sockets. */
    const struct rb_transport *transport;
    /* TLS credentials and mode (core/tls.h), NULL without --tls. */
    struct rb_tls *tls;
    /* Per-protocol settings owned by cmd/serve.c, read by the protocol. */
    void *proto_config[RB_PROTO_COUNT];
    /* Request data (NBD read and write payloads) buffered for all
     * connections together; 0 = RB_DEFAULT_MAX_INFLIGHT_BYTES. */
    size_t max_inflight_bytes;

    /* Private to conn.c. */
    pthread_mutex_t lock;
    pthread_cond_t gone;   /* signalled when a connection ends */
    struct rb_conn *conns; /* list of live connections (their threads) */
    unsigned nconns;
    /* Of which released (rb_conn_release: evicted, or the client is
     * gone): they no longer count against max_connections, but their
     * thread is still finishing the requests it had started. */
    unsigned nreleased;
    uint64_t next_id;
    pthread_mutex_t budget_lock;
    struct rb_conn *budget_waiters; /* waiting in rb_server_take */
    size_t inflight_bytes;          /* taken from max_inflight_bytes */
    /* Threads whose connection ended wait a while for the next one
     * (RB_IDLE_THREADS at most, RB_IDLE_MS each): a new connection is
     * handed to one instead of starting a thread.  Under srv->lock. */
    pthread_cond_t idle_cv;
    struct rb_conn *handoff_head, *handoff_tail; /* waiting for a thread */
    unsigned nhandoff;
    unsigned nidle;    /* threads waiting for a connection */
    unsigned nthreads; /* connection threads alive, serving or idle */
    bool stopping;     /* rb_server_destroy: idle threads end */
    /* Buffers of ended connections kept warm for the next ones
     * (rb_server_buf_take). */
    pthread_mutex_t stash_lock;
    unsigned nstash;
    struct rb_stashed {
        void *p;
        size_t cap;
    } stash[RB_STASH_BUFFERS];
};

#define RB_DEFAULT_MAX_CONNECTIONS 128
#define RB_DEFAULT_HANDSHAKE_MS 10000
#define RB_DEFAULT_MAX_INFLIGHT_BYTES ((size_t)1 << 30)

/*
 * The server-wide budget of buffered request data.  rb_server_take, on
 * connection @c's thread, waits while taking @n bytes would pass
 * srv->max_inflight_bytes, except when *@held (the connection's bytes in
 * flight) is zero: a connection with nothing in flight always gets one
 * request through, so it never waits on itself and needs no other client
 * to make progress (memory is then at most the budget plus one request
 * per connection).  Returns 0 with the bytes taken, or -ECONNRESET (or
 * -errno) when @c's client went away while it waited (rb_conn_wait):
 * nothing taken.  Every byte taken is given back with rb_server_give
 * once its request is done; that wakes the waiting connections.
 */
int rb_server_take(struct rb_conn *c, size_t n, const _Atomic size_t *held);
void rb_server_give(struct rb_server *srv, size_t n);

/*
 * Page-aligned buffers for a connection's own use, kept across
 * connections: a client that connects, sends a little and hangs up, again
 * and again, would otherwise cost a fresh mapping of every buffer, a page
 * fault on each page it touches and a TLB shoot-down on both CPUs when it
 * is unmapped -- CPU taken from the clients that behave.
 * rb_server_buf_take returns a buffer of at least @len bytes (*@cap set to
 * its size), a kept one when there is one, else a new one, or NULL.
 * rb_server_buf_give takes back a buffer of @cap bytes (NULL is fine):
 * kept while the stash has room and it is at most RB_STASH_MAX_BYTES,
 * else freed.  Its contents are not cleared: a connection never sends
 * bytes of its buffer it did not put there itself.
 */
void *rb_server_buf_take(struct rb_server *srv, size_t len, size_t *cap);
void rb_server_buf_give(struct rb_server *srv, void *p, size_t cap);

/*
 * Optional replacement for the plain socket calls (TLS).  Each returns
 * bytes moved (> 0), 0 for end of stream (recv), or -errno.
 */
struct rb_transport {
    long (*recv)(void *ctx, void *buf, size_t len);
    long (*sendv)(void *ctx, const struct iovec *iov, int iovcnt);
    /* True when recv has bytes buffered (the socket may have none), so
     * waiting on the socket for the deadline would stall.  May be NULL. */
    bool (*pending)(void *ctx);
    void (*close)(void *ctx);
};

struct rb_conn {
    int fd;
    uint64_t id;
    const struct rb_protocol *proto;
    struct rb_server *srv;
    char peer[96];                   /* "127.0.0.1:51234", "unix" */
    pthread_mutex_t send_lock;       /* one reply at a time on the wire */
    struct timespec deadline;        /* CLOCK_MONOTONIC */
    struct timespec started;         /* CLOCK_MONOTONIC, for -v */
    atomic_bool in_handshake;        /* deadline applies; evictable */
    atomic_bool broken;              /* a send failed: stop replying */
    int wake_fd;                     /* eventfd: rb_conn_wake -> rb_conn_wait */
    const struct rb_transport *tr;   /* NULL: plain socket */
    void *tr_ctx;
    void *proto_data;                /* the protocol's own */
    struct rb_conn *next, *prev;     /* srv->conns, under srv->lock */
    struct rb_conn *handoff_next;    /* srv->handoff_head, under srv->lock */
    bool evicted;                    /* under srv->lock */
    bool released;                   /* under srv->lock (rb_conn_release) */
    /* srv->budget_waiters, under srv->budget_lock */
    struct rb_conn *budget_next, *budget_prev;
};

/* Initialise / destroy the server's private fields (not the settings). */
int rb_server_init(struct rb_server *srv);
void rb_server_destroy(struct rb_server *srv);

/*
 * Take ownership of the accepted socket @fd and serve it with @proto on a
 * new detached thread.  When max_connections are open, the oldest
 * connection still in its handshake is dropped to make room (idle or
 * half-open clients cannot starve real ones); when none is, @fd is closed.
 * Returns 0 or -errno (@fd closed either way on failure).
 */
int rb_conn_start(struct rb_server *srv, int fd, const struct rb_protocol *proto);

/* Shut every connection's socket down for reading (SHUT_RD) so that
 * each finishes its in-flight requests and ends; with @hard, for
 * writing too (a client that stopped reading its replies). */
void rb_conn_shutdown_all(struct rb_server *srv, bool hard);

/* Wait until no connection is open, at most @timeout_ms (< 0: forever).
 * Returns true when none is left. */
bool rb_conn_wait_all(struct rb_server *srv, int timeout_ms);

/*
 * Read exactly @len bytes.  Returns 0, -ECONNRESET at end of stream (also
 * in the middle), -ETIMEDOUT when the handshake deadline passed, or -errno.
 */
int rb_conn_recv(struct rb_conn *c, void *buf, size_t len);

/* Send all of @iov as one message, under the send lock (so concurrent
 * replies never interleave).  Returns 0 or -errno; after a failure the
 * connection is marked broken and its socket shut down. */
int rb_conn_sendv(struct rb_conn *c, const struct iovec *iov, int iovcnt);
int rb_conn_send(struct rb_conn *c, const void *buf, size_t len);

/* Hold the send lock across several rb_conn_sendv_locked calls. */
void rb_conn_lock(struct rb_conn *c);
void rb_conn_unlock(struct rb_conn *c);
int rb_conn_sendv_locked(struct rb_conn *c, const struct iovec *iov, int iovcnt);

/* The handshake is over: no deadline any more, not evictable.  False when
 * the connection was evicted first (its socket is shut down).  A protocol
 * calls it before the reply that tells the client it is in, so a client
 * that got that reply is never evicted. */
bool rb_conn_handshake_done(struct rb_conn *c);

/* Stop this connection: shut its socket down both ways (reads fail). */
void rb_conn_abort(struct rb_conn *c);

/*
 * The client is gone: a send failed (c->broken), or the socket reports a
 * hang-up or an error -- the peer reset the connection (or closed it
 * while replies were on their way, which makes TCP reset it), a unix
 * socket's peer closed it, or the server shut it down both ways
 * (eviction, rb_conn_abort, a hard quit).  An end of stream alone (TCP
 * FIN: the client may have shut down only its sending side and still
 * read replies) is not gone.  Never blocks.
 */
bool rb_conn_gone(struct rb_conn *c);

/*
 * Wait, on the connection's own thread, until another thread calls
 * rb_conn_wake(@c) or the client is gone (as rb_conn_gone), whichever
 * comes first; a wake that came since the last rb_conn_wait returned
 * counts, so a caller that checks its condition under its own lock, drops
 * the lock and then waits never misses the wake of a thread that changed
 * the condition under that lock.  Returns 0 after a wake (check again: it
 * may be spurious), -ECONNRESET when the client is gone, or -errno.
 */
int rb_conn_wait(struct rb_conn *c);
void rb_conn_wake(struct rb_conn *c);

/*
 * The client is gone: stop counting this connection against
 * --max-connections and in the statistics' connections_now (it counts in
 * connections_closing until its thread ends), so a new client can take
 * its place at once while the connection's thread finishes the requests
 * it had started.  Idempotent; the core calls it when the thread ends.
 */
void rb_conn_release(struct rb_conn *c);

/* Replace the transport (after STARTTLS).  Called by the connection's
 * own thread while no other thread uses the connection. */
void rb_conn_set_transport(struct rb_conn *c, const struct rb_transport *tr, void *ctx);

#endif
