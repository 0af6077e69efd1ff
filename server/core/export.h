/* SPDX-License-Identifier: MIT */
/*
 * export.h - the one shared open image, and the only way any protocol
 * (NBD, JSON-RPC) reaches it.
 *
 * Every rb_export_* I/O call may run on many threads at once (the image
 * layer does its own locking, include/rblock/image.h).  Each call names
 * the protocol it serves so that requests and bytes are counted per
 * protocol.  Ranges are checked here (EINVAL past the end for reads and
 * block status, ENOSPC for writes, EROFS when served read-only), so a
 * protocol maps the negative errno to its own error codes and nothing
 * else.
 */
#ifndef RBLOCK_SERVER_EXPORT_H
#define RBLOCK_SERVER_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

/* Protocols served from one process; indexes the statistics. */
enum rb_proto_id {
    RB_PROTO_NBD,
    RB_PROTO_JSONRPC,
    RB_PROTO_COUNT,
    /* A protocol's own look-ups (e.g. NBD's sparse reads asking block
     * status): not counted. */
    RB_PROTO_NONE = RB_PROTO_COUNT
};

/* Name of a protocol id ("nbd", "jsonrpc"). */
const char *rb_proto_name(enum rb_proto_id id);

struct rb_export_config {
    const char *path;        /* image file */
    const char *format;      /* "raw", "qcow2" or NULL to probe */
    bool read_only;          /* open read-only, refuse writes */
    bool force_share;        /* with read_only: serve it even while another
                                process writes it (qemu-img -U) */
    const char *name;        /* export name; "" and this name are accepted */
    const char *description; /* NULL when none */
    const char *const *bitmaps; /* persistent dirty bitmaps to serve (qcow2,
                                   each existing and consistent), or NULL */
    size_t nb_bitmaps;          /* at most RB_EXPORT_MAX_BITMAPS */
    bool no_trim;               /* --discard=ignore: TRIM is not offered */
    /* --detect-zeroes: writes of zeroes become write_zeroes (with
     * RB_ZERO_MAY_UNMAP for UNMAP when trimming is on) */
    enum { RB_DETECT_ZEROES_OFF, RB_DETECT_ZEROES_ON, RB_DETECT_ZEROES_UNMAP } detect_zeroes;
    /* -s: @path is a temporary overlay this process created (its backing is
     * the user's image): removed when the export is closed. */
    bool remove_on_close;
    const char *snapshot;       /* qcow2 internal snapshot (id or name) to
                                   serve, with read_only; NULL: the image */
};

#define RB_EXPORT_MAX_BITMAPS 30

/* Counters of one protocol (a snapshot; see rb_export_stats). */
struct rb_proto_stats {
    uint64_t connections_total; /* accepted since start */
    uint64_t connections_now;   /* open now (holding a --max-connections slot) */
    /* Released (client gone, or evicted) but still finishing requests
     * already started; not in connections_now. */
    uint64_t connections_closing;
    uint64_t requests; /* I/O calls made through the export */
    uint64_t errors;   /* of which failed */
    uint64_t bytes_read;
    uint64_t bytes_written; /* write payloads (not zeroes or trims) */
};

struct rb_export;

/* Open the image (read-write and locked unless cfg->read_only).  Returns
 * an owned export or NULL with @err set. */
struct rb_export *rb_export_open(const struct rb_export_config *cfg,
                                 struct rb_error *err);

/* An export without an image that only counts connections (the server's
 * counters when no default export is served).  NULL when out of memory. */
struct rb_export *rb_export_bare(void);

/* Flush (when writable) and close.  Nothing may use @e any more.  Returns
 * the flush's result (0 or -errno, @err set).  Accepts NULL. */
int rb_export_close(struct rb_export *e, struct rb_error *err);

/* Facts that never change while the export is open. */
uint64_t rb_export_size(const struct rb_export *e);
bool rb_export_read_only(const struct rb_export *e);
const char *rb_export_name(const struct rb_export *e);        /* never NULL */
const char *rb_export_description(const struct rb_export *e); /* may be NULL */
const char *rb_export_format(const struct rb_export *e);      /* "raw", "qcow2" */
const char *rb_export_path(const struct rb_export *e);        /* the image file */
uint32_t rb_export_cluster_bytes(const struct rb_export *e);  /* 4096 for raw */
unsigned rb_export_chain_length(const struct rb_export *e);

/* What clients may ask of the export, from its image's operations and
 * --read-only: the protocols advertise exactly these. */
#define RB_EXPORT_CAN_WRITE 0x1 /* write, and FUA on it */
#define RB_EXPORT_CAN_TRIM 0x2
#define RB_EXPORT_CAN_ZERO 0x4  /* write_zeroes, and fast zero (ENOTSUP when slow) */
#define RB_EXPORT_CAN_FLUSH 0x8
unsigned rb_export_caps(const struct rb_export *e);

/*
 * The image itself, for read-only inspection (info, check).  All I/O must
 * go through the rb_export_* calls below.
 */
struct rb_image *rb_export_image(struct rb_export *e);

/* The bitmaps chosen at open (rb_export_config.bitmaps), in that order. */
size_t rb_export_nb_bitmaps(const struct rb_export *e);
const char *rb_export_bitmap(const struct rb_export *e, size_t i);
/* The run from @off (at most @len bytes) that is all dirty or all clean in
 * bitmap @i, as it is now: *dirty, *bytes > 0.  0 or -errno with @err. */
int rb_export_bitmap_extent(struct rb_export *e, enum rb_proto_id p, size_t i,
                            uint64_t off, uint64_t len, bool *dirty, uint64_t *bytes,
                            struct rb_error *err);

/* I/O: 0 or -errno with @err set (@err may be NULL).  Flags are the
 * image layer's RB_WRITE_FUA, RB_ZERO_MAY_UNMAP, RB_ZERO_FAST; with
 * RB_ZERO_FAST a zeroing that would not be fast fails with -ENOTSUP. */
int rb_export_read(struct rb_export *e, enum rb_proto_id p, void *buf, uint64_t off,
                   size_t len, struct rb_error *err);
int rb_export_write(struct rb_export *e, enum rb_proto_id p, const void *buf,
                    uint64_t off, size_t len, unsigned flags, struct rb_error *err);
int rb_export_write_zeroes(struct rb_export *e, enum rb_proto_id p, uint64_t off,
                           uint64_t len, unsigned flags, struct rb_error *err);
int rb_export_trim(struct rb_export *e, enum rb_proto_id p, uint64_t off, uint64_t len,
                   unsigned flags, struct rb_error *err);
int rb_export_flush(struct rb_export *e, enum rb_proto_id p, struct rb_error *err);
/* Check that [off, off+len) lies inside the export (cache, prefetch):
 * 0 or -EINVAL. */
int rb_export_cache(struct rb_export *e, enum rb_proto_id p, uint64_t off, uint64_t len,
                    struct rb_error *err);
/* One extent at @off, at most @len (> 0) long, through the whole chain
 * (rb_image_block_status). */
int rb_export_block_status(struct rb_export *e, enum rb_proto_id p, uint64_t off,
                           uint64_t len, struct rb_extent *ext, struct rb_error *err);

/* Connection accounting (called by server/core/conn.c): a connection
 * opened (+1) or released (-1); one released (+1) or ended (-1). */
void rb_export_count_connection(struct rb_export *e, enum rb_proto_id p, int delta);
void rb_export_count_closing(struct rb_export *e, enum rb_proto_id p, int delta);
/* Snapshot of protocol @p's counters. */
void rb_export_stats(const struct rb_export *e, enum rb_proto_id p,
                     struct rb_proto_stats *out);
/* Seconds since the export was opened. */
double rb_export_uptime(const struct rb_export *e);

/*
 * The exports of a server, by name, added and removed while clients are
 * connected.  The empty name selects the default export (the first one
 * added with is_default), which also answers to its own name.
 *
 * A user (an NBD session in transmission, one JSON-RPC call) takes an
 * export with rb_exports_get and gives it back with rb_exports_put; the
 * export's image stays open while it has users.  rb_exports_remove takes
 * the export out of the table at once (the next lookup, NBD_OPT_LIST or
 * export_list no longer sees it), then waits for its users to leave --
 * with @hard, first shutting its NBD connections down for reading, so
 * each finishes the requests it has read, answers them and ends -- and
 * only then flushes and closes the image.  Every function is thread-safe.
 */
struct rb_conn;
struct rb_exports;

#define RB_EXPORTS_MAX 1024

/* A new empty table, or NULL when out of memory. */
struct rb_exports *rb_exports_new(void);
/* Close every export left (flush each); returns the first flush error (0
 * or -errno with @err set).  No user may be left.  Accepts NULL. */
int rb_exports_free(struct rb_exports *t, struct rb_error *err);

/* Open @cfg's image and add it under cfg->name (not empty, unique),
 * as the default when @is_default.  Returns the export (owned by the
 * table) or NULL with @err set (EEXIST for a name in use). */
struct rb_export *rb_exports_add(struct rb_exports *t, const struct rb_export_config *cfg,
                                 bool is_default, struct rb_error *err);

/* The export named @name (@len bytes; the empty name is the default one),
 * with a use taken for @user (a connection a hard removal may shut down,
 * or NULL for a short call); NULL when there is none. */
struct rb_export *rb_exports_get(struct rb_exports *t, const char *name, size_t len,
                                 struct rb_conn *user);
/* Give back a use taken by rb_exports_get.  Accepts a NULL @e. */
void rb_exports_put(struct rb_exports *t, struct rb_export *e, struct rb_conn *user);

/* Remove export @name (see above).  Returns 0 once its image is closed
 * (the flush's result), -ENOENT when there is no such export. */
int rb_exports_remove(struct rb_exports *t, const char *name, bool hard,
                      struct rb_error *err);

/* The names of the exports, in the order added, with their descriptions
 * (NULL when none): malloc'd copies, freed with rb_exports_names_free.
 * Returns the count, or -ENOMEM. */
struct rb_export_name {
    char *name;
    char *description;
    bool is_default;
};
long rb_exports_names(struct rb_exports *t, struct rb_export_name **out);
void rb_exports_names_free(struct rb_export_name *v, long n);

#endif
