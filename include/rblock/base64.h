/* SPDX-License-Identifier: MIT */
/*
 * base64.h - RFC 4648 section 4 base64 ("+/", '=' padding), as JSON-RPC
 * carries disk data.  Pure functions on caller-owned buffers: no heap,
 * thread-safe.
 */
#ifndef RBLOCK_BASE64_H
#define RBLOCK_BASE64_H

#include <stdbool.h>
#include <stddef.h>

/* Encoded length of @len bytes (a multiple of 4, without a NUL).  Callers
 * cap @len first: the result overflows for len > SIZE_MAX / 4 * 3. */
static inline size_t rb_base64_encoded_len(size_t len)
{
    return (len + 2) / 3 * 4;
}

/* Upper bound of the decoded length of @len characters of base64. */
static inline size_t rb_base64_decoded_max(size_t len)
{
    return len / 4 * 3 + 3;
}

/* Encode @len bytes of @src into @dst, which holds at least
 * rb_base64_encoded_len(len) bytes.  Writes no NUL.  Returns the number of
 * characters written. */
size_t rb_base64_encode(char *dst, const void *src, size_t len);

/*
 * Decode @len characters of @src into @dst (at least
 * rb_base64_decoded_max(len) bytes).  Strict: the length must be a
 * multiple of 4, padding only at the end, no whitespace, and the unused
 * bits of the last group must be zero (RFC 4648 3.5, so that every byte
 * string has exactly one encoding).  Returns the number of bytes decoded,
 * or -1 with *bad_pos set to the offset of the first offending character
 * (@len when the length is wrong).
 */
long long rb_base64_decode(void *dst, const char *src, size_t len, size_t *bad_pos);

#endif
