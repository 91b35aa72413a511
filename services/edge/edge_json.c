/*  edge_json.c - JSON text for the hottest replies (item pages and lists)
    written straight into a buffer. jansson builds a tree first: one
    allocation per value and per key, which made up most of the edge's CPU
    on a list of 20 items. Requests are still parsed with jansson; this only
    writes, and writes the same JSON jansson would (tests/unit/test_edge_json
    parses every output back with jansson).
*/
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "edge.h"

int edge_json_str(sh_buf_t *buf, const char *text, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    int rc = sh_buf_append(buf, "\"", 1);
    while (rc == 0 && p < end) {
        /*  the longest run that needs no escape goes in one copy  */
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p > run)
            rc |= sh_buf_append(buf, run, (size_t)(p - run));
        if (p == end)
            break;
        uint32_t cp;
        size_t n = sh_utf8_decode(p, (size_t)(end - p), &cp);
        if (n == 0)
            return -1; /* not UTF-8: jansson would refuse it too */
        if (n > 1) {
            rc |= sh_buf_append(buf, p, n);
        } else {
            char esc[6] = {'\\', 0};
            size_t elen = 2;
            switch (cp) {
            case '"':
                esc[1] = '"';
                break;
            case '\\':
                esc[1] = '\\';
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            case '\n':
                esc[1] = 'n';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\t':
                esc[1] = 't';
                break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[cp >> 4];
                esc[5] = hex[cp & 0xF];
                elen = 6;
            }
            rc |= sh_buf_append(buf, esc, elen);
        }
        p += n;
    }
    rc |= sh_buf_append(buf, "\"", 1);
    return rc ? -1 : 0;
}

int edge_json_item(sh_buf_t *buf, const sh_item_t *item, bool whole)
{
    int rc = sh_buf_printf(buf, "{\"id\":%" PRIu64 ",\"title\":", item->id) < 0 ? -1 : 0;
    rc |= edge_json_str(buf, item->title.ptr, item->title.len);
    rc |= sh_buf_append(buf, whole ? ",\"body\":" : ",\"excerpt\":", whole ? 8 : 11);
    rc |= edge_json_str(buf, item->body.ptr, item->body.len);
    rc |= sh_buf_append(buf, ",\"author\":", 10);
    rc |= edge_json_str(buf, item->author.ptr, item->author.len);
    rc |= sh_buf_printf(buf, ",\"author_id\":%" PRIu64 ",\"created_at\":%" PRId64, item->author_id,
                        item->created_at) < 0
              ? -1
              : 0;
    if (whole)
        rc |= sh_buf_printf(buf, ",\"views\":%" PRIu64, item->views) < 0 ? -1 : 0;
    rc |= sh_buf_append(buf, "}", 1);
    return rc ? -1 : 0;
}

int edge_json_attachment(sh_buf_t *buf, const sh_attachment_t *file)
{
    int rc = sh_buf_printf(buf,
                           "{\"id\":%" PRIu64 ",\"item_id\":%" PRIu64 ",\"owner_id\":%" PRIu64
                           ",\"owner\":",
                           file->id, file->item_id, file->owner_id) < 0
                 ? -1
                 : 0;
    rc |= edge_json_str(buf, file->owner.ptr, file->owner.len);
    rc |= sh_buf_append(buf, ",\"name\":", 8);
    rc |= edge_json_str(buf, file->name.ptr, file->name.len);
    rc |= sh_buf_append(buf, ",\"content_type\":", 16);
    rc |= edge_json_str(buf, file->content_type.ptr, file->content_type.len);
    rc |= sh_buf_printf(buf, ",\"size\":%" PRIu64 ",\"sha256\":", file->size) < 0 ? -1 : 0;
    rc |= edge_json_str(buf, file->sha256.ptr, file->sha256.len);
    rc |= sh_buf_printf(buf, ",\"created_at\":%" PRId64 ",\"url\":\"/api/uploads/%" PRIu64 "\"}",
                        file->created_at, file->id) < 0
              ? -1
              : 0;
    return rc ? -1 : 0;
}
