/*  sh_util.c - clocks, byte buffer, random identifiers, secret compare.  */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sodium.h>

#include "sh_util.h"

int64_t sh_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sh_clock_mono_ms(void)
{
    return sh_clock_mono_us() / 1000;
}

int64_t sh_clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int s_buf_reserve(sh_buf_t *buf, size_t extra)
{
    if (buf->len + extra + 1 <= buf->cap)
        return 0;
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap < buf->len + extra + 1)
        cap *= 2;
    char *data = realloc(buf->data, cap);
    if (!data)
        return -1;
    buf->data = data;
    buf->cap = cap;
    return 0;
}

int sh_buf_append(sh_buf_t *buf, const void *data, size_t len)
{
    if (s_buf_reserve(buf, len))
        return -1;
    if (len)
        memcpy(buf->data + buf->len, data, len);
    buf->len += len;
    buf->data[buf->len] = 0;
    return 0;
}

int sh_buf_vprintf(sh_buf_t *buf, const char *fmt, va_list args)
{
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0 || s_buf_reserve(buf, (size_t)n))
        return -1;
    vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, args);
    buf->len += (size_t)n;
    return 0;
}

int sh_buf_printf(sh_buf_t *buf, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int rc = sh_buf_vprintf(buf, fmt, args);
    va_end(args);
    return rc;
}

void sh_buf_reset(sh_buf_t *buf)
{
    buf->len = 0;
    if (buf->data)
        buf->data[0] = 0;
}

void sh_buf_free(sh_buf_t *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
}

void sh_crypto_init(void)
{
    if (sodium_init() < 0) {
        fputs("fatal: libsodium could not initialise\n", stderr);
        abort();
    }
}

int sh_random_id(char *out, size_t out_size, size_t bytes)
{
    unsigned char raw[64];
    if (bytes > sizeof(raw) ||
        out_size < sodium_base64_ENCODED_LEN(bytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING))
        return -1;
    randombytes_buf(raw, bytes);
    sodium_bin2base64(out, out_size, raw, bytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return 0;
}

void sh_random_hex(char *out, size_t bytes)
{
    unsigned char raw[64];
    if (bytes > sizeof(raw))
        bytes = sizeof(raw);
    randombytes_buf(raw, bytes);
    sodium_bin2hex(out, bytes * 2 + 1, raw, bytes);
}

int sh_parse_int(const char *text, int64_t min, int64_t max, int64_t *out)
{
    if (!text || !*text)
        return -1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

bool sh_secret_eq(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen == 0 || alen != blen)
        return false;
    return sodium_memcmp(a, b, alen) == 0;
}

uint64_t sh_process_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

size_t sh_utf8_decode(const unsigned char *p, size_t avail, uint32_t *cp)
{
    static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (avail == 0)
        return 0;
    unsigned c = p[0];
    size_t n = c < 0x80             ? 1
               : (c & 0xE0) == 0xC0 ? 2
               : (c & 0xF0) == 0xE0 ? 3
               : (c & 0xF8) == 0xF0 ? 4
                                    : 0;
    if (n == 0 || avail < n)
        return 0;
    uint32_t v = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if ((n > 1 && v < least[n]) || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF)
        return 0;
    *cp = v;
    return n;
}
