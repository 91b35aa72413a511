/*  sh_util.h - small helpers every module needs: clocks, a growable byte
    buffer, random identifiers and a constant-time compare of secrets.
*/
#ifndef SH_UTIL_H_INCLUDED
#define SH_UTIL_H_INCLUDED

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SH_UNUSED(x)     ((void)(x))
#define SH_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define SH_PRINTF(f, a)  __attribute__((format(printf, f, a)))

/*  Wall clock in ms since the Unix epoch (deadlines cross processes).  */
int64_t sh_clock_wall_ms(void);
/*  Monotonic clock in ms and in microseconds (local timers, latency).  */
int64_t sh_clock_mono_ms(void);
int64_t sh_clock_mono_us(void);

/*  A growable byte buffer. Zero-initialise, append, free with sh_buf_free.  */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} sh_buf_t;

/*  Append bytes; returns 0 or -1 when memory runs out.  */
int sh_buf_append(sh_buf_t *buf, const void *data, size_t len);
/*  Append formatted text (not counting a NUL, though one is kept after len).  */
int sh_buf_printf(sh_buf_t *buf, const char *fmt, ...) SH_PRINTF(2, 3);
int sh_buf_vprintf(sh_buf_t *buf, const char *fmt, va_list args);
void sh_buf_reset(sh_buf_t *buf);
void sh_buf_free(sh_buf_t *buf);

/*  Fill out with a random base64url identifier of `bytes` random bytes from
    the CSPRNG (libsodium), NUL-terminated. out_size must hold it
    (4*bytes/3 + 2). Returns 0 or -1 when out is too small.  */
int sh_random_id(char *out, size_t out_size, size_t bytes);
/*  Fill out with 2*bytes lowercase hex characters of randomness + NUL.  */
void sh_random_hex(char *out, size_t bytes);
/*  Initialise libsodium once; aborts the process if it cannot.  */
void sh_crypto_init(void);

/*  Parse a whole decimal integer in [min, max]; returns 0 or -1.  */
int sh_parse_int(const char *text, int64_t min, int64_t max, int64_t *out);

/*  True when the secrets a (alen bytes) and b (blen bytes) are equal and
    not empty. Takes the same time for every a of one length, so a guess
    learns nothing from the clock but the length, which is public.  */
bool sh_secret_eq(const void *a, size_t alen, const void *b, size_t blen);

/*  Decode one UTF-8 character at p (avail bytes): its code point into *cp
    and its length (1..4), or 0 when the bytes are not strict UTF-8
    (overlong forms, surrogates, past U+10FFFF, cut short).  */
size_t sh_utf8_decode(const unsigned char *p, size_t avail, uint32_t *cp);

/*  Current resident set size of this process in bytes (0 if unknown).  */
uint64_t sh_process_rss(void);

#endif
