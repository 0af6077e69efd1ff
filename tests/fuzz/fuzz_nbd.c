/* SPDX-License-Identifier: MIT */
/*
 * fuzz_nbd.c - libFuzzer target: the input is what a client sends to the
 * NBD server, from the first byte of the handshake through transmission.
 * It runs the real protocol handler (rb_nbd_protocol.serve) on one end of
 * a socketpair over a 1 MiB export in a memfd; a thread writes the input
 * to the other end and then closes it for writing, a long-lived thread drains the
 * replies.  The input's first byte is the harness's: bit 0 serves
 * read-only, bit 1 a qcow2 image (else raw).
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#define FUZZ_WANT_EXPORT
#define FUZZ_WANT_FEED
#include "fuzz_common.h"
#include "nbd/nbd.h"



int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rb_export_config cfg = {.name = "fuzz", .description = "fuzzing"};
    struct fuzz_session fs = {.srv.handshake_timeout_ms = 60000};

    if (size < 1)
        return 0;
    fuzz_session_open(&fs, &cfg, &rb_nbd_protocol, &data, &size);
    clock_gettime(CLOCK_MONOTONIC, &fs.c->deadline);
    fs.c->deadline.tv_sec += 60;
    atomic_store(&fs.c->in_handshake, true);
    fuzz_session_serve(&fs, data, size);
    fuzz_session_close(&fs);
    return 0;
}
