/* SPDX-License-Identifier: MIT */
/*
 * listen.c - tcp and unix listeners, systemd socket activation, the
 * accept loop, clean shutdown and nbdkit-style captive --run mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/listen.h"
#include "core/quit.h"

extern char **environ;

#define LISTEN_BACKLOG 128
#define SD_LISTEN_FDS_START 3
/* How long connections get to finish in-flight requests at quit before
 * their sockets are shut down for writing too. */
#define QUIT_GRACE_MS 10000

static struct rb_listener *push(struct rb_listeners *ls, int fd,
                                const struct rb_protocol *proto, const char *addr)
{
    struct rb_listener *v = realloc(ls->v, sizeof(*v) * (ls->n + 1));

    if (!v)
        return NULL;
    ls->v = v;
    memset(&v[ls->n], 0, sizeof(v[ls->n]));
    v[ls->n].fd = fd;
    v[ls->n].proto = proto;
    v[ls->n].addr = strdup(addr);
    if (!v[ls->n].addr)
        return NULL;
    return &v[ls->n++];
}

static int listen_unix(struct rb_listeners *ls, const char *path, const char *addr,
                       const struct rb_protocol *proto, struct rb_error *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct rb_listener *l;
    struct stat st;
    mode_t old;
    int fd, ret;

    if (strlen(path) >= sizeof(sa.sun_path))
        return rb_error_set(err, ENAMETOOLONG, "%s: socket path is longer than %zu bytes",
                            addr, sizeof(sa.sun_path) - 1);
    strcpy(sa.sun_path, path);
    /* Replace a stale socket (never another kind of file, and never one a
     * live server accepts on: connecting tells them apart, as qemu-nbd's
     * and nbdkit's users expect). */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return rb_error_set(err, EEXIST, "%s: '%s' exists and is not a socket", addr,
                                path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            ret = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
            close(fd);
            if (ret == 0)
                return rb_error_set(err, EADDRINUSE, "%s: '%s' is in use by another server",
                                    addr, path);
        }
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return rb_error_errno(err, errno, "%s: socket", addr);
    old = umask(0177); /* mode 0600 from the start: no window */
    ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (ret < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        ret = errno;
        close(fd);
        return rb_error_errno(err, ret, "%s: cannot listen", addr);
    }
    chmod(path, 0600);
    l = push(ls, fd, proto, addr);
    if (!l || !(l->unix_path = strdup(path))) {
        if (!l)
            close(fd);
        return rb_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

static int listen_tcp(struct rb_listeners *ls, const char *hostport, const char *addr,
                      const struct rb_protocol *proto, struct rb_error *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_ADDRCONFIG};
    struct addrinfo *res, *ai;
    const char *colon = strrchr(hostport, ':');
    char host[256], port[16];
    size_t hlen;
    int ret, bound = 0, last_err = 0;

    if (!colon || colon == hostport || !colon[1] || strlen(colon + 1) >= sizeof(port))
        return rb_error_set(err, EINVAL, "%s: expected tcp:HOST:PORT", addr);
    hlen = (size_t)(colon - hostport);
    if (hostport[0] == '[' && hlen >= 2 && hostport[hlen - 1] == ']') {
        hostport++;
        hlen -= 2;
    }
    if (hlen >= sizeof(host))
        return rb_error_set(err, EINVAL, "%s: host name too long", addr);
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    strcpy(port, colon + 1);
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9')
            return rb_error_set(err, EINVAL, "%s: port '%s' is not a number", addr, port);
    if (strtoul(port, NULL, 10) > 65535)
        return rb_error_set(err, EINVAL, "%s: port %s is out of range", addr, port);

    ret = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (ret)
        return rb_error_set(err, EINVAL, "%s: %s", addr, gai_strerror(ret));
    for (ai = res; ai; ai = ai->ai_next) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct rb_listener *l;
        char nhost[INET6_ADDRSTRLEN] = "";
        int one = 1;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);

        if (fd < 0) {
            last_err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
            last_err = errno;
            close(fd);
            continue;
        }
        l = push(ls, fd, proto, addr);
        if (!l) {
            close(fd);
            freeaddrinfo(res);
            return rb_error_set(err, ENOMEM, "out of memory");
        }
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET) {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                inet_ntop(AF_INET, &a->sin_addr, nhost, sizeof(nhost));
                l->port = ntohs(a->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                inet_ntop(AF_INET6, &a->sin6_addr, nhost, sizeof(nhost));
                l->port = ntohs(a->sin6_port);
            }
        }
        l->host = strdup(nhost);
        bound++;
        /* Port 0: bind every further address to the port the first got. */
        if (strcmp(port, "0") == 0 && l->port)
            snprintf(port, sizeof(port), "%u", l->port);
    }
    freeaddrinfo(res);
    if (!bound)
        return rb_error_errno(err, last_err ? last_err : EADDRNOTAVAIL,
                              "%s: cannot listen", addr);
    return 0;
}

int rb_listener_add(struct rb_listeners *ls, const char *addr,
                    const struct rb_protocol *proto, struct rb_error *err)
{
    if (strncmp(addr, "unix:", 5) == 0 && addr[5])
        return listen_unix(ls, addr + 5, addr, proto, err);
    if (strncmp(addr, "tcp:", 4) == 0)
        return listen_tcp(ls, addr + 4, addr, proto, err);
    return rb_error_set(err, EINVAL, "'%s': address must be tcp:HOST:PORT or unix:PATH",
                        addr);
}

int rb_listener_add_private_unix(struct rb_listeners *ls, const struct rb_protocol *proto,
                                 struct rb_error *err)
{
    const char *tmp = getenv("TMPDIR");
    char dir[256], path[300], addr[310];

    snprintf(dir, sizeof(dir), "%s/rblock-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        return rb_error_errno(err, errno, "cannot create a temporary folder");
    ls->tmpdir = strdup(dir);
    snprintf(path, sizeof(path), "%s/%s.sock", dir, proto->name);
    snprintf(addr, sizeof(addr), "unix:%s", path);
    return listen_unix(ls, path, addr, proto, err);
}

int rb_listener_adopt_systemd(struct rb_listeners *ls, const struct rb_protocol *proto,
                              struct rb_error *err)
{
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    char *end;
    long pid, n;

    if (!pid_s || !fds_s)
        return 0;
    pid = strtol(pid_s, &end, 10);
    if (*end || pid != (long)getpid())
        return 0;
    n = strtol(fds_s, &end, 10);
    if (*end || n <= 0 || n > 64)
        return rb_error_set(err, EINVAL, "LISTEN_FDS='%s' is not a count of sockets",
                            fds_s);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (long i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + (int)i;
        char addr[32];

        fcntl(fd, F_SETFD, FD_CLOEXEC);
        snprintf(addr, sizeof(addr), "systemd:%ld", i);
        if (!push(ls, fd, proto, addr))
            return rb_error_set(err, ENOMEM, "out of memory");
    }
    return (int)n;
}

void rb_listeners_close(struct rb_listeners *ls)
{
    for (size_t i = 0; i < ls->n; i++) {
        struct rb_listener *l = &ls->v[i];

        if (l->fd >= 0)
            close(l->fd);
        if (l->unix_path) {
            unlink(l->unix_path);
            free(l->unix_path);
        }
        free(l->addr);
        free(l->host);
    }
    free(ls->v);
    if (ls->tmpdir) {
        rmdir(ls->tmpdir);
        free(ls->tmpdir);
    }
    memset(ls, 0, sizeof(*ls));
}

/* Percent-encode @s for a URI path or query into @out. */
static void uri_encode(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *s && o + 4 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            (ch >= '0' && ch <= '9') || strchr("-._~/", ch)) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
}

void rb_listener_uri(const struct rb_listener *l, bool nbd, bool tls, const char *name,
                     char *buf, size_t cap)
{
    static char enc_name[4096 * 3 + 8], enc_sock[4096 * 3 + 8];
    const char *h = l->host && *l->host ? l->host : "localhost";
    bool v6 = strchr(h, ':') != NULL;

    /* called from the main thread only (start-up lines) */
    uri_encode(enc_name, sizeof(enc_name), name ? name : "");
    if (l->unix_path) {
        uri_encode(enc_sock, sizeof(enc_sock), l->unix_path);
        if (nbd)
            snprintf(buf, cap, "nbd%s+unix:///%s?socket=%s", tls ? "s" : "", enc_name,
                     enc_sock);
        else
            snprintf(buf, cap, "unix:%s", l->unix_path);
    } else if (l->port) {
        if (nbd)
            snprintf(buf, cap, "nbd%s://%s%s%s:%u/%s", tls ? "s" : "", v6 ? "[" : "", h,
                     v6 ? "]" : "", l->port, enc_name);
        else
            snprintf(buf, cap, "http%s://%s%s%s:%u/", tls ? "s" : "", v6 ? "[" : "", h,
                     v6 ? "]" : "", l->port);
    } else if (cap) {
        buf[0] = '\0';
    }
}

int rb_listeners_export_env(const struct rb_listeners *ls,
                            const struct rb_protocol *proto, const char *export_name,
                            struct rb_error *err)
{
    const struct rb_listener *l = NULL;
    char uri[32768], nbd[8192], name[4096 * 3 + 8], sock[4096 * 3 + 8], port[16];

    for (size_t i = 0; i < ls->n && !l; i++)
        if (ls->v[i].proto == proto && (ls->v[i].unix_path || ls->v[i].port))
            l = &ls->v[i];
    if (!l)
        return rb_error_set(err, EINVAL, "--run needs a unix or tcp listener");
    uri_encode(name, sizeof(name), export_name ? export_name : "");
    if (l->unix_path) {
        uri_encode(sock, sizeof(sock), l->unix_path);
        snprintf(uri, sizeof(uri), "nbd+unix:///%s?socket=%s", name, sock);
        snprintf(nbd, sizeof(nbd), "nbd:unix:%s", l->unix_path);
        setenv("unixsocket", l->unix_path, 1);
        unsetenv("port");
    } else {
        const char *h = l->host && *l->host ? l->host : "localhost";
        bool v6 = strchr(h, ':') != NULL;

        snprintf(uri, sizeof(uri), "nbd://%s%s%s:%u/%s", v6 ? "[" : "", h, v6 ? "]" : "",
                 l->port, name);
        snprintf(nbd, sizeof(nbd), "nbd:%s:%u", h, l->port);
        snprintf(port, sizeof(port), "%u", l->port);
        setenv("port", port, 1);
        unsetenv("unixsocket");
    }
    setenv("uri", uri, 1);
    setenv("nbd", nbd, 1);
    setenv("exportname", export_name ? export_name : "", 1);
    return 0;
}

/* ---- captive --run mode ------------------------------------------------ */

struct child {
    pid_t pid;
    int status;       /* exit status for the process */
    atomic_bool done; /* reaped */
};

static void *reap_child(void *arg)
{
    struct child *ch = arg;
    int st;

    while (waitpid(ch->pid, &st, 0) < 0 && errno == EINTR)
        ;
    ch->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    atomic_store(&ch->done, true);
    rb_quit_request();
    return NULL;
}

static int spawn_run(const char *cmd, struct child *ch, pthread_t *tid)
{
    char *argv[] = {(char *)"sh", (char *)"-c", (char *)cmd, NULL};
    posix_spawnattr_t attr;
    sigset_t none;
    int ret;

    /* The child starts with default signal dispositions (we ignore
     * SIGPIPE) and an empty mask. */
    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    {
        sigset_t def;
        sigemptyset(&def);
        sigaddset(&def, SIGPIPE);
        sigaddset(&def, SIGINT);
        sigaddset(&def, SIGTERM);
        posix_spawnattr_setsigdefault(&attr, &def);
    }
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    ret = posix_spawn(&ch->pid, "/bin/sh", NULL, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    if (ret)
        return -ret;
    ret = pthread_create(tid, NULL, reap_child, ch);
    return -ret;
}

/* ---- the accept loop ----------------------------------------------------- */

int rb_server_run(struct rb_server *srv, struct rb_listeners *ls, const char *run_cmd)
{
    struct pollfd *pfd = calloc(ls->n + 1, sizeof(*pfd));
    struct child ch = {.pid = -1};
    pthread_t reaper;
    bool have_child = false;

    if (!pfd)
        return 1;
    for (size_t i = 0; i < ls->n; i++) {
        pfd[i].fd = ls->v[i].fd;
        pfd[i].events = POLLIN;
        /* Non-blocking: a client that goes away between poll and accept
         * must not block the loop. */
        fcntl(ls->v[i].fd, F_SETFL, fcntl(ls->v[i].fd, F_GETFL) | O_NONBLOCK);
    }
    pfd[ls->n].fd = rb_quit_fd();
    pfd[ls->n].events = POLLIN;

    if (run_cmd) {
        int ret = spawn_run(run_cmd, &ch, &reaper);
        if (ret < 0) {
            fprintf(stderr, "rblock: --run: cannot start '%s': %s\n", run_cmd,
                    strerror(-ret));
            free(pfd);
            return 1;
        }
        have_child = true;
    }

    while (!rb_quit_requested()) {
        int r = poll(pfd, ls->n + 1, -1);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (size_t i = 0; i < ls->n; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            int fd = accept4(pfd[i].fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
            if (fd < 0)
                continue; /* EAGAIN, ECONNABORTED, EMFILE...: keep serving */
            if (!srv->verbose) {
                rb_conn_start(srv, fd, ls->v[i].proto);
                continue;
            }
            char peer[INET6_ADDRSTRLEN + 8] = "unix";
            if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
                char host[INET6_ADDRSTRLEN] = "?";
                const void *a = ss.ss_family == AF_INET
                                    ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                                    : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
                unsigned port = ntohs(ss.ss_family == AF_INET
                                          ? ((struct sockaddr_in *)&ss)->sin_port
                                          : ((struct sockaddr_in6 *)&ss)->sin6_port);
                inet_ntop(ss.ss_family, a, host, sizeof(host));
                snprintf(peer, sizeof(peer), "%s:%u", host, port);
            }
            int ret = rb_conn_start(srv, fd, ls->v[i].proto);
            if (ret == -EAGAIN)
                fprintf(stderr,
                        "rblock: %s: refused a connection from %s: --max-connections "
                        "(%u) reached\n",
                        ls->v[i].proto->name, peer, srv->max_connections);
            else if (ret < 0)
                fprintf(stderr, "rblock: %s: connection from %s failed: %s\n",
                        ls->v[i].proto->name, peer, strerror(-ret));
            else
                fprintf(stderr, "rblock: %s: connection from %s on %s\n",
                        ls->v[i].proto->name, peer, ls->v[i].addr);
        }
    }
    free(pfd);

    /* Stop accepting, then let each connection finish what it has. */
    for (size_t i = 0; i < ls->n; i++) {
        close(ls->v[i].fd);
        ls->v[i].fd = -1;
    }
    rb_conn_shutdown_all(srv, false);
    if (!rb_conn_wait_all(srv, QUIT_GRACE_MS)) {
        rb_conn_shutdown_all(srv, true);
        rb_conn_wait_all(srv, -1);
    }
    if (have_child) {
        /* We were told to stop while the command still runs: stop it. */
        if (!atomic_load(&ch.done))
            kill(ch.pid, SIGTERM);
        pthread_join(reaper, NULL);
        return ch.status;
    }
    return 0;
}
