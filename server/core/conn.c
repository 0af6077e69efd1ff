/* SPDX-License-Identifier: MIT */
/*
 * conn.c - one thread per client connection (kept a while for the next
 * one), the registry of live connections (limits, eviction, shutdown,
 * slots given back as soon as a client is gone), and socket I/O with the
 * handshake deadline and a send lock.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/conn.h"

int rb_server_init(struct rb_server *srv)
{
    pthread_condattr_t ca;
    int ret;

    if (!srv->max_connections)
        srv->max_connections = RB_DEFAULT_MAX_CONNECTIONS;
    if (!srv->handshake_timeout_ms)
        srv->handshake_timeout_ms = RB_DEFAULT_HANDSHAKE_MS;
    srv->conns = NULL;
    srv->nconns = 0;
    srv->nreleased = 0;
    srv->budget_waiters = NULL;
    ret = pthread_mutex_init(&srv->lock, NULL);
    if (ret)
        return -ret;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    ret = pthread_cond_init(&srv->gone, &ca);
    pthread_condattr_destroy(&ca);
    if (ret) {
        pthread_mutex_destroy(&srv->lock);
        return -ret;
    }
    if (!srv->max_inflight_bytes)
        srv->max_inflight_bytes = RB_DEFAULT_MAX_INFLIGHT_BYTES;
    srv->inflight_bytes = 0;
    ret = pthread_mutex_init(&srv->budget_lock, NULL);
    if (ret) {
        pthread_cond_destroy(&srv->gone);
        pthread_mutex_destroy(&srv->lock);
        return -ret;
    }
    srv->nstash = 0;
    ret = pthread_mutex_init(&srv->stash_lock, NULL);
    if (ret) {
        pthread_mutex_destroy(&srv->budget_lock);
        pthread_cond_destroy(&srv->gone);
        pthread_mutex_destroy(&srv->lock);
        return -ret;
    }
    srv->handoff_head = srv->handoff_tail = NULL;
    srv->nhandoff = srv->nidle = srv->nthreads = 0;
    srv->stopping = false;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    ret = pthread_cond_init(&srv->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (ret) {
        pthread_mutex_destroy(&srv->stash_lock);
        pthread_mutex_destroy(&srv->budget_lock);
        pthread_cond_destroy(&srv->gone);
        pthread_mutex_destroy(&srv->lock);
        return -ret;
    }
    return 0;
}

void rb_server_destroy(struct rb_server *srv)
{
    /* Every connection is over (rb_conn_wait_all): end the idle threads,
     * and wait for them, since they use srv->lock until they end. */
    pthread_mutex_lock(&srv->lock);
    srv->stopping = true;
    pthread_cond_broadcast(&srv->idle_cv);
    while (srv->nthreads > 0)
        pthread_cond_wait(&srv->gone, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    pthread_cond_destroy(&srv->idle_cv);
    for (unsigned i = 0; i < srv->nstash; i++)
        free(srv->stash[i].p);
    srv->nstash = 0;
    pthread_mutex_destroy(&srv->stash_lock);
    pthread_mutex_destroy(&srv->budget_lock);
    pthread_cond_destroy(&srv->gone);
    pthread_mutex_destroy(&srv->lock);
}

void *rb_server_buf_take(struct rb_server *srv, size_t len, size_t *cap)
{
    void *p = NULL;

    pthread_mutex_lock(&srv->stash_lock);
    for (unsigned i = srv->nstash; i-- > 0;) {
        if (srv->stash[i].cap >= len) {
            p = srv->stash[i].p;
            *cap = srv->stash[i].cap;
            srv->stash[i] = srv->stash[--srv->nstash];
            break;
        }
    }
    pthread_mutex_unlock(&srv->stash_lock);
    if (p)
        return p;
    if (posix_memalign(&p, 4096, len ? len : 1) != 0)
        return NULL;
    *cap = len;
    return p;
}

void rb_server_buf_give(struct rb_server *srv, void *p, size_t cap)
{
    if (!p)
        return;
    if (cap <= RB_STASH_MAX_BYTES) {
        pthread_mutex_lock(&srv->stash_lock);
        if (srv->nstash < RB_STASH_BUFFERS) {
            srv->stash[srv->nstash++] = (struct rb_stashed){p, cap};
            p = NULL;
        }
        pthread_mutex_unlock(&srv->stash_lock);
    }
    free(p);
}

int rb_server_take(struct rb_conn *c, size_t n, const _Atomic size_t *held)
{
    struct rb_server *srv = c->srv;
    int ret = 0;

    pthread_mutex_lock(&srv->budget_lock);
    while (srv->inflight_bytes + n > srv->max_inflight_bytes && atomic_load(held) > 0) {
        /* Wait on the connection's wake fd rather than a condition
         * variable, so that a client that goes away while we wait is
         * seen at once (its slot and queue are then given back).  On the
         * list before the lock is dropped: no give is missed. */
        c->budget_prev = NULL;
        c->budget_next = srv->budget_waiters;
        if (srv->budget_waiters)
            srv->budget_waiters->budget_prev = c;
        srv->budget_waiters = c;
        pthread_mutex_unlock(&srv->budget_lock);
        ret = rb_conn_wait(c);
        pthread_mutex_lock(&srv->budget_lock);
        if (c->budget_prev)
            c->budget_prev->budget_next = c->budget_next;
        else
            srv->budget_waiters = c->budget_next;
        if (c->budget_next)
            c->budget_next->budget_prev = c->budget_prev;
        if (ret < 0)
            break;
    }
    if (ret == 0)
        srv->inflight_bytes += n;
    pthread_mutex_unlock(&srv->budget_lock);
    return ret;
}

void rb_server_give(struct rb_server *srv, size_t n)
{
    if (!n)
        return;
    pthread_mutex_lock(&srv->budget_lock);
    srv->inflight_bytes -= n;
    /* every waiter: each checks its own connection's bytes */
    for (struct rb_conn *w = srv->budget_waiters; w; w = w->budget_next)
        rb_conn_wake(w);
    pthread_mutex_unlock(&srv->budget_lock);
}

static void describe_peer(struct rb_conn *c)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";

    if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) < 0) {
        snprintf(c->peer, sizeof(c->peer), "fd %d", c->fd);
        return;
    }
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(c->peer, sizeof(c->peer), "%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(c->peer, sizeof(c->peer), "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        snprintf(c->peer, sizeof(c->peer), "unix");
    }
}

static void tune_socket(int fd)
{
    int one = 1;

    /* Replies are written whole (writev), so Nagle only adds latency;
     * fails harmlessly on unix sockets. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void unlink_conn(struct rb_server *srv, struct rb_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    if (c->released)
        srv->nreleased--;
}

/* Give back @c's slot.  Caller holds srv->lock. */
static void release_locked(struct rb_server *srv, struct rb_conn *c)
{
    if (c->released)
        return;
    c->released = true;
    srv->nreleased++;
    rb_export_count_connection(srv->export, c->proto->id, -1);
    rb_export_count_closing(srv->export, c->proto->id, +1);
}

void rb_conn_release(struct rb_conn *c)
{
    struct rb_server *srv = c->srv;

    pthread_mutex_lock(&srv->lock);
    release_locked(srv, c);
    pthread_mutex_unlock(&srv->lock);
}

static void free_conn(struct rb_conn *c)
{
    pthread_mutex_destroy(&c->send_lock);
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    free(c);
}

/* -v: one line when a connection ends, as one when it starts. */
static void log_end(struct rb_conn *c)
{
    struct timespec now;
    bool evicted;

    pthread_mutex_lock(&c->srv->lock);
    evicted = c->evicted;
    pthread_mutex_unlock(&c->srv->lock);
    clock_gettime(CLOCK_MONOTONIC, &now);
    fprintf(stderr, "rblock: %s %s: connection ended after %.3f s%s\n", c->proto->name,
            c->peer,
            (double)(now.tv_sec - c->started.tv_sec) +
                (double)(now.tv_nsec - c->started.tv_nsec) / 1e9,
            evicted ? " (evicted: still in its handshake when the server was full)"
            : atomic_load(&c->broken) ? " (the client went away)"
                                      : "");
}

/* Called by a thread whose connection ended, with srv->lock held: wait
 * (a while) for the next connection to serve.  NULL: none came, or the
 * server stops; the thread is no longer counted and must end. */
static struct rb_conn *next_conn_locked(struct rb_server *srv)
{
    struct timespec until;
    struct rb_conn *c = NULL;

    if (!srv->stopping && srv->nidle < RB_IDLE_THREADS) {
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += RB_IDLE_MS / 1000;
        srv->nidle++;
        while (!srv->handoff_head && !srv->stopping)
            if (pthread_cond_timedwait(&srv->idle_cv, &srv->lock, &until) == ETIMEDOUT)
                break;
        srv->nidle--;
        /* (Also after a time-out: a connection handed over meanwhile
         * counted on this thread.) */
        if ((c = srv->handoff_head)) {
            srv->handoff_head = c->handoff_next;
            if (!srv->handoff_head)
                srv->handoff_tail = NULL;
            srv->nhandoff--;
            return c;
        }
    }
    srv->nthreads--;
    pthread_cond_broadcast(&srv->gone); /* rb_server_destroy waits */
    return NULL;
}

static void *conn_thread(void *arg)
{
    struct rb_conn *c = arg;
    struct rb_server *srv = c->srv;

    while (c) {
        c->proto->serve(c);

        if (c->tr && c->tr->close)
            c->tr->close(c->tr_ctx);
        if (srv->verbose)
            log_end(c);
        /* Once nconns drops to 0 under the lock, the main thread may close
         * the export (rb_conn_wait_all), so the release, the unlink, the
         * close and the signal go together.  srv itself lives until
         * rb_server_destroy, which waits for this thread. */
        pthread_mutex_lock(&srv->lock);
        release_locked(srv, c);
        rb_export_count_closing(srv->export, c->proto->id, -1);
        unlink_conn(srv, c);
        close(c->fd);
        pthread_cond_broadcast(&srv->gone);
        free_conn(c);
        c = next_conn_locked(srv);
        pthread_mutex_unlock(&srv->lock);
    }
    return NULL;
}

/* Drop the oldest connection still in its handshake.  Caller holds the
 * lock.  Returns true when one was found. */
static bool evict_one(struct rb_server *srv)
{
    struct rb_conn *victim = NULL;

    for (struct rb_conn *c = srv->conns; c; c = c->next)
        if (!c->released && atomic_load(&c->in_handshake) &&
            (!victim || c->id < victim->id))
            victim = c;
    if (!victim)
        return false;
    /* Its thread sees the failed read, ends and unregisters. */
    shutdown(victim->fd, SHUT_RDWR);
    atomic_store(&victim->in_handshake, false);
    victim->evicted = true;
    release_locked(srv, victim);
    return true;
}

int rb_conn_start(struct rb_server *srv, int fd, const struct rb_protocol *proto)
{
    struct rb_conn *c;
    pthread_attr_t attr;
    pthread_t tid;
    int ret;

    pthread_mutex_lock(&srv->lock);
    /* Full: make room by dropping the oldest connection still in its
     * handshake; refuse only when every connection is established.
     * Released connections (evicted, or their client is gone) count no
     * more, though their threads may still be finishing. */
    if (srv->nconns - srv->nreleased >= srv->max_connections && !evict_one(srv)) {
        pthread_mutex_unlock(&srv->lock);
        close(fd);
        return -EAGAIN;
    }
    /* A released connection holds its thread until that thread notices
     * (slow on a loaded machine) and finishes the requests it had
     * started.  Bound the threads at 2 x max by waiting for them
     * (briefly; new clients wait in the backlog) rather than by refusing
     * a real client. */
    if (srv->nconns >= 2 * srv->max_connections && srv->nreleased > 0) {
        struct timespec until;

        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 5;
        while (srv->nconns >= 2 * srv->max_connections && srv->nreleased > 0)
            if (pthread_cond_timedwait(&srv->gone, &srv->lock, &until) == ETIMEDOUT)
                break;
    }
    if (srv->nconns >= 2 * srv->max_connections) {
        pthread_mutex_unlock(&srv->lock);
        close(fd);
        return -EAGAIN;
    }
    pthread_mutex_unlock(&srv->lock);

    c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    c->proto = proto;
    c->srv = srv;
    c->tr = srv->transport;
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake_fd < 0) {
        ret = -errno;
        close(fd);
        free(c);
        return ret;
    }
    pthread_mutex_init(&c->send_lock, NULL);
    clock_gettime(CLOCK_MONOTONIC, &c->started);
    tune_socket(fd);
    describe_peer(c);
    if (proto->handshake_deadline) {
        clock_gettime(CLOCK_MONOTONIC, &c->deadline);
        c->deadline.tv_sec += srv->handshake_timeout_ms / 1000;
        c->deadline.tv_nsec += (long)(srv->handshake_timeout_ms % 1000) * 1000000L;
        if (c->deadline.tv_nsec >= 1000000000L) {
            c->deadline.tv_sec++;
            c->deadline.tv_nsec -= 1000000000L;
        }
        atomic_store(&c->in_handshake, true);
    } else if (proto->evictable_until_done) {
        atomic_store(&c->in_handshake, true); /* evictable, no deadline */
    }

    pthread_mutex_lock(&srv->lock);
    c->id = srv->next_id++;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    pthread_mutex_unlock(&srv->lock);
    rb_export_count_connection(srv->export, proto->id, +1);

    /* A thread whose connection ended may be waiting for this one. */
    pthread_mutex_lock(&srv->lock);
    if (srv->nidle > srv->nhandoff) {
        c->handoff_next = NULL;
        if (srv->handoff_tail)
            srv->handoff_tail->handoff_next = c;
        else
            srv->handoff_head = c;
        srv->handoff_tail = c;
        srv->nhandoff++;
        pthread_cond_signal(&srv->idle_cv);
        pthread_mutex_unlock(&srv->lock);
        return 0;
    }
    srv->nthreads++;
    pthread_mutex_unlock(&srv->lock);

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ret = pthread_create(&tid, &attr, conn_thread, c);
    pthread_attr_destroy(&attr);
    if (ret) {
        pthread_mutex_lock(&srv->lock);
        srv->nthreads--;
        release_locked(srv, c);
        rb_export_count_closing(srv->export, proto->id, -1);
        unlink_conn(srv, c);
        pthread_mutex_unlock(&srv->lock);
        close(fd);
        free_conn(c);
        return -ret;
    }
    return 0;
}

void rb_conn_shutdown_all(struct rb_server *srv, bool hard)
{
    pthread_mutex_lock(&srv->lock);
    for (struct rb_conn *c = srv->conns; c; c = c->next)
        shutdown(c->fd, hard ? SHUT_RDWR : SHUT_RD);
    pthread_mutex_unlock(&srv->lock);
}

bool rb_conn_wait_all(struct rb_server *srv, int timeout_ms)
{
    struct timespec until;
    bool none;

    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&srv->lock);
    while (srv->nconns > 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&srv->gone, &srv->lock);
        else if (pthread_cond_timedwait(&srv->gone, &srv->lock, &until) == ETIMEDOUT)
            break;
    }
    none = srv->nconns == 0;
    pthread_mutex_unlock(&srv->lock);
    return none;
}

/* Milliseconds left before the handshake deadline (>= 0), or -1 when
 * there is none. */
static int time_left_ms(struct rb_conn *c)
{
    struct timespec now;
    long long ms;

    if (!atomic_load(&c->in_handshake) || !c->proto->handshake_deadline)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (long long)(c->deadline.tv_sec - now.tv_sec) * 1000 +
         (c->deadline.tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : (int)(ms > 1000000 ? 1000000 : ms);
}

int rb_conn_recv(struct rb_conn *c, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        int left = time_left_ms(c);
        long n;

        if (left >= 0 && !(c->tr && c->tr->pending && c->tr->pending(c->tr_ctx))) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
            int r;

            if (left == 0)
                return -ETIMEDOUT;
            r = poll(&pfd, 1, left);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -errno;
            if (r == 0)
                return -ETIMEDOUT;
        }
        if (c->tr) {
            n = c->tr->recv(c->tr_ctx, p, len);
        } else {
            n = recv(c->fd, p, len, 0);
            if (n < 0)
                n = -errno;
        }
        if (n == -EINTR || n == -EAGAIN)
            continue;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ECONNRESET;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int rb_conn_sendv_locked(struct rb_conn *c, const struct iovec *iov_in, int iovcnt)
{
    struct iovec local[64];
    struct iovec *iov = local, *base = local;
    int ret = 0;

    if (atomic_load(&c->broken))
        return -EPIPE;
    if (iovcnt > (int)(sizeof(local) / sizeof(local[0]))) {
        iov = base = malloc(sizeof(*iov) * (size_t)iovcnt);
        if (!iov)
            return -ENOMEM;
    }
    memcpy(iov, iov_in, sizeof(*iov) * (size_t)iovcnt);
    while (iovcnt > 0) {
        long n;

        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        if (c->tr) {
            n = c->tr->sendv(c->tr_ctx, iov, iovcnt);
        } else {
            struct msghdr msg = {.msg_iov = iov,
                                 .msg_iovlen = (size_t)(iovcnt > 1024 ? 1024 : iovcnt)};
            n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
            if (n < 0)
                n = -errno;
        }
        if (n == -EINTR || n == -EAGAIN)
            continue;
        if (n < 0) {
            ret = (int)n;
            break;
        }
        while (n > 0 && iovcnt > 0) {
            if ((size_t)n >= iov->iov_len) {
                n -= (long)iov->iov_len;
                iov++;
                iovcnt--;
            } else {
                iov->iov_base = (uint8_t *)iov->iov_base + n;
                iov->iov_len -= (size_t)n;
                n = 0;
            }
        }
    }
    if (base != local)
        free(base);
    if (ret < 0) {
        atomic_store(&c->broken, true);
        shutdown(c->fd, SHUT_RDWR);
    }
    return ret;
}

void rb_conn_lock(struct rb_conn *c)
{
    pthread_mutex_lock(&c->send_lock);
}

void rb_conn_unlock(struct rb_conn *c)
{
    pthread_mutex_unlock(&c->send_lock);
}

int rb_conn_sendv(struct rb_conn *c, const struct iovec *iov, int iovcnt)
{
    int ret;

    rb_conn_lock(c);
    ret = rb_conn_sendv_locked(c, iov, iovcnt);
    rb_conn_unlock(c);
    return ret;
}

int rb_conn_send(struct rb_conn *c, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

    return rb_conn_sendv(c, &iov, 1);
}

bool rb_conn_handshake_done(struct rb_conn *c)
{
    bool kept;

    /* Under the lock evict_one() holds: either it chose this connection
     * first (and shut it down), or it can no longer choose it. */
    pthread_mutex_lock(&c->srv->lock);
    kept = !c->evicted;
    atomic_store(&c->in_handshake, false);
    pthread_mutex_unlock(&c->srv->lock);
    return kept;
}

void rb_conn_abort(struct rb_conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
}

/* Poll the socket and the wake fd; POLLHUP and POLLERR are reported
 * whatever is asked.  Not POLLRDHUP: an end of stream may be a half
 * close, and it would stay set. */
static int poll_conn(struct rb_conn *c, int timeout_ms, bool *woken)
{
    struct pollfd pfd[2] = {{.fd = c->fd, .events = 0},
                            {.fd = c->wake_fd, .events = POLLIN}};

    *woken = false;
    for (;;) {
        int r = poll(pfd, timeout_ms == 0 ? 1 : 2, timeout_ms);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (pfd[0].revents & (POLLHUP | POLLERR | POLLNVAL))
            return -ECONNRESET;
        *woken = pfd[1].revents & POLLIN;
        return 0;
    }
}

bool rb_conn_gone(struct rb_conn *c)
{
    bool woken;

    return atomic_load(&c->broken) || poll_conn(c, 0, &woken) == -ECONNRESET;
}

int rb_conn_wait(struct rb_conn *c)
{
    for (;;) {
        bool woken;
        uint64_t v;
        int ret;

        if (atomic_load(&c->broken))
            return -ECONNRESET;
        ret = poll_conn(c, -1, &woken);
        if (ret < 0)
            return ret;
        if (woken) {
            /* Reset the counter: the caller checks its condition next. */
            if (read(c->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                return -errno;
            return 0;
        }
    }
}

void rb_conn_wake(struct rb_conn *c)
{
    uint64_t one = 1;

    /* Fails only when the counter would overflow: it is then set. */
    if (write(c->wake_fd, &one, sizeof(one)) < 0) {
        /* nothing to do */
    }
}

void rb_conn_set_transport(struct rb_conn *c, const struct rb_transport *tr, void *ctx)
{
    c->tr = tr;
    c->tr_ctx = ctx;
}
