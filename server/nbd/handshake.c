/* SPDX-License-Identifier: MIT */
/*
 * handshake.c - fixed newstyle option haggling (proto.md, "Fixed newstyle
 * negotiation" and "Option types").  Every length the client sends is
 * checked against what the option's payload holds, and the payload itself
 * against NBD_MAX_OPTION_BYTES, before anything is allocated.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tls.h"
#include "nbd/nbd.h"
#include "nbd/proto.h"
#include "nbd/wire.h"


struct opt {
    uint32_t code;
    uint32_t len;
    uint8_t *data; /* len bytes */
};

static int send_reply(struct rb_conn *c, uint32_t opt, uint32_t type, const void *data,
                      uint32_t len)
{
    uint8_t hdr[NBD_OPTION_REPLY_BYTES];
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)data, len}};

    put64(hdr, NBD_REP_MAGIC);
    put32(hdr + 8, opt);
    put32(hdr + 12, type);
    put32(hdr + 16, len);
    return rb_conn_sendv(c, iov, len ? 2 : 1);
}

/* An error reply with a message for the user. */
static int send_error(struct rb_conn *c, uint32_t opt, uint32_t type, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));
static int send_error(struct rb_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    return send_reply(c, opt, type, msg, (uint32_t)n);
}

static int send_info(struct rb_conn *c, uint32_t opt, uint16_t type, const void *data,
                     size_t len)
{
    uint8_t buf[2 + NBD_MAX_STRING];

    if (len > NBD_MAX_STRING)
        len = NBD_MAX_STRING;
    put16(buf, type);
    memcpy(buf + 2, data, len);
    return send_reply(c, opt, NBD_REP_INFO, buf, (uint32_t)(2 + len));
}

/* The export named by a client (@len bytes; "" is the default one), with
 * a use taken for @user (NULL: given back before the handshake ends). */
static struct rb_export *export_get(struct rb_conn *c, const void *name, uint32_t len,
                                    struct rb_conn *user)
{
    return rb_exports_get(c->srv->exports, name, len, user);
}

static void export_put(struct rb_conn *c, struct rb_export *e, struct rb_conn *user)
{
    rb_exports_put(c->srv->exports, e, user);
}

/* Largest request the server takes from this client (see nbd.h). */
static uint32_t max_request(struct rb_conn *c, bool told)
{
    size_t budget = c->srv->max_inflight_bytes;

    if (told)
        return NBD_MAX_REQUEST_BYTES;
    /* within --max-inflight, never below what a client that asks gets */
    if (budget && budget < NBD_MAX_UNNEGOTIATED_BYTES)
        return budget > NBD_MAX_REQUEST_BYTES ? (uint32_t)budget : NBD_MAX_REQUEST_BYTES;
    return NBD_MAX_UNNEGOTIATED_BYTES;
}

/* The transmission flags (proto.md "Transmission flags"), from what the
 * export can do. */
static uint16_t transmission_flags(struct rb_export *e, const struct nbd_session *s)
{
    unsigned caps = rb_export_caps(e);
    /* Every connection shares the one image and a flush flushes all of
     * it, so FLUSH/FUA are visible across connections: CAN_MULTI_CONN. */
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;

    if (caps & RB_EXPORT_CAN_FLUSH)
        f |= NBD_FLAG_SEND_FLUSH;
    if (!(caps & RB_EXPORT_CAN_WRITE))
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_FUA;
    if (caps & RB_EXPORT_CAN_TRIM)
        f |= NBD_FLAG_SEND_TRIM;
    if (caps & RB_EXPORT_CAN_ZERO)
        f |= NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (s->structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

/* NBD_OPT_EXPORT_NAME: no way to report an error but to hang up. */
static int opt_export_name(struct rb_conn *c, struct nbd_session *s, struct opt *o)
{
    uint8_t reply[8 + 2 + 124] = {0};
    struct rb_export *e;

    if (o->len > NBD_MAX_STRING || !(e = export_get(c, o->data, o->len, c)))
        return -ENOENT;
    s->export = e; /* given back by nbd_serve, whatever happens next */
    if (s->meta_export != e)
        s->meta = 0;
    s->meta &= nbd_meta_all(e);
    s->max_request_bytes = max_request(c, false);
    s->tflags = transmission_flags(e, s);
    put64(reply, rb_export_size(e));
    put16(reply + 8, s->tflags);
    /* not evictable from here: the client is in once it has the reply */
    if (!rb_conn_handshake_done(c))
        return -ECONNRESET;
    return rb_conn_send(c, reply, s->no_zeroes ? 10 : sizeof(reply));
}

/* NBD_OPT_LIST: one NBD_REP_SERVER per export, as the table is now (an
 * export added or removed over JSON-RPC shows in the very next LIST):
 * the name, then the description as the rest of the reply. */
static int opt_list(struct rb_conn *c, struct opt *o)
{
    struct rb_export_name *v;
    uint8_t buf[4 + 2 * NBD_MAX_STRING];
    long n;
    int ret = 0;

    if (o->len)
        return send_error(c, o->code, NBD_REP_ERR_INVALID,
                          "NBD_OPT_LIST with %u bytes of data", o->len);
    n = rb_exports_names(c->srv->exports, &v);
    if (n < 0)
        return send_error(c, o->code, NBD_REP_ERR_UNSUP, "out of memory");
    for (long i = 0; i < n && !ret; i++) {
        size_t nlen = strlen(v[i].name), dlen = v[i].description ? strlen(v[i].description) : 0;

        if (nlen > NBD_MAX_STRING)
            nlen = NBD_MAX_STRING;
        if (dlen > NBD_MAX_STRING)
            dlen = NBD_MAX_STRING;
        put32(buf, (uint32_t)nlen);
        memcpy(buf + 4, v[i].name, nlen);
        if (dlen)
            memcpy(buf + 4 + nlen, v[i].description, dlen);
        ret = send_reply(c, o->code, NBD_REP_SERVER, buf, (uint32_t)(4 + nlen + dlen));
    }
    rb_exports_names_free(v, n);
    return ret ? ret : send_reply(c, o->code, NBD_REP_ACK, NULL, 0);
}

/*
 * NBD_OPT_INFO / NBD_OPT_GO.  Data: 32-bit name length, name, 16-bit
 * number of requests, that many 16-bit info types.  Returns 1 when GO
 * succeeded (enter transmission), 0 to keep haggling, -errno to hang up.
 */
static int opt_info_go(struct rb_conn *c, struct nbd_session *s, struct opt *o)
{
    struct rb_export *e;
    bool want_name = false, want_desc = false, want_bs = false;
    bool go = o->code == NBD_OPT_GO;
    uint32_t nlen;
    uint16_t nreq;
    uint8_t buf[12];
    int ret;

    if (o->len < 6)
        return send_error(c, o->code, NBD_REP_ERR_INVALID, "option too short");
    nlen = get32(o->data);
    if (nlen > NBD_MAX_STRING || nlen > o->len - 6)
        return send_error(c, o->code, NBD_REP_ERR_INVALID,
                          "export name length %u does not fit the option", nlen);
    nreq = get16(o->data + 4 + nlen);
    if ((uint64_t)o->len != 6ull + nlen + 2ull * nreq)
        return send_error(c, o->code, NBD_REP_ERR_INVALID,
                          "option length %u does not match %u info requests", o->len,
                          nreq);
    for (uint16_t i = 0; i < nreq; i++) {
        uint16_t t = get16(o->data + 6 + nlen + 2 * i);
        if (t == NBD_INFO_NAME)
            want_name = true;
        else if (t == NBD_INFO_DESCRIPTION)
            want_desc = true;
        else if (t == NBD_INFO_BLOCK_SIZE)
            want_bs = true;
    }
    e = export_get(c, o->data + 4, nlen, go ? c : NULL);
    if (!e && c->srv->verbose)
        fprintf(stderr, "rblock: nbd %s: unknown export '%.*s'\n", c->peer,
                (int)(nlen > 200 ? 200 : nlen), (char *)o->data + 4);
    if (!e)
        return send_error(c, o->code, NBD_REP_ERR_UNKNOWN, "unknown export '%.*s'",
                          (int)(nlen > 200 ? 200 : nlen), (char *)o->data + 4);
    if (go) {
        s->export = e; /* given back by nbd_serve, whatever happens next */
        /* contexts chosen for another export do not carry over */
        if (s->meta_export != e)
            s->meta = 0;
        s->meta &= nbd_meta_all(e);
        s->max_request_bytes = max_request(c, want_bs);
    }

    s->tflags = transmission_flags(e, s);
    put64(buf, rb_export_size(e));
    put16(buf + 8, s->tflags);
    ret = send_info(c, o->code, NBD_INFO_EXPORT, buf, 10);
    if (!ret && want_name)
        ret = send_info(c, o->code, NBD_INFO_NAME, rb_export_name(e),
                        strlen(rb_export_name(e)));
    if (!ret && want_desc && rb_export_description(e))
        ret = send_info(c, o->code, NBD_INFO_DESCRIPTION, rb_export_description(e),
                        strlen(rb_export_description(e)));
    if (!ret && want_bs) {
        /* Only when asked: a client that did not ask was promised no
         * maximum, and may send up to NBD_MAX_UNNEGOTIATED_BYTES (a
         * maximum sent anyway would make libnbd refuse larger requests
         * itself).  Minimum 1, preferred the cluster, maximum 32 MiB. */
        put32(buf, 1);
        put32(buf + 4, rb_export_cluster_bytes(e));
        put32(buf + 8, NBD_MAX_REQUEST_BYTES);
        ret = send_info(c, o->code, NBD_INFO_BLOCK_SIZE, buf, 12);
    }
    /* GO: not evictable from here, the client is in once it has the ACK */
    if (!ret && go && !rb_conn_handshake_done(c))
        ret = -ECONNRESET;
    if (!ret)
        ret = send_reply(c, o->code, NBD_REP_ACK, NULL, 0);
    if (!go)
        export_put(c, e, NULL);
    if (ret < 0)
        return ret;
    return go ? 1 : 0;
}

/* One NBD_REP_META_CONTEXT: the id (0 in a LIST reply) and the name. */
static int send_context(struct rb_conn *c, uint32_t opt, uint32_t id, const char *name)
{
    uint8_t buf[4 + 256];
    size_t n = strlen(name);

    if (n > sizeof(buf) - 4)
        return -EINVAL; /* our own table: names are short */
    put32(buf, id);
    memcpy(buf + 4, name, n);
    return send_reply(c, opt, NBD_REP_META_CONTEXT, buf, (uint32_t)(4 + n));
}

/*
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.  Data: 32-bit
 * name length, name, 32-bit number of queries, each a 32-bit length and a
 * string.  LIST with no query lists all; a bare namespace ("base:",
 * "qemu:") lists that namespace.  SET selects exact names and replaces
 * the earlier selection.
 */
static int opt_meta(struct rb_conn *c, struct nbd_session *s, struct opt *o)
{
    bool set = o->code == NBD_OPT_SET_META_CONTEXT;
    struct rb_export *e;
    nbd_meta_set sel = 0;
    uint32_t nlen, nq, pos;
    int ret;

    if (!s->structured)
        return send_error(c, o->code, NBD_REP_ERR_INVALID,
                          "meta contexts need structured replies first");
    if (o->len < 8)
        return send_error(c, o->code, NBD_REP_ERR_INVALID, "option too short");
    nlen = get32(o->data);
    if (nlen > NBD_MAX_STRING || nlen > o->len - 8)
        return send_error(c, o->code, NBD_REP_ERR_INVALID,
                          "export name length %u does not fit the option", nlen);
    nq = get32(o->data + 4 + nlen);
    pos = 8 + nlen;
    /* Validate every query before answering anything. */
    for (uint32_t i = 0, p = pos; i < nq; i++) {
        uint32_t ql;
        if (o->len - p < 4)
            return send_error(c, o->code, NBD_REP_ERR_INVALID, "query %u is cut short", i);
        ql = get32(o->data + p);
        if (ql > NBD_MAX_STRING || ql > o->len - p - 4)
            return send_error(c, o->code, NBD_REP_ERR_INVALID,
                              "query %u length %u does not fit the option", i, ql);
        p += 4 + ql;
        if (i + 1 == nq && p != o->len)
            return send_error(c, o->code, NBD_REP_ERR_INVALID, "trailing bytes in option");
    }
    if (nq == 0 && pos != o->len)
        return send_error(c, o->code, NBD_REP_ERR_INVALID, "trailing bytes in option");
    e = export_get(c, o->data + 4, nlen, NULL);
    if (!e)
        return send_error(c, o->code, NBD_REP_ERR_UNKNOWN, "unknown export '%.*s'",
                          (int)(nlen > 200 ? 200 : nlen), (char *)o->data + 4);

    if (nq == 0 && !set)
        sel = nbd_meta_all(e);
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql = get32(o->data + pos);

        sel |= nbd_meta_query(e, o->data + pos + 4, ql, !set);
        pos += 4 + ql;
    }
    if (set) {
        s->meta = sel;
        s->meta_export = e;
    }
    ret = 0;
    for (unsigned i = 0; i < nbd_meta_count(e) && !ret; i++) {
        if (sel & ((nbd_meta_set)1 << i)) {
            struct nbd_meta_context row;
            nbd_meta_row(e, i, &row);
            ret = send_context(c, o->code, set ? nbd_meta_id(i) : 0, row.name);
        }
    }
    export_put(c, e, NULL);
    return ret ? ret : send_reply(c, o->code, NBD_REP_ACK, NULL, 0);
}

/*
 * NBD_OPT_STARTTLS (proto.md, "TLS support"): ACK, then the TLS handshake
 * on the same socket; after it, everything negotiated in plaintext is
 * forgotten (an attacker could have chosen it): structured replies, meta
 * contexts, the export.  Only the client's handshake flags stay.
 */
static int opt_starttls(struct rb_conn *c, struct nbd_session *s, struct opt *o)
{
    struct rb_tls *tls = c->srv->tls;
    int ret;

    if (rb_tls_mode(tls) == RB_TLS_OFF)
        return send_error(c, o->code, NBD_REP_ERR_POLICY, "TLS is not enabled");
    if (o->len)
        return send_error(c, o->code, NBD_REP_ERR_INVALID,
                          "NBD_OPT_STARTTLS with %u bytes of data", o->len);
    if (s->tls)
        return send_error(c, o->code, NBD_REP_ERR_INVALID, "TLS is already on");
    ret = send_reply(c, o->code, NBD_REP_ACK, NULL, 0);
    if (ret)
        return ret;
    /* The spec: a failed TLS handshake ends the connection. */
    ret = rb_tls_start(c, tls);
    if (ret)
        return ret;
    *s = (struct nbd_session){
        .fixed_newstyle = s->fixed_newstyle,
        .no_zeroes = s->no_zeroes,
        .tls = true,
    };
    return 0;
}

/* Handle one option.  1: enter transmission; 0: continue; <0: hang up. */
static int handle_option(struct rb_conn *c, struct nbd_session *s, struct opt *o)
{
    /* TLS required and not on yet: only STARTTLS and ABORT are answered;
     * EXPORT_NAME cannot carry an error, so the spec says hang up. */
    if (!s->tls && rb_tls_mode(c->srv->tls) == RB_TLS_REQUIRE &&
        o->code != NBD_OPT_STARTTLS && o->code != NBD_OPT_ABORT) {
        if (o->code == NBD_OPT_EXPORT_NAME)
            return -EACCES;
        return send_error(c, o->code, NBD_REP_ERR_TLS_REQD,
                          "TLS is required: use NBD_OPT_STARTTLS (nbds://)");
    }
    switch (o->code) {
    case NBD_OPT_EXPORT_NAME: {
        int ret = opt_export_name(c, s, o);
        return ret < 0 ? ret : 1;
    }
    case NBD_OPT_ABORT:
        send_reply(c, o->code, NBD_REP_ACK, NULL, 0); /* the client may be gone */
        return -ECONNRESET;
    case NBD_OPT_LIST:
        return opt_list(c, o);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, s, o);
    case NBD_OPT_STRUCTURED_REPLY:
        if (o->len)
            return send_error(c, o->code, NBD_REP_ERR_INVALID,
                              "NBD_OPT_STRUCTURED_REPLY with %u bytes of data", o->len);
        s->structured = true;
        return send_reply(c, o->code, NBD_REP_ACK, NULL, 0);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta(c, s, o);
    case NBD_OPT_STARTTLS:
        return opt_starttls(c, s, o);
    default:
        return send_error(c, o->code, NBD_REP_ERR_UNSUP, "option %u is not supported",
                          o->code);
    }
}

int nbd_handshake(struct rb_conn *c, struct nbd_session *s)
{
    uint8_t greet[18], hdr[NBD_OPTION_HDR_BYTES], cflags[4];
    uint8_t *data = NULL, empty[1];
    uint32_t client, cap = 0;
    int ret;

    memset(s, 0, sizeof(*s));
    put64(greet, NBD_INIT_PASSWD);
    put64(greet + 8, NBD_IHAVEOPT);
    put16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    ret = rb_conn_send(c, greet, sizeof(greet));
    if (!ret)
        ret = rb_conn_recv(c, cflags, sizeof(cflags));
    if (ret)
        return ret;
    client = get32(cflags);
    /* The spec: the server MUST close the connection on unknown flags. */
    if (client & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
        return -EPROTO;
    s->fixed_newstyle = client & NBD_FLAG_C_FIXED_NEWSTYLE;
    s->no_zeroes = client & NBD_FLAG_C_NO_ZEROES;

    for (;;) {
        struct opt o;
        uint8_t *grown;

        ret = rb_conn_recv(c, hdr, sizeof(hdr));
        if (ret)
            break;
        if (get64(hdr) != NBD_IHAVEOPT) {
            ret = -EPROTO;
            break;
        }
        o.code = get32(hdr + 8);
        o.len = get32(hdr + 12);
        o.data = empty;
        /* Longer than any option we know: a hostile or broken client. */
        if (o.len > NBD_MAX_OPTION_BYTES) {
            ret = -E2BIG;
            break;
        }
        /* Only as much as this option needs (idle clients cost nothing). */
        if (o.len > cap) {
            grown = realloc(data, o.len);
            if (!grown) {
                ret = -ENOMEM;
                break;
            }
            data = grown;
            cap = o.len;
        }
        if (data)
            o.data = data;
        ret = rb_conn_recv(c, o.data, o.len);
        if (ret)
            break;
        /* Without fixed newstyle only EXPORT_NAME exists. */
        if (!s->fixed_newstyle && o.code != NBD_OPT_EXPORT_NAME) {
            ret = -EPROTO;
            break;
        }
        ret = handle_option(c, s, &o);
        if (ret < 0)
            break;
        if (ret == 1) {
            ret = 0;
            break;
        }
    }
    free(data);
    return ret;
}
