/*  test_query_attachments.c - the real shoal-query process on loopback
    with a real Postgres primary and streaming replica (and Redis), driven
    through the production caller pool: attachment rows are created under
    the item's author only, within the per-item count and the owner's
    quota (also when creates race), retried creates return the first row,
    reads follow the read routing, and deleting an item deletes its rows.
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
#include <zmq.h>

#include "harness.h"
#include "sh_transport.h"
#include "sh_util.h"

#define T_WAIT_MS     5000  /* longest wait for one reply */
#define T_ROUTE_MS    10000 /* replica caught up and routed to */
#define T_SHA256      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define T_RACERS      10
#define T_ATTACH_FULL "the item has 100 attachments"

typedef struct {
    t_query_t q;
    uint64_t alice; /* a user with an item, shared by tests that need no fresh quota */
    uint64_t bob;
    uint64_t alice_item;
    int serial; /* makes user names and object keys unique */
} t_fixture_t;

/*  --- fixture ---------------------------------------------------------------  */

static uint64_t s_user(t_fixture_t *f);
static uint64_t s_item(t_fixture_t *f, uint64_t author);

static int s_group_teardown(void **state)
{
    t_fixture_t *f = *state;
    if (!f)
        return 0;
    t_query_stop(&f->q);
    free(f);
    return 0;
}

static int s_group_setup(void **state)
{
    t_fixture_t *f = t_alloc(sizeof *f);
    *state = f;
    const char *env[] = {"SHOAL_PG_POOL=4", NULL};
    if (t_query_start(&f->q, "query-attachments", true, env))
        return t_setup_failed(state, s_group_teardown, NULL);
    f->alice = s_user(f);
    f->bob = s_user(f);
    f->alice_item = f->alice ? s_item(f, f->alice) : 0;
    if (!f->alice || !f->bob || !f->alice_item)
        return t_setup_failed(state, s_group_teardown, f->q.log);
    return 0;
}

/*  --- helpers ---------------------------------------------------------------  */

/*  A new user (so its quota starts at zero bytes). Returns its id.  */
static uint64_t s_user(t_fixture_t *f)
{
    char name[32];
    snprintf(name, sizeof name, "user%d_%d", ++f->serial, (int)getpid());
    sh_user_create_req_t req = {sh_str(name), sh_str("password123"), 0};
    t_reply_t *r = t_reply_new();
    uint64_t id = 0;
    if (t_call(f->q.pool, SH_OP_user_create, &req, T_WAIT_MS, T_WAIT_MS, r) == 0 &&
        r->status == SH_STATUS_OK)
        id = ((sh_user_create_rep_t *)r->body)->id;
    else
        fprintf(stderr, "user_create: %llu %s\n", (unsigned long long)r->status, r->error);
    free(r);
    return id;
}

static uint64_t s_item(t_fixture_t *f, uint64_t author)
{
    sh_item_create_req_t req = {author, sh_str("an item with files"), sh_str(""), 0};
    t_reply_t *r = t_reply_new();
    uint64_t id = 0;
    if (t_call(f->q.pool, SH_OP_item_create, &req, T_WAIT_MS, T_WAIT_MS, r) == 0 &&
        r->status == SH_STATUS_OK)
        id = ((sh_item_create_rep_t *)r->body)->id;
    else
        fprintf(stderr, "item_create: %llu %s\n", (unsigned long long)r->status, r->error);
    free(r);
    return id;
}

/*  A fresh object key in key (SH_OBJKEY_MAX + 1 bytes).  */
static void s_key(t_fixture_t *f, char *key)
{
    snprintf(key, SH_OBJKEY_MAX + 1, "att/%d/%d", (int)getpid(), ++f->serial);
}

static sh_attachment_create_req_t s_create_req(uint64_t user, uint64_t item, const char *key,
                                               uint64_t size, uint64_t quota)
{
    sh_attachment_create_req_t req = {0};
    req.user_id = user;
    req.item_id = item;
    req.key = sh_str(key);
    req.size = size;
    req.sha256 = sh_str(T_SHA256);
    req.content_type = sh_str("application/pdf");
    req.name = sh_str("report.pdf");
    req.quota = quota;
    return req;
}

/*  attachment_create; the reply in *r. Returns the status.  */
static uint64_t s_create(t_fixture_t *f, const sh_attachment_create_req_t *req, t_reply_t *r)
{
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_create, req, T_WAIT_MS, T_WAIT_MS, r), 0);
    return r->status;
}

/*  Create one attachment of size bytes that must succeed; returns its reply body.  */
static const sh_attachment_create_rep_t *s_attach(t_fixture_t *f, uint64_t user, uint64_t item,
                                                  uint64_t size, t_reply_t *r)
{
    char key[SH_OBJKEY_MAX + 1];
    s_key(f, key);
    sh_attachment_create_req_t req = s_create_req(user, item, key, size, 0);
    uint64_t status = s_create(f, &req, r);
    if (status != SH_STATUS_OK)
        fprintf(stderr, "attachment_create: %s\n", r->error);
    assert_int_equal(status, SH_STATUS_OK);
    return (const sh_attachment_create_rep_t *)r->body;
}

static const sh_attachment_usage_rep_t *s_usage(t_fixture_t *f, uint64_t user, uint64_t item,
                                                t_reply_t *r)
{
    sh_attachment_usage_req_t req = {user, item, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_usage, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    return (const sh_attachment_usage_rep_t *)r->body;
}

static const sh_attachment_list_rep_t *s_list(t_fixture_t *f, uint64_t item, uint64_t min_lsn,
                                              t_reply_t *r)
{
    sh_attachment_list_req_t req = {item, min_lsn, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_list, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    return (const sh_attachment_list_rep_t *)r->body;
}

static void s_assert_str(sh_str_t s, const char *want)
{
    char buf[SH_FILENAME_MAX + 1];
    assert_string_equal(sh_str_copy(s, buf, sizeof buf), want);
}

/*  --- tests -----------------------------------------------------------------  */

static void test_query_attachment_create_get_list(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new(), *g = t_reply_new();
    char key[SH_OBJKEY_MAX + 1];
    s_key(f, key);
    sh_attachment_create_req_t req = s_create_req(f->alice, f->alice_item, key, 5242881, 0);
    req.name = sh_str("r\xC3\xA9sum\xC3\xA9 \"final\".pdf");
    int64_t before = sh_clock_wall_ms();
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    const sh_attachment_create_rep_t *c = (const void *)r->body;
    assert_true(c->id > 0);
    assert_int_equal(c->item_id, f->alice_item);
    assert_int_equal(c->owner_id, f->alice);
    assert_true(c->owner.len > 0);
    s_assert_str(c->name, "r\xC3\xA9sum\xC3\xA9 \"final\".pdf");
    s_assert_str(c->content_type, "application/pdf");
    assert_int_equal(c->size, 5242881);
    s_assert_str(c->sha256, T_SHA256);
    s_assert_str(c->key, key);
    assert_true(c->created_at >= before - 5000 && c->created_at <= sh_clock_wall_ms() + 5000);
    assert_true(c->lsn > 0);

    /*  read back where the write is known to be: never older than it  */
    sh_attachment_get_req_t get = {c->id, c->lsn, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, g), 0);
    assert_int_equal(g->status, SH_STATUS_OK);
    const sh_attachment_get_rep_t *a = (const void *)g->body;
    assert_int_equal(a->id, c->id);
    assert_int_equal(a->owner_id, f->alice);
    assert_true(a->owner.len == c->owner.len &&
                memcmp(a->owner.ptr, c->owner.ptr, c->owner.len) == 0);
    s_assert_str(a->name, "r\xC3\xA9sum\xC3\xA9 \"final\".pdf");
    s_assert_str(a->key, key);
    assert_int_equal(a->size, 5242881);
    assert_int_equal(a->created_at, c->created_at);
    assert_true(sh_str_eq(a->source, "primary") || sh_str_eq(a->source, "replica"));

    const sh_attachment_list_rep_t *l = s_list(f, f->alice_item, c->lsn, g);
    assert_true(l->attachments.count >= 1);
    assert_int_equal(l->attachments.items[l->attachments.count - 1].id, c->id);
    assert_true(l->source.len > 0);

    /*  unknown ids  */
    sh_attachment_get_req_t missing = {c->id + 1000000, 0, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &missing, T_WAIT_MS, T_WAIT_MS, g), 0);
    assert_int_equal(g->status, SH_STATUS_NOT_FOUND);
    assert_string_equal(g->error, "no such attachment");
    sh_attachment_get_req_t zero = {0, 0, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &zero, T_WAIT_MS, T_WAIT_MS, g), 0);
    assert_int_equal(g->status, SH_STATUS_NOT_FOUND);
    assert_int_equal(s_list(f, f->alice_item + 1000000, 0, g)->attachments.count, 0);
    assert_int_equal(s_list(f, 0, 0, g)->attachments.count, 0);
    assert_int_equal(s_list(f, UINT64_MAX, 0, g)->attachments.count, 0);
    free(r);
    free(g);
}

static void test_query_attachment_retry_returns_first_row(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new(), *again = t_reply_new();
    char key[SH_OBJKEY_MAX + 1];
    s_key(f, key);
    sh_attachment_create_req_t req = s_create_req(f->alice, f->alice_item, key, 10, 0);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    uint64_t id = ((const sh_attachment_create_rep_t *)r->body)->id;
    uint64_t used = s_usage(f, f->alice, f->alice_item, again)->used_bytes;

    /*  the same key again: the first row, nothing added  */
    assert_int_equal(s_create(f, &req, again), SH_STATUS_OK);
    assert_int_equal(((const sh_attachment_create_rep_t *)again->body)->id, id);
    assert_int_equal(s_usage(f, f->alice, f->alice_item, again)->used_bytes, used);

    /*  the same key for another item or owner is not a retry  */
    uint64_t other = s_item(f, f->alice);
    sh_attachment_create_req_t moved = s_create_req(f->alice, other, key, 10, 0);
    assert_int_equal(s_create(f, &moved, again), SH_STATUS_CONFLICT);
    uint64_t bob_item = s_item(f, f->bob);
    sh_attachment_create_req_t stolen = s_create_req(f->bob, bob_item, key, 10, 0);
    assert_int_equal(s_create(f, &stolen, again), SH_STATUS_CONFLICT);
    free(r);
    free(again);
}

static void test_query_attachment_invalid_input(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    char key[SH_OBJKEY_MAX + 1], long_key[SH_OBJKEY_MAX + 2];
    s_key(f, key);
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    static char long_name[SH_FILENAME_MAX + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    struct {
        const char *field;
        sh_attachment_create_req_t req;
    } cases[] = {
        {"user_id", s_create_req(0, f->alice_item, key, 1, 0)},
        {"key", s_create_req(f->alice, f->alice_item, "", 1, 0)},
        {"key", s_create_req(f->alice, f->alice_item, "a\nb", 1, 0)},
        {"size", s_create_req(f->alice, f->alice_item, key, (uint64_t)INT64_MAX + 1, 0)},
        {"sha256", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"sha256", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"content_type", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"content_type", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"name", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"name", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"name", s_create_req(f->alice, f->alice_item, key, 1, 0)},
        {"quota", s_create_req(f->alice, f->alice_item, key, 1, (uint64_t)INT64_MAX + 1)},
    };
    cases[4].req.sha256 =
        sh_str("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855");
    cases[5].req.sha256 = sh_str("e3b0c442");
    cases[6].req.content_type = sh_str("");
    cases[7].req.content_type = sh_str("text/plain\r\nX-Evil: 1");
    cases[8].req.name = sh_str("");
    cases[9].req.name = sh_str("bad\x01name");
    cases[10].req.name = sh_str("\xC0\xAF.txt");
    for (size_t i = 0; i < SH_ARRAY_SIZE(cases); i++) {
        assert_int_equal(s_create(f, &cases[i].req, r), SH_STATUS_INVALID);
        assert_ptr_equal(strstr(r->error, cases[i].field), r->error);
    }
    /*  past the protocol's own limits the request does not even decode  */
    sh_attachment_create_req_t too_long = s_create_req(f->alice, f->alice_item, long_key, 1, 0);
    assert_int_not_equal(s_create(f, &too_long, r), SH_STATUS_OK);
    too_long = s_create_req(f->alice, f->alice_item, key, 1, 0);
    too_long.name = sh_str(long_name);
    assert_int_not_equal(s_create(f, &too_long, r), SH_STATUS_OK);
    /*  nothing of it reached the table  */
    sh_attachment_keys_req_t keys = {0};
    keys.keys.count = 1;
    keys.keys.items[0].key = sh_str(key);
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_keys, &keys, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    assert_int_equal(((const sh_attachment_keys_rep_t *)r->body)->keys.count, 0);
    free(r);
}

static void test_query_attachment_missing_item_and_other_author(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    char key[SH_OBJKEY_MAX + 1];
    s_key(f, key);
    sh_attachment_create_req_t req = s_create_req(f->alice, f->alice_item + 1000000, key, 1, 0);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_NOT_FOUND);
    assert_string_equal(r->error, "no such item");
    req.item_id = 0;
    assert_int_equal(s_create(f, &req, r), SH_STATUS_NOT_FOUND);
    req = s_create_req(f->bob, f->alice_item, key, 1, 0);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_FORBIDDEN);
    assert_string_equal(r->error, "only the item's author may attach files");
    free(r);
}

static void test_query_attachment_quota(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    uint64_t user = s_user(f), item = s_item(f, user);
    assert_true(user && item);
    char key[SH_OBJKEY_MAX + 1];
    s_key(f, key);
    sh_attachment_create_req_t req = s_create_req(user, item, key, 600, 1000);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    /*  600 + 401 > 1000  */
    s_key(f, key);
    req = s_create_req(user, item, key, 401, 1000);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_TOO_LARGE);
    assert_string_equal(r->error, "upload quota exceeded");
    /*  exactly the quota is allowed; the quota counts every item of the owner  */
    uint64_t second = s_item(f, user);
    req = s_create_req(user, second, key, 400, 1000);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    s_key(f, key);
    req = s_create_req(user, item, key, 0, 1000);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK); /* an empty file fits a full quota */
    s_key(f, key);
    req = s_create_req(user, item, key, 1, 1000);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_TOO_LARGE);
    assert_string_equal(r->error, "upload quota exceeded");
    /*  quota 0: none; and a size no quota could hold does not overflow  */
    req.quota = 0;
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    s_key(f, key);
    req = s_create_req(user, item, key, (uint64_t)INT64_MAX, (uint64_t)INT64_MAX);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_TOO_LARGE);
    assert_string_equal(r->error, "upload quota exceeded");
    const sh_attachment_usage_rep_t *u = s_usage(f, user, item, r);
    assert_int_equal(u->used_bytes, 1001);
    assert_int_equal(u->count, 4);
    free(r);
}

static void test_query_attachment_limit_per_item(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    uint64_t user = s_user(f), item = s_item(f, user);
    assert_true(user && item);
    uint64_t ids[SH_ATTACH_MAX], lsn = 0;
    for (int i = 0; i < SH_ATTACH_MAX; i++) {
        const sh_attachment_create_rep_t *c = s_attach(f, user, item, (uint64_t)i, r);
        ids[i] = c->id;
        lsn = c->lsn;
    }
    char key[SH_OBJKEY_MAX + 1];
    s_key(f, key);
    sh_attachment_create_req_t req = s_create_req(user, item, key, 1, 0);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_TOO_LARGE);
    assert_string_equal(r->error, T_ATTACH_FULL);
    /*  oldest first, all of them (read where the last write is)  */
    const sh_attachment_list_rep_t *l = s_list(f, item, lsn, r);
    assert_int_equal(l->attachments.count, SH_ATTACH_MAX);
    for (int i = 0; i < SH_ATTACH_MAX; i++) {
        assert_int_equal(l->attachments.items[i].id, ids[i]);
        assert_int_equal(l->attachments.items[i].size, (uint64_t)i);
    }
    const sh_attachment_usage_rep_t *u = s_usage(f, user, item, r);
    assert_int_equal(u->item_attachments, SH_ATTACH_MAX);
    assert_int_equal(u->count, SH_ATTACH_MAX);
    assert_int_equal(u->used_bytes, SH_ATTACH_MAX * (SH_ATTACH_MAX - 1) / 2);
    /*  another item of the same owner is not full  */
    uint64_t other = s_item(f, user);
    req.item_id = other;
    assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    free(r);
}

/*  Creates that race must not pass the limits together: checks and insert
    are one transaction per owner.  */
static void test_query_attachment_racing_creates_respect_limits(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = calloc(T_RACERS, sizeof *r);
    assert_non_null(r);
    uint64_t user = s_user(f), item = s_item(f, user);
    assert_true(user && item);
    const int free_slots = 3;
    for (int i = 0; i < SH_ATTACH_MAX - free_slots; i++)
        s_attach(f, user, item, 1, r);
    static char keys[T_RACERS][SH_OBJKEY_MAX + 1];
    sh_attachment_create_req_t reqs[T_RACERS];
    const void *bodies[T_RACERS];
    for (int i = 0; i < T_RACERS; i++) {
        s_key(f, keys[i]);
        reqs[i] = s_create_req(user, item, keys[i], 1, 0);
        bodies[i] = &reqs[i];
    }
    assert_int_equal(
        t_call_all(f->q.pool, SH_OP_attachment_create, bodies, T_RACERS, T_WAIT_MS, T_WAIT_MS, r),
        0);
    int ok = 0;
    for (int i = 0; i < T_RACERS; i++) {
        if (r[i].status == SH_STATUS_OK)
            ok++;
        else {
            assert_int_equal(r[i].status, SH_STATUS_TOO_LARGE);
            assert_string_equal(r[i].error, T_ATTACH_FULL);
        }
    }
    assert_int_equal(ok, free_slots);
    assert_int_equal(s_usage(f, user, item, &r[0])->item_attachments, SH_ATTACH_MAX);

    /*  the quota across items: 10 uploads of 60 bytes, room for 100 bytes  */
    uint64_t spender = s_user(f);
    for (int i = 0; i < T_RACERS; i++) {
        uint64_t own_item = s_item(f, spender);
        assert_true(own_item);
        s_key(f, keys[i]);
        reqs[i] = s_create_req(spender, own_item, keys[i], 60, 100);
    }
    assert_int_equal(
        t_call_all(f->q.pool, SH_OP_attachment_create, bodies, T_RACERS, T_WAIT_MS, T_WAIT_MS, r),
        0);
    ok = 0;
    for (int i = 0; i < T_RACERS; i++) {
        if (r[i].status == SH_STATUS_OK)
            ok++;
        else
            assert_string_equal(r[i].error, "upload quota exceeded");
    }
    assert_int_equal(ok, 1);
    assert_int_equal(s_usage(f, spender, 0, &r[0])->used_bytes, 60);

    /*  the same key ten times at once: one row, every reply names it  */
    uint64_t owner = s_user(f), target = s_item(f, owner);
    s_key(f, keys[0]);
    for (int i = 0; i < T_RACERS; i++)
        reqs[i] = s_create_req(owner, target, keys[0], 5, 0);
    assert_int_equal(
        t_call_all(f->q.pool, SH_OP_attachment_create, bodies, T_RACERS, T_WAIT_MS, T_WAIT_MS, r),
        0);
    for (int i = 0; i < T_RACERS; i++) {
        assert_int_equal(r[i].status, SH_STATUS_OK);
        assert_int_equal(((const sh_attachment_create_rep_t *)r[i].body)->id,
                         ((const sh_attachment_create_rep_t *)r[0].body)->id);
    }
    assert_int_equal(s_usage(f, owner, target, &r[0])->count, 1);
    free(r);
}

static void test_query_attachment_usage(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    uint64_t user = s_user(f), item = s_item(f, user);
    assert_true(user && item);
    const sh_attachment_usage_rep_t *u = s_usage(f, user, item, r);
    assert_int_equal(u->used_bytes, 0);
    assert_int_equal(u->count, 0);
    assert_true(u->item_exists);
    assert_int_equal(u->item_author_id, user);
    assert_int_equal(u->item_attachments, 0);
    s_attach(f, user, item, 100, r);
    s_attach(f, user, item, 23, r);
    uint64_t other = s_item(f, user);
    s_attach(f, user, other, 1000, r);
    u = s_usage(f, user, item, r);
    assert_int_equal(u->used_bytes, 1123);
    assert_int_equal(u->count, 3);
    assert_int_equal(u->item_attachments, 2);
    /*  someone else's item, unknown items  */
    u = s_usage(f, f->bob, item, r);
    assert_int_equal(u->used_bytes, 0);
    assert_true(u->item_exists);
    assert_int_equal(u->item_author_id, user);
    assert_int_equal(u->item_attachments, 2);
    u = s_usage(f, user, item + 1000000, r);
    assert_false(u->item_exists);
    assert_int_equal(u->item_author_id, 0);
    assert_int_equal(u->used_bytes, 1123);
    u = s_usage(f, user, UINT64_MAX, r);
    assert_false(u->item_exists);
    sh_attachment_usage_req_t no_user = {0, item, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_usage, &no_user, T_WAIT_MS, T_WAIT_MS, r),
                     0);
    assert_int_equal(r->status, SH_STATUS_INVALID);
    free(r);
}

static void test_query_attachment_keys(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    /*  a key with the characters an array literal must escape  */
    char stored[2][SH_OBJKEY_MAX + 1];
    snprintf(stored[0], sizeof stored[0], "odd \"quoted\" \\back,{brace}/%d", ++f->serial);
    s_key(f, stored[1]);
    for (int i = 0; i < 2; i++) {
        sh_attachment_create_req_t req = s_create_req(f->alice, f->alice_item, stored[i], 1, 0);
        assert_int_equal(s_create(f, &req, r), SH_STATUS_OK);
    }
    char unknown[SH_OBJKEY_MAX + 1];
    s_key(f, unknown);
    sh_attachment_keys_req_t req = {0};
    const char *asked[] = {unknown, stored[1], "bad\x01key", stored[0], "", "NULL"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(asked); i++)
        req.keys.items[req.keys.count++].key = sh_str(asked[i]);
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_keys, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    const sh_attachment_keys_rep_t *k = (const void *)r->body;
    assert_int_equal(k->keys.count, 2);
    bool seen[2] = {false, false};
    for (uint32_t i = 0; i < k->keys.count; i++)
        for (int j = 0; j < 2; j++)
            seen[j] |= sh_str_eq(k->keys.items[i].key, stored[j]);
    assert_true(seen[0] && seen[1]);
    /*  none asked, none known  */
    sh_attachment_keys_req_t none = {0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_keys, &none, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    assert_int_equal(((const sh_attachment_keys_rep_t *)r->body)->keys.count, 0);
    free(r);
}

static void test_query_attachment_item_delete_removes_rows(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    uint64_t user = s_user(f), item = s_item(f, user);
    assert_true(user && item);
    const sh_attachment_create_rep_t *c = s_attach(f, user, item, 77, r);
    uint64_t id = c->id;
    char key[SH_OBJKEY_MAX + 1];
    sh_str_copy(c->key, key, sizeof key);
    sh_item_delete_req_t del = {item, user, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_item_delete, &del, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    uint64_t lsn = ((const sh_item_delete_rep_t *)r->body)->lsn;
    sh_attachment_get_req_t get = {id, lsn, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_NOT_FOUND);
    assert_int_equal(s_list(f, item, lsn, r)->attachments.count, 0);
    assert_int_equal(s_usage(f, user, item, r)->used_bytes, 0);
    sh_attachment_keys_req_t keys = {0};
    keys.keys.count = 1;
    keys.keys.items[0].key = sh_str(key);
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_keys, &keys, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(((const sh_attachment_keys_rep_t *)r->body)->keys.count, 0);
    free(r);
}

/*  Reads go to the replica once it has replayed the caller's last write;
    a caller never reads older than its own write.  */
static void test_query_attachment_reads_follow_routing(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new(), *g = t_reply_new();
    for (int i = 0; i < 20; i++) {
        const sh_attachment_create_rep_t *c = s_attach(f, f->alice, f->alice_item, 3, r);
        sh_attachment_get_req_t get = {c->id, c->lsn, 0};
        assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, g), 0);
        assert_int_equal(g->status, SH_STATUS_OK);
        const sh_attachment_list_rep_t *l = s_list(f, f->alice_item, c->lsn, g);
        assert_true(l->attachments.count > 0);
        assert_int_equal(l->attachments.items[l->attachments.count - 1].id, c->id);
    }
    const sh_attachment_create_rep_t *c = s_attach(f, f->alice, f->alice_item, 3, r);
    sh_attachment_get_req_t get = {c->id, c->lsn, 0};
    int64_t end = sh_clock_mono_ms() + T_ROUTE_MS;
    bool replica = false;
    while (!replica && sh_clock_mono_ms() < end) {
        assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, g), 0);
        assert_int_equal(g->status, SH_STATUS_OK);
        replica = sh_str_eq(((const sh_attachment_get_rep_t *)g->body)->source, "replica");
        if (!replica)
            zmq_poll(NULL, 0, 20);
    }
    assert_true(replica);
    free(r);
    free(g);
}

/*  Last: with the primary stopped, writes and primary reads fail at once
    with UNAVAILABLE; reads the replica has replayed are still served, and
    a read needing a write the replica lacks is refused, never answered
    older.  */
static void test_query_attachment_primary_down(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t *r = t_reply_new();
    const sh_attachment_create_rep_t *c = s_attach(f, f->alice, f->alice_item, 9, r);
    sh_attachment_get_req_t get = {c->id, c->lsn, 0};
    char key[SH_OBJKEY_MAX + 1];
    sh_str_copy(c->key, key, sizeof key);
    /*  wait until the replica serves it  */
    int64_t end = sh_clock_mono_ms() + T_ROUTE_MS;
    bool replica = false;
    while (!replica && sh_clock_mono_ms() < end) {
        assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, r), 0);
        assert_int_equal(r->status, SH_STATUS_OK);
        replica = sh_str_eq(((const sh_attachment_get_rep_t *)r->body)->source, "replica");
        if (!replica)
            zmq_poll(NULL, 0, 20);
    }
    assert_true(replica);

    t_postgres_stop(f->q.primary);
    f->q.primary = -1;
    char new_key[SH_OBJKEY_MAX + 1];
    s_key(f, new_key);
    sh_attachment_create_req_t req = s_create_req(f->alice, f->alice_item, new_key, 1, 0);
    assert_int_equal(s_create(f, &req, r), SH_STATUS_UNAVAILABLE);
    assert_true(r->elapsed_ms < 1000);
    sh_attachment_usage_req_t usage = {f->alice, f->alice_item, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_usage, &usage, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_UNAVAILABLE);
    sh_attachment_keys_req_t keys = {0};
    keys.keys.items[keys.keys.count++].key = sh_str(key);
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_keys, &keys, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_UNAVAILABLE);

    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    assert_true(sh_str_eq(((const sh_attachment_get_rep_t *)r->body)->source, "replica"));
    get.min_lsn += 1000000000;
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_get, &get, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_UNAVAILABLE);
    sh_attachment_list_req_t list = {f->alice_item, get.min_lsn, 0};
    assert_int_equal(t_call(f->q.pool, SH_OP_attachment_list, &list, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_UNAVAILABLE);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_attachment_create_get_list),
        cmocka_unit_test(test_query_attachment_retry_returns_first_row),
        cmocka_unit_test(test_query_attachment_invalid_input),
        cmocka_unit_test(test_query_attachment_missing_item_and_other_author),
        cmocka_unit_test(test_query_attachment_quota),
        cmocka_unit_test(test_query_attachment_limit_per_item),
        cmocka_unit_test(test_query_attachment_racing_creates_respect_limits),
        cmocka_unit_test(test_query_attachment_usage),
        cmocka_unit_test(test_query_attachment_keys),
        cmocka_unit_test(test_query_attachment_item_delete_removes_rows),
        cmocka_unit_test(test_query_attachment_reads_follow_routing),
        cmocka_unit_test(test_query_attachment_primary_down),
    };
    int rc = cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
    sh_transport_shutdown();
    return rc;
}
