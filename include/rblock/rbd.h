/* SPDX-License-Identifier: MIT */
/*
 * rbd.h - Ceph RBD images as rblock images (lib/rbd).
 *
 * A name "rbd:POOL/IMAGE[@SNAP]" or "rbd:POOL/NAMESPACE/IMAGE[@SNAP]",
 * optionally followed by ":conf=PATH", ":id=NAME" and ":timeout=SECONDS"
 * (as qemu-img writes them), is opened by rb_image_open through the rbd
 * driver when rblock was built with librbd (rb_rbd_available).  The
 * cluster is the one of PATH, else the default configuration of librados
 * ($CEPH_CONF, /etc/ceph/ceph.conf); a backslash quotes the next character.
 * A snapshot is read-only.  The image holds raw bytes (its format is
 * "raw", as QEMU reports it).  Every request to the cluster is bounded
 * by the time-out (default RB_RBD_DEFAULT_TIMEOUT seconds): a cluster
 * that does not answer is an ETIMEDOUT error naming its monitors.
 */
#ifndef RBLOCK_RBD_H
#define RBLOCK_RBD_H

#include <stdbool.h>
#include <stdint.h>

#include "rblock/error.h"

#define RB_RBD_PREFIX "rbd:"
#define RB_RBD_DEFAULT_TIMEOUT 30
#define RB_RBD_NAME_MAX 256

struct rb_rbd_name {
    char pool[RB_RBD_NAME_MAX];
    char ns[RB_RBD_NAME_MAX];    /* "" = the default namespace */
    char image[RB_RBD_NAME_MAX];
    char snap[RB_RBD_NAME_MAX];  /* "" = the image itself */
    char conf[4096];             /* "" = librados' default search */
    char id[RB_RBD_NAME_MAX];    /* "" = librados' default (admin) */
    unsigned timeout_sec;        /* 0 = RB_RBD_DEFAULT_TIMEOUT */
    bool has_options;            /* any ":key=value" was given */
};

/* Does @name start with "rbd:"?  (A name, not a file: never opened as one.) */
bool rb_rbd_is_name(const char *name);

/*
 * Parse @name ("rbd:..."): pool, optional namespace, image, optional snapshot,
 * then options.  Empty parts, more than two slashes, unknown options and
 * parts longer than the fields are refused with EINVAL naming what is wrong.
 * Returns 0 or -EINVAL with @err set.
 */
int rb_rbd_parse_name(const char *name, struct rb_rbd_name *out, struct rb_error *err);

/* "rbd:POOL[/NS]/IMAGE[@SNAP]" of @n (no options) into @buf; returns @buf. */
const char *rb_rbd_plain_name(const struct rb_rbd_name *n, char *buf, size_t len);

/* Was rblock built with librbd? */
bool rb_rbd_available(void);

/*
 * Create the RBD image named by @name (no snapshot) of @size bytes with the
 * cluster's default features.  EEXIST when it exists (nothing changed),
 * ENOENT for a missing pool, ENOTSUP without librbd.  Returns 0 or -errno
 * with @err set.
 */
int rb_rbd_create(const char *name, uint64_t size, struct rb_error *err);

/* Remove the RBD image named by @name (one this run created).  Returns 0
 * or -errno with @err set. */
int rb_rbd_remove(const char *name, struct rb_error *err);

/* Do @a and @b name the same image (pool, namespace, image; snapshot and
 * options ignored)?  False when either is not a valid rbd name. */
bool rb_rbd_same_image(const char *a, const char *b);

#endif
