/*  session_server.c - session operations: validate, call the store, reply.  */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_server.h"
#include "sh_log.h"

#define S_FALLBACK_TIMEOUT_MS 1000
#define S_USERNAME_MIN        3
#define S_VIEWS_JSON_MAX      48

struct session_server_t {
    session_store_t *store;
    sh_events_t *events;
};

typedef struct {
    sh_service_t *service;
    sh_request_t *request;
    sh_events_t *events;
    char channel[SH_CHANNEL_MAX + 1]; /* session_destroy: the session's channel */
} s_call_t;

static s_call_t *s_call_new(sh_service_t *service, sh_request_t *request)
{
    s_call_t *call = malloc(sizeof *call);
    if (call)
        *call = (s_call_t){service, request, NULL, ""};
    else
        sh_service_reply(service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
    return call;
}

static const char *s_status_text(uint64_t status)
{
    switch (status) {
    case SH_STATUS_NOT_FOUND:
        return "no such session";
    case SH_STATUS_UNAVAILABLE:
        return "session store unavailable";
    default:
        return "session store error";
    }
}

static void s_on_record(void *arg, uint64_t status, const session_record_t *rec)
{
    s_call_t *call = arg;
    if (status == SH_STATUS_OK) {
        sh_session_touch_rep_t rep = {.id = sh_str(rec->id),
                                      .views = rec->views,
                                      .created_at = rec->created_at,
                                      .last_seen = rec->last_seen,
                                      .created = rec->created,
                                      .user_id = rec->user_id,
                                      .username = sh_str(rec->username),
                                      .csrf = sh_str(rec->csrf)};
        sh_service_reply(call->service, &call->request, status, NULL, &rep);
    } else
        sh_service_reply(call->service, &call->request, status, s_status_text(status), NULL);
    free(call);
}

/*  A touch counted a view: the session's browsers see the new count.  */
static void s_on_touched(void *arg, uint64_t status, const session_record_t *rec)
{
    s_call_t *call = arg;
    if (status == SH_STATUS_OK && call->events) {
        char channel[SH_CHANNEL_MAX + 1], data[S_VIEWS_JSON_MAX];
        sh_events_session_channel(rec->id, channel);
        snprintf(data, sizeof data, "{\"views\":%" PRIu64 "}", rec->views);
        sh_events_publish_latest(call->events, channel, "views", data);
    }
    s_on_record(arg, status, rec);
}

static void s_on_touch(sh_service_t *service, sh_request_t *request, void *arg)
{
    session_server_t *self = arg;
    session_store_t *store = self->store;
    sh_session_touch_req_t *req = request->body;
    char id[SESSION_ID_LEN + 1] = "", new_id[SESSION_ID_LEN + 1];
    if (session_id_valid(req->id))
        sh_str_copy(req->id, id, sizeof id);
    else if (!req->create) {
        sh_service_reply(service, &request, SH_STATUS_NOT_FOUND, "no such session", NULL);
        return;
    }
    /*  a new session always gets a server-made id: never adopt the client's  */
    session_id_new(new_id);
    char idem[SH_ID_MAX + 1];
    sh_str_copy(request->env.idem_key, idem, sizeof idem);
    s_call_t *call = s_call_new(service, request);
    if (!call)
        return;
    call->events = self->events;
    session_store_touch(store, id, new_id, req->create, idem,
                        sh_request_remaining_ms(request, S_FALLBACK_TIMEOUT_MS), s_on_touched,
                        call);
}

static void s_on_get(sh_service_t *service, sh_request_t *request, void *arg)
{
    session_store_t *store = ((session_server_t *)arg)->store;
    sh_session_get_req_t *req = request->body;
    if (!session_id_valid(req->id)) {
        sh_service_reply(service, &request, SH_STATUS_NOT_FOUND, "no such session", NULL);
        return;
    }
    char id[SESSION_ID_LEN + 1];
    sh_str_copy(req->id, id, sizeof id);
    s_call_t *call = s_call_new(service, request);
    if (call)
        session_store_get(store, id, sh_request_remaining_ms(request, S_FALLBACK_TIMEOUT_MS),
                          s_on_record, call);
}

static void s_on_removed(void *arg, uint64_t status, const session_record_t *rec)
{
    s_call_t *call = arg;
    if (status == SH_STATUS_OK && call->events && rec->views > 0)
        /*  its live connections, on every edge, close now  */
        sh_events_publish_latest(call->events, call->channel, "ended", "{}");
    if (status == SH_STATUS_OK) {
        sh_session_destroy_rep_t rep = {rec->views > 0, 0};
        sh_service_reply(call->service, &call->request, status, NULL, &rep);
    } else
        sh_service_reply(call->service, &call->request, status, s_status_text(status), NULL);
    free(call);
}

static void s_on_destroy(sh_service_t *service, sh_request_t *request, void *arg)
{
    session_server_t *self = arg;
    session_store_t *store = self->store;
    sh_session_destroy_req_t *req = request->body;
    if (!session_id_valid(req->id)) {
        sh_session_destroy_rep_t rep = {false, 0};
        sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
        return;
    }
    char id[SESSION_ID_LEN + 1];
    sh_str_copy(req->id, id, sizeof id);
    s_call_t *call = s_call_new(service, request);
    if (!call)
        return;
    call->events = self->events;
    sh_events_session_channel(id, call->channel);
    session_store_remove(store, id, sh_request_remaining_ms(request, S_FALLBACK_TIMEOUT_MS),
                         s_on_removed, call);
}

/*  3..32 characters of [A-Za-z0-9_.-], as accounts are named.  */
static bool s_username_valid(sh_str_t name)
{
    if (name.len < S_USERNAME_MIN || name.len > SH_USERNAME_MAX)
        return false;
    for (size_t i = 0; i < name.len; i++) {
        char c = name.ptr[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static void s_on_login(sh_service_t *service, sh_request_t *request, void *arg)
{
    session_store_t *store = ((session_server_t *)arg)->store;
    sh_session_login_req_t *req = request->body;
    if (req->user_id == 0) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, "user_id must not be 0", NULL);
        return;
    }
    if (!s_username_valid(req->username)) {
        sh_service_reply(service, &request, SH_STATUS_INVALID,
                         "username must be 3-32 characters of A-Z a-z 0-9 _ . -", NULL);
        return;
    }
    /*  a malformed old id names no session: there is nothing to destroy  */
    char old_id[SESSION_ID_LEN + 1] = "";
    char new_id[SESSION_ID_LEN + 1], csrf[SESSION_CSRF_LEN + 1];
    char username[SH_USERNAME_MAX + 1];
    if (session_id_valid(req->old_id))
        sh_str_copy(req->old_id, old_id, sizeof old_id);
    session_id_new(new_id);
    session_csrf_new(csrf);
    sh_str_copy(req->username, username, sizeof username);
    char idem[SH_ID_MAX + 1];
    sh_str_copy(request->env.idem_key, idem, sizeof idem);
    s_call_t *call = s_call_new(service, request);
    if (call)
        session_store_login(store, old_id, new_id, csrf, req->user_id, username, idem,
                            sh_request_remaining_ms(request, S_FALLBACK_TIMEOUT_MS), s_on_record,
                            call);
}

static void s_on_counted(void *arg, uint64_t status, const session_ratelimit_t *rl)
{
    s_call_t *call = arg;
    if (status == SH_STATUS_OK) {
        sh_ratelimit_hit_rep_t rep = {rl->allowed, rl->count, rl->retry_after_ms, 0};
        sh_service_reply(call->service, &call->request, status, NULL, &rep);
    } else
        sh_service_reply(call->service, &call->request, status, s_status_text(status), NULL);
    free(call);
}

static void s_on_ratelimit_hit(sh_service_t *service, sh_request_t *request, void *arg)
{
    session_store_t *store = ((session_server_t *)arg)->store;
    sh_ratelimit_hit_req_t *req = request->body;
    const char *invalid = NULL;
    if (req->key.len == 0)
        invalid = "key must not be empty";
    else if (req->limit == 0)
        invalid = "limit must be at least 1";
    else if (req->window_ms == 0 || req->window_ms > SESSION_RATELIMIT_WINDOW_MAX_MS)
        invalid = "window_ms must be 1..86400000";
    if (invalid) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, invalid, NULL);
        return;
    }
    s_call_t *call = s_call_new(service, request);
    if (call)
        session_store_ratelimit(
            store, req->key.ptr, req->key.len, req->limit, (int64_t)req->window_ms,
            sh_request_remaining_ms(request, S_FALLBACK_TIMEOUT_MS), s_on_counted, call);
}

session_server_t *session_server_new(sh_service_t *service, session_store_t *store,
                                     sh_events_t *events)
{
    session_server_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->store = store;
    self->events = events;
    sh_service_handle(service, SH_OP_session_touch, s_on_touch, self);
    sh_service_handle(service, SH_OP_session_get, s_on_get, self);
    sh_service_handle(service, SH_OP_session_destroy, s_on_destroy, self);
    sh_service_handle(service, SH_OP_session_login, s_on_login, self);
    sh_service_handle(service, SH_OP_ratelimit_hit, s_on_ratelimit_hit, self);
    return self;
}

void session_server_destroy(session_server_t **self_p)
{
    free(*self_p);
    *self_p = NULL;
}
