/*  upload_xml.c - S3 reply documents through expat (see upload_xml.h).

    Namespace processing is off: S3 puts its elements in one default
    namespace, and a prefix, if a server uses one, is dropped from the
    name. A DOCTYPE is refused outright, so no entity can be declared and
    expanded (S3 documents never carry one).
*/
#include <limits.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <expat.h>

#include "upload_xml.h"

#define S_PATH_MAX (UPLOAD_XML_MAX_DEPTH * 64)

typedef struct {
    XML_Parser parser;
    upload_xml_fn *fn;
    void *arg;
    char path[S_PATH_MAX];
    size_t ends[UPLOAD_XML_MAX_DEPTH]; /* path length before each open element */
    int depth;
    char text[UPLOAD_XML_MAX_TEXT + 1];
    size_t text_len;
    bool failed;
} s_state_t;

static void s_fail(s_state_t *s)
{
    s->failed = true;
    XML_StopParser(s->parser, XML_FALSE);
}

static void XMLCALL s_on_start(void *data, const XML_Char *name, const XML_Char **attrs)
{
    (void)attrs;
    s_state_t *s = data;
    if (s->failed)
        return;
    const char *local = strrchr(name, ':');
    local = local ? local + 1 : name;
    size_t len = strlen(local);
    size_t at = strlen(s->path);
    if (s->depth >= UPLOAD_XML_MAX_DEPTH || at + len + 2 > sizeof s->path) {
        s_fail(s);
        return;
    }
    s->ends[s->depth++] = at;
    if (at)
        s->path[at++] = '/';
    memcpy(s->path + at, local, len + 1);
    s->text_len = 0;
    s->text[0] = 0;
    s->fn(s->arg, s->path, NULL, 0);
}

static void XMLCALL s_on_end(void *data, const XML_Char *name)
{
    (void)name;
    s_state_t *s = data;
    if (s->failed || s->depth == 0)
        return;
    s->text[s->text_len] = 0;
    s->fn(s->arg, s->path, s->text, s->text_len);
    s->path[s->ends[--s->depth]] = 0;
    s->text_len = 0;
    s->text[0] = 0;
}

/*  Character data of the innermost element; text between child elements
    (whitespace of pretty-printed documents) is reset when a child opens.  */
static void XMLCALL s_on_text(void *data, const XML_Char *text, int len)
{
    s_state_t *s = data;
    if (s->failed || len <= 0)
        return;
    if (s->text_len + (size_t)len > UPLOAD_XML_MAX_TEXT) {
        s_fail(s);
        return;
    }
    memcpy(s->text + s->text_len, text, (size_t)len);
    s->text_len += (size_t)len;
}

static void XMLCALL s_on_doctype(void *data, const XML_Char *name, const XML_Char *sysid,
                                 const XML_Char *pubid, int has_internal_subset)
{
    (void)name;
    (void)sysid;
    (void)pubid;
    (void)has_internal_subset;
    s_fail(data);
}

int upload_xml_parse(const char *data, size_t len, upload_xml_fn *fn, void *arg)
{
    if (!data || len == 0 || len > INT_MAX)
        return -1;
    s_state_t *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->parser = XML_ParserCreate(NULL);
    if (!s->parser) {
        free(s);
        return -1;
    }
    s->fn = fn;
    s->arg = arg;
    XML_SetUserData(s->parser, s);
    XML_SetElementHandler(s->parser, s_on_start, s_on_end);
    XML_SetCharacterDataHandler(s->parser, s_on_text);
    XML_SetStartDoctypeDeclHandler(s->parser, s_on_doctype);
    enum XML_Status rc = XML_Parse(s->parser, data, (int)len, XML_TRUE);
    int result = rc == XML_STATUS_OK && !s->failed ? 0 : -1;
    XML_ParserFree(s->parser);
    free(s);
    return result;
}
