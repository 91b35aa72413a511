/*  upload_sniff.c - content sniffing of uploads (see upload_sniff.h).  */
#include <string.h>
#include <strings.h>

#include "sh_util.h"
#include "upload_sniff.h"

typedef struct {
    const char *type;
    const char *magic;
    size_t len;
    size_t at; /* offset of the magic bytes */
} s_signature_t;

/*  RIFF....WEBP needs two pieces; it is checked by hand below.  */
static const s_signature_t s_signatures[] = {
    {UPLOAD_TYPE_PNG, "\x89PNG\r\n\x1a\n", 8, 0},
    {UPLOAD_TYPE_JPEG, "\xff\xd8\xff", 3, 0},
    {UPLOAD_TYPE_GIF, "GIF87a", 6, 0},
    {UPLOAD_TYPE_GIF, "GIF89a", 6, 0},
    {UPLOAD_TYPE_PDF, "%PDF-", 5, 0},
    {UPLOAD_TYPE_ZIP, "PK\x03\x04", 4, 0},
    {UPLOAD_TYPE_ZIP, "PK\x05\x06", 4, 0}, /* an empty archive */
};

/*  Declared types that name a signature: the bytes must carry it.  */
static const char *const s_strict[] = {
    UPLOAD_TYPE_PNG,  UPLOAD_TYPE_JPEG, UPLOAD_TYPE_GIF,
    UPLOAD_TYPE_WEBP, UPLOAD_TYPE_PDF,  UPLOAD_TYPE_ZIP,
};

#define S_UTF8_MAX 4

static bool s_has(const uint8_t *data, size_t len, const char *magic, size_t magic_len, size_t at)
{
    return len >= at + magic_len && memcmp(data + at, magic, magic_len) == 0;
}

/*  Bytes a UTF-8 sequence with this lead byte has; 0 for a byte that
    cannot start one.  */
static size_t s_utf8_length(uint8_t lead)
{
    if (lead >= 0xc2 && lead <= 0xdf)
        return 2;
    if (lead >= 0xe0 && lead <= 0xef)
        return 3;
    if (lead >= 0xf0 && lead <= 0xf4)
        return 4;
    return 0;
}

/*  True when the r bytes at p can begin a strict UTF-8 sequence that the
    edge of the sniffed window cut short. The second byte's allowed range
    depends on the lead (E0, ED, F0, F4 narrow it); one of these fillers
    lies in every such range, and later bytes take any of them.  */
static bool s_utf8_cut(const uint8_t *p, size_t r)
{
    static const uint8_t fillers[] = {0x80, 0x90, 0xa0};
    size_t need = s_utf8_length(p[0]);
    if (need == 0 || r >= need)
        return false;
    for (size_t f = 0; f < sizeof fillers; f++) {
        uint8_t whole[S_UTF8_MAX];
        memcpy(whole, p, r);
        memset(whole + r, fillers[f], need - r);
        uint32_t cp;
        if (sh_utf8_decode(whole, need, &cp) == need)
            return true;
    }
    return false;
}

static bool s_text_byte(uint8_t b)
{
    if (b == 0x7f)
        return false;
    return b >= 0x20 || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == 0x1b;
}

static bool s_is_text(const uint8_t *data, size_t n, bool cut_ok)
{
    size_t i = 0;
    while (i < n) {
        if (data[i] < 0x80) {
            if (!s_text_byte(data[i]))
                return false;
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = sh_utf8_decode(data + i, n - i, &cp);
        if (k > 0) {
            i += k;
            continue;
        }
        return cut_ok && s_utf8_cut(data + i, n - i);
    }
    return true;
}

const char *upload_sniff_type(const uint8_t *data, size_t len, bool more)
{
    size_t n = len < UPLOAD_SNIFF_BYTES ? len : UPLOAD_SNIFF_BYTES;
    if (n == 0)
        return UPLOAD_TYPE_OCTET;
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_signatures); i++) {
        const s_signature_t *s = &s_signatures[i];
        if (s_has(data, n, s->magic, s->len, s->at))
            return s->type;
    }
    if (s_has(data, n, "RIFF", 4, 0) && s_has(data, n, "WEBP", 4, 8))
        return UPLOAD_TYPE_WEBP;
    if (s_is_text(data, n, more || len > n))
        return UPLOAD_TYPE_TEXT;
    return UPLOAD_TYPE_OCTET;
}

static bool s_blank(char c)
{
    return c == ' ' || c == '\t';
}

bool upload_sniff_agrees(const char *declared, size_t declared_len, const char *sniffed)
{
    /*  the media type alone: up to ';', without the blanks around it  */
    const char *semi = declared ? memchr(declared, ';', declared_len) : NULL;
    size_t len = semi ? (size_t)(semi - declared) : declared_len;
    while (len && s_blank(declared[0])) {
        declared++;
        len--;
    }
    while (len && s_blank(declared[len - 1]))
        len--;
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_strict); i++)
        if (strlen(s_strict[i]) == len && strncasecmp(declared, s_strict[i], len) == 0)
            return strcmp(sniffed, s_strict[i]) == 0;
    if (len == strlen(UPLOAD_TYPE_TEXT) && strncasecmp(declared, UPLOAD_TYPE_TEXT, len) == 0)
        return strcmp(sniffed, UPLOAD_TYPE_TEXT) == 0;
    return true;
}
