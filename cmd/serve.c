/* SPDX-License-Identifier: MIT */
/*
 * serve.c - rblock serve: one image over NBD (and, later, JSON-RPC) from
 * one process.  Option parsing and start-up only; the server is in
 * server/core and the protocols in server/nbd, server/jsonrpc.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/rbd.h"
#include "core/conn.h"
#include "core/export.h"
#include "core/listen.h"
#include "core/quit.h"
#include "core/tls.h"
#include "jsonrpc/jsonrpc.h"
#include "nbd/nbd.h"

#define MAX_ADDRS 32

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rblock serve [--nbd ADDR]... [--rpc ADDR]... [--read-only]\n"
            "                    [-l SNAPSHOT] [--export-name NAME] [--description TEXT] [-B BITMAP]...\n"
            "                    [--max-connections N] [--max-inflight SIZE]\n"
            "                    [--tls=off|on|require] [--tls-cert DIR | --tls-psk FILE]\n"
            "                    [--tls-verify-peer]\n"
            "                    [--handshake-timeout SECONDS] [--run CMD] [-f FMT] IMAGE\n"
            "\n"
            "Serve IMAGE (raw, qcow2 or a qcow2 chain) over NBD, and JSON-RPC with --rpc.\n"
            "  --nbd ADDR             tcp:HOST:PORT or unix:PATH (repeatable); default\n"
            "                         tcp:127.0.0.1:10809 unless socket-activated\n"
            "  --rpc ADDR             also serve JSON-RPC 2.0 (one request per line) on\n"
            "                         tcp:HOST:PORT or unix:PATH (repeatable; see\n"
            "                         docs/jsonrpc.md); --run sets $rpc (and\n"
            "                         $rpc_unixsocket) to the first\n"
            "  -r, --read-only        refuse writes\n"
            "  -l, --load-snapshot ID_OR_NAME\n"
            "                         serve the qcow2 internal snapshot (read-only)\n"
            "  -U, --force-share      with --read-only: serve IMAGE even while another\n"
            "                         process writes it\n"
            "  -x, --export-name NAME export name (\"\" is always accepted)\n"
            "  -d, --description TEXT description shown to clients\n"
            "  -B, --bitmap NAME      offer the qcow2 dirty bitmap NAME as the NBD\n"
            "                         metadata context qemu:dirty-bitmap:NAME\n"
            "                         (repeatable), as qemu-nbd -B\n"
            "  -m, --max-connections N  (default %u)\n"
            "      --max-inflight SIZE  NBD request data buffered for all clients\n"
            "                         together (default 1G; each client also at most 64M)\n"
            "      --handshake-timeout SECONDS  (default %u)\n"
            "      --run CMD          run CMD with $uri, $nbd, $port/$unixsocket set; stop\n"
            "                         when it ends and exit with its status\n"
            "  -f, --format FMT       raw or qcow2 (default: probe)\n"
            "      --tls=MODE         NBD over TLS: off, on (offered) or require (default\n"
            "                         require when credentials are given)\n"
            "      --tls-cert DIR     ca-cert.pem, server-cert.pem, server-key.pem\n"
            "      --tls-psk FILE     psktool's username:hexkey file\n"
            "      --tls-verify-peer  require a client certificate signed by ca-cert.pem\n",
            RB_DEFAULT_MAX_CONNECTIONS, RB_DEFAULT_HANDSHAKE_MS / 1000);
}

static int parse_count(const char *s, const char *what, unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v == 0 || v > max || s[0] == '-') {
        complain("%s must be a number from 1 to %u, not '%s'", what, max, s);
        return -EINVAL;
    }
    *out = (unsigned)v;
    return 0;
}

/* --tls=MODE with --tls-cert / --tls-psk.  Credentials alone mean
 * require (as qemu-nbd's --tls-creds); on/require need credentials. */
static int parse_tls(const char *mode, struct rb_tls_config *t)
{
    bool creds = t->cert_dir || t->psk_file;

    if (!mode)
        t->mode = creds ? RB_TLS_REQUIRE : RB_TLS_OFF;
    else if (!strcmp(mode, "off"))
        t->mode = RB_TLS_OFF;
    else if (!strcmp(mode, "on"))
        t->mode = RB_TLS_ON;
    else if (!strcmp(mode, "require"))
        t->mode = RB_TLS_REQUIRE;
    else {
        complain("--tls must be off, on or require, not '%s'", mode);
        return -EINVAL;
    }
    if (t->cert_dir && t->psk_file) {
        complain("--tls-cert and --tls-psk cannot be used together");
        return -EINVAL;
    }
    if (t->verify_peer && !t->cert_dir) {
        complain("--tls-verify-peer needs --tls-cert DIR");
        return -EINVAL;
    }
    if ((t->mode != RB_TLS_OFF || creds) && !rb_tls_available()) {
        complain("this rblock was built without GnuTLS: --tls is not available");
        return -ENOTSUP;
    }
    if (t->mode != RB_TLS_OFF && !creds) {
        complain("--tls=%s needs --tls-cert DIR or --tls-psk FILE", mode);
        return -EINVAL;
    }
    return 0;
}

/* --run with TLS: $uri says nbds:// (the client still needs its own
 * credentials, e.g. libnbd's tls-certificates= or tls-psk-file=). */
static void tls_uri_env(void)
{
    const char *uri = getenv("uri");
    char buf[32768 + 8];

    if (!uri || strncmp(uri, "nbd", 3) != 0 || strlen(uri) + 2 > sizeof(buf))
        return;
    snprintf(buf, sizeof(buf), "nbds%s", uri + 3);
    setenv("uri", buf, 1);
}

int cmd_serve(int argc, char **argv)
{
    enum { OPT_NBD = 256, OPT_RUN, OPT_HS_TIMEOUT, OPT_RPC, OPT_TLS, OPT_TLS_CERT,
           OPT_TLS_PSK, OPT_TLS_VERIFY, OPT_MAX_INFLIGHT };
    static const struct option longopts[] = {
        {"nbd", required_argument, NULL, OPT_NBD},
        {"rpc", required_argument, NULL, OPT_RPC},
        {"read-only", no_argument, NULL, 'r'},
        {"load-snapshot", required_argument, NULL, 'l'},
        {"force-share", no_argument, NULL, 'U'},
        {"export-name", required_argument, NULL, 'x'},
        {"description", required_argument, NULL, 'd'},
        {"bitmap", required_argument, NULL, 'B'},
        {"max-connections", required_argument, NULL, 'm'},
        {"handshake-timeout", required_argument, NULL, OPT_HS_TIMEOUT},
        {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
        {"run", required_argument, NULL, OPT_RUN},
        {"format", required_argument, NULL, 'f'},
        {"tls", required_argument, NULL, OPT_TLS},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-psk", required_argument, NULL, OPT_TLS_PSK},
        {"tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *nbd_addrs[MAX_ADDRS];
    size_t n_nbd = 0;
    const char *rpc_addrs[MAX_ADDRS];
    size_t n_rpc = 0;
    const char *run_cmd = NULL;
    const char *bitmaps[RB_EXPORT_MAX_BITMAPS];
    struct rb_export_config cfg = {.bitmaps = bitmaps};
    struct rb_server srv = {0};
    struct rb_listeners ls = {0};
    struct rb_error err = {0};
    unsigned hs_seconds = RB_DEFAULT_HANDSHAKE_MS / 1000;
    struct rb_tls_config tls_cfg = {0};
    const char *tls_mode = NULL;
    int c, status = 1, activated;

    while ((c = getopt_long(argc, argv, ":rUx:d:m:f:B:l:h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_NBD:
            if (n_nbd == MAX_ADDRS) {
                complain("at most %d --nbd addresses", MAX_ADDRS);
                return 1;
            }
            nbd_addrs[n_nbd++] = optarg;
            break;
        case OPT_RPC:
            if (n_rpc == MAX_ADDRS) {
                complain("at most %d --rpc addresses", MAX_ADDRS);
                return 1;
            }
            rpc_addrs[n_rpc++] = optarg;
            break;
        case 'r': cfg.read_only = true; break;
        case 'l':
            /* qemu-nbd -l: ID_OR_NAME, or snapshot.id=ID / snapshot.name=NAME;
             * a snapshot is served read-only */
            cfg.snapshot = optarg;
            if (strncmp(optarg, "snapshot.id=", 12) == 0)
                cfg.snapshot = optarg + 12;
            else if (strncmp(optarg, "snapshot.name=", 14) == 0)
                cfg.snapshot = optarg + 14;
            cfg.read_only = true;
            break;
        case 'B':
            if (cfg.nb_bitmaps == RB_EXPORT_MAX_BITMAPS) {
                complain("at most %d --bitmap options", RB_EXPORT_MAX_BITMAPS);
                return 1;
            }
            bitmaps[cfg.nb_bitmaps++] = optarg;
            break;
        case 'U': cfg.force_share = true; break;
        case 'x':
            if (strlen(optarg) > 4096) {
                complain("--export-name is longer than 4096 bytes");
                return 1;
            }
            cfg.name = optarg;
            break;
        case 'd':
            if (strlen(optarg) > 4096) {
                complain("--description is longer than 4096 bytes");
                return 1;
            }
            cfg.description = optarg;
            break;
        case 'm':
            if (parse_count(optarg, "--max-connections", 65536, &srv.max_connections))
                return 1;
            break;
        case OPT_MAX_INFLIGHT: {
            uint64_t v;
            if (parse_size(optarg, &v) < 0 || v < (1u << 20) || v > ((uint64_t)1 << 40)) {
                complain("--max-inflight: '%s' is not a size from 1M to 1T", optarg);
                return 1;
            }
            srv.max_inflight_bytes = (size_t)v;
            break;
        }
        case OPT_HS_TIMEOUT:
            if (parse_count(optarg, "--handshake-timeout", 3600, &hs_seconds))
                return 1;
            break;
        case OPT_RUN: run_cmd = optarg; break;
        case 'f': cfg.format = optarg; break;
        case OPT_TLS: tls_mode = optarg; break;
        case OPT_TLS_CERT: tls_cfg.cert_dir = optarg; break;
        case OPT_TLS_PSK: tls_cfg.psk_file = optarg; break;
        case OPT_TLS_VERIFY: tls_cfg.verify_peer = true; break;
        case 'h': usage(stdout); return 0;
        default:
            return bad_option("serve", argv, c);
        }
    }
    if (optind != argc - 1) {
        return bad_usage("serve", "needs one IMAGE");
    }
    cfg.path = argv[optind];
    if (cfg.force_share && !cfg.read_only) {
        /* as qemu-img: sharing everything is for readers only */
        complain("--force-share/-U can only be used with --read-only");
        return 1;
    }
    if (parse_tls(tls_mode, &tls_cfg) < 0)
        return 1;
    srv.handshake_timeout_ms = hs_seconds * 1000;

    /* Signals first: a SIGTERM during start-up still means a clean stop
     * (the loop sees the flag at once).  Then listeners (socket activation
     * needs no threads yet), the image, and --run's environment. */
    if (rb_quit_init() < 0) {
        complain("cannot install signal handlers: %s", strerror(errno));
        return 1;
    }
    activated = rb_listener_adopt_systemd(&ls, &rb_nbd_protocol, &err);
    if (activated < 0)
        goto fail;
    for (size_t i = 0; i < n_nbd; i++)
        if (rb_listener_add(&ls, nbd_addrs[i], &rb_nbd_protocol, &err) < 0)
            goto fail;
    if (ls.n == 0) {
        if (run_cmd ? rb_listener_add_private_unix(&ls, &rb_nbd_protocol, &err) < 0
                    : rb_listener_add(&ls, "tcp:127.0.0.1:10809", &rb_nbd_protocol, &err) < 0)
            goto fail;
    }
    /* JSON-RPC beside NBD (NBD's defaults above do not depend on it). */
    for (size_t i = 0; i < n_rpc; i++)
        if (rb_listener_add(&ls, rpc_addrs[i], &rb_jsonrpc_protocol, &err) < 0)
            goto fail;
    /* Credentials before the image: a bad certificate is a start-up
     * error, reported before anything is opened for writing. */
    if (tls_cfg.mode != RB_TLS_OFF) {
        srv.tls = rb_tls_new(&tls_cfg, &err);
        if (!srv.tls)
            goto fail;
    }
    srv.export = rb_export_open(&cfg, &err);
    if (!srv.export)
        goto fail;
    if (!cfg.format && !rb_export_read_only(srv.export) && !rb_rbd_is_name(cfg.path) &&
        strcmp(rb_export_format(srv.export), "raw") == 0)
        complain("%s: warning: no format given and raw was guessed: writes that would make "
                 "the first sector look like another format are refused (-f raw lifts "
                 "this restriction)", cfg.path);
    if (run_cmd && rb_listeners_export_env(&ls, &rb_nbd_protocol, cfg.name, &err) < 0)
        goto fail;
    if (run_cmd && rb_rpc_export_env(&ls, &err) < 0)
        goto fail;
    if (run_cmd && srv.tls)
        tls_uri_env();
    if (rb_server_init(&srv) < 0) {
        rb_error_set(&err, ENOMEM, "cannot start the server");
        goto fail;
    }

    status = rb_server_run(&srv, &ls, run_cmd);

    rb_server_destroy(&srv);
    rb_quit_fini();
    rb_listeners_close(&ls);
    rb_tls_free(srv.tls);
    if (rb_export_close(srv.export, &err) < 0) {
        complain("%s", rb_error_msg(&err, -EIO));
        return status ? status : 1;
    }
    return status;
fail:
    complain("%s", rb_error_msg(&err, -EINVAL));
    rb_quit_fini();
    rb_listeners_close(&ls);
    rb_export_close(srv.export, NULL);
    rb_tls_free(srv.tls);
    return 1;
}
