/* SPDX-License-Identifier: MIT */
/*
 * api.c - dlopen librados and librbd when the first rbd: image is opened
 * (see api.h for why they are not linked).
 */
#ifdef HAVE_RBD
#define RB_RBD_API_NO_REDIRECT
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "rbd/api.h"

struct rb_rbd_api rb_rbd_api;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char why[256]; /* empty when loaded */

static void load(void)
{
    static const char *const libs[] = {"librados.so.2", "librbd.so.1"};
    void *h[2];

    for (int i = 0; i < 2; i++) {
        h[i] = dlopen(libs[i], RTLD_NOW | RTLD_GLOBAL);
        if (!h[i]) {
            snprintf(why, sizeof(why), "%s", dlerror());
            return;
        }
    }
    /* Each symbol is looked up in the library that defines it. */
#define RB_RBD_LOAD(f)                                                          \
    {                                                                            \
        int lib = strncmp(#f, "rados_", 6) == 0 ? 0 : 1;                         \
        void *sym = dlsym(h[lib], #f);                                           \
        if (!sym) {                                                              \
            snprintf(why, sizeof(why), "%s lacks %s", libs[lib], #f);            \
            return;                                                              \
        }                                                                        \
        memcpy(&rb_rbd_api.f, &sym, sizeof(sym));                                \
    }
    RB_RBD_FUNCTIONS(RB_RBD_LOAD)
#undef RB_RBD_LOAD
}

int rb_rbd_api_load(const char *what, struct rb_error *err)
{
    pthread_once(&once, load);
    if (why[0])
        return rb_error_set(err, ENOTSUP, "%s: cannot load the ceph libraries: %s "
                            "(install librbd1)", what, why);
    return 0;
}
#endif
