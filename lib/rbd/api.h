/* SPDX-License-Identifier: MIT */
/*
 * api.h - librados and librbd, loaded on first use.
 *
 * Linking librbd costs every run of rblock about 0.2 s and 16 MiB before
 * main() (its C++ start-up), rbd: images or not.  So the driver calls
 * the few functions it needs through this table, filled by dlopen and
 * dlsym when the first rbd: name is opened (QEMU keeps its rbd driver in
 * a module loaded on demand for the same reason).  The headers still
 * give every pointer its exact type.
 *
 * rbd.c includes this file and calls rados_x()/rbd_x() as usual: the
 * macros at the end send each call through the table.
 */
#ifndef RB_RBD_API_H
#define RB_RBD_API_H

#include <rados/librados.h>
#include <rbd/librbd.h>

#include "rblock/error.h"

#define RB_RBD_FUNCTIONS(X) \
    X(rados_cluster_fsid) X(rados_conf_get) X(rados_conf_parse_env) \
    X(rados_conf_read_file) X(rados_conf_set) X(rados_connect) X(rados_create) \
    X(rados_ioctx_create) X(rados_ioctx_destroy) X(rados_ioctx_set_namespace) \
    X(rados_shutdown) X(rbd_aio_create_completion) X(rbd_aio_get_return_value) \
    X(rbd_aio_release) X(rbd_aio_write2) X(rbd_close) X(rbd_create4) \
    X(rbd_diff_iterate2) X(rbd_discard) X(rbd_flush) X(rbd_get_features) \
    X(rbd_get_flags) X(rbd_get_size) X(rbd_image_options_create) \
    X(rbd_image_options_destroy) X(rbd_open) X(rbd_open_read_only) X(rbd_read2) \
    X(rbd_remove) X(rbd_write2) X(rbd_write_zeroes)

struct rb_rbd_api {
#define RB_RBD_FIELD(f) __typeof__(f) *f;
    RB_RBD_FUNCTIONS(RB_RBD_FIELD)
#undef RB_RBD_FIELD
};

extern struct rb_rbd_api rb_rbd_api;

/* Load librados and librbd once (thread-safe); 0, or -ENOTSUP with the
 * loader's reason in @err, naming @what. */
int rb_rbd_api_load(const char *what, struct rb_error *err);

#ifndef RB_RBD_API_NO_REDIRECT
#define rados_cluster_fsid rb_rbd_api.rados_cluster_fsid
#define rados_conf_get rb_rbd_api.rados_conf_get
#define rados_conf_parse_env rb_rbd_api.rados_conf_parse_env
#define rados_conf_read_file rb_rbd_api.rados_conf_read_file
#define rados_conf_set rb_rbd_api.rados_conf_set
#define rados_connect rb_rbd_api.rados_connect
#define rados_create rb_rbd_api.rados_create
#define rados_ioctx_create rb_rbd_api.rados_ioctx_create
#define rados_ioctx_destroy rb_rbd_api.rados_ioctx_destroy
#define rados_ioctx_set_namespace rb_rbd_api.rados_ioctx_set_namespace
#define rados_shutdown rb_rbd_api.rados_shutdown
#define rbd_aio_create_completion rb_rbd_api.rbd_aio_create_completion
#define rbd_aio_get_return_value rb_rbd_api.rbd_aio_get_return_value
#define rbd_aio_release rb_rbd_api.rbd_aio_release
#define rbd_aio_write2 rb_rbd_api.rbd_aio_write2
#define rbd_close rb_rbd_api.rbd_close
#define rbd_create4 rb_rbd_api.rbd_create4
#define rbd_diff_iterate2 rb_rbd_api.rbd_diff_iterate2
#define rbd_discard rb_rbd_api.rbd_discard
#define rbd_flush rb_rbd_api.rbd_flush
#define rbd_get_features rb_rbd_api.rbd_get_features
#define rbd_get_flags rb_rbd_api.rbd_get_flags
#define rbd_get_size rb_rbd_api.rbd_get_size
#define rbd_image_options_create rb_rbd_api.rbd_image_options_create
#define rbd_image_options_destroy rb_rbd_api.rbd_image_options_destroy
#define rbd_open rb_rbd_api.rbd_open
#define rbd_open_read_only rb_rbd_api.rbd_open_read_only
#define rbd_read2 rb_rbd_api.rbd_read2
#define rbd_remove rb_rbd_api.rbd_remove
#define rbd_write2 rb_rbd_api.rbd_write2
#define rbd_write_zeroes rb_rbd_api.rbd_write_zeroes
#endif

#endif
