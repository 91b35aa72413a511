/*  upload_server.h - the upload service's operations on top of sh_service:
    streams of chunks into S3 (upload_begin, upload_chunk, upload_finish,
    upload_abort) and object reads and deletes (upload_read,
    upload_delete).

    A stream lives on the instance that began it. Bytes go into a part
    buffer and a running SHA-256; a full part is sent to S3 while the next
    one fills. A chunk's reply is the caller's credit: it is held while
    both buffers are busy, so a stream holds at most two parts and a
    window of chunks, whatever the file size. Every request is answered
    exactly once, also when S3 fails or the stream is thrown away.
*/
#ifndef UPLOAD_SERVER_H_INCLUDED
#define UPLOAD_SERVER_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_service.h"
#include "upload_s3.h"

/*  Hex digits of the random part of an object key.  */
#define UPLOAD_KEY_HEX 32

typedef struct upload_server_t upload_server_t;

typedef struct {
    const char *prefix;    /* of every object key, e.g. "uploads/" (borrowed) */
    uint64_t max_bytes;    /* largest upload */
    uint64_t part_bytes;   /* multipart part size; smaller uploads are one PUT */
    uint64_t chunk_bytes;  /* largest raw frame of one upload_chunk */
    uint64_t window;       /* chunks a caller may keep unanswered */
    int64_t max_streams;   /* streams open at once; more get UNAVAILABLE */
    int64_t max_buffer;    /* bytes the open streams may hold together; more get UNAVAILABLE */
    int64_t idle_ms;       /* a stream without a request for this long is aborted */
    int64_t s3_timeout_ms; /* longest S3 call; part uploads get all of it */
} upload_server_config_t;

/*  Register the upload operations with service. service and s3 are
    borrowed; config is copied (its prefix string must outlive the
    server). Returns NULL when memory runs out.  */
upload_server_t *upload_server_new(sh_service_t *service, upload_s3_t *s3,
                                   const upload_server_config_t *config);

/*  After the service loop returned: end every stream still open (its
    waiting requests get UNAVAILABLE), abort their multipart uploads, and
    run the loop until S3 answered those calls or wait_ms passed (what is
    left is the sweeper's).  */
void upload_server_close(upload_server_t *self, int64_t wait_ms);

/*  Answer every request still waiting with UNAVAILABLE and free every
    stream; nulls *self_p. Destroy the S3 client first: its pending calls
    are answered then, while the streams they belong to still exist.  */
void upload_server_destroy(upload_server_t **self_p);

/*  True when upload_id is the multipart upload of a stream open here (the
    sweeper must not abort it). arg is the server.  */
bool upload_server_live(void *arg, const char *upload_id);

/*  True when key (len bytes) is an object key this service makes: prefix
    followed by UPLOAD_KEY_HEX lowercase hex digits, nothing else.  */
bool upload_key_valid(const char *prefix, const char *key, size_t len);

#endif
