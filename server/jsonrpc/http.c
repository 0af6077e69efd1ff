/* SPDX-License-Identifier: MIT */
/*
 * http.c - JSON-RPC over HTTP/1.1 on the JSON-RPC listener: `POST /` with
 * a JSON-RPC body (a request or a batch) gets the JSON-RPC response as
 * application/json, so curl and a browser's fetch() work.  The line
 * protocol and HTTP share a listener: framing.c hands a connection over
 * when it starts with an HTTP method and a space (JSON starts with '{',
 * '[' or white space; random bytes start so once in 2^32).
 *
 * Routes are rows of one table (method, path, handler): a page served by
 * GET is one more row.  A method other than GET and POST is 405; a path no
 * row has is 404; a path whose rows have another method is 405 (with
 * Allow).  Limits (RFC 9110/9112 status codes), each answered and then the
 * connection closed, so nothing the client sends is buffered beyond them:
 *   - request line and headers together at most RB_HTTP_MAX_HEAD bytes
 *     (431), at most RB_HTTP_MAX_HEADERS lines (431);
 *   - a malformed request line or header, a bad Content-Length (400);
 *     Transfer-Encoding (chunked) is not taken (501: send Content-Length);
 *     a POST without Content-Length (411);
 *   - a body over the line protocol's max_line (413, read no further);
 *   - a request not complete within http_timeout_ms of its first byte
 *     (408): a slow sender costs a thread for that long at most.
 * Keep-alive: HTTP/1.1 keeps the connection unless "Connection: close";
 * HTTP/1.0 closes it unless "Connection: keep-alive".  Requests may be
 * pipelined; each is answered in order.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "jsonrpc/framing.h"
#include "web/web.h"

struct http_req {
    char method[17];
    char path[1024];
    bool http10;
    bool close;            /* the client asked (or the protocol says) close */
    bool has_length;
    uint64_t content_length;
    bool expect_continue;
    const char *body;
    size_t body_len;
};

struct http_resp {
    int status;
    const char *content_type;
    const char *headers; /* more header lines, each ending in "\r\n", or NULL */
    const char *page;    /* a built-in body (not freed), or NULL */
    char *body; /* malloc'd, or NULL */
    size_t body_len;
    bool close;
};

/* ---- routes ------------------------------------------------------------- */

static void post_jsonrpc(const struct rb_rpc_backend *be, const struct http_req *rq,
                         struct http_resp *rs)
{
    char *out = NULL;
    size_t n = 0;

    if (rb_rpc_handle(be, rq->body, rq->body_len, &out, &n) < 0) {
        rs->status = 500;
        rs->close = true;
        return;
    }
    if (!out) { /* notifications only: nothing to say */
        rs->status = 204;
        return;
    }
    rs->status = 200;
    rs->content_type = "application/json";
    rs->body = out;
    rs->body_len = n;
}

/* GET /: the page of the daemon (server/web), built into the binary. */
static void get_page(const struct rb_rpc_backend *be, const struct http_req *rq,
                     struct http_resp *rs)
{
    const struct rb_web_asset *a = rb_web_page(rq->path, strlen(rq->path));

    (void)be;
    if (!a) {
        rs->status = 404;
        return;
    }
    rs->status = 200;
    rs->content_type = a->content_type;
    rs->headers = a->headers;
    rs->page = (const char *)a->body;
    rs->body_len = a->len;
}

static const struct http_route {
    const char *method;
    const char *path;
    void (*fn)(const struct rb_rpc_backend *be, const struct http_req *rq,
               struct http_resp *rs);
} routes[] = {
    {"POST", "/", post_jsonrpc},
    {"GET", "/", get_page},
};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

static const char *reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* ---- socket I/O with a deadline ------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send all of @p (the socket is non-blocking); no progress for
 * @timeout_ms fails.  0 or -errno. */
static int send_all(int fd, const char *p, size_t n, unsigned timeout_ms)
{
    long long last = now_ms();

    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            last = now_ms();
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        long long left = last + timeout_ms - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Input kept across pipelined requests. */
struct inbuf {
    char *p;
    size_t start, len, cap;
};

/* Read more into @in, never holding more than @max_len bytes, waiting
 * until @deadline (ms, or -1: none).  1 when bytes came, 0 at end of
 * stream, -ETIMEDOUT, -E2BIG when @max_len are held, -errno. */
static int fill(int fd, struct inbuf *in, size_t max_len, long long deadline)
{
    size_t want;

    if (in->len >= max_len)
        return -E2BIG;
    if (in->start > 0) {
        memmove(in->p, in->p + in->start, in->len);
        in->start = 0;
    }
    want = in->len + 65536 < max_len ? in->len + 65536 : max_len;
    if (in->cap < want) {
        size_t cap = in->cap * 2 > want ? in->cap * 2 : want;
        char *p;
        if (cap > max_len)
            cap = max_len;
        p = realloc(in->p, cap);
        if (!p)
            return -ENOMEM;
        in->p = p;
        in->cap = cap;
    }
    for (;;) {
        size_t room = (in->cap < max_len ? in->cap : max_len) - in->len;
        ssize_t k = recv(fd, in->p + in->len, room, MSG_DONTWAIT);
        if (k > 0) {
            in->len += (size_t)k;
            return 1;
        }
        if (k == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int wait = -1;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            if (left <= 0)
                return -ETIMEDOUT;
            wait = (int)(left > 1000000 ? 1000000 : left);
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, wait);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r == 0)
            return -ETIMEDOUT;
    }
}

/* ---- parsing ------------------------------------------------------------- */

/* The end of the head ("\r\n\r\n" or "\n\n") in @p, or NULL. */
static const char *head_end(const char *p, size_t n, size_t *head_len)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n') {
            *head_len = i + 2;
            return p + i;
        }
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            *head_len = i + 3;
            return p + i;
        }
    }
    return NULL;
}

static bool token_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-.^_`|~", c);
}

/* Parse the head (@n bytes, NUL-free checked here) into @rq.  Returns 0 or
 * the status to answer (400, 431, 501, 505). */
static int parse_head(char *h, size_t n, struct http_req *rq)
{
    char *line = h, *end = h + n, *eol, *sp1, *sp2;
    unsigned nheaders = 0;

    memset(rq, 0, sizeof(*rq));
    if (memchr(h, '\0', n))
        return 400;
    eol = memchr(line, '\n', (size_t)(end - line));
    if (!eol)
        return 400;
    *eol = '\0';
    if (eol > line && eol[-1] == '\r')
        eol[-1] = '\0';
    /* METHOD SP TARGET SP HTTP/1.x */
    sp1 = strchr(line, ' ');
    if (!sp1 || sp1 == line || (size_t)(sp1 - line) >= sizeof(rq->method))
        return 400;
    for (char *p = line; p < sp1; p++)
        if (!token_char(*p))
            return 400;
    memcpy(rq->method, line, (size_t)(sp1 - line));
    sp2 = strchr(sp1 + 1, ' ');
    if (!sp2 || sp2 == sp1 + 1 || sp1[1] != '/' ||
        (size_t)(sp2 - sp1 - 1) >= sizeof(rq->path))
        return sp2 && (size_t)(sp2 - sp1 - 1) >= sizeof(rq->path) ? 431 : 400;
    for (char *p = sp1 + 1; p < sp2; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return 400;
    memcpy(rq->path, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    rq->path[strcspn(rq->path, "?#")] = '\0'; /* the query does not route */
    if (strchr(sp2 + 1, ' '))
        return 400;
    if (strcmp(sp2 + 1, "HTTP/1.1") == 0)
        rq->http10 = false;
    else if (strcmp(sp2 + 1, "HTTP/1.0") == 0)
        rq->http10 = rq->close = true;
    else if (strncmp(sp2 + 1, "HTTP/", 5) == 0)
        return 505;
    else
        return 400;

    for (line = eol + 1; line < end; line = eol + 1) {
        char *colon, *v, *ve;

        eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        *eol = '\0';
        if (eol > line && eol[-1] == '\r')
            eol[-1] = '\0';
        if (!*line)
            break; /* the blank line */
        if (++nheaders > RB_HTTP_MAX_HEADERS)
            return 431;
        colon = strchr(line, ':');
        if (!colon || colon == line)
            return 400;
        for (char *p = line; p < colon; p++)
            if (!token_char(*p))
                return 400; /* also white space before the colon (RFC 9112 5.1) */
        *colon = '\0';
        v = colon + 1;
        v += strspn(v, " \t");
        ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            *--ve = '\0';
        if (!strcasecmp(line, "Content-Length")) {
            uint64_t x = 0;
            if (!*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 15)
                return 400;
            for (char *p = v; *p; p++)
                x = x * 10 + (uint64_t)(*p - '0');
            if (rq->has_length && x != rq->content_length)
                return 400; /* two different lengths: request smuggling */
            rq->has_length = true;
            rq->content_length = x;
        } else if (!strcasecmp(line, "Transfer-Encoding")) {
            return 501;
        } else if (!strcasecmp(line, "Connection")) {
            if (strcasestr(v, "close"))
                rq->close = true;
            else if (strcasestr(v, "keep-alive"))
                rq->close = false;
        } else if (!strcasecmp(line, "Expect")) {
            if (!strcasecmp(v, "100-continue"))
                rq->expect_continue = true;
        }
    }
    return 0;
}

/* ---- responses ----------------------------------------------------------- */

static int respond(int fd, const struct http_resp *rs, const char *allow, unsigned timeout)
{
    char head[4096];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n"
                     "Server: rblock\r\n"
                     "%s%s%s"
                     "%s%s%s"
                     "%s"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "\r\n",
                     rs->status, reason(rs->status), rs->content_type ? "Content-Type: " : "",
                     rs->content_type ? rs->content_type : "", rs->content_type ? "\r\n" : "",
                     allow ? "Allow: " : "", allow ? allow : "", allow ? "\r\n" : "",
                     rs->headers ? rs->headers : "", rs->body_len,
                     rs->close ? "Connection: close\r\n" : "");
    int ret;

    if (n < 0 || (size_t)n >= sizeof(head))
        return -EOVERFLOW;
    ret = send_all(fd, head, (size_t)n, timeout);
    if (!ret && rs->body_len)
        ret = send_all(fd, rs->page ? rs->page : rs->body, rs->body_len, timeout);
    return ret;
}

/* An error status with a short JSON-RPC-shaped body, then close. */
static int respond_error(int fd, int status, const char *msg, const char *allow,
                         unsigned timeout, const char *log_peer)
{
    char body[512];
    int n = snprintf(body, sizeof(body),
                     "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":%d,\"message\":\"http %d: %s\"},"
                     "\"id\":null}\n",
                     status == 413 ? RB_RPC_PARSE_ERROR : RB_RPC_INVALID_REQUEST, status, msg);
    struct http_resp rs = {.status = status,
                           .content_type = "application/json",
                           .body = body,
                           .body_len = (size_t)n,
                           .close = status != 404 && status != 405};

    if (log_peer)
        fprintf(stderr, "rblock: jsonrpc %s: HTTP %d: %s\n", log_peer, status, msg);
    return respond(fd, &rs, allow, timeout);
}

/* ---- the connection ------------------------------------------------------ */

enum rb_rpc_end rb_rpc_serve_http(int fd, const struct rb_rpc_backend *be,
                                  const struct rb_rpc_limits *lim, const char *pre,
                                  size_t pre_len)
{
    size_t max_body = lim && lim->max_line ? lim->max_line : RB_RPC_MAX_LINE;
    unsigned send_timeout = lim && lim->send_timeout_ms ? lim->send_timeout_ms
                                                        : RB_RPC_DEFAULT_SEND_TIMEOUT_MS;
    unsigned req_timeout = lim && lim->http_timeout_ms ? lim->http_timeout_ms
                                                       : RB_HTTP_DEFAULT_TIMEOUT_MS;
    const char *log_peer = lim ? lim->log_peer : NULL;
    struct inbuf in = {0};
    enum rb_rpc_end end = RB_RPC_END_EOF;

    if (pre_len) {
        in.p = malloc(pre_len > 16384 ? pre_len : 16384);
        if (!in.p)
            return RB_RPC_END_NOMEM;
        in.cap = pre_len > 16384 ? pre_len : 16384;
        memcpy(in.p, pre, pre_len);
        in.len = pre_len;
    }
    for (;;) {
        struct http_req rq;
        struct http_resp rs = {0};
        size_t head_len = 0;
        long long deadline = -1;
        int ret, status;

        /* The head: wait for the first byte without a deadline (an idle
         * keep-alive connection), then the whole request within one. */
        while (!in.len || !head_end(in.p + in.start, in.len, &head_len)) {
            if (in.len >= RB_HTTP_MAX_HEAD) {
                respond_error(fd, 431, "request line and headers over the limit", NULL,
                              send_timeout, log_peer);
                goto out;
            }
            if (in.len > 0 && deadline < 0)
                deadline = now_ms() + req_timeout;
            ret = fill(fd, &in, RB_HTTP_MAX_HEAD, deadline);
            if (ret == 0) { /* the client closed (perhaps mid-request) */
                if (in.len)
                    end = RB_RPC_END_EOF;
                goto out;
            }
            if (ret == -ETIMEDOUT) {
                respond_error(fd, 408, "request not complete in time", NULL, send_timeout, log_peer);
                end = RB_RPC_END_TIMEOUT;
                goto out;
            }
            if (ret == -E2BIG)
                continue; /* answered 431 at the top */
            if (ret < 0) {
                end = ret == -ENOMEM ? RB_RPC_END_NOMEM : RB_RPC_END_ERROR;
                goto out;
            }
            if (deadline < 0)
                deadline = now_ms() + req_timeout;
        }
        if (deadline < 0)
            deadline = now_ms() + req_timeout;
        /* (the first read may have brought more than the limit at once) */
        status = head_len > RB_HTTP_MAX_HEAD ? 431 : parse_head(in.p + in.start, head_len, &rq);
        in.start += head_len;
        in.len -= head_len;
        if (status) {
            respond_error(fd, status,
                          status == 431   ? "request line and headers over the limit"
                          : status == 501 ? "Transfer-Encoding is not supported: send "
                                            "Content-Length"
                          : status == 505 ? "HTTP/1.0 and HTTP/1.1 only"
                                          : "malformed request line or header",
                          NULL, send_timeout, log_peer);
            goto out;
        }

        /* Route: the method, then the path, then the pair. */
        const struct http_route *route = NULL;
        bool path_known = false;
        char allow[64] = "";
        if (strcmp(rq.method, "GET") != 0 && strcmp(rq.method, "POST") != 0) {
            respond_error(fd, 405, "method not allowed", "GET, POST", send_timeout, log_peer);
            goto out; /* its body, if any, was not read */
        }
        for (size_t i = 0; i < N_ROUTES; i++) {
            if (strcmp(routes[i].path, rq.path) != 0)
                continue;
            path_known = true;
            if (strcmp(routes[i].method, rq.method) == 0)
                route = &routes[i];
            else if (strlen(allow) + strlen(routes[i].method) + 3 < sizeof(allow))
                snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s",
                         allow[0] ? ", " : "", routes[i].method);
        }
        if (!route) {
            /* A body we do not read would be taken for the next request. */
            bool body = rq.has_length && rq.content_length > 0;
            int st = path_known ? 405 : 404;
            respond_error(fd, st, path_known ? "method not allowed" : "not found",
                          path_known ? allow : NULL, send_timeout, log_peer);
            if (body || rq.close)
                goto out;
            continue;
        }
        if (strcmp(rq.method, "POST") == 0 && !rq.has_length) {
            respond_error(fd, 411, "a POST needs Content-Length", NULL, send_timeout, log_peer);
            goto out;
        }
        if (rq.has_length && rq.content_length > max_body) {
            char msg[128];
            snprintf(msg, sizeof(msg), "body of %llu bytes is over the limit of %zu",
                     (unsigned long long)rq.content_length, max_body);
            respond_error(fd, 413, msg, NULL, send_timeout, log_peer);
            goto out;
        }
        if (rq.expect_continue && rq.has_length && rq.content_length > in.len) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (send_all(fd, cont, sizeof(cont) - 1, send_timeout) < 0) {
                end = RB_RPC_END_ERROR;
                goto out;
            }
        }
        /* The body: all of it, within the request's deadline. */
        size_t need = rq.has_length ? (size_t)rq.content_length : 0;
        while (in.len < need) {
            ret = fill(fd, &in, need, deadline);
            if (ret == 0)
                goto out;
            if (ret == -ETIMEDOUT) {
                respond_error(fd, 408, "request not complete in time", NULL, send_timeout, log_peer);
                end = RB_RPC_END_TIMEOUT;
                goto out;
            }
            if (ret < 0) {
                end = ret == -ENOMEM ? RB_RPC_END_NOMEM : RB_RPC_END_ERROR;
                goto out;
            }
        }
        rq.body = in.p + in.start;
        rq.body_len = need;
        route->fn(be, &rq, &rs);
        in.start += need;
        in.len -= need;
        rs.close = rs.close || rq.close;
        ret = respond(fd, &rs, NULL, send_timeout);
        free(rs.body);
        if (ret < 0) {
            end = ret == -ETIMEDOUT ? RB_RPC_END_TIMEOUT : RB_RPC_END_ERROR;
            goto out;
        }
        if (rs.close)
            goto out;
        /* A buffer grown for a large body shrinks back when idle. */
        if (in.len == 0 && in.cap > 65536) {
            free(in.p);
            in = (struct inbuf){0};
        }
    }
out:
    free(in.p);
    return end;
}
