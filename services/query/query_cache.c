/*  query_cache.c - the board's read cache and view counters on sh_redis.

    Keys under the prefix: c:item:<id> and c:list:<limit> hold
    "<tag>\n<encoded reply>"; c:wlsn the LSN of the board's last write;
    c:ilsn:<id> the LSN that deleted an item (kept longer than any entry it
    invalidates); v:item:<id> the item's view count.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query_cache.h"
#include "sh_codec.h"
#include "sh_log.h"
#include "sh_redis.h"
#include "sh_util.h"

#define S_KEY_MAX       128
#define S_NUM_MAX       24
#define S_ILSN_EXTRA_MS 10000 /* beyond twice the TTL: outlives every entry it judges */

/*  KEYS: the item's entry, its invalidation LSN, its view counter.
    ARGV: min_lsn. Returns {blob or "", views, need}; a hit counts a view.  */
static const char *s_get_script =
    "local need = tonumber(ARGV[1]) "
    "local il = tonumber(redis.call('GET', KEYS[2]) or '0') or 0 "
    "if il > need then need = il end "
    "local v = redis.call('GET', KEYS[1]) "
    "if v then "
    "  local nl = string.find(v, '\\n', 1, true) "
    "  if nl and (tonumber(string.sub(v, 1, nl - 1)) or -1) >= need then "
    "    return {string.sub(v, nl + 1), redis.call('INCR', KEYS[3]), tostring(need)} "
    "  end "
    "end "
    "return {'', 0, tostring(need)}";

/*  KEYS: board write LSN, item invalidation LSN (or "-"), item entry,
    view counter. ARGV: lsn, invalidation TTL ms.  */
static const char *s_wrote_script =
    "local l = tonumber(ARGV[1]) "
    "if l > (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) then "
    "  redis.call('SET', KEYS[1], ARGV[1]) "
    "end "
    "if KEYS[2] ~= '-' then "
    "  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) "
    "  redis.call('DEL', KEYS[3], KEYS[4]) "
    "end "
    "return 1";

struct query_cache_t {
    sh_redis_t *redis;
    query_cache_config_t config;
    int get_script;
    int wrote_script;
    uint64_t *hits, *misses;
    int64_t *ratio;
};

typedef struct {
    query_cache_t *cache;
    uint64_t min_lsn;
    bool item;
    query_cache_fn *fn;
    query_cache_views_fn *views_fn;
    void *arg;
} s_call_t;

static void s_key(const query_cache_t *self, char out[S_KEY_MAX], const char *kind, uint64_t id)
{
    snprintf(out, S_KEY_MAX, "%s%s:%llu", self->config.prefix, kind, (unsigned long long)id);
}

static void s_count(query_cache_t *self, bool hit)
{
    (*(hit ? self->hits : self->misses))++;
    uint64_t all = *self->hits + *self->misses;
    *self->ratio = all ? (int64_t)(*self->hits * 100 / all) : 0;
}

static void s_on_get(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    s_call_t *call = arg;
    query_cache_hit_t hit = {false, NULL, 0, 0, call->min_lsn};
    if (status == 0 && reply && sh_redis_type(reply) == SH_REDIS_ARRAY &&
        sh_redis_count(reply) == 3) {
        size_t len = 0;
        const char *blob = sh_redis_str(sh_redis_elem(reply, 0), &len);
        int64_t need = sh_redis_int(sh_redis_elem(reply, 2), -1);
        if (need >= 0 && (uint64_t)need > hit.need)
            hit.need = (uint64_t)need;
        if (blob && len > 0) {
            hit.hit = true;
            hit.blob = blob;
            hit.len = len;
            hit.views = (uint64_t)sh_redis_int(sh_redis_elem(reply, 1), 0);
        }
    } else if (status == 0 && reply && sh_redis_type(reply) == SH_REDIS_ERROR)
        sh_warn("cache: %.200s", sh_redis_str(reply, NULL));
    s_count(call->cache, hit.hit);
    call->fn(call->arg, &hit);
    free(call);
}

/*  A lookup in flight, or NULL when out of memory (fn has then been
    answered with a miss).  */
static s_call_t *s_lookup_new(query_cache_t *self, uint64_t min_lsn, query_cache_fn *fn, void *arg)
{
    s_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        query_cache_hit_t miss = {false, NULL, 0, 0, min_lsn};
        fn(arg, &miss);
        return NULL;
    }
    call->cache = self;
    call->min_lsn = min_lsn;
    call->fn = fn;
    call->arg = arg;
    return call;
}

void query_cache_item_get(query_cache_t *self, uint64_t id, uint64_t min_lsn, query_cache_fn *fn,
                          void *arg)
{
    s_call_t *call = s_lookup_new(self, min_lsn, fn, arg);
    if (!call)
        return;
    char entry[S_KEY_MAX], ilsn[S_KEY_MAX], views[S_KEY_MAX], lsn[S_NUM_MAX];
    s_key(self, entry, "c:item", id);
    s_key(self, ilsn, "c:ilsn", id);
    s_key(self, views, "v:item", id);
    snprintf(lsn, sizeof lsn, "%llu", (unsigned long long)min_lsn);
    const char *argv[4] = {entry, ilsn, views, lsn};
    size_t lens[4] = {strlen(entry), strlen(ilsn), strlen(views), strlen(lsn)};
    sh_redis_eval(self->redis, self->get_script, self->config.timeout_ms, s_on_get, call, 3, 4,
                  argv, lens);
}

/*  A list lookup counts no view, so it needs no script: MGET entry and the
    board's write LSN, and judge the tag here (half the Redis work of EVAL).  */
static void s_on_mget(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    s_call_t *call = arg;
    query_cache_hit_t hit = {false, NULL, 0, 0, call->min_lsn};
    if (status == 0 && reply && sh_redis_type(reply) == SH_REDIS_ARRAY &&
        sh_redis_count(reply) == 2) {
        int64_t wlsn = sh_redis_int(sh_redis_elem(reply, 1), 0);
        if (wlsn > 0 && (uint64_t)wlsn > hit.need)
            hit.need = (uint64_t)wlsn;
        size_t len = 0;
        const char *value = sh_redis_str(sh_redis_elem(reply, 0), &len);
        const char *nl = value ? memchr(value, '\n', len) : NULL;
        char tag_text[S_NUM_MAX];
        int64_t tag = -1;
        if (nl && (size_t)(nl - value) < sizeof tag_text) {
            memcpy(tag_text, value, (size_t)(nl - value));
            tag_text[nl - value] = 0;
            if (sh_parse_int(tag_text, 0, INT64_MAX, &tag))
                tag = -1;
        }
        if (tag >= 0 && (uint64_t)tag >= hit.need && nl + 1 < value + len) {
            hit.hit = true;
            hit.blob = nl + 1;
            hit.len = len - (size_t)(nl + 1 - value);
        }
    } else if (status == 0 && reply && sh_redis_type(reply) == SH_REDIS_ERROR)
        sh_warn("cache: %.200s", sh_redis_str(reply, NULL));
    s_count(call->cache, hit.hit);
    call->fn(call->arg, &hit);
    free(call);
}

void query_cache_list_get(query_cache_t *self, uint64_t limit, uint64_t min_lsn, query_cache_fn *fn,
                          void *arg)
{
    char entry[S_KEY_MAX], wlsn[S_KEY_MAX];
    s_key(self, entry, "c:list", limit);
    snprintf(wlsn, sizeof wlsn, "%sc:wlsn", self->config.prefix);
    s_call_t *call = s_lookup_new(self, min_lsn, fn, arg);
    if (!call)
        return;
    const char *argv[3] = {"MGET", entry, wlsn};
    size_t lens[3] = {4, strlen(entry), strlen(wlsn)};
    sh_redis_command(self->redis, self->config.timeout_ms, s_on_mget, call, 3, argv, lens);
}

static void s_ignore(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    (void)arg;
    if (status == 0 && reply && sh_redis_type(reply) == SH_REDIS_ERROR)
        sh_warn("cache: %.200s", sh_redis_str(reply, NULL));
}

/*  SET key "<tag>\n<blob>" PX ttl, not waiting for the answer.  */
static void s_put(query_cache_t *self, const char *key, uint64_t tag, const char *blob, size_t len)
{
    char head[S_NUM_MAX + 1], ttl[S_NUM_MAX];
    int n = snprintf(head, sizeof head, "%llu\n", (unsigned long long)tag);
    char *value = malloc((size_t)n + len);
    if (!value)
        return;
    memcpy(value, head, (size_t)n);
    memcpy(value + n, blob, len);
    snprintf(ttl, sizeof ttl, "%lld", (long long)self->config.ttl_ms);
    const char *argv[5] = {"SET", key, value, "PX", ttl};
    size_t lens[5] = {3, strlen(key), (size_t)n + len, 2, strlen(ttl)};
    sh_redis_command(self->redis, self->config.timeout_ms, s_ignore, NULL, 5, argv, lens);
    free(value);
}

static void s_on_views(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    s_call_t *call = arg;
    int64_t views = status == 0 && reply ? sh_redis_int(reply, 0) : 0;
    call->views_fn(call->arg, views > 0 ? (uint64_t)views : 0);
    free(call);
}

void query_cache_item_put(query_cache_t *self, uint64_t id, uint64_t tag, const char *blob,
                          size_t len, query_cache_views_fn *fn, void *arg)
{
    char entry[S_KEY_MAX], views[S_KEY_MAX];
    s_key(self, entry, "c:item", id);
    s_key(self, views, "v:item", id);
    s_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        fn(arg, 0);
        return;
    }
    call->cache = self;
    call->views_fn = fn;
    call->arg = arg;
    const char *argv[2] = {"INCR", views};
    size_t lens[2] = {4, strlen(views)};
    sh_redis_command(self->redis, self->config.timeout_ms, s_on_views, call, 2, argv, lens);
    if (tag)
        s_put(self, entry, tag, blob, len);
}

void query_cache_list_put(query_cache_t *self, uint64_t limit, uint64_t tag, const char *blob,
                          size_t len)
{
    char entry[S_KEY_MAX];
    s_key(self, entry, "c:list", limit);
    s_put(self, entry, tag, blob, len);
}

void query_cache_wrote(query_cache_t *self, uint64_t lsn, uint64_t deleted_id)
{
    char wlsn[S_KEY_MAX], ilsn[S_KEY_MAX] = "-", entry[S_KEY_MAX] = "-", views[S_KEY_MAX] = "-";
    snprintf(wlsn, sizeof wlsn, "%sc:wlsn", self->config.prefix);
    if (deleted_id) {
        s_key(self, ilsn, "c:ilsn", deleted_id);
        s_key(self, entry, "c:item", deleted_id);
        s_key(self, views, "v:item", deleted_id);
    }
    char l[S_NUM_MAX], ttl[S_NUM_MAX];
    snprintf(l, sizeof l, "%llu", (unsigned long long)lsn);
    snprintf(ttl, sizeof ttl, "%lld", (long long)(self->config.ttl_ms * 2 + S_ILSN_EXTRA_MS));
    const char *argv[6] = {wlsn, ilsn, entry, views, l, ttl};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    sh_redis_eval(self->redis, self->wrote_script, self->config.timeout_ms, s_ignore, NULL, 4, 6,
                  argv, lens);
}

query_cache_t *query_cache_new(sh_loop_t *loop, const query_cache_config_t *config,
                               sh_metrics_t *metrics)
{
    query_cache_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;
    sh_redis_config_t rc = {config->host,       config->port, config->password, config->db,
                            config->timeout_ms, 10000,        "redis"};
    self->redis = sh_redis_new(loop, &rc, metrics);
    if (!self->redis) {
        free(self);
        return NULL;
    }
    self->get_script = sh_redis_script(self->redis, s_get_script);
    self->wrote_script = sh_redis_script(self->redis, s_wrote_script);
    self->hits = sh_metrics_counter(metrics, "shoal_cache_hits_total",
                                    "Reads answered from the cache", NULL);
    self->misses = sh_metrics_counter(metrics, "shoal_cache_misses_total",
                                      "Cacheable reads that went to the database", NULL);
    self->ratio = sh_metrics_gauge(metrics, "shoal_cache_hit_ratio_percent",
                                   "Cache hits per 100 cacheable reads since start", NULL);
    return self;
}

sh_redis_t *query_cache_redis(query_cache_t *self)
{
    return self->redis;
}

void query_cache_destroy(query_cache_t **self_p)
{
    query_cache_t *self = *self_p;
    if (!self)
        return;
    sh_redis_destroy(&self->redis);
    free(self);
    *self_p = NULL;
}
