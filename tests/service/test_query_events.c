/*  test_query_events.c - the live events of the real shoal-query process
    (Postgres primary and Redis on loopback), watched through a SUB
    socket: item_created on the board, item_deleted and
    attachment_created on the board and the item's channel, each with the
    JSON the edge answers for the object over REST and consecutive
    offsets; a view counted publishes the item's count as a latest value;
    a retried item_create publishes nothing more.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <zmq.h>

#include "harness.h"
#include "sh_transport.h"
#include "sh_util.h"

#define T_WAIT_MS    5000 /* longest wait for one reply or event */
#define T_SHA256     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define T_EXCERPT    200 /* characters of a body in a list entry */
#define T_LONG_CHARS 300
#define T_DATA_MAX   (SH_EVENT_DATA_MAX + 1)

typedef struct {
    t_query_t q;
    char events[64];
    void *sub;
    uint64_t user;
    char username[32];
    uint64_t board_top; /* the last board offset seen */
    char board_epoch[SH_ID_MAX + 1];
} t_fixture_t;

typedef struct {
    char channel[SH_CHANNEL_MAX + 1];
    char epoch[SH_ID_MAX + 1];
    uint64_t offset;
    char type[SH_EVENT_TYPE_MAX + 1];
    char data[T_DATA_MAX];
} t_event_t;

/*  --- fixture ---------------------------------------------------------------  */

static int s_group_teardown(void **state)
{
    t_fixture_t *f = *state;
    if (!f)
        return 0;
    t_query_stop(&f->q);
    if (f->sub)
        sh_transport_close(&f->sub);
    free(f);
    return 0;
}

static int s_group_setup(void **state)
{
    t_fixture_t *f = t_alloc(sizeof *f);
    *state = f;
    t_endpoint(f->events, sizeof f->events);
    char events[96];
    snprintf(events, sizeof events, "SHOAL_EVENTS_BIND=%s", f->events);
    const char *env[] = {events, NULL};
    if (t_query_start(&f->q, "query-events", false, env))
        return t_setup_failed(state, s_group_teardown, NULL);
    f->sub = t_sub_open(f->events);
    if (!f->sub)
        return t_setup_failed(state, s_group_teardown, f->q.log);
    snprintf(f->username, sizeof f->username, "writer_%d", (int)getpid());
    sh_user_create_req_t req = {sh_str(f->username), sh_str("password123"), 0};
    t_reply_t *r = t_reply_new();
    if (t_call(f->q.pool, SH_OP_user_create, &req, T_WAIT_MS, T_WAIT_MS, r) == 0 &&
        r->status == SH_STATUS_OK)
        f->user = ((sh_user_create_rep_t *)r->body)->id;
    free(r);
    if (!f->user)
        return t_setup_failed(state, s_group_teardown, f->q.log);
    return 0;
}

/*  --- helpers ---------------------------------------------------------------  */

/*  The next event on the SUB socket within timeout_ms; 0 or -1.  */
static int s_recv_event(t_fixture_t *f, t_event_t *out, int timeout_ms)
{
    zmq_pollitem_t item = {f->sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return -1;
    sh_frames_t frames;
    if (sh_frames_recv(f->sub, &frames) != 0)
        return -1;
    assert_int_equal(frames.count, 3);
    sh_event_req_t ev;
    assert_int_equal(sh_codec_decode(&sh_event_req_codec, &ev, zmq_msg_data(&frames.frames[2]),
                                     zmq_msg_size(&frames.frames[2])),
                     0);
    memset(out, 0, sizeof *out);
    sh_str_copy(ev.channel, out->channel, sizeof out->channel);
    sh_str_copy(ev.epoch, out->epoch, sizeof out->epoch);
    out->offset = ev.offset;
    sh_str_copy(ev.type, out->type, sizeof out->type);
    sh_str_copy(ev.data, out->data, sizeof out->data);
    sh_frames_close(&frames);
    return 0;
}

/*  The next event on channel within T_WAIT_MS (others skipped).  */
static void s_expect(t_fixture_t *f, const char *channel, const char *type, t_event_t *out)
{
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    while (sh_clock_mono_ms() < end)
        if (s_recv_event(f, out, (int)(end - sh_clock_mono_ms())) == 0 &&
            strcmp(out->channel, channel) == 0) {
            assert_string_equal(out->type, type);
            return;
        }
    fail_msg("no %s event on %s", type, channel);
}

/*  An ordered event on the board follows the last one seen.  */
static void s_expect_board(t_fixture_t *f, const char *type, t_event_t *out)
{
    s_expect(f, "board", type, out);
    assert_true(out->offset > 0);
    if (f->board_top) {
        assert_int_equal(out->offset, f->board_top + 1);
        assert_string_equal(out->epoch, f->board_epoch);
    }
    f->board_top = out->offset;
    snprintf(f->board_epoch, sizeof f->board_epoch, "%s", out->epoch);
}

static json_t *s_json(const char *text)
{
    json_error_t error;
    json_t *v = json_loads(text, 0, &error);
    if (!v)
        fail_msg("not JSON (%s): %s", error.text, text);
    assert_true(json_is_object(v));
    return v;
}

/*  The keys of object, in order, joined by commas.  */
static void s_keys(json_t *object, char *out, size_t size)
{
    const char *key;
    json_t *value;
    size_t used = 0;
    out[0] = 0;
    json_object_foreach(object, key, value)
    {
        (void)value;
        used += (size_t)snprintf(out + used, size - used, "%s%s", used ? "," : "", key);
        assert_true(used < size);
    }
}

/*  Wait until the SUB socket receives: create items until one shows. The
    items are real; the board's offsets then go on from the last seen.  */
static uint64_t s_item(t_fixture_t *f, const char *title, const char *body);

static void s_sub_ready(t_fixture_t *f)
{
    if (f->board_top)
        return;
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    while (sh_clock_mono_ms() < end) {
        s_item(f, "warming up", "");
        t_event_t ev;
        if (s_recv_event(f, &ev, 100) == 0 && strcmp(ev.channel, "board") == 0) {
            f->board_top = ev.offset;
            snprintf(f->board_epoch, sizeof f->board_epoch, "%s", ev.epoch);
            /*  events of the other warm-up items may follow  */
            while (s_recv_event(f, &ev, 200) == 0)
                if (strcmp(ev.channel, "board") == 0)
                    f->board_top = ev.offset;
            return;
        }
    }
    fail_msg("the SUB socket never received an event");
}

static uint64_t s_item(t_fixture_t *f, const char *title, const char *body)
{
    sh_item_create_req_t req = {f->user, sh_str(title), sh_str(body), 0};
    t_reply_t *r = t_reply_new();
    assert_int_equal(t_call(f->q.pool, SH_OP_item_create, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    uint64_t id = ((sh_item_create_rep_t *)r->body)->id;
    free(r);
    return id;
}

/*  --- tests -------------------------------------------------------------------  */

/*  item_created carries the item as GET /api/items lists it, with an
    excerpt of the first 200 characters of the body.  */
static void test_query_events_item_created(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    /*  300 characters of two bytes each, and a quote  */
    char body[2 * T_LONG_CHARS + 1] = "";
    for (int i = 0; i < T_LONG_CHARS; i++)
        strcat(body, "\xC3\xA9");
    uint64_t id = s_item(f, "A \"new\" item", body);
    t_event_t ev;
    s_expect_board(f, "item_created", &ev);
    json_t *data = s_json(ev.data);
    json_t *item = json_object_get(data, "item");
    char keys[256];
    s_keys(data, keys, sizeof keys);
    assert_string_equal(keys, "item");
    s_keys(item, keys, sizeof keys);
    assert_string_equal(keys, "id,title,excerpt,author,author_id,created_at");
    assert_int_equal(json_integer_value(json_object_get(item, "id")), id);
    assert_string_equal(json_string_value(json_object_get(item, "title")), "A \"new\" item");
    assert_int_equal(strlen(json_string_value(json_object_get(item, "excerpt"))), 2 * T_EXCERPT);
    assert_memory_equal(json_string_value(json_object_get(item, "excerpt")), body, 2 * T_EXCERPT);
    assert_string_equal(json_string_value(json_object_get(item, "author")), f->username);
    assert_int_equal(json_integer_value(json_object_get(item, "author_id")), f->user);
    int64_t created = json_integer_value(json_object_get(item, "created_at"));
    assert_true(created > sh_clock_wall_ms() - 60000 && created <= sh_clock_wall_ms() + 1000);
    json_decref(data);
}

typedef struct {
    bool done;
    uint64_t status;
    uint64_t id;
} t_created_t;

static void s_on_created(void *arg, const sh_reply_t *reply)
{
    t_created_t *c = arg;
    c->done = true;
    c->status = reply->status;
    if (reply->status == SH_STATUS_OK && reply->body)
        c->id = ((const sh_item_create_rep_t *)reply->body)->id;
}

/*  item_create with an idempotency key, answered.  */
static uint64_t s_item_idem(t_fixture_t *f, const char *key)
{
    sh_item_create_req_t req = {f->user, sh_str("once"), sh_str(""), 0};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + T_WAIT_MS, .idem_key = key};
    t_created_t c = {0};
    sh_pool_send(f->q.pool, SH_OP_item_create, &req, &opts, s_on_created, &c);
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    while (!c.done && sh_clock_mono_ms() < end) {
        void *sockets[SH_POOL_SOCKETS];
        zmq_pollitem_t items[SH_POOL_SOCKETS];
        int count = sh_pool_sockets(f->q.pool, sockets, SH_POOL_SOCKETS);
        for (int i = 0; i < count; i++)
            items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
        zmq_poll(items, count, 20);
        sh_pool_drain(f->q.pool);
        sh_pool_tick(f->q.pool);
    }
    assert_true(c.done);
    assert_int_equal(c.status, SH_STATUS_OK);
    return c.id;
}

/*  A retried create gets the first call's row and publishes nothing: the
    next board event is the next item's.  */
static void test_query_events_retry_publishes_once(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    char key[64];
    snprintf(key, sizeof key, "idem-%d", (int)getpid());
    uint64_t id = s_item_idem(f, key);
    t_event_t ev;
    s_expect_board(f, "item_created", &ev);
    json_t *data = s_json(ev.data);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(data, "item"), "id")), id);
    json_decref(data);
    assert_int_equal(s_item_idem(f, key), id);
    uint64_t next = s_item(f, "after the retry", "");
    s_expect_board(f, "item_created", &ev);
    data = s_json(ev.data);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(data, "item"), "id")),
                     next);
    json_decref(data);
}

/*  Each counted view publishes the item's count on its channel, offset 0.  */
static void test_query_events_views(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    uint64_t id = s_item(f, "viewed", "");
    t_event_t ev;
    s_expect_board(f, "item_created", &ev);
    char channel[SH_CHANNEL_MAX + 1], want[96];
    snprintf(channel, sizeof channel, "item:%llu", (unsigned long long)id);
    for (uint64_t views = 1; views <= 2; views++) {
        sh_item_get_req_t req = {id, 0, 0};
        t_reply_t *r = t_reply_new();
        assert_int_equal(t_call(f->q.pool, SH_OP_item_get, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
        assert_int_equal(r->status, SH_STATUS_OK);
        assert_int_equal(((sh_item_get_rep_t *)r->body)->views, views);
        free(r);
        s_expect(f, channel, "views", &ev);
        snprintf(want, sizeof want, "{\"item_id\":%llu,\"views\":%llu}", (unsigned long long)id,
                 (unsigned long long)views);
        assert_string_equal(ev.data, want);
        assert_int_equal(ev.offset, 0);
        assert_string_equal(ev.epoch, "");
    }
}

/*  attachment_created goes to the board and the item, with the JSON of
    GET /api/items/N/attachments; item_deleted likewise with the id.  */
static void test_query_events_attachment_and_delete(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    uint64_t id = s_item(f, "with a file", "");
    t_event_t ev;
    s_expect_board(f, "item_created", &ev);
    char channel[SH_CHANNEL_MAX + 1], key[64];
    snprintf(channel, sizeof channel, "item:%llu", (unsigned long long)id);
    snprintf(key, sizeof key, "att/%d/%llu", (int)getpid(), (unsigned long long)id);

    sh_attachment_create_req_t req = {0};
    req.user_id = f->user;
    req.item_id = id;
    req.key = sh_str(key);
    req.size = 1234;
    req.sha256 = sh_str(T_SHA256);
    req.content_type = sh_str("application/pdf");
    req.name = sh_str("r\xC3\xA9sum\xC3\xA9 \"final\".pdf");
    t_reply_t *r = t_reply_new();
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_create, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    sh_attachment_create_rep_t *rep = (sh_attachment_create_rep_t *)r->body;
    uint64_t attachment_id = rep->id;
    int64_t created_at = rep->created_at;
    free(r);

    s_expect_board(f, "attachment_created", &ev);
    t_event_t on_item;
    s_expect(f, channel, "attachment_created", &on_item);
    assert_string_equal(on_item.data, ev.data);
    assert_int_equal(on_item.offset, 1);
    json_t *data = s_json(ev.data);
    char keys[256], url[64];
    s_keys(data, keys, sizeof keys);
    assert_string_equal(keys, "item_id,attachment");
    assert_int_equal(json_integer_value(json_object_get(data, "item_id")), id);
    json_t *a = json_object_get(data, "attachment");
    s_keys(a, keys, sizeof keys);
    assert_string_equal(keys,
                        "id,item_id,owner_id,owner,name,content_type,size,sha256,created_at,url");
    assert_int_equal(json_integer_value(json_object_get(a, "id")), attachment_id);
    assert_int_equal(json_integer_value(json_object_get(a, "item_id")), id);
    assert_int_equal(json_integer_value(json_object_get(a, "owner_id")), f->user);
    assert_string_equal(json_string_value(json_object_get(a, "owner")), f->username);
    assert_string_equal(json_string_value(json_object_get(a, "name")),
                        "r\xC3\xA9sum\xC3\xA9 \"final\".pdf");
    assert_string_equal(json_string_value(json_object_get(a, "content_type")), "application/pdf");
    assert_int_equal(json_integer_value(json_object_get(a, "size")), 1234);
    assert_string_equal(json_string_value(json_object_get(a, "sha256")), T_SHA256);
    assert_int_equal(json_integer_value(json_object_get(a, "created_at")), created_at);
    snprintf(url, sizeof url, "/api/uploads/%llu", (unsigned long long)attachment_id);
    assert_string_equal(json_string_value(json_object_get(a, "url")), url);
    json_decref(data);

    sh_item_delete_req_t del = {id, f->user, 0};
    r = t_reply_new();
    assert_int_equal(t_call(f->q.pool, SH_OP_item_delete, &del, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    free(r);
    char want[64];
    snprintf(want, sizeof want, "{\"id\":%llu}", (unsigned long long)id);
    s_expect_board(f, "item_deleted", &ev);
    assert_string_equal(ev.data, want);
    s_expect(f, channel, "item_deleted", &on_item);
    assert_string_equal(on_item.data, want);
    assert_int_equal(on_item.offset, 2);

    /*  the item's history has both, for a client that resumes  */
    sh_event_range_req_t range = {sh_str(channel), 0, 10, 0};
    r = t_reply_new();
    assert_int_equal(t_call(f->q.pool, SH_OP_event_range, &range, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    sh_event_range_rep_t *history = (sh_event_range_rep_t *)r->body;
    assert_int_equal(history->top, 2);
    assert_int_equal(history->events.count, 2);
    assert_true(sh_str_eq(history->events.items[0].type, "attachment_created"));
    assert_true(sh_str_eq(history->events.items[1].type, "item_deleted"));
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_events_item_created),
        cmocka_unit_test(test_query_events_retry_publishes_once),
        cmocka_unit_test(test_query_events_views),
        cmocka_unit_test(test_query_events_attachment_and_delete),
    };
    int failed = cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
    sh_transport_shutdown();
    return failed;
}
