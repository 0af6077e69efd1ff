/* SPDX-License-Identifier: MIT */
/*
 * web.h - the page that `GET /` on the daemon's HTTP listener returns:
 * plain HTML, CSS and JavaScript (server/web/index.html), built into the
 * binary (scripts/embed), read-only: it only calls the JSON-RPC methods
 * export_list, stats and layout with POST / on the same listener.
 *
 * No file of the host is ever served: the assets are bytes of the binary,
 * looked up by an exact request target.
 */
#ifndef RBLOCK_WEB_H
#define RBLOCK_WEB_H

#include <stddef.h>

struct rb_web_asset {
    const char *content_type; /* for the Content-Type header */
    const char *headers;      /* more response header lines, each ending in
                                 "\r\n" (Content-Security-Policy, ...) */
    const unsigned char *body;
    size_t len;
};

/*
 * The asset for the request target @path of @path_len bytes (as received:
 * not NUL-terminated, may hold any byte), or NULL: the caller answers 404.
 * Only "/" has one; anything else -- "/index.html", "/../etc/passwd",
 * "//", "/%2e%2e/", a query string, a NUL -- is NULL.  Thread-safe.
 */
const struct rb_web_asset *rb_web_page(const char *path, size_t path_len);

#endif
