/*  query_server.h - the query service's operations: accounts, items and
    their attachments. Validates every request, hashes passwords on the
    worker threads and reads through the cache; query_db and query_cache do
    the I/O.
*/
#ifndef QUERY_SERVER_H_INCLUDED
#define QUERY_SERVER_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "query_cache.h"
#include "query_db.h"
#include "sh_events.h"
#include "sh_service.h"
#include "sh_util.h"

#define QUERY_USERNAME_MIN 3
#define QUERY_USERNAME_MAX 32
#define QUERY_PASSWORD_MIN 8
#define QUERY_PASSWORD_MAX 256
#define QUERY_TITLE_MAX    200
#define QUERY_BODY_MAX     10000
#define QUERY_SEARCH_MAX   100
#define QUERY_PAGE_DEFAULT 20
#define QUERY_EXCERPT      200

typedef struct {
    uint64_t argon2_ops;
    uint64_t argon2_mem_kib;
} query_server_config_t;

typedef struct query_server_t query_server_t;

/*  Register the handlers. db, cache and events (may be NULL: no live
    events) are borrowed. Returns NULL on failure (out of memory, or
    Argon2 parameters libsodium refuses).  */
query_server_t *query_server_new(sh_service_t *service, query_db_t *db, query_cache_t *cache,
                                 sh_events_t *events, const query_server_config_t *config);
void query_server_destroy(query_server_t **self_p);

/*  Text checks shared by the operations (exposed for unit tests).
    Returns NULL when text (len bytes) is valid UTF-8 of min..max
    characters with no control characters (newline, carriage return and
    tab allowed when multiline), else why not.  */
const char *query_text_problem(const char *text, size_t len, size_t min, size_t max,
                               bool multiline);
/*  The first max characters of UTF-8 text (len bytes), as Postgres's
    left() cuts it: returns the bytes they take.  */
size_t query_excerpt_len(const char *text, size_t len, size_t max);
/*  True for 3..32 characters of [A-Za-z0-9_.-].  */
bool query_username_valid(const char *text, size_t len);
/*  True for exactly SH_SHA256_HEX lowercase hex digits.  */
bool query_sha256_valid(const char *text, size_t len);
/*  True for an object key: 1..SH_OBJKEY_MAX bytes of UTF-8 without
    control characters (no other key can have a row).  */
bool query_objkey_valid(const char *text, size_t len);
/*  Why an attachment_create request is invalid, written into why (size
    bytes) and returned; NULL when it is valid. The item is not checked
    here (an unknown one is NOT_FOUND, not INVALID).  */
const char *query_attachment_problem(const sh_attachment_create_req_t *req, char *why, size_t size);
/*  Append the valid keys (query_objkey_valid; the others cannot have a
    row) to out as a Postgres text[] literal, a parameter value. Returns how
    many it took, or -1 when memory runs out.  */
int query_keys_array(const sh_objkey_list_t *keys, sh_buf_t *out);

#endif
