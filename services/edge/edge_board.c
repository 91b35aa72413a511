/*  edge_board.c - the board's routes: sign up, log in, log out, who am I,
    and items (list, read, post, delete). Accounts and items live in the
    query service; sessions, CSRF tokens and rate-limit windows in the
    session service.

    A route that needs several calls (rate limit -> user_login ->
    session_login -> reply) is a chain of small steps over one s_flow_t:
    each step sends one call and names the step that takes its reply. The
    flow is linked to its connection as an edge_job_t, so a connection
    that closes NULLs flow->link.conn; the reply in flight still arrives
    and the flow ends without touching the connection. s_end is the only
    place a flow is freed.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "edge.h"
#include "sh_log.h"
#include "sh_util.h"

#define S_ITEMS_PATH      "/api/items"
#define S_PAGE_DEFAULT    20
#define S_IDEM_BYTES      16 /* random bytes of an item POST's idempotency key */
#define S_COOKIE_TEXT_MAX 256
#define S_WHY_MAX         256
#define S_MS_PER_S        1000

/*  Limits in characters as users see them; the byte limits of proto/
    are what the edge can check without counting characters.  */
#define S_USERNAME_CHARS 32
#define S_PASSWORD_CHARS 256
#define S_TITLE_CHARS    200
#define S_TEXT_CHARS     10000
#define S_SEARCH_CHARS   100

typedef struct s_flow_t s_flow_t;
/*  A step that takes the reply of the call the flow sent.  */
typedef void(s_step_fn)(s_flow_t *flow, const sh_reply_t *reply);
/*  A step that goes on after a check passed.  */
typedef void(s_then_fn)(s_flow_t *flow);

struct s_flow_t {
    edge_job_t link; /* link.conn: the client; NULLed when it leaves */
    edge_t *edge;
    int64_t started_us;
    int64_t deadline_ms; /* wall clock: one deadline for every call of the flow */
    char traceparent[SH_TRACE_MAX + 1];
    s_step_fn *on_reply; /* takes the reply of the call in flight */
    s_then_fn *then;     /* runs after a rate limit or the login check passed */
    bool need_csrf;
    bool login; /* login (200) rather than signup (201) */

    /*  the request, copied: the connection's copy ends with the reply  */
    char sid[EDGE_COOKIE_MAX];
    char csrf[EDGE_HEADER_SMALL];
    char client_ip[EDGE_IP_MAX];
    uint64_t lsn;
    uint64_t item_id;
    json_t *json; /* the parsed body, owned; the strings below point into it */
    sh_str_t username, password, title, text;
    const char *bad_code; /* a 400 held until the caller is known to be logged in */
    char why[S_WHY_MAX];

    /*  edge_board_with_user: who gets the user  */
    edge_user_fn *user_fn;
    void *user_arg;

    /*  learned on the way  */
    uint64_t user_id;
    char user_name[SH_USERNAME_MAX + 1];
    char session_csrf[SH_CSRF_MAX + 1];
};

/*  --- flow life ---------------------------------------------------------------  */

/*  The one place a flow ends.  */
static void s_end(s_flow_t *flow)
{
    if (flow->user_fn)
        /*  edge_board_with_user's caller learns the check ended without a user  */
        flow->user_fn(flow->user_arg, 0, NULL);
    json_decref(flow->json);
    free(flow);
}

/*  The request to answer through (only while flow->link.conn is set).  */
static edge_req_t s_req(const s_flow_t *flow)
{
    edge_req_t req;
    memset(&req, 0, sizeof req);
    req.conn = flow->link.conn;
    req.started_us = flow->started_us;
    return req;
}

/*  Answer JSON (body taken) with optional headers, and end the flow.  */
static void s_answer(s_flow_t *flow, int status, json_t *body, const char **names,
                     const char **values)
{
    if (flow->link.conn) {
        edge_req_t req = s_req(flow);
        edge_api_json(&req, status, body, names, values);
    } else
        json_decref(body);
    s_end(flow);
}

/*  Answer JSON text written into buf (freed here; an error in writing it
    gives a 500), and end the flow.  */
static void s_answer_text(s_flow_t *flow, int status, sh_buf_t *buf, int rc, const char **names,
                          const char **values)
{
    if (flow->link.conn) {
        edge_req_t req = s_req(flow);
        edge_api_json_text(&req, status, rc == 0 ? buf->data : NULL, buf->len, names, values);
    }
    sh_buf_free(buf);
    s_end(flow);
}

/*  Answer a bodiless 204 with one optional header, and end the flow.  */
static void s_answer_empty(s_flow_t *flow, const char *name, const char *value)
{
    if (flow->link.conn) {
        edge_resp_t resp = {204, NULL, NULL, 0, {name}, {value}};
        edge_http_respond(flow->link.conn, &resp);
    }
    s_end(flow);
}

/*  Set-Cookie for the WebSocket proof of session sid (logged in as
    user_id), or one that clears it (user_id 0).  */
static void s_ws_cookie(edge_t *edge, const char *sid, uint64_t user_id, char *out, size_t size)
{
    char proof[EDGE_COOKIE_MAX] = "";
    long ttl = user_id ? (long)edge->config->ws_proof_ttl_s : 0;
    if (user_id)
        edge_ws_proof_make(edge->secret, sid, user_id, sh_clock_wall_ms() / 1000 + ttl, proof,
                           sizeof proof);
    snprintf(out, size, "%s=%s; Path=/ws; Max-Age=%ld; HttpOnly; SameSite=Strict%s", EDGE_WS_COOKIE,
             proof, ttl, edge->config->cookie_secure ? "; Secure" : "");
}

static void s_fail_after(s_flow_t *flow, int status, const char *code, const char *message,
                         int64_t retry_after_s)
{
    if (flow->link.conn) {
        edge_req_t req = s_req(flow);
        edge_api_error_after(flow->edge, &req, status, code, message, retry_after_s);
    }
    s_end(flow);
}

static void s_fail(s_flow_t *flow, int status, const char *code, const char *message)
{
    s_fail_after(flow, status, code, message, status == 503 ? EDGE_RETRY_AFTER_S : 0);
}

/*  Answer the error a failed call came back with, and end the flow.  */
static void s_fail_call(s_flow_t *flow, const sh_reply_t *reply)
{
    if (flow->link.conn) {
        edge_req_t req = s_req(flow);
        edge_api_call_error(flow->edge, &req, reply);
    }
    s_end(flow);
}

/*  A flow for this request, linked to its connection; NULL when memory
    ran out (answered here).  */
static s_flow_t *s_flow_new(edge_t *edge, edge_req_t *req)
{
    s_flow_t *flow = calloc(1, sizeof *flow);
    if (!flow) {
        edge_api_error(edge, req, 500, "internal", "out of memory");
        return NULL;
    }
    flow->edge = edge;
    flow->link.conn = req->conn;
    flow->started_us = req->started_us;
    flow->deadline_ms = sh_clock_wall_ms() + edge->config->request_timeout_ms;
    edge_api_traceparent(flow->traceparent);
    snprintf(flow->sid, sizeof flow->sid, "%s", req->cookie);
    snprintf(flow->csrf, sizeof flow->csrf, "%s", req->csrf);
    snprintf(flow->client_ip, sizeof flow->client_ip, "%s", req->client_ip);
    flow->lsn = req->lsn;
    /*  before any call: a reply may come back before sh_pool_send returns  */
    edge_http_await_job(req->conn, &flow->link);
    return flow;
}

static void s_on_reply(void *arg, const sh_reply_t *reply)
{
    s_flow_t *flow = arg;
    if (!flow->link.conn) {
        /*  the client left while the call was out: nobody to answer  */
        (*flow->edge->late_replies)++;
        s_end(flow);
        return;
    }
    flow->on_reply(flow, reply);
}

/*  Send one call of the flow; `next` takes its reply. The flow may have
    ended when this returns: the caller must not touch it again.  */
static void s_send(s_flow_t *flow, sh_pool_t *pool, uint64_t op, const void *body,
                   const char *idem_key, s_step_fn *next)
{
    flow->on_reply = next;
    sh_call_opts_t opts = {.deadline_ms = flow->deadline_ms,
                           .traceparent = flow->traceparent,
                           .session = flow->sid,
                           .idem_key = idem_key};
    sh_pool_send(pool, op, body, &opts, s_on_reply, flow);
    sh_pool_drain(pool);
}

/*  --- request bodies ------------------------------------------------------------  */

/*  Parse the body as a JSON object into flow->json. Returns 0, or -1 with
    flow->bad_code and flow->why set.  */
static int s_parse_body(s_flow_t *flow, const edge_req_t *req)
{
    json_error_t error;
    flow->bad_code = "malformed";
    if (req->body_len == 0) {
        snprintf(flow->why, sizeof flow->why, "the request body must be a JSON object");
        return -1;
    }
    /*  jansson refuses text that is not UTF-8 and \u0000 in strings  */
    flow->json = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &error);
    if (!flow->json) {
        snprintf(flow->why, sizeof flow->why, "the request body is not valid JSON: %s", error.text);
        return -1;
    }
    if (!json_is_object(flow->json)) {
        snprintf(flow->why, sizeof flow->why, "the request body must be a JSON object");
        return -1;
    }
    flow->bad_code = NULL;
    return 0;
}

/*  Field `name` of the body: a string of at most max_bytes (chars is the
    limit users are told). Absent and optional gives "". Returns 0, or -1
    with flow->bad_code and flow->why set.  */
static int s_text_field(s_flow_t *flow, const char *name, size_t max_bytes, int chars,
                        bool required, sh_str_t *out)
{
    json_t *value = json_object_get(flow->json, name);
    *out = sh_str("");
    flow->bad_code = "invalid";
    if (!value && !required)
        flow->bad_code = NULL;
    else if (!value)
        snprintf(flow->why, sizeof flow->why, "%s is required", name);
    else if (!json_is_string(value))
        snprintf(flow->why, sizeof flow->why, "%s must be a string", name);
    else if (json_string_length(value) > max_bytes)
        snprintf(flow->why, sizeof flow->why, "%s is too long (at most %d characters)", name,
                 chars);
    else {
        *out = (sh_str_t){json_string_value(value), (uint32_t)json_string_length(value)};
        flow->bad_code = NULL;
    }
    return flow->bad_code ? -1 : 0;
}

/*  Answer the held 400 and end the flow.  */
static void s_fail_bad(s_flow_t *flow)
{
    s_fail(flow, 400, flow->bad_code, flow->why);
}

/*  --- JSON of replies -----------------------------------------------------------  */

/*  Answer {"item": {...}}: the whole item, and end the flow.  */
static void s_answer_item(s_flow_t *flow, int status, const sh_item_t *item, const char **names,
                          const char **values)
{
    sh_buf_t buf = {0};
    int rc = sh_buf_append(&buf, "{\"item\":", 8);
    rc |= edge_json_item(&buf, item, true);
    rc |= sh_buf_append(&buf, "}", 1);
    s_answer_text(flow, status, &buf, rc, names, values);
}

/*  {"user": {"id", "username"}, "csrf_token"} of a logged-in session.  */
static json_t *s_user_json(uint64_t id, const char *username, const char *csrf)
{
    return json_pack("{s:{s:I, s:s}, s:s}", "user", "id", (json_int_t)id, "username", username,
                     "csrf_token", csrf);
}

/*  Where a read was served, for X-Shoal-Read; NULL for a word we do not
    know (never copied into a header unchecked).  */
static const char *s_read_source(sh_str_t source)
{
    static const char *const words[] = {"cache", "replica", "primary"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(words); i++)
        if (sh_str_eq(source, words[i]))
            return words[i];
    return NULL;
}

/*  Set-Cookie for the read-your-writes token after a write at lsn (never
    lower than the one the browser has). Returns false when there is none.  */
static bool s_lsn_cookie(s_flow_t *flow, uint64_t lsn, char *out, size_t size)
{
    uint64_t keep = lsn > flow->lsn ? lsn : flow->lsn;
    char value[24];
    if (!keep)
        return false;
    snprintf(value, sizeof value, "%llu", (unsigned long long)keep);
    edge_api_cookie(flow->edge, EDGE_LSN_COOKIE, value, EDGE_LSN_MAX_AGE_S, out, size);
    return true;
}

/*  --- shared steps: rate limits and the login check --------------------------------  */

static void s_on_limit(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        /*  fail closed: without the counter nothing bounds guessing  */
        sh_warn("rate limit check failed: %s (%s)", sh_status_code(reply->status), reply->error);
        s_fail(flow, 503, "unavailable", "the rate limiter is unavailable; try again shortly");
        return;
    }
    const sh_ratelimit_hit_rep_t *rep = reply->body;
    if (!rep->allowed) {
        int64_t after = (int64_t)((rep->retry_after_ms + S_MS_PER_S - 1) / S_MS_PER_S);
        s_fail_after(flow, 429, "rate_limited", "too many attempts; try again later",
                     after > 0 ? after : 1);
        return;
    }
    flow->then(flow);
}

/*  Count one hit in window "<kind>:<who>"; then() runs when it is within
    the limit, else 429 (or 503 when the counter cannot be reached).  */
static void s_limit(s_flow_t *flow, const char *kind, const char *who, int64_t limit,
                    int64_t window_s, s_then_fn *then)
{
    char key[SH_RLKEY_MAX + 1];
    snprintf(key, sizeof key, "%s:%s", kind, who);
    flow->then = then;
    sh_ratelimit_hit_req_t body = {
        .key = sh_str(key), .limit = (uint64_t)limit, .window_ms = (uint64_t)window_s * S_MS_PER_S};
    s_send(flow, flow->edge->sessions, SH_OP_ratelimit_hit, &body, NULL, s_on_limit);
}

static void s_on_session(s_flow_t *flow, const sh_reply_t *reply)
{
    const sh_session_get_rep_t *rec = reply->body;
    if (reply->status == SH_STATUS_NOT_FOUND ||
        (reply->status == SH_STATUS_OK && rec && rec->user_id == 0)) {
        s_fail(flow, 401, "unauthorized", "not logged in");
        return;
    }
    if (reply->status != SH_STATUS_OK || !rec) {
        s_fail_call(flow, reply);
        return;
    }
    if (flow->need_csrf &&
        !sh_secret_eq(flow->csrf, strlen(flow->csrf), rec->csrf.ptr, rec->csrf.len)) {
        s_fail(flow, 403, "csrf", "missing or wrong X-CSRF-Token");
        return;
    }
    flow->user_id = rec->user_id;
    sh_str_copy(rec->username, flow->user_name, sizeof flow->user_name);
    sh_str_copy(rec->csrf, flow->session_csrf, sizeof flow->session_csrf);
    flow->then(flow);
}

/*  The caller must be logged in (401) and, for a state change, send the
    session's CSRF token (403 csrf); then() runs with flow->user_id set.  */
static void s_need_user(s_flow_t *flow, bool need_csrf, s_then_fn *then)
{
    if (!flow->sid[0]) {
        s_fail(flow, 401, "unauthorized", "not logged in");
        return;
    }
    flow->need_csrf = need_csrf;
    flow->then = then;
    sh_session_get_req_t body = {.id = sh_str(flow->sid)};
    s_send(flow, flow->edge->sessions, SH_OP_session_get, &body, NULL, s_on_session);
}

static void s_hand_user(s_flow_t *flow)
{
    /*  the connection is the caller's again  */
    edge_http_await_job(flow->link.conn, NULL);
    edge_user_fn *fn = flow->user_fn;
    flow->user_fn = NULL;
    fn(flow->user_arg, flow->user_id, flow->user_name);
    s_end(flow);
}

void edge_board_with_user(edge_t *edge, edge_req_t *req, bool need_csrf, edge_user_fn *fn,
                          void *arg)
{
    s_flow_t *flow = s_flow_new(edge, req);
    if (!flow)
        return;
    flow->user_fn = fn;
    flow->user_arg = arg;
    s_need_user(flow, need_csrf, s_hand_user);
}

/*  A POST-only path: true when the request may go on, else answered.  */
static bool s_post_only(edge_t *edge, edge_req_t *req)
{
    if (req->method != EDGE_POST) {
        edge_api_method_not_allowed(edge, req, "POST");
        return false;
    }
    if (!edge_api_same_origin(edge, req)) {
        edge_api_error(edge, req, 403, "forbidden", "cross-origin request refused");
        return false;
    }
    return true;
}

/*  --- signup and login ---------------------------------------------------------------  */

static void s_on_logged_in(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    const sh_session_login_rep_t *rec = reply->body;
    char id[SH_SESSION_MAX + 1], csrf[SH_CSRF_MAX + 1], cookie[S_COOKIE_TEXT_MAX];
    sh_str_copy(rec->id, id, sizeof id);
    sh_str_copy(rec->csrf, csrf, sizeof csrf);
    char proof[S_COOKIE_TEXT_MAX];
    edge_api_cookie(flow->edge, EDGE_COOKIE_NAME, id, (long)flow->edge->config->cookie_max_age,
                    cookie, sizeof cookie);
    s_ws_cookie(flow->edge, id, flow->user_id, proof, sizeof proof);
    const char *names[3] = {"set-cookie:", "set-cookie:", NULL}, *values[3] = {cookie, proof, NULL};
    s_answer(flow, flow->login ? 200 : 201, s_user_json(flow->user_id, flow->user_name, csrf),
             names, values);
}

/*  The account is known (created or password checked): a new session for
    it replaces the one the browser had.  */
static void s_on_user(s_flow_t *flow, const sh_reply_t *reply)
{
    bool login = flow->login;
    if (login &&
        (reply->status == SH_STATUS_UNAUTHORIZED || reply->status == SH_STATUS_NOT_FOUND)) {
        /*  one answer for an unknown name and a wrong password  */
        s_fail(flow, 401, "unauthorized", "wrong username or password");
        return;
    }
    if (!login && reply->status == SH_STATUS_CONFLICT) {
        s_fail(flow, 409, "conflict", "username is taken");
        return;
    }
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    /*  user_login and user_create answer the same record  */
    const sh_user_login_rep_t *logged = reply->body;
    const sh_user_create_rep_t *created = reply->body;
    flow->user_id = login ? logged->id : created->id;
    sh_str_copy(login ? logged->username : created->username, flow->user_name,
                sizeof flow->user_name);
    sh_session_login_req_t body = {
        .old_id = sh_str(flow->sid), .user_id = flow->user_id, .username = sh_str(flow->user_name)};
    s_send(flow, flow->edge->sessions, SH_OP_session_login, &body, NULL, s_on_logged_in);
}

/*  Start signup or login: POST, same origin, {"username", "password"}.
    Returns the flow, or NULL when the request was answered.  */
static s_flow_t *s_credentials(edge_t *edge, edge_req_t *req, bool login)
{
    if (!s_post_only(edge, req))
        return NULL;
    s_flow_t *flow = s_flow_new(edge, req);
    if (!flow)
        return NULL;
    flow->login = login;
    if (s_parse_body(flow, req) ||
        s_text_field(flow, "username", SH_USERNAME_MAX, S_USERNAME_CHARS, true, &flow->username) ||
        s_text_field(flow, "password", SH_PASSWORD_MAX, S_PASSWORD_CHARS, true, &flow->password)) {
        s_fail_bad(flow);
        return NULL;
    }
    return flow;
}

static void s_signup_create(s_flow_t *flow)
{
    sh_user_create_req_t body = {.username = flow->username, .password = flow->password};
    s_send(flow, flow->edge->queries, SH_OP_user_create, &body, NULL, s_on_user);
}

static void s_signup(edge_t *edge, edge_req_t *req)
{
    s_flow_t *flow = s_credentials(edge, req, false);
    if (flow)
        s_limit(flow, "signup:ip", flow->client_ip, edge->config->signup_ip_limit,
                edge->config->signup_window_s, s_signup_create);
}

static void s_login_check(s_flow_t *flow)
{
    sh_user_login_req_t body = {.username = flow->username, .password = flow->password};
    s_send(flow, flow->edge->queries, SH_OP_user_login, &body, NULL, s_on_user);
}

static void s_login_account_limit(s_flow_t *flow)
{
    /*  one window per account however its name is spelt  */
    char account[SH_USERNAME_MAX + 1];
    edge_lowercase(flow->username.ptr, flow->username.len, account, sizeof account);
    s_limit(flow, "login:acct", account, flow->edge->config->login_account_limit,
            flow->edge->config->login_window_s, s_login_check);
}

static void s_login(edge_t *edge, edge_req_t *req)
{
    s_flow_t *flow = s_credentials(edge, req, true);
    if (flow)
        s_limit(flow, "login:ip", flow->client_ip, edge->config->login_ip_limit,
                edge->config->login_window_s, s_login_account_limit);
}

/*  --- logout and me ------------------------------------------------------------------  */

static void s_on_logged_out(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    char cookie[S_COOKIE_TEXT_MAX], proof[S_COOKIE_TEXT_MAX];
    edge_api_cookie(flow->edge, EDGE_COOKIE_NAME, "", 0, cookie, sizeof cookie);
    s_ws_cookie(flow->edge, "", 0, proof, sizeof proof);
    if (flow->link.conn) {
        edge_resp_t resp = {204, NULL, NULL, 0, {"set-cookie:", "set-cookie:"}, {cookie, proof}};
        edge_http_respond(flow->link.conn, &resp);
    }
    s_end(flow);
}

static void s_logout_destroy(s_flow_t *flow)
{
    sh_session_destroy_req_t body = {.id = sh_str(flow->sid)};
    s_send(flow, flow->edge->sessions, SH_OP_session_destroy, &body, NULL, s_on_logged_out);
}

static void s_logout(edge_t *edge, edge_req_t *req)
{
    if (!s_post_only(edge, req))
        return;
    s_flow_t *flow = s_flow_new(edge, req);
    if (flow)
        s_need_user(flow, true, s_logout_destroy);
}

/*  GET /api/me also renews the shoal_ws cookie: a client calls it before
    it opens /ws.  */
static void s_me_answer(s_flow_t *flow)
{
    char proof[S_COOKIE_TEXT_MAX];
    s_ws_cookie(flow->edge, flow->sid, flow->user_id, proof, sizeof proof);
    const char *names[2] = {"set-cookie:", NULL}, *values[2] = {proof, NULL};
    s_answer(flow, 200, s_user_json(flow->user_id, flow->user_name, flow->session_csrf), names,
             values);
}

static void s_me(edge_t *edge, edge_req_t *req)
{
    if (req->method != EDGE_GET) {
        edge_api_method_not_allowed(edge, req, "GET");
        return;
    }
    s_flow_t *flow = s_flow_new(edge, req);
    if (flow)
        s_need_user(flow, false, s_me_answer);
}

/*  --- items ---------------------------------------------------------------------------  */

static void s_on_list(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    const sh_item_list_rep_t *rep = reply->body;
    sh_buf_t buf = {0};
    int rc = sh_buf_append(&buf, "{\"items\":[", 10);
    for (uint32_t i = 0; i < rep->items.count && rc == 0; i++) {
        if (i)
            rc |= sh_buf_append(&buf, ",", 1);
        rc |= edge_json_item(&buf, &rep->items.items[i], false);
    }
    /*  the cursor is a string: opaque to clients, whatever it holds later  */
    if (rep->next_cursor)
        rc |= sh_buf_printf(&buf, "],\"next_cursor\":\"%llu\"}",
                            (unsigned long long)rep->next_cursor) < 0
                  ? -1
                  : 0;
    else
        rc |= sh_buf_append(&buf, "],\"next_cursor\":null}", 21);
    const char *source = s_read_source(rep->source);
    const char *names[2] = {source ? "x-shoal-read:" : NULL, NULL}, *values[2] = {source, NULL};
    s_answer_text(flow, 200, &buf, rc, names, values);
}

/*  GET /api/items?q=&cursor=&limit=  */
static void s_items_list(edge_t *edge, edge_req_t *req)
{
    const char *q = edge_arg_find(req->args, req->args_len, "q");
    const char *cursor_text = edge_arg_find(req->args, req->args_len, "cursor");
    const char *limit_text = edge_arg_find(req->args, req->args_len, "limit");
    uint64_t cursor = 0;
    int64_t limit = S_PAGE_DEFAULT;
    size_t q_len = q ? strlen(q) : 0;
    json_t *q_utf8 = json_stringn(q ? q : "", q_len);
    char why[S_WHY_MAX] = "";
    if (q_len > SH_SEARCH_MAX)
        snprintf(why, sizeof why, "q is too long (at most %d characters)", S_SEARCH_CHARS);
    else if (!q_utf8)
        snprintf(why, sizeof why, "q is not valid UTF-8");
    else if (cursor_text && cursor_text[0] && edge_parse_id(cursor_text, &cursor))
        snprintf(why, sizeof why, "cursor is invalid: use next_cursor of the previous page");
    else if (limit_text && limit_text[0] &&
             (strspn(limit_text, "0123456789") != strlen(limit_text) ||
              sh_parse_int(limit_text, 1, SH_PAGE_MAX, &limit)))
        snprintf(why, sizeof why, "limit must be a whole number from 1 to %d", SH_PAGE_MAX);
    json_decref(q_utf8);
    if (why[0]) {
        edge_api_error(edge, req, 400, "invalid", why);
        return;
    }
    s_flow_t *flow = s_flow_new(edge, req);
    if (!flow)
        return;
    sh_item_list_req_t body = {.q = (sh_str_t){q ? q : "", (uint32_t)q_len},
                               .cursor = cursor,
                               .limit = (uint64_t)limit,
                               .min_lsn = flow->lsn};
    s_send(flow, edge->queries, SH_OP_item_list, &body, NULL, s_on_list);
}

static void s_on_created(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    const sh_item_create_rep_t *rep = reply->body;
    char cookie[S_COOKIE_TEXT_MAX];
    bool with_cookie = s_lsn_cookie(flow, rep->lsn, cookie, sizeof cookie);
    const char *names[2] = {with_cookie ? "set-cookie:" : NULL, NULL}, *values[2] = {cookie, NULL};
    sh_item_t item;
    SH_RECORD_COPY(SH_FIELDS_item, &item, rep);
    s_answer_item(flow, 201, &item, names, values);
}

static void s_item_create(s_flow_t *flow)
{
    if (flow->bad_code) {
        s_fail_bad(flow);
        return;
    }
    /*  the key makes a retry on another instance insert once  */
    char idem[2 * S_IDEM_BYTES + 1];
    sh_random_hex(idem, S_IDEM_BYTES);
    sh_item_create_req_t body = {
        .user_id = flow->user_id, .title = flow->title, .body = flow->text};
    s_send(flow, flow->edge->queries, SH_OP_item_create, &body, idem, s_on_created);
}

/*  POST /api/items  */
static void s_items_post(edge_t *edge, edge_req_t *req)
{
    if (!edge_api_same_origin(edge, req)) {
        edge_api_error(edge, req, 403, "forbidden", "cross-origin request refused");
        return;
    }
    s_flow_t *flow = s_flow_new(edge, req);
    if (!flow)
        return;
    /*  a bad body is answered after the login check: 401 and csrf come first  */
    if (s_parse_body(flow, req) == 0 &&
        s_text_field(flow, "title", SH_TITLE_MAX, S_TITLE_CHARS, true, &flow->title) == 0)
        s_text_field(flow, "body", SH_TEXT_MAX, S_TEXT_CHARS, false, &flow->text);
    s_need_user(flow, true, s_item_create);
}

static void s_items(edge_t *edge, edge_req_t *req)
{
    if (req->method == EDGE_GET)
        s_items_list(edge, req);
    else if (req->method == EDGE_POST)
        s_items_post(edge, req);
    else
        edge_api_method_not_allowed(edge, req, "GET, POST");
}

static void s_on_item(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    const sh_item_get_rep_t *rep = reply->body;
    const char *source = s_read_source(rep->source);
    const char *names[2] = {source ? "x-shoal-read:" : NULL, NULL}, *values[2] = {source, NULL};
    sh_item_t item;
    SH_RECORD_COPY(SH_FIELDS_item, &item, rep);
    s_answer_item(flow, 200, &item, names, values);
}

static void s_on_deleted(s_flow_t *flow, const sh_reply_t *reply)
{
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_fail_call(flow, reply);
        return;
    }
    const sh_item_delete_rep_t *rep = reply->body;
    char cookie[S_COOKIE_TEXT_MAX];
    bool with_cookie = s_lsn_cookie(flow, rep->lsn, cookie, sizeof cookie);
    s_answer_empty(flow, with_cookie ? "set-cookie:" : NULL, with_cookie ? cookie : NULL);
}

static void s_item_delete(s_flow_t *flow)
{
    sh_item_delete_req_t body = {.id = flow->item_id, .user_id = flow->user_id};
    s_send(flow, flow->edge->queries, SH_OP_item_delete, &body, NULL, s_on_deleted);
}

/*  GET or DELETE /api/items/<id>  */
static void s_item(edge_t *edge, edge_req_t *req, const char *id_text)
{
    uint64_t id;
    if (edge_parse_id(id_text, &id)) {
        edge_api_error(edge, req, 404, "not_found", "no such item");
        return;
    }
    if (req->method != EDGE_GET && req->method != EDGE_DELETE) {
        edge_api_method_not_allowed(edge, req, "GET, DELETE");
        return;
    }
    if (req->method == EDGE_DELETE && !edge_api_same_origin(edge, req)) {
        edge_api_error(edge, req, 403, "forbidden", "cross-origin request refused");
        return;
    }
    s_flow_t *flow = s_flow_new(edge, req);
    if (!flow)
        return;
    flow->item_id = id;
    if (req->method == EDGE_DELETE) {
        s_need_user(flow, true, s_item_delete);
        return;
    }
    sh_item_get_req_t body = {.id = id, .min_lsn = flow->lsn};
    s_send(flow, edge->queries, SH_OP_item_get, &body, NULL, s_on_item);
}

int edge_board_handle(edge_t *edge, edge_req_t *req)
{
    const char *path = req->path;
    if (strcmp(path, "/api/auth/signup") == 0)
        s_signup(edge, req);
    else if (strcmp(path, "/api/auth/login") == 0)
        s_login(edge, req);
    else if (strcmp(path, "/api/auth/logout") == 0)
        s_logout(edge, req);
    else if (strcmp(path, "/api/me") == 0)
        s_me(edge, req);
    else if (strcmp(path, S_ITEMS_PATH) == 0)
        s_items(edge, req);
    else if (strncmp(path, S_ITEMS_PATH "/", sizeof S_ITEMS_PATH) == 0)
        s_item(edge, req, path + sizeof S_ITEMS_PATH);
    else
        return 0;
    return 1;
}
