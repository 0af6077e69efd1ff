/* SPDX-License-Identifier: MIT */
/*
 * name.c - "rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:key=value...]" names
 * (rblock/rbd.h).  Pure string work: built with or without librbd.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/rbd.h"

bool rb_rbd_is_name(const char *name)
{
    return name && strncmp(name, RB_RBD_PREFIX, strlen(RB_RBD_PREFIX)) == 0;
}

/* Copy the next field of @s up to an unquoted character of @stops (or the
 * end) into @out (unquoting backslashes); *@s is left at the stop. */
static int field(const char **s, const char *stops, char *out, size_t cap, bool *too_long)
{
    size_t n = 0;
    const char *p = *s;

    for (; *p && !strchr(stops, *p); p++) {
        if (*p == '\\' && p[1])
            p++;
        if (n + 1 >= cap) {
            *too_long = true;
            return -1;
        }
        out[n++] = *p;
    }
    out[n] = '\0';
    *s = p;
    return 0;
}

static int option(const char *name, const char *kv, struct rb_rbd_name *out,
                  struct rb_error *err)
{
    const char *eq = strchr(kv, '=');
    size_t klen = eq ? (size_t)(eq - kv) : strlen(kv);
    const char *v = eq ? eq + 1 : "";

    if (!eq || !*v)
        return rb_error_set(err, EINVAL, "%s: option '%s' needs a value (key=value)", name,
                            kv);
    if (klen == 4 && strncmp(kv, "conf", 4) == 0) {
        if (strlen(v) >= sizeof(out->conf))
            return rb_error_set(err, EINVAL, "%s: conf path is too long", name);
        strcpy(out->conf, v);
    } else if (klen == 2 && strncmp(kv, "id", 2) == 0) {
        if (strlen(v) >= sizeof(out->id))
            return rb_error_set(err, EINVAL, "%s: id is too long", name);
        strcpy(out->id, v);
    } else if (klen == 7 && strncmp(kv, "timeout", 7) == 0) {
        char *end;
        unsigned long t = strtoul(v, &end, 10);
        if (*end || t == 0 || t > 3600)
            return rb_error_set(err, EINVAL,
                                "%s: timeout '%s' is not a number of seconds in 1..3600",
                                name, v);
        out->timeout_sec = (unsigned)t;
    } else {
        return rb_error_set(err, EINVAL, "%s: unknown option '%.*s' (known: conf, id, timeout)",
                            name, (int)klen, kv);
    }
    out->has_options = true;
    return 0;
}

int rb_rbd_parse_name(const char *name, struct rb_rbd_name *out, struct rb_error *err)
{
    char parts[3][RB_RBD_NAME_MAX];
    char kv[4200];
    const char *s;
    bool too_long = false;
    int n = 0;

    memset(out, 0, sizeof(*out));
    if (!rb_rbd_is_name(name))
        return rb_error_set(err, EINVAL, "%s: not an rbd: name", name);
    s = name + strlen(RB_RBD_PREFIX);
    /* up to three slash-separated parts, the last one may carry @SNAP */
    for (;;) {
        if (n == 3)
            return rb_error_set(err, EINVAL, "%s: too many '/' (rbd:POOL/IMAGE or "
                                "rbd:POOL/NAMESPACE/IMAGE)", name);
        if (field(&s, "/@:", parts[n], sizeof(parts[n]), &too_long) < 0)
            return rb_error_set(err, EINVAL, "%s: a name part is longer than %d bytes", name,
                                RB_RBD_NAME_MAX - 1);
        if (!parts[n][0])
            return rb_error_set(err, EINVAL, "%s: empty pool, namespace or image name "
                                "(rbd:POOL/IMAGE[@SNAP])", name);
        n++;
        if (*s != '/')
            break;
        s++;
    }
    if (n < 2)
        return rb_error_set(err, EINVAL, "%s: no image name (rbd:POOL/IMAGE[@SNAP])", name);
    strcpy(out->pool, parts[0]);
    if (n == 3)
        strcpy(out->ns, parts[1]);
    strcpy(out->image, parts[n - 1]);
    if (*s == '@') {
        s++;
        if (field(&s, ":", out->snap, sizeof(out->snap), &too_long) < 0)
            return rb_error_set(err, EINVAL, "%s: snapshot name is too long", name);
        if (!out->snap[0])
            return rb_error_set(err, EINVAL, "%s: empty snapshot name after '@'", name);
    }
    while (*s == ':') {
        s++;
        if (field(&s, ":", kv, sizeof(kv), &too_long) < 0)
            return rb_error_set(err, EINVAL, "%s: option is too long", name);
        if (option(name, kv, out, err) < 0)
            return -EINVAL;
    }
    if (*s)
        return rb_error_set(err, EINVAL, "%s: unexpected '%c' in an rbd: name", name, *s);
    return 0;
}

const char *rb_rbd_plain_name(const struct rb_rbd_name *n, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s/%s%s%s%s%s", RB_RBD_PREFIX, n->pool, n->ns, n->ns[0] ? "/" : "",
             n->image, n->snap[0] ? "@" : "", n->snap);
    return buf;
}

bool rb_rbd_same_image(const char *a, const char *b)
{
    struct rb_rbd_name *x = malloc(sizeof(*x)), *y = malloc(sizeof(*y));
    bool same = x && y && rb_rbd_parse_name(a, x, NULL) == 0 &&
                rb_rbd_parse_name(b, y, NULL) == 0 && strcmp(x->pool, y->pool) == 0 &&
                strcmp(x->ns, y->ns) == 0 && strcmp(x->image, y->image) == 0;

    free(x);
    free(y);
    return same;
}
