/*  upload_s3.h - an asynchronous S3 client on the service's sh_loop. The
    only module that includes libcurl: its multi interface runs on the
    loop's fds and timers, so no call ever blocks the loop.

    Requests are signed by libcurl (AWS SigV4); object keys are percent-
    encoded here. Endpoint, region, bucket, addressing style and
    credentials come from the configuration, so AWS, MinIO and Ceph RGW
    all work. Every call has a deadline; transient failures (5xx,
    SlowDown, RequestTimeout, InternalError, connection failures, timeouts)
    are retried with capped exponential backoff and full jitter while the
    deadline allows. Every operation is idempotent and retried alike.
*/
#ifndef UPLOAD_S3_H_INCLUDED
#define UPLOAD_S3_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_loop.h"
#include "sh_metrics.h"

typedef struct upload_s3_t upload_s3_t;
/*  One call in flight (a streamed GET), valid until its callback ran.  */
typedef struct upload_s3_call_t upload_s3_call_t;

#define UPLOAD_S3_MAX_KEY   1024  /* bytes of an object key (S3's limit) */
#define UPLOAD_S3_MAX_PARTS 10000 /* parts of one multipart upload */
#define UPLOAD_S3_SHA256    32    /* bytes of a SHA-256 digest */

typedef struct {
    const char *endpoint;   /* "http://host:port" or "https://host" (no path) */
    const char *region;     /* e.g. "us-east-1" (MinIO and RGW accept that) */
    const char *bucket;     /* the bucket every call works in */
    bool path_style;        /* true: endpoint/bucket/key; false: bucket.host/key */
    const char *access_key; /* signing credentials */
    const char *secret_key;
    int64_t timeout_ms;         /* the longest one call may take, all tries together */
    int64_t connect_timeout_ms; /* the longest one connect may take */
    int64_t low_speed_bytes;    /* a transfer slower than this many bytes/s ... */
    int64_t low_speed_secs;     /* ... for this many seconds is abandoned (and retried) */
    int max_retries;            /* tries after the first, deadline permitting */
    int64_t backoff_base_ms;    /* retry n waits a random time in [0, min(cap, base*2^(n-1))) */
    int64_t backoff_cap_ms;
    const char *label; /* value of the metrics label backend="..." ("s3" when NULL) */
    /*  Optional: "HOST:PORT:ADDR:PORT" to reach HOST:PORT at ADDR:PORT
        while the URL and the signed Host header keep HOST (CURLOPT_CONNECT_TO).  */
    const char *connect_to;
    /*  Optional: NULL-terminated "Name: value" lines sent (and signed) with
        every request, e.g. "x-amz-expected-bucket-owner: 1234".  */
    const char *const *extra_headers;
    /*  Optional: the endpoint browsers reach S3 at, for presigned URLs
        (NULL or "": endpoint).  */
    const char *public_endpoint;
} upload_s3_config_t;

#define UPLOAD_S3_PRESIGN_MAX   2048   /* bytes of a response-* value of a presigned URL */
#define UPLOAD_S3_PRESIGN_MAX_S 604800 /* SigV4's longest X-Amz-Expires: 7 days */

/*  One entry of a listing.  */
typedef struct {
    const char *key;
    const char *upload_id; /* list_multipart_uploads */
    int64_t time_ms;       /* Initiated (uploads) or LastModified (objects), Unix ms; -1 unknown */
    int64_t size;          /* list_objects; -1 unknown */
    const char *etag;      /* list_objects; "" unknown */
} upload_s3_entry_t;

/*  What an operation returns; valid only during the callback. Text fields
    are "" when absent, never NULL.  */
typedef struct {
    int http_status;                  /* of the last try; 0 when no answer came */
    const char *error_code;           /* S3's <Error><Code>, e.g. "NoSuchKey" */
    const char *upload_id;            /* create_multipart */
    const char *etag;                 /* put_object, upload_part, complete_multipart, head, get */
    int64_t content_length;           /* head_object, get_object; -1 unknown */
    const char *content_range;        /* get_object with a range */
    const char *content_type;         /* head_object, get_object */
    const upload_s3_entry_t *entries; /* listings */
    size_t count;
    bool truncated;                    /* listings: another page follows */
    const char *next_marker;           /* list_objects: continuation token; uploads: key marker */
    const char *next_upload_id_marker; /* list_multipart_uploads */
} upload_s3_result_t;

/*  Called exactly once per operation, maybe before the operation returns:
    SH_STATUS_OK, NOT_FOUND (no such key, upload or bucket), INVALID (the
    request was refused as wrong: bad key, range, part list), UNAVAILABLE
    (S3 down or failing after the retries, or the client destroyed),
    TIMEOUT (the deadline passed) or INTERNAL (refused credentials, an
    unreadable reply).  */
typedef void(upload_s3_fn)(void *arg, uint64_t status, const upload_s3_result_t *result);

/*  A streamed GET delivers the body in chunks. Return 0 to take the
    chunk, or UPLOAD_S3_PAUSE to refuse it and pause the transfer: the same
    bytes come again after upload_s3_resume.  */
#define UPLOAD_S3_PAUSE 1
typedef int(upload_s3_chunk_fn)(void *arg, const uint8_t *data, size_t len);

/*  A part of a multipart upload, for complete_multipart.  */
typedef struct {
    int number;            /* 1..UPLOAD_S3_MAX_PARTS, ascending */
    const char *etag;      /* as upload_part returned it */
    const uint8_t *sha256; /* the part's SHA-256 when it was sent as a checksum, else NULL */
} upload_s3_part_t;

/*  Create the client; config strings must outlive it. Returns NULL when
    the configuration is unusable (logged) or memory runs out.  */
upload_s3_t *upload_s3_new(sh_loop_t *loop, const upload_s3_config_t *config,
                           sh_metrics_t *metrics);
/*  Answer every pending call with UNAVAILABLE and free; nulls *self_p.
    Call it before destroying the loop, never from one of its callbacks.  */
void upload_s3_destroy(upload_s3_t **self_p);

/*  A presigned GET URL of object key (SigV4 in the query string, host the
    only signed header, UNSIGNED-PAYLOAD), valid for expires_s seconds
    (1..UPLOAD_S3_PRESIGN_MAX_S) from now_s (Unix seconds). disposition and
    content_type (may be NULL) become response-content-disposition and
    response-content-type, which S3 answers with. No I/O. Returns 0 and the
    URL in out (size bytes), or -1 (bad key or expiry, does not fit).  */
int upload_s3_presign_get(upload_s3_t *self, const char *key, int64_t expires_s, int64_t now_s,
                          const char *disposition, const char *content_type, char *out,
                          size_t size);

/*  PUT a small object held in memory; its SHA-256 is signed as
    x-amz-content-sha256. sha256 (32 bytes, read during the call) is the
    body's digest when the caller already has it, else NULL and it is
    computed here. content_type may be NULL. body is borrowed until the
    callback. Returns etag.  */
void upload_s3_put_object(upload_s3_t *self, const char *key, const void *body, size_t len,
                          const uint8_t *sha256, const char *content_type, int64_t timeout_ms,
                          upload_s3_fn *fn, void *arg);

/*  Start a multipart upload; returns upload_id. content_type may be NULL;
    checksums true announces SHA-256 part checksums (x-amz-checksum-algorithm).  */
void upload_s3_create_multipart(upload_s3_t *self, const char *key, const char *content_type,
                                bool checksums, int64_t timeout_ms, upload_s3_fn *fn, void *arg);

/*  Upload one part; data is borrowed until the callback (a retry sends the
    same bytes). sha256 (32 bytes) may be NULL; when given it is signed as
    x-amz-content-sha256, and with checksum also sent as
    x-amz-checksum-sha256 for S3 to verify. Returns etag.  */
void upload_s3_upload_part(upload_s3_t *self, const char *key, const char *upload_id, int number,
                           const void *data, size_t len, const uint8_t *sha256, bool checksum,
                           int64_t timeout_ms, upload_s3_fn *fn, void *arg);

/*  Complete a multipart upload from its parts (copied). Returns etag. A
    200 reply carrying an <Error> counts as that error.  */
void upload_s3_complete_multipart(upload_s3_t *self, const char *key, const char *upload_id,
                                  const upload_s3_part_t *parts, size_t count, int64_t timeout_ms,
                                  upload_s3_fn *fn, void *arg);

/*  Abort a multipart upload (its parts are deleted).  */
void upload_s3_abort_multipart(upload_s3_t *self, const char *key, const char *upload_id,
                               int64_t timeout_ms, upload_s3_fn *fn, void *arg);

/*  Stream an object into chunk (range like "bytes=0-9", or NULL for all).
    fn gets status, content_length, content_range and etag at the end. A
    try that fails before the first chunk is retried; once bytes went to
    chunk, a failure ends the call. Returns the call for upload_s3_resume,
    or NULL when fn was already called.  */
upload_s3_call_t *upload_s3_get_object(upload_s3_t *self, const char *key, const char *range,
                                       int64_t timeout_ms, upload_s3_chunk_fn *chunk,
                                       upload_s3_fn *fn, void *arg);
/*  Resume a GET its chunk callback paused; the transfer goes on from the
    next loop turn (never from inside this call).  */
void upload_s3_resume(upload_s3_t *self, upload_s3_call_t *call);

/*  HEAD an object: content_length, etag, content_type.  */
void upload_s3_head_object(upload_s3_t *self, const char *key, int64_t timeout_ms, upload_s3_fn *fn,
                           void *arg);

/*  DELETE an object (S3 answers OK for a missing key too).  */
void upload_s3_delete_object(upload_s3_t *self, const char *key, int64_t timeout_ms,
                             upload_s3_fn *fn, void *arg);

/*  One page of multipart uploads in progress (key, upload_id, time_ms =
    initiated). prefix and markers may be NULL; max 1..1000 (0: S3's default).  */
void upload_s3_list_multipart_uploads(upload_s3_t *self, const char *prefix, const char *key_marker,
                                      const char *upload_id_marker, int max, int64_t timeout_ms,
                                      upload_s3_fn *fn, void *arg);

/*  One page of objects (ListObjectsV2: key, size, time_ms = last
    modified, etag). prefix and token (the previous page's next_marker)
    may be NULL; max 1..1000 (0: S3's default).  */
void upload_s3_list_objects(upload_s3_t *self, const char *prefix, const char *token, int max,
                            int64_t timeout_ms, upload_s3_fn *fn, void *arg);

/*  Percent-encode an object key into out as it goes in the URL path:
    RFC 3986 unreserved characters and '/' stay, every other byte is %XX.
    Returns the length, or -1 when out (out_size bytes) is too small.  */
int upload_s3_encode_key(const char *key, char *out, size_t out_size);

#endif
