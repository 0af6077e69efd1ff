/* SPDX-License-Identifier: MIT */
/*
 * fuzz_common.h - shared helpers of the libFuzzer targets (header-only:
 * each target is one program).
 *
 * Inputs are written to a memfd and opened as "/proc/self/fd/N".  While a
 * target runs, open() of any other path fails with ENOENT: a fuzzed qcow2
 * header may name a backing or external data file, and fuzzing must never
 * open host files (a FIFO would hang, a device would be read).
 */
#ifndef RBLOCK_FUZZ_COMMON_H
#define RBLOCK_FUZZ_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static bool fuzz_sandbox;          /* deny open() of other paths */
static char fuzz_allowed[2][64];   /* "/proc/self/fd/N" of our memfds */

/* Interposes libc's open() for the library code linked into the target. */
int open(const char *path, int flags, ...)
{
    mode_t mode = 0;

    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    if (fuzz_sandbox && strcmp(path, fuzz_allowed[0]) != 0 &&
        strcmp(path, fuzz_allowed[1]) != 0) {
        errno = ENOENT;
        return -1;
    }
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

/* A memfd holding @size bytes of @data (or a sparse file of @size bytes
 * when @data is NULL); its path in *path.  Aborts on failure (harness
 * trouble, not a finding). */
static int fuzz_memfd(const char *name, const void *data, size_t size, unsigned slot,
                      char path[64])
{
    int fd = memfd_create(name, MFD_CLOEXEC);

    if (fd < 0) {
        perror("memfd_create");
        abort();
    }
    if (data) {
        size_t done = 0;
        while (done < size) {
            ssize_t n = write(fd, (const char *)data + done, size - done);
            if (n <= 0) {
                perror("write memfd");
                abort();
            }
            done += (size_t)n;
        }
    } else if (ftruncate(fd, (off_t)size) < 0) {
        perror("ftruncate memfd");
        abort();
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    snprintf(fuzz_allowed[slot], sizeof(fuzz_allowed[slot]), "%s", path);
    return fd;
}

/* The export of the protocol targets: FUZZ_EXPORT_BYTES (1 MiB unless the
 * target says otherwise) with a few bytes of data at 1/16 of it, raw or
 * (qcow2) a fresh qcow2 image with 4 KiB clusters.  The qcow2 image is
 * created once, kept as a template, and copied into one reused memfd for
 * every input, so each input starts from the same bytes without paying for
 * a create (the protocol targets were bound by per-input setup). */
#ifdef FUZZ_WANT_EXPORT
#include "rblock/qcow2-create.h"
#ifndef FUZZ_EXPORT_BYTES
#define FUZZ_EXPORT_BYTES (1u << 20)
#endif

static void fuzz_export_image(bool qcow2, char path[64])
{
    static int fd = -1;
    static char fd_path[64];
    static uint8_t *tmpl;
    static size_t tmpl_len;

    if (fd < 0) {
        struct rb_qcow2_create_opts o;
        struct rb_error err = {0};
        off_t end;

        fd = fuzz_memfd("fuzz.export", NULL, 0, 0, fd_path);
        rb_qcow2_create_opts_init(&o);
        o.size = FUZZ_EXPORT_BYTES;
        o.size_set = true;
        o.cluster_bytes = 4096;
        if (rb_qcow2_create(fd, fd_path, &o, &err) < 0) {
            fprintf(stderr, "fuzz: %s\n", rb_error_msg(&err, -EIO));
            abort();
        }
        end = lseek(fd, 0, SEEK_END);
        tmpl_len = end > 0 ? (size_t)end : 0;
        tmpl = malloc(tmpl_len);
        if (!tmpl || pread(fd, tmpl, tmpl_len, 0) != (ssize_t)tmpl_len)
            abort();
    }
    if (ftruncate(fd, 0) < 0)
        abort();
    if (qcow2) {
        if (pwrite(fd, tmpl, tmpl_len, 0) != (ssize_t)tmpl_len)
            abort();
    } else if (ftruncate(fd, FUZZ_EXPORT_BYTES) < 0 || pwrite(fd, "rblock", 6, FUZZ_EXPORT_BYTES / 16) != 6) {
        abort();
    }
    snprintf(path, 64, "%s", fd_path);
}
#endif

#ifdef FUZZ_WANT_FEED
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>

/* A fuzz input fed to a server over a socketpair: what fits at once is
 * sent inline, the rest by a writer thread, so a server that answers
 * before reading everything cannot deadlock the harness. */
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

/* One long-lived thread drains the replies of every input (creating a
 * thread per input cost more than most inputs do). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fd;        /* socket to drain until EOF; -1 when idle */
    bool started;
} drain = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1, false};

static void *drain_loop(void *arg)
{
    static char buf[1 << 16];

    (void)arg;
    pthread_mutex_lock(&drain.lock);
    for (;;) {
        while (drain.fd < 0)
            pthread_cond_wait(&drain.cond, &drain.lock);
        int fd = drain.fd;
        pthread_mutex_unlock(&drain.lock);
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
        }
        pthread_mutex_lock(&drain.lock);
        drain.fd = -1;
        pthread_cond_broadcast(&drain.cond);
    }
    return NULL;
}

/* Start draining @fd (until it reads EOF). */
static void drain_start(int fd)
{
    pthread_mutex_lock(&drain.lock);
    if (!drain.started) {
        pthread_t t;
        if (pthread_create(&t, NULL, drain_loop, NULL) != 0)
            abort();
        pthread_detach(t);
        drain.started = true;
    }
    drain.fd = fd;
    pthread_cond_broadcast(&drain.cond);
    pthread_mutex_unlock(&drain.lock);
}

/* Wait until the socket given to drain_start() read EOF. */
static void drain_wait(void)
{
    pthread_mutex_lock(&drain.lock);
    while (drain.fd >= 0)
        pthread_cond_wait(&drain.cond, &drain.lock);
    pthread_mutex_unlock(&drain.lock);
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
            break; /* the server closed: it had enough */
        done += (size_t)n;
    }
    shutdown(f->fd, SHUT_WR);
    return NULL;
}
#endif

#if defined(FUZZ_WANT_EXPORT) && defined(FUZZ_WANT_FEED)
#include <sys/eventfd.h>

#include "core/conn.h"
#include "core/export.h"

/* One served connection per input: the export the input's first byte
 * chose (bit 0 read-only, bit 1 qcow2), a server over it (its fields set
 * by the caller beforehand), and a connection on one end of a socketpair
 * whose other end carries the input and drains the replies. */
struct fuzz_session {
    struct rb_server srv;
    struct rb_conn *c;
    int sv[2];
};

/* Open @fs for @proto; consumes the harness byte of *@data. */
static void fuzz_session_open(struct fuzz_session *fs, struct rb_export_config *cfg,
                              const struct rb_protocol *proto, const uint8_t **data,
                              size_t *size)
{
    static char path[64];
    struct rb_error err = {0};

    cfg->read_only = (*data)[0] & 1;
    cfg->format = (*data)[0] & 2 ? "qcow2" : "raw";
    fuzz_export_image((*data)[0] & 2, path);
    (*data)++;
    (*size)--;
    cfg->path = path;
    fuzz_sandbox = true;
    fs->srv.export = rb_export_bare();
    fs->srv.exports = rb_exports_new();
    if (!fs->srv.export || !fs->srv.exports ||
        !rb_exports_add(fs->srv.exports, cfg, true, &err)) {
        fprintf(stderr, "fuzz %s: %s\n", proto->name, rb_error_msg(&err, -EIO));
        abort();
    }
    if (rb_server_init(&fs->srv) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fs->sv) < 0)
        abort();
    fs->c = calloc(1, sizeof(*fs->c));
    if (!fs->c)
        abort();
    fs->c->fd = fs->sv[0];
    fs->c->proto = proto;
    fs->c->srv = &fs->srv;
    snprintf(fs->c->peer, sizeof(fs->c->peer), "fuzz");
    pthread_mutex_init(&fs->c->send_lock, NULL);
    fs->c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fs->c->wake_fd < 0)
        abort();
}

/* Send @data to the connection (what fits the socket buffer at once, a
 * thread the rest), serve it until the input ends, drain the replies. */
static void fuzz_session_serve(struct fuzz_session *fs, const uint8_t *data, size_t size)
{
    struct feed f = {fs->sv[1], data, size, 0};
    bool inline_write = feed_now(&f);
    pthread_t wt;

    if (!inline_write && pthread_create(&wt, NULL, writer, &f))
        abort();
    drain_start(fs->sv[1]);
    fs->c->proto->serve(fs->c);
    shutdown(fs->sv[0], SHUT_RDWR);
    if (!inline_write)
        pthread_join(wt, NULL);
    drain_wait();
}

static void fuzz_session_close(struct fuzz_session *fs)
{
    close(fs->sv[0]);
    close(fs->sv[1]);
    pthread_mutex_destroy(&fs->c->send_lock);
    close(fs->c->wake_fd);
    free(fs->c);
    rb_server_destroy(&fs->srv);
    rb_exports_free(fs->srv.exports, NULL);
    rb_export_close(fs->srv.export, NULL);
    fuzz_sandbox = false;
}
#endif

#endif
