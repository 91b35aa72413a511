/*  upload_hash.h - SHA-256 of upload bytes, at the speed of the CPU.

    Every byte of an upload is hashed twice (the whole object, and its
    part for the part checksum S3 checks). libsodium's portable SHA-256
    runs at about a quarter of a GB/s; OpenSSL's uses the SHA extensions
    and AVX2 where the CPU has them (2 GB/s on the test machines), which
    is what lets an upload keep up with storage. upload_hash.c is the only
    file that includes OpenSSL.
*/
#ifndef UPLOAD_HASH_H_INCLUDED
#define UPLOAD_HASH_H_INCLUDED

#include <stddef.h>
#include <stdint.h>

#define UPLOAD_HASH_BYTES 32

typedef struct upload_hash_t upload_hash_t;

/*  A running SHA-256, started. NULL when memory ran out.  */
upload_hash_t *upload_hash_new(void);
/*  Free; nulls *self_p.  */
void upload_hash_destroy(upload_hash_t **self_p);
void upload_hash_update(upload_hash_t *self, const void *data, size_t len);
/*  The digest of everything so far into out; the hash starts again.
    Returns 0, or -1 when the library failed.  */
int upload_hash_final(upload_hash_t *self, uint8_t out[UPLOAD_HASH_BYTES]);
/*  The digest of one buffer. Returns 0 or -1.  */
int upload_hash_once(const void *data, size_t len, uint8_t out[UPLOAD_HASH_BYTES]);

#endif
