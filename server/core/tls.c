/* SPDX-License-Identifier: MIT */
/*
 * tls.c - GnuTLS credentials and the per-connection TLS transport.
 *
 * Replies are written whole under the connection's send lock, requests
 * read by one thread: GnuTLS allows one thread sending and one receiving
 * on a session at the same time, which is all the connection does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/conn.h"
#include "core/tls.h"

enum rb_tls_mode rb_tls_mode(const struct rb_tls *tls);

#ifndef HAVE_GNUTLS

struct rb_tls {
    enum rb_tls_mode mode;
};

bool rb_tls_available(void)
{
    return false;
}

struct rb_tls *rb_tls_new(const struct rb_tls_config *cfg, struct rb_error *err)
{
    rb_error_set(err, ENOTSUP, "this rblock was built without GnuTLS: TLS is not available");
    return NULL;
}

void rb_tls_free(struct rb_tls *tls)
{
    free(tls);
}

enum rb_tls_mode rb_tls_mode(const struct rb_tls *tls)
{
    return RB_TLS_OFF;
}

int rb_tls_start(struct rb_conn *c, struct rb_tls *tls)
{
    return -ENOTSUP;
}

#else

#include <gnutls/gnutls.h>

/* Plaintext bytes per TLS record (GnuTLS's default maximum). */
#define TLS_RECORD_BYTES 16384

struct rb_tls {
    enum rb_tls_mode mode;
    bool verify_peer;
    gnutls_certificate_credentials_t x509; /* or NULL */
    gnutls_psk_server_credentials_t psk;   /* or NULL */
    gnutls_priority_t prio;
};

bool rb_tls_available(void)
{
    return true;
}

enum rb_tls_mode rb_tls_mode(const struct rb_tls *tls)
{
    return tls ? tls->mode : RB_TLS_OFF;
}

static bool readable(const char *path, struct rb_error *err)
{
    if (access(path, R_OK) == 0)
        return true;
    rb_error_errno(err, errno, "%s", path);
    return false;
}

static int load_x509(struct rb_tls *t, const char *dir, struct rb_error *err)
{
    char ca[4096], cert[4096], key[4096];
    int ret;

    if (snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir) >= (int)sizeof(ca) ||
        snprintf(cert, sizeof(cert), "%s/server-cert.pem", dir) >= (int)sizeof(cert) ||
        snprintf(key, sizeof(key), "%s/server-key.pem", dir) >= (int)sizeof(key))
        return rb_error_set(err, ENAMETOOLONG, "--tls-cert %s: path too long", dir);
    if (!readable(cert, err) || !readable(key, err))
        return -EINVAL;
    ret = gnutls_certificate_allocate_credentials(&t->x509);
    if (ret < 0) {
        t->x509 = NULL;
        return rb_error_set(err, ENOMEM, "cannot allocate TLS credentials: %s",
                            gnutls_strerror(ret));
    }
    /* The CA is needed only to check client certificates. */
    if (t->verify_peer || access(ca, F_OK) == 0) {
        if (!readable(ca, err))
            return -EINVAL;
        ret = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM);
        if (ret <= 0)
            return rb_error_set(err, EINVAL, "%s: %s", ca,
                                ret == 0 ? "no certificate in the file" : gnutls_strerror(ret));
    }
    /* Revoked client certificates, when the folder has a list (as qemu). */
    if (t->verify_peer && snprintf(ca, sizeof(ca), "%s/ca-crl.pem", dir) < (int)sizeof(ca) &&
        access(ca, F_OK) == 0) {
        ret = gnutls_certificate_set_x509_crl_file(t->x509, ca, GNUTLS_X509_FMT_PEM);
        if (ret < 0)
            return rb_error_set(err, EINVAL, "%s: %s", ca, gnutls_strerror(ret));
    }
    ret = gnutls_certificate_set_x509_key_file(t->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (ret < 0)
        return rb_error_set(err, EINVAL, "%s, %s: %s", cert, key, gnutls_strerror(ret));
    gnutls_certificate_set_known_dh_params(t->x509, GNUTLS_SEC_PARAM_MEDIUM);
    return 0;
}

/* Check that @path has at least one "username:hexkey" line, so that a
 * wrong file is a start-up error rather than every client failing. */
static int check_psk_file(const char *path, struct rb_error *err)
{
    char line[1024];
    unsigned lineno = 0, good = 0;
    FILE *f = fopen(path, "r");

    if (!f)
        return rb_error_errno(err, errno, "%s", path);
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        size_t hex;

        lineno++;
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0])
            continue;
        if (!colon || colon == line) {
            fclose(f);
            return rb_error_set(err, EINVAL, "%s:%u: not a username:hexkey line", path,
                                lineno);
        }
        hex = strspn(colon + 1, "0123456789abcdefABCDEF");
        if (hex == 0 || hex % 2 || colon[1 + hex]) {
            fclose(f);
            return rb_error_set(err, EINVAL, "%s:%u: the key is not an even number of hex digits",
                                path, lineno);
        }
        good++;
    }
    fclose(f);
    if (!good)
        return rb_error_set(err, EINVAL, "%s: no username:hexkey line", path);
    return 0;
}

static int load_psk(struct rb_tls *t, const char *path, struct rb_error *err)
{
    int ret = check_psk_file(path, err);

    if (ret < 0)
        return ret;
    ret = gnutls_psk_allocate_server_credentials(&t->psk);
    if (ret < 0) {
        t->psk = NULL;
        return rb_error_set(err, ENOMEM, "cannot allocate TLS credentials: %s",
                            gnutls_strerror(ret));
    }
    ret = gnutls_psk_set_server_credentials_file(t->psk, path);
    if (ret < 0)
        return rb_error_set(err, EINVAL, "%s: %s", path, gnutls_strerror(ret));
    return 0;
}

struct rb_tls *rb_tls_new(const struct rb_tls_config *cfg, struct rb_error *err)
{
    struct rb_tls *t;
    const char *prio;
    int ret;

    if (cfg->mode == RB_TLS_OFF || !cfg->cert_dir == !cfg->psk_file) {
        rb_error_set(err, EINVAL, "TLS needs exactly one of --tls-cert DIR and --tls-psk FILE");
        return NULL;
    }
    if (cfg->verify_peer && !cfg->cert_dir) {
        rb_error_set(err, EINVAL, "--tls-verify-peer needs --tls-cert DIR");
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    t->mode = cfg->mode;
    t->verify_peer = cfg->verify_peer;
    ret = cfg->cert_dir ? load_x509(t, cfg->cert_dir, err) : load_psk(t, cfg->psk_file, err);
    if (ret < 0) {
        rb_tls_free(t);
        return NULL;
    }
    /* PSK key exchanges are not in NORMAL; with PSK, prefer forward
     * secrecy (ECDHE/DHE) but let plain PSK through, as nbdkit and qemu. */
    prio = cfg->psk_file ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : "NORMAL";
    ret = gnutls_priority_init(&t->prio, prio, NULL);
    if (ret < 0) {
        t->prio = NULL;
        rb_error_set(err, EINVAL, "TLS priority \"%s\": %s", prio, gnutls_strerror(ret));
        rb_tls_free(t);
        return NULL;
    }
    return t;
}

void rb_tls_free(struct rb_tls *t)
{
    if (!t)
        return;
    if (t->prio)
        gnutls_priority_deinit(t->prio);
    if (t->x509)
        gnutls_certificate_free_credentials(t->x509);
    if (t->psk)
        gnutls_psk_free_server_credentials(t->psk);
    free(t);
}

/* ---- the transport ------------------------------------------------------ */

static long tls_errno(ssize_t r)
{
    switch (r) {
    case GNUTLS_E_AGAIN:
        return -EAGAIN;
    case GNUTLS_E_INTERRUPTED:
        return -EINTR;
    case GNUTLS_E_PREMATURE_TERMINATION:
        return 0; /* the peer closed without close_notify: end of stream */
    case GNUTLS_E_MEMORY_ERROR:
        return -ENOMEM;
    case GNUTLS_E_PUSH_ERROR:
        return -EPIPE;
    default:
        return -ECONNRESET;
    }
}

static long tls_recv(void *ctx, void *buf, size_t len)
{
    ssize_t r = gnutls_record_recv(ctx, buf, len);

    return r >= 0 ? (long)r : tls_errno(r);
}

/* One record per call: small leading pieces (headers) are gathered with
 * the start of what follows into one record; a large piece is sent from
 * where it lies.  Returns the bytes moved; the caller sends the rest. */
static long tls_sendv(void *ctx, const struct iovec *iov, int iovcnt)
{
    uint8_t stage[TLS_RECORD_BYTES];
    size_t n = 0;
    ssize_t r;

    if (iovcnt > 0 && iov[0].iov_len >= TLS_RECORD_BYTES) {
        r = gnutls_record_send(ctx, iov[0].iov_base, iov[0].iov_len);
        return r >= 0 ? (long)r : tls_errno(r);
    }
    for (int i = 0; i < iovcnt && n < sizeof(stage); i++) {
        size_t k = iov[i].iov_len;

        if (k > sizeof(stage) - n)
            k = sizeof(stage) - n;
        memcpy(stage + n, iov[i].iov_base, k);
        n += k;
    }
    r = gnutls_record_send(ctx, stage, n);
    return r >= 0 ? (long)r : tls_errno(r);
}

static bool tls_pending(void *ctx)
{
    return gnutls_record_check_pending(ctx) > 0;
}

static void tls_close(void *ctx)
{
    /* No close_notify: the peer may be gone, and a blocking send must not
     * hold the thread.  (Clients treat the closed socket as the end.) */
    gnutls_deinit(ctx);
}

static const struct rb_transport tls_transport = {
    .recv = tls_recv,
    .sendv = tls_sendv,
    .pending = tls_pending,
    .close = tls_close,
};

/* Milliseconds left before @c's handshake deadline (at least 1), or the
 * GnuTLS default when there is none. */
static unsigned handshake_ms(struct rb_conn *c)
{
    struct timespec now;
    long long ms;

    if (!atomic_load(&c->in_handshake) || !c->proto->handshake_deadline)
        return GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT; /* (JSON-RPC: evictable only) */
    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (long long)(c->deadline.tv_sec - now.tv_sec) * 1000 +
         (c->deadline.tv_nsec - now.tv_nsec) / 1000000;
    return ms < 1 ? 1 : ms > 3600000 ? 3600000 : (unsigned)ms;
}

int rb_tls_start(struct rb_conn *c, struct rb_tls *t)
{
    gnutls_session_t s;
    int ret;

    if (!t)
        return -ENOTSUP;
    ret = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NO_SIGNAL);
    if (ret < 0)
        return -ENOMEM;
    ret = gnutls_priority_set(s, t->prio);
    if (!ret && t->x509) {
        ret = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->x509);
        if (!ret && t->verify_peer) {
            gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
            /* Checked against the CA during the handshake. */
            gnutls_session_set_verify_cert(s, NULL, 0);
        }
    }
    if (!ret && t->psk)
        ret = gnutls_credentials_set(s, GNUTLS_CRD_PSK, t->psk);
    if (ret < 0) {
        gnutls_deinit(s);
        return -ENOMEM;
    }
    gnutls_transport_set_int(s, c->fd);
    gnutls_handshake_set_timeout(s, handshake_ms(c));
    do {
        ret = gnutls_handshake(s);
    } while (ret < 0 && !gnutls_error_is_fatal(ret) && ret != GNUTLS_E_TIMEDOUT);
    if (ret < 0) {
        fprintf(stderr, "rblock: %s %s: TLS handshake failed: %s\n", c->proto->name, c->peer,
                gnutls_strerror(ret));
        gnutls_deinit(s);
        return ret == GNUTLS_E_TIMEDOUT ? -ETIMEDOUT : -ECONNRESET;
    }
    rb_conn_set_transport(c, &tls_transport, s);
    return 0;
}

#endif
