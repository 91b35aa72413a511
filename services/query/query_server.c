/*  query_server.c - accounts, items and attachments: validate, call the
    database (and the cache), reply.

    Passwords are hashed and verified with Argon2id on the worker threads,
    never on the loop. A login for an unknown name verifies against a dummy
    hash, so both failures cost the same time and say the same thing.

    Writes publish their live events once committed (see "Events" in
    proto/README.md); the event data is the JSON the edge answers for the
    same object over REST.
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <sodium.h>

#include "query_server.h"
#include "sh_log.h"
#include "sh_util.h"

#define S_FALLBACK_TIMEOUT_MS 2000
#define S_BAD_LOGIN           "wrong username or password"
#define S_NUM_MAX             24
#define S_STR(x)              #x
#define S_XSTR(x)             S_STR(x)
#define S_NO_ATTACHMENT       "no such attachment"
#define S_CHANNEL_BOARD       "board"
#define S_CREATE_INSERTED     6 /* ITEM_CREATE's column: 1 when this call inserted the row */

struct query_server_t {
    sh_service_t *service;
    query_db_t *db;
    query_cache_t *cache;
    sh_events_t *events; /* NULL: no live events */
    query_server_config_t config;
    char dummy_hash[crypto_pwhash_STRBYTES];
    msgpack_sbuffer scratch;
    uint64_t *logins_failed;
};

/*  One request on its way through database, cache and workers.  */
typedef struct {
    query_server_t *server;
    sh_request_t *request;
    uint64_t id;
    bool cacheable;
    uint64_t limit;
    /*  password work on a worker thread  */
    char password[SH_PASSWORD_MAX + 1];
    size_t password_len;
    char username[SH_USERNAME_MAX + 1];
    char hash[crypto_pwhash_STRBYTES];
    bool verified;
    uint64_t user_id;
    int64_t created_at;
    bool found;
} s_call_t;

static s_call_t *s_call_new(query_server_t *server, sh_request_t *request)
{
    s_call_t *call = calloc(1, sizeof *call);
    if (call) {
        call->server = server;
        call->request = request;
    } else
        sh_service_reply(server->service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
    return call;
}

static void s_call_free(s_call_t *call)
{
    sodium_memzero(call->password, sizeof call->password);
    free(call);
}

static void s_reply(s_call_t *call, uint64_t status, const char *error, const void *body)
{
    sh_service_reply(call->server->service, &call->request, status, error, body);
    s_call_free(call);
}

static int64_t s_timeout(const s_call_t *call)
{
    return sh_request_remaining_ms(call->request, S_FALLBACK_TIMEOUT_MS);
}

static void s_num(char out[S_NUM_MAX], uint64_t v)
{
    snprintf(out, S_NUM_MAX, "%llu", (unsigned long long)v);
}

/*  True when the outcome is one row; else the call was answered: the
    outcome's failure, or `status` with `error` when there is no row.  */
static bool s_one_row(s_call_t *call, const query_outcome_t *out, uint64_t status,
                      const char *error)
{
    if (out->status != SH_STATUS_OK) {
        s_reply(call, out->status, out->error, NULL);
        return false;
    }
    if (query_rows_count(out->rows) != 1) {
        s_reply(call, status, error, NULL);
        return false;
    }
    return true;
}

/*  --- validation -------------------------------------------------------------  */

const char *query_text_problem(const char *text, size_t len, size_t min, size_t max, bool multiline)
{
    size_t chars = 0;
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    while (p < end) {
        uint32_t cp;
        size_t n = sh_utf8_decode(p, (size_t)(end - p), &cp);
        if (n == 0)
            return "is not valid UTF-8";
        bool allowed_ws = multiline && (cp == '\n' || cp == '\r' || cp == '\t');
        if ((cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) && !allowed_ws)
            return "contains control characters";
        p += n;
        chars++;
    }
    if (chars < min)
        return min == 1 ? "must not be empty" : "is too short";
    if (chars > max)
        return "is too long";
    return NULL;
}

bool query_username_valid(const char *text, size_t len)
{
    if (len < QUERY_USERNAME_MIN || len > QUERY_USERNAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/*  True for an id Postgres could have given (a bigserial).  */
static bool s_db_id(uint64_t id)
{
    return id > 0 && id <= INT64_MAX;
}

static bool s_blank(sh_str_t s)
{
    for (uint32_t i = 0; i < s.len; i++)
        if (s.ptr[i] != ' ')
            return false;
    return true;
}

bool query_sha256_valid(const char *text, size_t len)
{
    if (len != SH_SHA256_HEX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'f')))
            return false;
    return true;
}

bool query_objkey_valid(const char *text, size_t len)
{
    return len >= 1 && len <= SH_OBJKEY_MAX &&
           !query_text_problem(text, len, 1, SH_OBJKEY_MAX, false);
}

const char *query_attachment_problem(const sh_attachment_create_req_t *req, char *why, size_t size)
{
    const char *text;
    if (!s_db_id(req->user_id))
        snprintf(why, size, "user_id: required");
    else if (!query_objkey_valid(req->key.ptr, req->key.len))
        snprintf(why, size, "key: 1 to %d bytes of UTF-8 without control characters",
                 SH_OBJKEY_MAX);
    else if (req->size > INT64_MAX)
        snprintf(why, size, "size: too large");
    else if (!query_sha256_valid(req->sha256.ptr, req->sha256.len))
        snprintf(why, size, "sha256: %d lowercase hex digits", SH_SHA256_HEX);
    else if ((text = query_text_problem(req->content_type.ptr, req->content_type.len, 1,
                                        SH_MIME_MAX, false)) ||
             req->content_type.len > SH_MIME_MAX)
        snprintf(why, size, "content_type %s (1 to %d bytes)", text ? text : "is too long",
                 SH_MIME_MAX);
    else if ((text = query_text_problem(req->name.ptr, req->name.len, 1, SH_FILENAME_MAX, false)) ||
             req->name.len > SH_FILENAME_MAX)
        snprintf(why, size, "name %s (1 to %d bytes)", text ? text : "is too long",
                 SH_FILENAME_MAX);
    else if (req->quota > INT64_MAX)
        snprintf(why, size, "quota: too large");
    else
        return NULL;
    return why;
}

int query_keys_array(const sh_objkey_list_t *keys, sh_buf_t *out)
{
    /*  every element quoted: only '"' and '\' need escaping inside quotes  */
    int taken = 0;
    int rc = sh_buf_append(out, "{", 1);
    for (uint32_t i = 0; rc == 0 && i < keys->count; i++) {
        sh_str_t key = keys->items[i].key;
        if (!query_objkey_valid(key.ptr, key.len))
            continue;
        if (taken++)
            rc |= sh_buf_append(out, ",", 1);
        rc |= sh_buf_append(out, "\"", 1);
        for (uint32_t j = 0; rc == 0 && j < key.len; j++) {
            if (key.ptr[j] == '"' || key.ptr[j] == '\\')
                rc |= sh_buf_append(out, "\\", 1);
            rc |= sh_buf_append(out, &key.ptr[j], 1);
        }
        rc |= sh_buf_append(out, "\"", 1);
    }
    rc |= sh_buf_append(out, "}", 1);
    return rc ? -1 : taken;
}

/*  --- accounts ---------------------------------------------------------------  */

/*  Worker thread: hash call->password.  */
static void s_hash(void *arg)
{
    s_call_t *call = arg;
    const query_server_config_t *c = &call->server->config;
    if (crypto_pwhash_str_alg(call->hash, call->password, call->password_len, c->argon2_ops,
                              (size_t)c->argon2_mem_kib * 1024, crypto_pwhash_ALG_ARGON2ID13))
        call->hash[0] = 0;
    sodium_memzero(call->password, sizeof call->password);
}

/*  Worker thread: verify call->password against call->hash.  */
static void s_verify(void *arg)
{
    s_call_t *call = arg;
    call->verified =
        crypto_pwhash_str_verify(call->hash, call->password, call->password_len) == 0 &&
        call->found;
    sodium_memzero(call->password, sizeof call->password);
}

static void s_offload(s_call_t *call, sh_job_fn *work, sh_service_done_fn *done)
{
    if (sh_service_offload(call->server->service, work, done, call))
        s_reply(call, SH_STATUS_UNAVAILABLE, "busy: password queue full", NULL);
}

static void s_user_reply(s_call_t *call, const query_rows_t *rows)
{
    sh_user_create_rep_t rep = {(uint64_t)query_rows_int(rows, 0, 0),
                                sh_str(query_rows_text(rows, 0, 1)), query_rows_int(rows, 0, 2), 0};
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_user_created(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (s_one_row(call, out, SH_STATUS_CONFLICT, "username is taken"))
        s_user_reply(call, out->rows);
}

static void s_on_hashed(sh_service_t *service, void *arg)
{
    (void)service;
    s_call_t *call = arg;
    if (!call->hash[0]) {
        s_reply(call, SH_STATUS_INTERNAL, "cannot hash the password", NULL);
        return;
    }
    const char *params[2] = {call->username, call->hash};
    query_db_write(call->server->db, QUERY_USER_CREATE, 2, params, s_timeout(call),
                   s_on_user_created, call);
}

/*  Copy username and password into the call; NULL or why they are invalid.  */
static const char *s_take_credentials(s_call_t *call, sh_str_t username, sh_str_t password)
{
    if (!query_username_valid(username.ptr, username.len))
        return "username: 3 to 32 characters of letters, digits, '_', '.' or '-'";
    const char *why = query_text_problem(password.ptr, password.len, QUERY_PASSWORD_MIN,
                                         QUERY_PASSWORD_MAX, false);
    if (why || password.len > SH_PASSWORD_MAX) {
        static char text[96]; /* the loop is single-threaded; the reply copies it */
        snprintf(text, sizeof text, "password %s (8 to 256 characters, no control characters)",
                 why ? why : "is too long");
        return text;
    }
    sh_str_copy(username, call->username, sizeof call->username);
    memcpy(call->password, password.ptr, password.len);
    call->password_len = password.len;
    return NULL;
}

static void s_on_user_create(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_user_create_req_t *req = request->body;
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    (void)service;
    const char *why = s_take_credentials(call, req->username, req->password);
    if (why)
        s_reply(call, SH_STATUS_INVALID, why, NULL);
    else
        s_offload(call, s_hash, s_on_hashed);
}

static void s_on_verified(sh_service_t *service, void *arg)
{
    (void)service;
    s_call_t *call = arg;
    if (!call->verified) {
        (*call->server->logins_failed)++;
        s_reply(call, SH_STATUS_UNAUTHORIZED, S_BAD_LOGIN, NULL);
        return;
    }
    sh_user_login_rep_t rep = {call->user_id, sh_str(call->username), call->created_at, 0};
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_user_found(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (out->status != SH_STATUS_OK) {
        s_reply(call, out->status, out->error, NULL);
        return;
    }
    call->found = query_rows_count(out->rows) == 1;
    if (call->found) {
        call->user_id = (uint64_t)query_rows_int(out->rows, 0, 0);
        snprintf(call->username, sizeof call->username, "%s", query_rows_text(out->rows, 0, 1));
        call->created_at = query_rows_int(out->rows, 0, 2);
        snprintf(call->hash, sizeof call->hash, "%s", query_rows_text(out->rows, 0, 3));
    } else
        memcpy(call->hash, call->server->dummy_hash, sizeof call->hash);
    s_offload(call, s_verify, s_on_verified);
}

static void s_on_user_login(sh_service_t *service, sh_request_t *request, void *arg)
{
    (void)service;
    query_server_t *self = arg;
    sh_user_login_req_t *req = request->body;
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    if (s_take_credentials(call, req->username, req->password)) {
        /*  malformed credentials fail like wrong ones, after the same work  */
        size_t n = req->password.len < SH_PASSWORD_MAX ? req->password.len : SH_PASSWORD_MAX;
        memcpy(call->password, req->password.ptr, n);
        call->password_len = n;
        memcpy(call->hash, self->dummy_hash, sizeof call->hash);
        call->found = false;
        s_offload(call, s_verify, s_on_verified);
        return;
    }
    const char *params[1] = {call->username};
    query_db_read_primary(self->db, QUERY_USER_BY_NAME, 1, params, s_timeout(call), s_on_user_found,
                          call);
}

/*  --- live events -------------------------------------------------------------  */

size_t query_excerpt_len(const char *text, size_t len, size_t max)
{
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    for (size_t chars = 0; p < end && chars < max; chars++) {
        uint32_t cp;
        size_t n = sh_utf8_decode(p, (size_t)(end - p), &cp);
        p += n ? n : 1;
    }
    return (size_t)(p - (const unsigned char *)text);
}

static json_t *s_json_str(sh_str_t s)
{
    return json_stringn(s.ptr ? s.ptr : "", s.len);
}

static json_t *s_json_num(uint64_t v)
{
    return json_integer((json_int_t)v);
}

/*  An item as GET /api/items lists it (an excerpt, no views).  */
static json_t *s_item_json(const sh_item_t *item)
{
    sh_str_t excerpt = {item->body.ptr,
                        (uint32_t)query_excerpt_len(item->body.ptr, item->body.len, QUERY_EXCERPT)};
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:I}", "id", s_json_num(item->id), "title",
                     s_json_str(item->title), "excerpt", s_json_str(excerpt), "author",
                     s_json_str(item->author), "author_id", s_json_num(item->author_id),
                     "created_at", (json_int_t)item->created_at);
}

/*  An attachment as GET /api/items/N/attachments lists it.  */
static json_t *s_attachment_json(const sh_attachment_t *a)
{
    char url[64];
    snprintf(url, sizeof url, "/api/uploads/%" PRIu64, a->id);
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:s}", "id", s_json_num(a->id),
                     "item_id", s_json_num(a->item_id), "owner_id", s_json_num(a->owner_id),
                     "owner", s_json_str(a->owner), "name", s_json_str(a->name), "content_type",
                     s_json_str(a->content_type), "size", s_json_num(a->size), "sha256",
                     s_json_str(a->sha256), "created_at", (json_int_t)a->created_at, "url", url);
}

static void s_item_channel(char out[SH_CHANNEL_MAX + 1], uint64_t id)
{
    snprintf(out, SH_CHANNEL_MAX + 1, "item:%" PRIu64, id);
}

/*  Publish data (taken, may be NULL when it could not be built) as an
    ordered event on the board and, with item_id, on the item's channel.  */
static void s_publish(query_server_t *self, const char *type, json_t *data, uint64_t item_id)
{
    char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
    json_decref(data);
    if (!text) {
        sh_warn("events: cannot encode %s", type);
        return;
    }
    sh_events_publish(self->events, S_CHANNEL_BOARD, type, text);
    if (item_id) {
        char channel[SH_CHANNEL_MAX + 1];
        s_item_channel(channel, item_id);
        sh_events_publish(self->events, channel, type, text);
    }
    free(text);
}

/*  A view of item id was counted: views is its count now.  */
static void s_publish_views(query_server_t *self, uint64_t id, uint64_t views)
{
    if (!self->events || !views)
        return;
    char channel[SH_CHANNEL_MAX + 1], data[64];
    s_item_channel(channel, id);
    snprintf(data, sizeof data, "{\"item_id\":%" PRIu64 ",\"views\":%" PRIu64 "}", id, views);
    sh_events_publish_latest(self->events, channel, "views", data);
}

/*  --- items -------------------------------------------------------------------  */

/*  Column order of every item statement: id, author_id, author, title,
    body (or excerpt), created_at.  */
static void s_item_of(const query_rows_t *rows, int row, sh_item_t *item)
{
    memset(item, 0, sizeof *item);
    item->id = (uint64_t)query_rows_int(rows, row, 0);
    item->author_id = (uint64_t)query_rows_int(rows, row, 1);
    item->author = sh_str(query_rows_text(rows, row, 2));
    item->title = sh_str(query_rows_text(rows, row, 3));
    item->body = sh_str(query_rows_text(rows, row, 4));
    item->created_at = query_rows_int(rows, row, 5);
}

static void s_on_item_created(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    /*  no row: the same idempotency key is being applied right now elsewhere  */
    if (!s_one_row(call, out, SH_STATUS_CONFLICT, "the same request is still in progress"))
        return;
    sh_item_t item;
    s_item_of(out->rows, 0, &item);
    sh_item_create_rep_t rep;
    memset(&rep, 0, sizeof rep);
    SH_RECORD_COPY(SH_FIELDS_item, &rep, &item);
    rep.lsn = out->lsn;
    query_cache_wrote(call->server->cache, out->lsn, 0);
    /*  a retry that found the row its first try made publishes nothing  */
    if (call->server->events && query_rows_int(out->rows, 0, S_CREATE_INSERTED) == 1)
        s_publish(call->server, "item_created", json_pack("{s:o}", "item", s_item_json(&item)), 0);
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_item_create(sh_service_t *service, sh_request_t *request, void *arg)
{
    (void)service;
    query_server_t *self = arg;
    sh_item_create_req_t *req = request->body;
    const char *why = NULL;
    char field_why[96];
    if (req->user_id == 0)
        why = "user_id: required";
    else if ((why =
                  query_text_problem(req->title.ptr, req->title.len, 1, QUERY_TITLE_MAX, false)) ||
             s_blank(req->title)) {
        snprintf(field_why, sizeof field_why, "title %s (1 to 200 characters)",
                 why ? why : "must not be blank");
        why = field_why;
    } else if ((why = query_text_problem(req->body.ptr, req->body.len, 0, QUERY_BODY_MAX, true))) {
        snprintf(field_why, sizeof field_why, "body %s (at most 10000 characters)", why);
        why = field_why;
    }
    if (why) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, why, NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    char user[S_NUM_MAX], idem[SH_ID_MAX + 1];
    s_num(user, req->user_id);
    sh_str_copy(request->env.idem_key, idem, sizeof idem);
    /*  strings in the request are not NUL-terminated: copy them for libpq  */
    char *title = malloc(req->title.len + 1), *body = malloc(req->body.len + 1);
    if (!title || !body) {
        free(title);
        free(body);
        s_reply(call, SH_STATUS_INTERNAL, "out of memory", NULL);
        return;
    }
    sh_str_copy(req->title, title, req->title.len + 1);
    sh_str_copy(req->body, body, req->body.len + 1);
    const char *params[4] = {user, title, body, idem};
    query_db_write(self->db, QUERY_ITEM_CREATE, 4, params, s_timeout(call), s_on_item_created,
                   call);
    free(title);
    free(body);
}

static void s_get_reply(s_call_t *call, sh_item_get_rep_t *rep, uint64_t views, const char *source)
{
    rep->views = views;
    rep->source = sh_str(source);
    s_reply(call, SH_STATUS_OK, NULL, rep);
}

/*  The database read of an item, kept until the view is counted.  */
typedef struct {
    s_call_t *call;
    msgpack_sbuffer blob;
    const char *source;
} s_fill_t;

static void s_on_viewed(void *arg, uint64_t views)
{
    s_fill_t *fill = arg;
    sh_item_get_rep_t rep;
    s_publish_views(fill->call->server, fill->call->id, views);
    if (sh_codec_decode(&sh_item_get_rep_codec, &rep, fill->blob.data, fill->blob.size) == 0)
        s_get_reply(fill->call, &rep, views, fill->source);
    else
        s_reply(fill->call, SH_STATUS_INTERNAL, "cannot decode the item", NULL);
    msgpack_sbuffer_destroy(&fill->blob);
    free(fill);
}

static void s_on_item_read(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (!s_one_row(call, out, SH_STATUS_NOT_FOUND, "no such item"))
        return;
    sh_item_get_rep_t rep;
    memset(&rep, 0, sizeof rep);
    sh_item_t item;
    s_item_of(out->rows, 0, &item);
    SH_RECORD_COPY(SH_FIELDS_item, &rep, &item);
    s_fill_t *fill = calloc(1, sizeof *fill);
    if (!fill) {
        s_get_reply(call, &rep, 0, out->source);
        return;
    }
    fill->call = call;
    fill->source = out->source; /* a static string */
    msgpack_sbuffer_init(&fill->blob);
    if (sh_codec_encode(&sh_item_get_rep_codec, &rep, &fill->blob)) {
        msgpack_sbuffer_destroy(&fill->blob);
        free(fill);
        s_get_reply(call, &rep, 0, out->source);
        return;
    }
    /*  only a replica read has a WAL position its answer is known to include  */
    query_cache_item_put(call->server->cache, call->id, out->seen_lsn, fill->blob.data,
                         fill->blob.size, s_on_viewed, fill);
}

static void s_on_item_cached(void *arg, const query_cache_hit_t *hit)
{
    s_call_t *call = arg;
    if (hit->hit) {
        /*  the lookup counted the view  */
        s_publish_views(call->server, call->id, hit->views);
        sh_item_get_rep_t rep;
        if (sh_codec_decode(&sh_item_get_rep_codec, &rep, hit->blob, hit->len) == 0) {
            s_get_reply(call, &rep, hit->views, QUERY_SOURCE_CACHE);
            return;
        }
    }
    char id[S_NUM_MAX];
    s_num(id, call->id);
    const char *params[1] = {id};
    query_db_read(call->server->db, QUERY_ITEM_GET, hit->need, 1, params, s_timeout(call),
                  s_on_item_read, call);
}

static void s_on_item_get(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_item_get_req_t *req = request->body;
    if (!s_db_id(req->id)) {
        sh_service_reply(service, &request, SH_STATUS_NOT_FOUND, "no such item", NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    call->id = req->id;
    query_cache_item_get(self->cache, req->id, req->min_lsn, s_on_item_cached, call);
}

static void s_on_list_read(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (out->status != SH_STATUS_OK) {
        s_reply(call, out->status, out->error, NULL);
        return;
    }
    static sh_item_list_rep_t rep; /* large; the loop is single-threaded */
    memset(&rep, 0, sizeof rep);
    int rows = query_rows_count(out->rows);
    for (int i = 0; i < rows && (uint64_t)i < call->limit; i++)
        s_item_of(out->rows, i, &rep.items.items[rep.items.count++]);
    if ((uint64_t)rows > call->limit && rep.items.count > 0)
        rep.next_cursor = rep.items.items[rep.items.count - 1].id;
    if (call->cacheable && out->seen_lsn) {
        /*  stored as the reply a hit sends as it is  */
        rep.source = sh_str(QUERY_SOURCE_CACHE);
        msgpack_sbuffer *buf = &call->server->scratch;
        buf->size = 0;
        if (sh_codec_encode(&sh_item_list_rep_codec, &rep, buf) == 0)
            query_cache_list_put(call->server->cache, call->limit, out->seen_lsn, buf->data,
                                 buf->size);
    }
    rep.source = sh_str(out->source);
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_list_read(s_call_t *call, const sh_item_list_req_t *req, uint64_t need)
{
    char cursor[S_NUM_MAX], limit[S_NUM_MAX], excerpt[S_NUM_MAX];
    s_num(cursor, req ? req->cursor : 0);
    s_num(limit, call->limit + 1); /* one more says whether a next page exists */
    s_num(excerpt, QUERY_EXCERPT);
    char q[SH_SEARCH_MAX + 1] = "";
    if (req)
        sh_str_copy(req->q, q, sizeof q);
    const char *params[4] = {cursor, limit, excerpt, q};
    if (q[0])
        query_db_read(call->server->db, QUERY_ITEM_SEARCH, need, 4, params, s_timeout(call),
                      s_on_list_read, call);
    else
        query_db_read(call->server->db, QUERY_ITEM_LIST, need, 3, params, s_timeout(call),
                      s_on_list_read, call);
}

static void s_on_list_cached(void *arg, const query_cache_hit_t *hit)
{
    s_call_t *call = arg;
    if (hit->hit) {
        /*  the entry is the encoded reply: sent without decoding (the
            caller's decoder checks it like any other reply)  */
        sh_service_reply_encoded(call->server->service, &call->request, hit->blob, hit->len);
        s_call_free(call);
        return;
    }
    s_list_read(call, NULL, hit->need);
}

static void s_on_item_list(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_item_list_req_t *req = request->body;
    const char *why = NULL;
    if (req->limit > SH_PAGE_MAX)
        why = "limit: 1 to 100";
    else if (req->cursor > INT64_MAX)
        why = "cursor: not a cursor this service gave";
    else if (query_text_problem(req->q.ptr, req->q.len, 0, QUERY_SEARCH_MAX, false))
        why = "q: at most 100 characters of text";
    if (why) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, why, NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    call->limit = req->limit ? req->limit : QUERY_PAGE_DEFAULT;
    call->cacheable = req->q.len == 0 && req->cursor == 0 && call->limit == QUERY_PAGE_DEFAULT;
    if (call->cacheable)
        query_cache_list_get(self->cache, call->limit, req->min_lsn, s_on_list_cached, call);
    else
        s_list_read(call, req, req->min_lsn);
}

static void s_on_item_deleted(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (out->status != SH_STATUS_OK) {
        s_reply(call, out->status, out->error, NULL);
        return;
    }
    if (query_rows_int(out->rows, 0, 0) == 0) {
        s_reply(call, SH_STATUS_NOT_FOUND, "no such item", NULL);
        return;
    }
    if (query_rows_int(out->rows, 0, 1) == 0) {
        s_reply(call, SH_STATUS_FORBIDDEN, "only its author may delete an item", NULL);
        return;
    }
    query_cache_wrote(call->server->cache, out->lsn, call->id);
    if (call->server->events)
        s_publish(call->server, "item_deleted", json_pack("{s:o}", "id", s_json_num(call->id)),
                  call->id);
    sh_item_delete_rep_t rep = {out->lsn, 0};
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_item_delete(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_item_delete_req_t *req = request->body;
    if (!s_db_id(req->user_id)) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, "user_id: required", NULL);
        return;
    }
    if (!s_db_id(req->id)) {
        sh_service_reply(service, &request, SH_STATUS_NOT_FOUND, "no such item", NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    call->id = req->id;
    char id[S_NUM_MAX], user[S_NUM_MAX];
    s_num(id, req->id);
    s_num(user, req->user_id);
    const char *params[2] = {id, user};
    query_db_write(self->db, QUERY_ITEM_DELETE, 2, params, s_timeout(call), s_on_item_deleted,
                   call);
}

/*  --- attachments ---------------------------------------------------------------  */

/*  Column order of every attachment statement: QUERY_ATTACHMENT_COLUMNS.  */
static void s_attachment_of(const query_rows_t *rows, int row, sh_attachment_t *a)
{
    memset(a, 0, sizeof *a);
    a->id = (uint64_t)query_rows_int(rows, row, 0);
    a->item_id = (uint64_t)query_rows_int(rows, row, 1);
    a->owner_id = (uint64_t)query_rows_int(rows, row, 2);
    a->owner = sh_str(query_rows_text(rows, row, 3));
    a->name = sh_str(query_rows_text(rows, row, 4));
    a->content_type = sh_str(query_rows_text(rows, row, 5));
    a->size = (uint64_t)query_rows_int(rows, row, 6);
    a->sha256 = sh_str(query_rows_text(rows, row, 7));
    a->key = sh_str(query_rows_text(rows, row, 8));
    a->created_at = query_rows_int(rows, row, 9);
}

/*  What attachment_create() in migration 002 answers besides 'ok'.  */
static const struct {
    const char *outcome;
    uint64_t status;
    const char *error;
} s_create_refusals[] = {
    {"no_item", SH_STATUS_NOT_FOUND, "no such item"},
    {"forbidden", SH_STATUS_FORBIDDEN, "only the item's author may attach files"},
    {"full", SH_STATUS_TOO_LARGE, "the item has " S_XSTR(SH_ATTACH_MAX) " attachments"},
    /*  the edge maps exactly this text to quota_exceeded  */
    {"quota", SH_STATUS_TOO_LARGE, "upload quota exceeded"},
    {"key_taken", SH_STATUS_CONFLICT, "the object key belongs to another attachment"},
};

static void s_on_attachment_created(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (!s_one_row(call, out, SH_STATUS_INTERNAL, "attachment_create gave no outcome"))
        return;
    const char *outcome = query_rows_text(out->rows, 0, 10);
    if (strcmp(outcome, "ok") == 0) {
        sh_attachment_t a;
        s_attachment_of(out->rows, 0, &a);
        sh_attachment_create_rep_t rep;
        memset(&rep, 0, sizeof rep);
        SH_RECORD_COPY(SH_FIELDS_attachment, &rep, &a);
        rep.lsn = out->lsn;
        /*  a retried create (same key) gets the same row and publishes it
            again: clients know an attachment by its id  */
        if (call->server->events)
            s_publish(call->server, "attachment_created",
                      json_pack("{s:o, s:o}", "item_id", s_json_num(a.item_id), "attachment",
                                s_attachment_json(&a)),
                      a.item_id);
        s_reply(call, SH_STATUS_OK, NULL, &rep);
        return;
    }
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_create_refusals); i++)
        if (strcmp(outcome, s_create_refusals[i].outcome) == 0) {
            s_reply(call, s_create_refusals[i].status, s_create_refusals[i].error, NULL);
            return;
        }
    sh_warn("attachment_create: unknown outcome '%.32s'", outcome);
    s_reply(call, SH_STATUS_INTERNAL, "attachment_create gave an unknown outcome", NULL);
}

static void s_on_attachment_create(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_attachment_create_req_t *req = request->body;
    char why[128];
    if (query_attachment_problem(req, why, sizeof why)) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, why, NULL);
        return;
    }
    if (!s_db_id(req->item_id)) {
        sh_service_reply(service, &request, SH_STATUS_NOT_FOUND, "no such item", NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    /*  strings in the request are not NUL-terminated: copy them for libpq  */
    char user[S_NUM_MAX], item[S_NUM_MAX], size[S_NUM_MAX], quota[S_NUM_MAX], max[S_NUM_MAX];
    char key[SH_OBJKEY_MAX + 1], sha256[SH_SHA256_HEX + 1], type[SH_MIME_MAX + 1],
        name[SH_FILENAME_MAX + 1];
    s_num(user, req->user_id);
    s_num(item, req->item_id);
    s_num(size, req->size);
    s_num(quota, req->quota);
    s_num(max, SH_ATTACH_MAX);
    sh_str_copy(req->key, key, sizeof key);
    sh_str_copy(req->sha256, sha256, sizeof sha256);
    sh_str_copy(req->content_type, type, sizeof type);
    sh_str_copy(req->name, name, sizeof name);
    const char *params[9] = {user, item, key, size, sha256, type, name, quota, max};
    query_db_write(self->db, QUERY_ATTACHMENT_CREATE, 9, params, s_timeout(call),
                   s_on_attachment_created, call);
}

static void s_on_attachment_read(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (!s_one_row(call, out, SH_STATUS_NOT_FOUND, S_NO_ATTACHMENT))
        return;
    sh_attachment_t a;
    s_attachment_of(out->rows, 0, &a);
    sh_attachment_get_rep_t rep;
    memset(&rep, 0, sizeof rep);
    SH_RECORD_COPY(SH_FIELDS_attachment, &rep, &a);
    rep.source = sh_str(out->source);
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_attachment_get(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_attachment_get_req_t *req = request->body;
    if (!s_db_id(req->id)) {
        sh_service_reply(service, &request, SH_STATUS_NOT_FOUND, S_NO_ATTACHMENT, NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    char id[S_NUM_MAX];
    s_num(id, req->id);
    const char *params[1] = {id};
    query_db_read(self->db, QUERY_ATTACHMENT_GET, req->min_lsn, 1, params, s_timeout(call),
                  s_on_attachment_read, call);
}

static void s_on_attachments_listed(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (out->status != SH_STATUS_OK) {
        s_reply(call, out->status, out->error, NULL);
        return;
    }
    static sh_attachment_list_rep_t rep; /* large; the loop is single-threaded */
    memset(&rep, 0, sizeof rep);
    int rows = query_rows_count(out->rows);
    for (int i = 0; i < rows && rep.attachments.count < SH_ATTACH_MAX; i++)
        s_attachment_of(out->rows, i, &rep.attachments.items[rep.attachments.count++]);
    rep.source = sh_str(out->source);
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_attachment_list(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_attachment_list_req_t *req = request->body;
    if (!s_db_id(req->item_id)) {
        /*  no item can have this id: nothing to read  */
        sh_attachment_list_rep_t empty;
        memset(&empty, 0, sizeof empty);
        sh_service_reply(service, &request, SH_STATUS_OK, NULL, &empty);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    char item[S_NUM_MAX], limit[S_NUM_MAX];
    s_num(item, req->item_id);
    s_num(limit, SH_ATTACH_MAX);
    const char *params[2] = {item, limit};
    query_db_read(self->db, QUERY_ATTACHMENT_LIST, req->min_lsn, 2, params, s_timeout(call),
                  s_on_attachments_listed, call);
}

static void s_on_usage_read(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (!s_one_row(call, out, SH_STATUS_INTERNAL, "attachment usage gave no row"))
        return;
    sh_attachment_usage_rep_t rep;
    memset(&rep, 0, sizeof rep);
    rep.used_bytes = (uint64_t)query_rows_int(out->rows, 0, 0);
    rep.count = (uint64_t)query_rows_int(out->rows, 0, 1);
    rep.item_exists = strcmp(query_rows_text(out->rows, 0, 2), "t") == 0;
    rep.item_author_id = (uint64_t)query_rows_int(out->rows, 0, 3);
    rep.item_attachments = (uint64_t)query_rows_int(out->rows, 0, 4);
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_attachment_usage(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_attachment_usage_req_t *req = request->body;
    if (!s_db_id(req->user_id)) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, "user_id: required", NULL);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (!call)
        return;
    char user[S_NUM_MAX], item[S_NUM_MAX];
    s_num(user, req->user_id);
    s_num(item, s_db_id(req->item_id) ? req->item_id : 0); /* 0: an id no item has */
    const char *params[2] = {user, item};
    /*  the check before an upload must count the latest writes  */
    query_db_read_primary(self->db, QUERY_ATTACHMENT_USAGE, 2, params, s_timeout(call),
                          s_on_usage_read, call);
}

static void s_on_keys_read(void *arg, const query_outcome_t *out)
{
    s_call_t *call = arg;
    if (out->status != SH_STATUS_OK) {
        s_reply(call, out->status, out->error, NULL);
        return;
    }
    sh_attachment_keys_rep_t rep;
    memset(&rep, 0, sizeof rep);
    int rows = query_rows_count(out->rows);
    for (int i = 0; i < rows && rep.keys.count < SH_PAGE_MAX; i++)
        rep.keys.items[rep.keys.count++].key = sh_str(query_rows_text(out->rows, i, 0));
    s_reply(call, SH_STATUS_OK, NULL, &rep);
}

static void s_on_attachment_keys(sh_service_t *service, sh_request_t *request, void *arg)
{
    query_server_t *self = arg;
    sh_attachment_keys_req_t *req = request->body;
    sh_buf_t array = {0};
    int taken = query_keys_array(&req->keys, &array);
    if (taken <= 0) {
        sh_buf_free(&array);
        if (taken < 0) {
            sh_service_reply(service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
            return;
        }
        sh_attachment_keys_rep_t none;
        memset(&none, 0, sizeof none);
        sh_service_reply(service, &request, SH_STATUS_OK, NULL, &none);
        return;
    }
    s_call_t *call = s_call_new(self, request);
    if (call) {
        const char *params[1] = {array.data};
        /*  a key whose row was just written must never look unused  */
        query_db_read_primary(self->db, QUERY_ATTACHMENT_KEYS, 1, params, s_timeout(call),
                              s_on_keys_read, call);
    }
    sh_buf_free(&array);
}

/*  --- setup ---------------------------------------------------------------------  */

query_server_t *query_server_new(sh_service_t *service, query_db_t *db, query_cache_t *cache,
                                 sh_events_t *events, const query_server_config_t *config)
{
    query_server_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->service = service;
    self->db = db;
    self->cache = cache;
    self->events = events;
    self->config = *config;
    msgpack_sbuffer_init(&self->scratch);
    /*  the hash an unknown user's login is checked against  */
    unsigned char random[32];
    char dummy[65];
    randombytes_buf(random, sizeof random);
    sodium_bin2hex(dummy, sizeof dummy, random, sizeof random);
    if (crypto_pwhash_str_alg(self->dummy_hash, dummy, strlen(dummy), config->argon2_ops,
                              (size_t)config->argon2_mem_kib * 1024,
                              crypto_pwhash_ALG_ARGON2ID13)) {
        sh_error("Argon2id refused ops=%llu mem=%llu KiB", (unsigned long long)config->argon2_ops,
                 (unsigned long long)config->argon2_mem_kib);
        free(self);
        return NULL;
    }
    self->logins_failed =
        sh_metrics_counter(sh_service_metrics(service), "shoal_logins_failed_total",
                           "Logins refused: wrong username or password", NULL);
    sh_service_handle(service, SH_OP_user_create, s_on_user_create, self);
    sh_service_handle(service, SH_OP_user_login, s_on_user_login, self);
    sh_service_handle(service, SH_OP_item_create, s_on_item_create, self);
    sh_service_handle(service, SH_OP_item_get, s_on_item_get, self);
    sh_service_handle(service, SH_OP_item_list, s_on_item_list, self);
    sh_service_handle(service, SH_OP_item_delete, s_on_item_delete, self);
    sh_service_handle(service, SH_OP_attachment_create, s_on_attachment_create, self);
    sh_service_handle(service, SH_OP_attachment_get, s_on_attachment_get, self);
    sh_service_handle(service, SH_OP_attachment_list, s_on_attachment_list, self);
    sh_service_handle(service, SH_OP_attachment_usage, s_on_attachment_usage, self);
    sh_service_handle(service, SH_OP_attachment_keys, s_on_attachment_keys, self);
    return self;
}

void query_server_destroy(query_server_t **self_p)
{
    query_server_t *self = *self_p;
    if (!self)
        return;
    msgpack_sbuffer_destroy(&self->scratch);
    free(self);
    *self_p = NULL;
}
