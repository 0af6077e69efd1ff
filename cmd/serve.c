/* SPDX-License-Identifier: MIT */
/*
 * serve.c - rblock serve: a storage daemon.  Images over NBD (one default
 * export and any number of named ones) and a JSON-RPC control plane, from
 * one process, with qemu-nbd's command line.  Option parsing and start-up
 * only; the server is in server/core and the protocols in server/nbd,
 * server/jsonrpc.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd.h"
#include "rblock/rbd.h"
#include "core/conn.h"
#include "core/export.h"
#include "core/listen.h"
#include "core/quit.h"
#include "core/tls.h"
#include "jsonrpc/jsonrpc.h"
#include "nbd/nbd.h"
#include "rblock/qcow2-create.h"

#define MAX_ADDRS 32
#define MAX_EXPORTS 64

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rblock serve [IMAGE] [--export NAME=IMAGE[,OPTION]...]...\n"
            "                    [--nbd ADDR]... [-k SOCKET] [-p PORT] [-b ADDR]\n"
            "                    [--rpc ADDR]... [--rpc-insecure] [-r] [-f FMT]\n"
            "                    [-x NAME] [-D TEXT] [-B BITMAP]... [-s] [-e N]\n"
            "                    [--discard=ignore|unmap] [--detect-zeroes=off|on|unmap]\n"
            "                    [--fork] [--pid-file FILE] [-v | -q] [--print-uri]\n"
            "                    [--max-connections N] [--max-inflight SIZE]\n"
            "                    [--tls=off|on|require] [--tls-cert DIR | --tls-psk FILE]\n"
            "                    [--tls-verify-peer] [--handshake-timeout SECONDS] [--run CMD]\n"
            "\n"
            "Serve images (raw, qcow2 or a qcow2 chain) over NBD, and a JSON-RPC control\n"
            "plane with --rpc.  IMAGE is the default export (the empty name, and -x NAME).\n"
            "  --export NAME=IMAGE[,read-only][,format=FMT][,description=TEXT][,bitmap=B]\n"
            "                         another export (repeatable; ',,' is a comma in IMAGE\n"
            "                         or TEXT); without IMAGE the first is the default\n"
            "  --nbd ADDR             tcp:HOST:PORT or unix:PATH (repeatable); default\n"
            "                         tcp:127.0.0.1:10809 unless socket-activated\n"
            "  -k, --socket PATH      as --nbd unix:PATH\n"
            "  -p, --port PORT        as --nbd tcp:ADDR:PORT (ADDR from -b)\n"
            "  -b, --bind ADDR        with -p: the address (default 127.0.0.1; qemu-nbd's is\n"
            "                         0.0.0.0: say so to listen on every address)\n"
            "  --rpc ADDR             JSON-RPC 2.0, one request per line or HTTP POST /, on\n"
            "                         tcp:HOST:PORT or unix:PATH (repeatable; see\n"
            "                         docs/jsonrpc.md); --run sets $rpc (and\n"
            "                         $rpc_unixsocket) to the first\n"
            "  --rpc-insecure         allow --rpc on a non-loopback TCP address in plain text\n"
            "  -r, --read-only        refuse writes (every export)\n"
            "  -U, --force-share      with --read-only: serve IMAGE even while another\n"
            "                         process writes it\n"
            "  -x, --export-name NAME IMAGE's export name (\"\" is always accepted)\n"
            "  -D, --description TEXT IMAGE's description shown to clients\n"
            "  -B, --bitmap NAME      offer the qcow2 dirty bitmap NAME as the NBD\n"
            "                         metadata context qemu:dirty-bitmap:NAME\n"
            "                         (repeatable), as qemu-nbd -B\n"
            "  -s, --snapshot         writes to IMAGE go to a temporary qcow2 overlay,\n"
            "                         removed at exit (IMAGE is never written)\n"
            "  -l, --load-snapshot S  serve IMAGE's qcow2 internal snapshot S (id or name,\n"
            "                         or snapshot.id=ID, snapshot.name=NAME), read-only\n"
            "  -t, --persistent       accepted: rblock serve always keeps serving\n"
            "  -e, --shared N         as --max-connections N\n"
            "  -m, --max-connections N  (default %u)\n"
            "      --max-inflight SIZE  NBD request data buffered for all clients\n"
            "                         together (default 1G; each client also at most 64M)\n"
            "      --discard=MODE     unmap (default): TRIM frees space; ignore: not offered\n"
            "      --detect-zeroes=MODE  off (default), on: writes of zeroes store none,\n"
            "                         unmap: and free the space\n"
            "      --fork             run in the background once every socket listens\n"
            "      --pid-file FILE    write the server's pid to FILE (removed at exit)\n"
            "  -v, --verbose          log connections, refusals and errors on stderr\n"
            "  -q, --quiet            no start-up lines\n"
            "      --print-uri        print the default export's NBD URI on stdout\n"
            "      --handshake-timeout SECONDS  (default %u)\n"
            "      --run CMD          run CMD with $uri, $nbd, $port/$unixsocket set; stop\n"
            "                         when it ends and exit with its status\n"
            "  -f, --format FMT       IMAGE's format, raw or qcow2 (default: probe)\n"
            "      --tls=MODE         NBD and JSON-RPC over TLS: off, on (offered) or\n"
            "                         require (default require when credentials are given)\n"
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

/* One export to open: its configuration and the strings it points into. */
struct export_arg {
    struct rb_export_config cfg;
    const char *bitmaps[RB_EXPORT_MAX_BITMAPS];
    char *owned; /* the --export argument, unescaped and cut into parts */
};

static int parse_discard(const char *v, bool *no_trim)
{
    if (!strcmp(v, "ignore") || !strcmp(v, "off"))
        *no_trim = true;
    else if (!strcmp(v, "unmap") || !strcmp(v, "on"))
        *no_trim = false;
    else {
        complain("--discard must be ignore or unmap, not '%s'", v);
        return -EINVAL;
    }
    return 0;
}

static int parse_detect_zeroes(const char *v, struct rb_export_config *cfg)
{
    if (!strcmp(v, "off"))
        cfg->detect_zeroes = RB_DETECT_ZEROES_OFF;
    else if (!strcmp(v, "on"))
        cfg->detect_zeroes = RB_DETECT_ZEROES_ON;
    else if (!strcmp(v, "unmap"))
        cfg->detect_zeroes = RB_DETECT_ZEROES_UNMAP;
    else {
        complain("--detect-zeroes must be off, on or unmap, not '%s'", v);
        return -EINVAL;
    }
    return 0;
}

/*
 * --export NAME=IMAGE[,read-only][,format=F][,description=T][,bitmap=B]
 * [,discard=M][,detect-zeroes=M].  As qemu's option strings: ",," is a
 * literal comma.  Cuts a copy of @arg into NUL-terminated parts.
 */
static int parse_export(const char *arg, struct export_arg *x)
{
    char *s = strdup(arg), *w, *parts[2 + 2 * RB_EXPORT_MAX_BITMAPS + 8];
    size_t np = 0;

    if (!s) {
        complain("out of memory");
        return -ENOMEM;
    }
    x->owned = s;
    x->cfg.bitmaps = x->bitmaps;
    /* unescape ",," and cut at single commas, in place */
    parts[np++] = s;
    for (const char *r = s, *end = s + strlen(s); r < end;) {
        if (r[0] == ',' && r[1] == ',') {
            *s++ = ',';
            r += 2;
        } else if (r[0] == ',') {
            *s++ = '\0';
            r++;
            if (np == sizeof(parts) / sizeof(parts[0])) {
                complain("--export '%s': too many options", arg);
                return -EINVAL;
            }
            parts[np++] = s;
        } else {
            *s++ = *r++;
        }
    }
    *s = '\0';
    w = strchr(parts[0], '=');
    if (!w || w == parts[0] || !w[1]) {
        complain("--export '%s': expected NAME=IMAGE", arg);
        return -EINVAL;
    }
    *w = '\0';
    x->cfg.name = parts[0];
    x->cfg.path = w + 1;
    if (strlen(x->cfg.name) > 4096) {
        complain("--export: the name is longer than 4096 bytes");
        return -EINVAL;
    }
    for (size_t i = 1; i < np; i++) {
        char *o = parts[i], *v = strchr(o, '=');

        if (v)
            *v++ = '\0';
        if ((!strcmp(o, "read-only") || !strcmp(o, "ro")) && !v)
            x->cfg.read_only = true;
        else if (!strcmp(o, "format") && v && (!strcmp(v, "raw") || !strcmp(v, "qcow2")))
            x->cfg.format = v;
        else if (!strcmp(o, "description") && v && strlen(v) <= 4096)
            x->cfg.description = v;
        else if (!strcmp(o, "bitmap") && v && *v &&
                 x->cfg.nb_bitmaps < RB_EXPORT_MAX_BITMAPS)
            x->bitmaps[x->cfg.nb_bitmaps++] = v;
        else if (!strcmp(o, "discard") && v) {
            if (parse_discard(v, &x->cfg.no_trim) < 0)
                return -EINVAL;
        } else if (!strcmp(o, "detect-zeroes") && v) {
            if (parse_detect_zeroes(v, &x->cfg) < 0)
                return -EINVAL;
        } else {
            complain("--export '%s': unknown or invalid option '%s%s%s' (options: "
                     "read-only, format=raw|qcow2, description=TEXT, bitmap=NAME, "
                     "discard=MODE, detect-zeroes=MODE)",
                     x->cfg.name, o, v ? "=" : "", v ? v : "");
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * -s: a new qcow2 overlay over @cfg's image, in $TMPDIR (else /var/tmp),
 * as qemu-nbd --snapshot; @cfg then serves the overlay, which is removed
 * when the export is closed.  The image itself is only ever read.
 */
static int make_snapshot_overlay(struct rb_export_config *cfg, char *path, size_t cap,
                                 char *backing, struct rb_error *err)
{
    struct rb_open_opts ro = {.format = cfg->format};
    struct rb_qcow2_create_opts o;
    struct rb_image *base;
    const char *tmp = getenv("TMPDIR");
    int fd, ret;

    if (!realpath(cfg->path, backing))
        return rb_error_errno(err, errno, "%s: cannot resolve the path", cfg->path);
    base = rb_image_open(backing, &ro, err);
    if (!base)
        return -EINVAL;
    rb_qcow2_create_opts_init(&o);
    o.size = base->size;
    o.size_set = true;
    o.backing_file = backing;
    o.backing_format = base->ops->format;
    snprintf(path, cap, "%s/rblock-snapshot-XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
    fd = mkstemp(path);
    if (fd < 0) {
        ret = rb_error_errno(err, errno, "cannot create a temporary overlay in '%s'",
                             tmp && *tmp ? tmp : "/var/tmp");
        rb_image_close(base);
        return ret;
    }
    ret = rb_qcow2_create(fd, path, &o, err);
    close(fd);
    rb_image_close(base);
    if (ret < 0) {
        unlink(path);
        return ret;
    }
    cfg->path = path;
    cfg->format = "qcow2";
    cfg->remove_on_close = true;
    return 0;
}

/* True when @addr ("tcp:HOST:PORT") is a loopback address (or a unix
 * socket): JSON-RPC without TLS is allowed there without --rpc-insecure. */
static bool rpc_addr_private(const struct rb_listener *l)
{
    if (l->unix_path || !l->host)
        return true;
    return strncmp(l->host, "127.", 4) == 0 || strcmp(l->host, "::1") == 0;
}

/* --fork: the parent waits on a pipe for the child to say it listens. */
static int fork_and_wait(int *ready_fd)
{
    int p[2];
    pid_t pid;
    char c;

    if (pipe2(p, O_CLOEXEC) < 0) {
        complain("--fork: %s", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        complain("--fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0) {
        close(p[1]);
        /* One byte once every socket listens; EOF when the child failed
         * (it said why on stderr). */
        ssize_t n;
        while ((n = read(p[0], &c, 1)) < 0 && errno == EINTR)
            ;
        _exit(n == 1 ? 0 : 1);
    }
    close(p[0]);
    setsid();
    *ready_fd = p[1];
    return 0;
}

static int write_pid_file(const char *path)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    if (fd < 0 || write(fd, buf, (size_t)n) != n) {
        complain("--pid-file '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    enum { OPT_NBD = 256, OPT_RUN, OPT_HS_TIMEOUT, OPT_RPC, OPT_TLS, OPT_TLS_CERT,
           OPT_TLS_PSK, OPT_TLS_VERIFY, OPT_MAX_INFLIGHT, OPT_EXPORT, OPT_FORK,
           OPT_PID_FILE, OPT_DISCARD, OPT_DETECT_ZEROES, OPT_PRINT_URI, OPT_RPC_INSECURE };
    static const struct option longopts[] = {
        {"nbd", required_argument, NULL, OPT_NBD},
        {"rpc", required_argument, NULL, OPT_RPC},
        {"rpc-insecure", no_argument, NULL, OPT_RPC_INSECURE},
        {"export", required_argument, NULL, OPT_EXPORT},
        {"socket", required_argument, NULL, 'k'},
        {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},
        {"read-only", no_argument, NULL, 'r'},
        {"force-share", no_argument, NULL, 'U'},
        {"export-name", required_argument, NULL, 'x'},
        {"description", required_argument, NULL, 'D'},
        {"bitmap", required_argument, NULL, 'B'},
        {"snapshot", no_argument, NULL, 's'},
        {"load-snapshot", required_argument, NULL, 'l'},
        {"persistent", no_argument, NULL, 't'},
        {"shared", required_argument, NULL, 'e'},
        {"max-connections", required_argument, NULL, 'm'},
        {"handshake-timeout", required_argument, NULL, OPT_HS_TIMEOUT},
        {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
        {"discard", required_argument, NULL, OPT_DISCARD},
        {"detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES},
        {"fork", no_argument, NULL, OPT_FORK},
        {"pid-file", required_argument, NULL, OPT_PID_FILE},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"print-uri", no_argument, NULL, OPT_PRINT_URI},
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
    const char *run_cmd = NULL, *port = NULL, *bind_addr = NULL, *pid_file = NULL;
    const char *load_snapshot = NULL;
    struct export_arg *xs = calloc(MAX_EXPORTS, sizeof(*xs));
    size_t n_x = 0;
    const char *bitmaps[RB_EXPORT_MAX_BITMAPS];
    struct rb_export_config cfg = {.bitmaps = bitmaps};
    struct rb_server srv = {0};
    struct rb_listeners ls = {0};
    struct rb_error err = {0};
    unsigned hs_seconds = RB_DEFAULT_HANDSHAKE_MS / 1000;
    struct rb_tls_config tls_cfg = {0};
    const char *tls_mode = NULL;
    bool do_fork = false, snapshot = false, verbose = false, quiet = false;
    bool print_uri = false, rpc_insecure = false, no_trim = false, pid_written = false;
    bool have_detect = false;
    struct rb_export_config dz = {0};
    char tcp_addr[600], overlay[4096 + 64] = "", backing[PATH_MAX];
    int c, status = 1, activated, ready_fd = -1;

    if (!xs) {
        complain("out of memory");
        return 1;
    }
    while ((c = getopt_long(argc, argv, ":rUx:D:m:f:B:hk:p:b:sl:te:vqd", longopts, NULL)) !=
           -1) {
        switch (c) {
        case OPT_NBD:
        case 'k':
            if (n_nbd == MAX_ADDRS) {
                complain("at most %d --nbd addresses", MAX_ADDRS);
                goto out;
            }
            if (c == 'k') {
                static char kbuf[MAX_ADDRS][4096 + 8];
                snprintf(kbuf[n_nbd], sizeof(kbuf[n_nbd]), "unix:%s", optarg);
                nbd_addrs[n_nbd] = kbuf[n_nbd];
                n_nbd++;
            } else {
                nbd_addrs[n_nbd++] = optarg;
            }
            break;
        case 'p': port = optarg; break;
        case 'b': bind_addr = optarg; break;
        case OPT_RPC:
            if (n_rpc == MAX_ADDRS) {
                complain("at most %d --rpc addresses", MAX_ADDRS);
                goto out;
            }
            rpc_addrs[n_rpc++] = optarg;
            break;
        case OPT_RPC_INSECURE: rpc_insecure = true; break;
        case OPT_EXPORT:
            if (n_x == MAX_EXPORTS) {
                complain("at most %d --export options (export_add adds more)", MAX_EXPORTS);
                goto out;
            }
            if (parse_export(optarg, &xs[n_x++]) < 0)
                goto out;
            break;
        case 'r': cfg.read_only = true; break;
        case 'B':
            if (cfg.nb_bitmaps == RB_EXPORT_MAX_BITMAPS) {
                complain("at most %d --bitmap options", RB_EXPORT_MAX_BITMAPS);
                goto out;
            }
            bitmaps[cfg.nb_bitmaps++] = optarg;
            break;
        case 'U': cfg.force_share = true; break;
        case 'x':
            if (strlen(optarg) > 4096) {
                complain("--export-name is longer than 4096 bytes");
                goto out;
            }
            cfg.name = optarg;
            break;
        case 'D':
            if (strlen(optarg) > 4096) {
                complain("--description is longer than 4096 bytes");
                goto out;
            }
            cfg.description = optarg;
            break;
        case 'd':
            complain("-d: qemu-nbd's -d disconnects a /dev/nbd device, which rblock serve "
                     "does not use; the description is -D or --description");
            goto out;
        case 's': snapshot = true; break;
        case 'l': load_snapshot = optarg; break;
        case 't': break; /* rblock serve is always persistent */
        case 'e':
        case 'm':
            if (parse_count(optarg, c == 'e' ? "--shared" : "--max-connections", 65536,
                            &srv.max_connections))
                goto out;
            break;
        case OPT_MAX_INFLIGHT: {
            uint64_t v;
            if (parse_size(optarg, &v) < 0 || v < (1u << 20) || v > ((uint64_t)1 << 40)) {
                complain("--max-inflight: '%s' is not a size from 1M to 1T", optarg);
                goto out;
            }
            srv.max_inflight_bytes = (size_t)v;
            break;
        }
        case OPT_DISCARD:
            if (parse_discard(optarg, &no_trim) < 0)
                goto out;
            break;
        case OPT_DETECT_ZEROES:
            if (parse_detect_zeroes(optarg, &dz) < 0)
                goto out;
            have_detect = true;
            break;
        case OPT_FORK: do_fork = true; break;
        case OPT_PID_FILE: pid_file = optarg; break;
        case 'v': verbose = true; break;
        case 'q': quiet = true; break;
        case OPT_PRINT_URI: print_uri = true; break;
        case OPT_HS_TIMEOUT:
            if (parse_count(optarg, "--handshake-timeout", 3600, &hs_seconds))
                goto out;
            break;
        case OPT_RUN: run_cmd = optarg; break;
        case 'f': cfg.format = optarg; break;
        case OPT_TLS: tls_mode = optarg; break;
        case OPT_TLS_CERT: tls_cfg.cert_dir = optarg; break;
        case OPT_TLS_PSK: tls_cfg.psk_file = optarg; break;
        case OPT_TLS_VERIFY: tls_cfg.verify_peer = true; break;
        case 'h': usage(stdout); status = 0; goto out;
        default:
            status = bad_option("serve", argv, c);
            goto out;
        }
    }
    if (optind < argc - 1 || (optind == argc && n_x == 0 && n_rpc == 0)) {
        status = bad_usage("serve", "needs one IMAGE (or --export NAME=IMAGE, or --rpc)");
        goto out;
    }
    if (optind == argc - 1)
        cfg.path = argv[optind];
    if (cfg.force_share && !cfg.read_only) {
        /* as qemu-img: sharing everything is for readers only */
        complain("--force-share/-U can only be used with --read-only");
        goto out;
    }
    if (load_snapshot) {
        /* qemu-nbd -l: ID_OR_NAME, or snapshot.id=ID / snapshot.name=NAME;
         * IMAGE's export serves that qcow2 internal snapshot, read-only */
        if (!cfg.path || snapshot) {
            complain(snapshot ? "-l/--load-snapshot and -s/--snapshot cannot be used together"
                              : "-l/--load-snapshot needs IMAGE");
            goto out;
        }
        cfg.snapshot = load_snapshot;
        if (strncmp(load_snapshot, "snapshot.id=", 12) == 0)
            cfg.snapshot = load_snapshot + 12;
        else if (strncmp(load_snapshot, "snapshot.name=", 14) == 0)
            cfg.snapshot = load_snapshot + 14;
    }
    if (snapshot && (!cfg.path || cfg.read_only)) {
        complain(cfg.read_only ? "-s/--snapshot and --read-only cannot be used together"
                               : "-s/--snapshot needs IMAGE");
        goto out;
    }
    if ((cfg.name || cfg.description || cfg.nb_bitmaps || cfg.format) && !cfg.path) {
        complain("-x, -D, -B and -f describe IMAGE: give IMAGE, or use --export's options");
        goto out;
    }
    if (verbose && quiet) {
        complain("-v and -q cannot be used together");
        goto out;
    }
    if (bind_addr && !port)
        port = "10809";
    if (port) {
        const char *h = bind_addr ? bind_addr : "127.0.0.1";
        bool v6 = strchr(h, ':') != NULL;
        if (n_nbd == MAX_ADDRS) {
            complain("at most %d --nbd addresses", MAX_ADDRS);
            goto out;
        }
        snprintf(tcp_addr, sizeof(tcp_addr), v6 ? "tcp:[%s]:%s" : "tcp:%s:%s", h, port);
        nbd_addrs[n_nbd++] = tcp_addr;
    }
    if (parse_tls(tls_mode, &tls_cfg) < 0)
        goto out;
    srv.handshake_timeout_ms = hs_seconds * 1000;
    srv.verbose = verbose;
    cfg.no_trim = no_trim;
    cfg.detect_zeroes = dz.detect_zeroes;
    for (size_t i = 0; i < n_x; i++) {
        xs[i].cfg.read_only |= cfg.read_only;
        if (no_trim)
            xs[i].cfg.no_trim = true;
        if (have_detect && xs[i].cfg.detect_zeroes == RB_DETECT_ZEROES_OFF)
            xs[i].cfg.detect_zeroes = dz.detect_zeroes;
    }

    /* --fork first: the child opens, locks and listens; the parent
     * returns once it listens (or fails when the child could not). */
    if (do_fork && fork_and_wait(&ready_fd) < 0)
        goto out;

    /* Signals first: a SIGTERM during start-up still means a clean stop
     * (the loop sees the flag at once).  Then listeners (socket activation
     * needs no threads yet), the images, and --run's environment. */
    if (rb_quit_init() < 0) {
        complain("cannot install signal handlers: %s", strerror(errno));
        goto out;
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
    for (size_t i = 0; i < n_rpc; i++) {
        size_t first = ls.n;
        if (rb_listener_add(&ls, rpc_addrs[i], &rb_jsonrpc_protocol, &err) < 0)
            goto fail;
        /* The control plane opens files and removes exports: in plain
         * text only where no one else can reach it. */
        for (size_t k = first; k < ls.n; k++)
            if (tls_cfg.mode == RB_TLS_OFF && !rpc_insecure && !rpc_addr_private(&ls.v[k])) {
                rb_error_set(&err, EPERM,
                             "--rpc %s: JSON-RPC on a non-loopback address without TLS "
                             "lets anyone who reaches it read, write and add exports; use "
                             "--tls-cert/--tls-psk, a unix socket or 127.0.0.1, or say "
                             "--rpc-insecure",
                             rpc_addrs[i]);
                goto fail;
            }
    }
    /* Credentials before the image: a bad certificate is a start-up
     * error, reported before anything is opened for writing. */
    if (tls_cfg.mode != RB_TLS_OFF) {
        srv.tls = rb_tls_new(&tls_cfg, &err);
        if (!srv.tls)
            goto fail;
    }
    srv.export = rb_export_bare();
    srv.exports = rb_exports_new();
    if (!srv.export || !srv.exports) {
        rb_error_set(&err, ENOMEM, "out of memory");
        goto fail;
    }
    if (cfg.path) {
        struct rb_export *e;
        const char *given = cfg.path;

        if (snapshot && make_snapshot_overlay(&cfg, overlay, sizeof(overlay), backing,
                                              &err) < 0)
            goto fail;
        e = rb_exports_add(srv.exports, &cfg, true, &err);
        if (!e) {
            if (overlay[0])
                unlink(overlay);
            goto fail;
        }
        if (!cfg.format && !rb_export_read_only(e) && !rb_rbd_is_name(given) &&
            strcmp(rb_export_format(e), "raw") == 0)
            complain("%s: warning: no format given and raw was guessed: writes that would "
                     "make the first sector look like another format are refused (-f raw "
                     "lifts this restriction)", given);
    }
    for (size_t i = 0; i < n_x; i++) {
        struct rb_export *e = rb_exports_add(srv.exports, &xs[i].cfg, true, &err);
        if (!e)
            goto fail;
        if (!xs[i].cfg.format && !rb_export_read_only(e) && !rb_rbd_is_name(xs[i].cfg.path) &&
            strcmp(rb_export_format(e), "raw") == 0)
            complain("%s: warning: no format given and raw was guessed: writes that would "
                     "make the first sector look like another format are refused "
                     "(format=raw lifts this restriction)", xs[i].cfg.path);
    }
    {
        const char *deflt = cfg.path ? (cfg.name ? cfg.name : "") : n_x ? xs[0].cfg.name : "";

        if (run_cmd && rb_listeners_export_env(&ls, &rb_nbd_protocol, deflt, &err) < 0)
            goto fail;
        /* One line per listener, with the URI that reaches it. */
        for (size_t i = 0; i < ls.n; i++) {
            char uri[32768];
            bool nbd = ls.v[i].proto == &rb_nbd_protocol;

            rb_listener_uri(&ls.v[i], nbd, srv.tls != NULL, deflt, uri, sizeof(uri));
            if (!quiet)
                fprintf(stderr, "rblock: serving %s on %s\n", nbd ? "NBD" : "JSON-RPC",
                        uri[0] ? uri : ls.v[i].addr);
            if (print_uri && nbd && uri[0]) {
                printf("%s\n", uri);
                print_uri = false;
            }
        }
        fflush(stdout);
    }
    if (run_cmd && rb_rpc_export_env(&ls, &err) < 0)
        goto fail;
    if (run_cmd && srv.tls)
        tls_uri_env();
    if (rb_server_init(&srv) < 0) {
        rb_error_set(&err, ENOMEM, "cannot start the server");
        goto fail;
    }
    if (pid_file) {
        if (write_pid_file(pid_file) < 0) {
            rb_server_destroy(&srv);
            goto fail_reported;
        }
        pid_written = true;
    }
    if (ready_fd >= 0) {
        /* Listening: let the parent return.  Let go of its stdout (and
         * stderr unless -v) so a caller reading them sees them end. */
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            if (!verbose)
                dup2(null, 2);
            close(null);
        }
        if (write(ready_fd, "", 1) != 1) {
            /* the parent is gone: serve all the same */
        }
        close(ready_fd);
        ready_fd = -1;
    }

    status = rb_server_run(&srv, &ls, run_cmd);

    rb_server_destroy(&srv);
    rb_quit_fini();
    rb_listeners_close(&ls);
    rb_tls_free(srv.tls);
    if (pid_written)
        unlink(pid_file);
    if (rb_exports_free(srv.exports, &err) < 0) {
        complain("%s", rb_error_msg(&err, -EIO));
        status = status ? status : 1;
    }
    rb_export_close(srv.export, NULL);
    goto out;
fail:
    complain("%s", rb_error_msg(&err, -EINVAL));
fail_reported:
    rb_quit_fini();
    rb_listeners_close(&ls);
    rb_exports_free(srv.exports, NULL);
    rb_export_close(srv.export, NULL);
    rb_tls_free(srv.tls);
    if (pid_written)
        unlink(pid_file);
    status = 1;
out:
    if (ready_fd >= 0)
        close(ready_fd);
    for (size_t i = 0; i < n_x; i++)
        free(xs[i].owned);
    free(xs);
    return status;
}
