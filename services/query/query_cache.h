/*  query_cache.h - hot reads of the board cached in Redis, and the item
    view counters.

    What is cached: one item (by id) and the first page of the newest
    items, each as the encoded reply it was read as, tagged with the WAL
    position the read is known to include. A write records its LSN (the
    board's last write; for a deleted item also that item's); a cached
    entry counts as a hit only if its tag reaches both that LSN and the
    caller's min_lsn, so no reader ever gets a page older than a write it
    must see. Entries expire after the configured TTL anyway.
*/
#ifndef QUERY_CACHE_H_INCLUDED
#define QUERY_CACHE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_loop.h"
#include "sh_metrics.h"

typedef struct query_cache_t query_cache_t;

typedef struct {
    const char *host;
    int port;
    const char *password;
    int db;
    const char *prefix;
    int64_t ttl_ms;     /* lifetime of an entry */
    int64_t timeout_ms; /* per Redis call */
} query_cache_config_t;

/*  A lookup's result. On a hit, blob is the cached encoding (valid during
    the callback) and views the item's count after this view. need is the
    LSN a read from the database must include (min_lsn or a later write's).  */
typedef struct {
    bool hit;
    const char *blob;
    size_t len;
    uint64_t views;
    uint64_t need;
} query_cache_hit_t;

typedef void(query_cache_fn)(void *arg, const query_cache_hit_t *hit);
typedef void(query_cache_views_fn)(void *arg, uint64_t views);

/*  Create the cache and start connecting. config strings must outlive it.  */
query_cache_t *query_cache_new(sh_loop_t *loop, const query_cache_config_t *config,
                               sh_metrics_t *metrics);
void query_cache_destroy(query_cache_t **self_p);
/*  The cache's Redis client, which the event history shares (borrowed).  */
struct sh_redis_t *query_cache_redis(query_cache_t *self);

/*  Look up item `id` (a hit counts a view). fn is called exactly once; a
    Redis that is down gives a miss with need = min_lsn.  */
void query_cache_item_get(query_cache_t *self, uint64_t id, uint64_t min_lsn, query_cache_fn *fn,
                          void *arg);
/*  After a database read of item id: count the view (fn gets the count,
    0 when Redis is down) and cache the encoding under tag (0: count only).
    tag must be a WAL position every commit before which is in the answer:
    a replica's replay position taken before the read, never a primary's
    (a primary snapshot can miss a commit whose WAL precedes a visible one).  */
void query_cache_item_put(query_cache_t *self, uint64_t id, uint64_t tag, const char *blob,
                          size_t len, query_cache_views_fn *fn, void *arg);
/*  The first page of `limit` newest items (tags as for items).  */
void query_cache_list_get(query_cache_t *self, uint64_t limit, uint64_t min_lsn, query_cache_fn *fn,
                          void *arg);
void query_cache_list_put(query_cache_t *self, uint64_t limit, uint64_t tag, const char *blob,
                          size_t len);
/*  A write committed at lsn (deleted_id: the item it deleted, or 0):
    entries older than it stop counting as hits.  */
void query_cache_wrote(query_cache_t *self, uint64_t lsn, uint64_t deleted_id);

#endif
