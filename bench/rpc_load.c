/* SPDX-License-Identifier: MIT */
/*
 * rpc_load.c - JSON-RPC load generator for bench/rpc.sh: N clients, each
 * a thread with its own connection and one request in flight (closed
 * loop), reading LENGTH bytes at random aligned offsets for SECONDS.
 * Prints requests per second.  Every reply is checked for a result and
 * its id, so a broken server cannot look fast.
 *
 *   rpc_load ADDR CLIENTS SECONDS LENGTH SPAN
 *   ADDR: unix:PATH or tcp:HOST:PORT
 */
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *addr;
static unsigned length;
static unsigned long long span;
static atomic_bool stop;
static atomic_ullong total, failures;

static int dial(void)
{
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", addr + 5);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return -1;
        return fd;
    }
    if (strncmp(addr, "tcp:", 4) == 0) {
        char host[256];
        const char *colon = strrchr(addr + 4, ':');
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
        if (!colon || (size_t)(colon - addr - 4) >= sizeof(host))
            return -1;
        memcpy(host, addr + 4, (size_t)(colon - addr - 4));
        host[colon - addr - 4] = 0;
        if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
            return -1;
        int fd = socket(res->ai_family, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0)
            fd = -1;
        freeaddrinfo(res);
        return fd;
    }
    return -1;
}

static void *client(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    size_t cap = 4 * (size_t)length + 4096, have = 0;
    char *buf = malloc(cap), req[256];
    unsigned long long id = 0, done = 0;
    int fd = dial();

    if (fd < 0 || !buf) {
        fprintf(stderr, "rpc_load: cannot connect to %s\n", addr);
        atomic_fetch_add(&failures, 1);
        free(buf);
        return NULL;
    }
    while (!atomic_load(&stop)) {
        unsigned long long off = (unsigned long long)(rand_r(&seed) % (span / length)) * length;
        int n = snprintf(req, sizeof(req),
                         "{\"jsonrpc\":\"2.0\",\"method\":\"read\",\"params\":{\"offset\":%llu,"
                         "\"length\":%u},\"id\":%llu}\n",
                         off, length, ++id);
        if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
            break;
        char *nl = NULL;
        while (!(nl = memchr(buf, '\n', have))) {
            if (have == cap)
                goto broken;
            ssize_t r = recv(fd, buf + have, cap - have, 0);
            if (r <= 0)
                goto broken;
            have += (size_t)r;
        }
        char want[48];
        snprintf(want, sizeof(want), ",\"id\":%llu}", id);
        *nl = 0;
        if (!strstr(buf, "\"result\"") || !strstr(buf, want))
            goto broken;
        size_t used = (size_t)(nl - buf) + 1;
        memmove(buf, buf + used, have - used);
        have -= used;
        done++;
    }
    atomic_fetch_add(&total, done);
    close(fd);
    free(buf);
    return NULL;
broken:
    fprintf(stderr, "rpc_load: bad or missing reply to request %llu\n", id);
    atomic_fetch_add(&failures, 1);
    atomic_fetch_add(&total, done);
    close(fd);
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: rpc_load ADDR CLIENTS SECONDS LENGTH SPAN\n");
        return 2;
    }
    addr = argv[1];
    unsigned clients = (unsigned)atoi(argv[2]);
    double seconds = atof(argv[3]);
    length = (unsigned)atoi(argv[4]);
    span = strtoull(argv[5], NULL, 0);
    if (!clients || seconds <= 0 || !length || span < length)
        return 2;

    pthread_t *t = calloc(clients, sizeof(*t));
    struct timespec a, b, nap = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (unsigned i = 0; i < clients; i++)
        pthread_create(&t[i], NULL, client, (void *)(uintptr_t)(i + 1));
    nanosleep(&nap, NULL); /* the measuring window of a benchmark, not a test */
    atomic_store(&stop, true);
    for (unsigned i = 0; i < clients; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double el = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%u client%s: %llu requests in %.2f s = %.0f requests/s (%.1f MiB/s of data)%s\n",
           clients, clients == 1 ? "" : "s", (unsigned long long)total, el,
           (double)total / el, (double)total * length / el / 1048576.0,
           failures ? "  [FAILURES]" : "");
    free(t);
    return failures ? 1 : 0;
}
