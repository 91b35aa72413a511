/*  make_seeds.c - writes the fuzzer's seed corpus: one valid encoding of
    every codec, with the selector byte fuzz_decode.c expects in front.
    Run: make_seeds DIR (the committed corpus is tests/fuzz/corpus).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sh_codec.h"

static char s_text[256];

#define S_FILL_U64(f)  f = 42
#define S_FILL_I64(f)  f = -7
#define S_FILL_BOOL(f) f = true
#define S_FILL_STR(f) \
    f = (sh_str_t)    \
    {                 \
        s_text, 8     \
    }
#define S_FILL_LIST_member(f)                                        \
    do {                                                             \
        f.count = 2;                                                 \
        f.items[0].service = f.items[1].service = sh_str("session"); \
        f.items[0].instance = sh_str("session-1");                   \
        f.items[1].instance = sh_str("session-2");                   \
        f.items[1].state = 3;                                        \
    } while (0)
#define S_FILL_LIST_item(f)                                   \
    do {                                                      \
        f.count = 2;                                          \
        f.items[0].id = 2;                                    \
        f.items[0].title = sh_str("second");                  \
        f.items[1].id = 1;                                    \
        f.items[1].title = f.items[1].body = sh_str("first"); \
    } while (0)
#define S_FILL_LIST_attachment(f)                   \
    do {                                            \
        f.count = 1;                                \
        f.items[0].id = 7;                          \
        f.items[0].name = sh_str("report (1).pdf"); \
        f.items[0].key = sh_str("uploads/0a1b");    \
        f.items[0].size = 5242881;                  \
    } while (0)
#define S_FILL_LIST_objkey(f)                 \
    do {                                      \
        f.count = 2;                          \
        f.items[0].key = sh_str("uploads/a"); \
        f.items[1].key = sh_str("uploads/b"); \
    } while (0)
#define S_FILL_LIST_event(f)                                        \
    do {                                                            \
        f.count = 2;                                                \
        f.items[0].channel = f.items[1].channel = sh_str("board");  \
        f.items[0].offset = 41;                                     \
        f.items[1].offset = 42;                                     \
        f.items[0].type = f.items[1].type = sh_str("item_created"); \
        f.items[0].data = f.items[1].data = sh_str("{\"id\":1}");   \
    } while (0)
#define S_FILL(kind, name, max) S_FILL_##kind(msg->name);

#define S_FILLER(tname, FIELDS)           \
    static void s_fill_##tname(void *arg) \
    {                                     \
        sh_##tname##_t *msg = arg;        \
        (void)msg;                        \
        FIELDS(S_FILL)                    \
    }
#define S_OP_FILLERS(num, name, REQ, REP, idem) S_FILLER(name##_req, REQ) S_FILLER(name##_rep, REP)
S_FILLER(envelope, SH_FIELDS_envelope)
SH_OP_LIST(S_OP_FILLERS)

static int s_write(const char *dir, int selector, const sh_codec_t *codec, void (*fill)(void *))
{
    void *msg = calloc(1, codec->size);
    if (!msg)
        return -1;
    fill(msg);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    int rc = sh_codec_encode(codec, msg, &buf);
    free(msg);
    if (rc != 0)
        return -1;
    char path[512];
    snprintf(path, sizeof path, "%s/seed-%02d-%s", dir, selector, codec->name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned char sel = (unsigned char)selector;
    fwrite(&sel, 1, 1, f);
    fwrite(buf.data, 1, buf.size, f);
    fclose(f);
    msgpack_sbuffer_destroy(&buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    memset(s_text, 'a', sizeof s_text);
    int rc = s_write(argv[1], 0, &sh_envelope_codec, s_fill_envelope);
    int selector = 1;
#define S_OP_WRITE(num, name, REQ, REP, idem)                                        \
    rc |= s_write(argv[1], selector++, &sh_##name##_req_codec, s_fill_##name##_req); \
    rc |= s_write(argv[1], selector++, &sh_##name##_rep_codec, s_fill_##name##_rep);
    SH_OP_LIST(S_OP_WRITE)
    return rc ? 1 : 0;
}
