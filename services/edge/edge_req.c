/*  edge_req.c - pure helpers that read request fields: cookies, the
    read-your-writes token, query arguments, numeric ids, and the client
    address behind trusted proxies (addresses parsed by inet_pton only).

    Nothing here touches libwebsockets or a connection, so every function
    is unit-tested on plain strings (tests/unit/test_edge_req.c).
*/
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "edge.h"
#include "sh_util.h"

#define EDGE_ID_DIGITS_MAX 20 /* UINT64_MAX has 20 digits */
#define EDGE_MAPPED_V4_LEN 12 /* ::ffff:a.b.c.d: 80 zero bits, 16 one bits */

int edge_cookie_get(const char *header, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);
    out[0] = 0;
    for (const char *p = header; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ';' || *p == ',')
            p++;
        size_t pair = strcspn(p, ";,");
        if (pair > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t vlen = pair - nlen - 1;
            /*  trailing blanks are the separator's, not the value's  */
            while (vlen && (p[nlen + 1 + vlen - 1] == ' ' || p[nlen + 1 + vlen - 1] == '\t'))
                vlen--;
            if (vlen >= size)
                return -1;
            memcpy(out, p + nlen + 1, vlen);
            out[vlen] = 0;
            return 0;
        }
        p += pair;
    }
    return -1;
}

int edge_parse_id(const char *text, uint64_t *out)
{
    int64_t value;
    size_t n = text ? strlen(text) : 0;
    /*  digits only: strtoll would also take blanks and signs  */
    if (n == 0 || n > EDGE_ID_DIGITS_MAX || strspn(text, "0123456789") != n ||
        sh_parse_int(text, 1, INT64_MAX, &value))
        return -1;
    *out = (uint64_t)value;
    return 0;
}

uint64_t edge_lsn_parse(const char *text)
{
    uint64_t lsn = 0;
    return edge_parse_id(text, &lsn) == 0 ? lsn : 0;
}

const char *edge_arg_find(const char *args, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t at = 0; at < len;) {
        const char *arg = args + at;
        size_t alen = strnlen(arg, len - at);
        if (alen >= nlen && strncmp(arg, name, nlen) == 0 && (arg[nlen] == '=' || alen == nlen))
            return alen == nlen ? arg + nlen : arg + nlen + 1;
        at += alen + 1;
    }
    return NULL;
}

/*  --- addresses -----------------------------------------------------------  */

typedef struct {
    int family;
    unsigned char bytes[16];
    int bits; /* 32 or 128 */
} s_addr_t;

/*  Parse a textual IPv4 or IPv6 address (an IPv4-mapped IPv6 address
    becomes IPv4, so both spellings match the same rules). 0 or -1.  */
static int s_addr_parse(const char *text, s_addr_t *addr)
{
    static const unsigned char mapped[EDGE_MAPPED_V4_LEN] = {0, 0, 0, 0, 0,    0,
                                                             0, 0, 0, 0, 0xff, 0xff};
    memset(addr, 0, sizeof *addr);
    if (inet_pton(AF_INET, text, addr->bytes) == 1) {
        addr->family = AF_INET;
        addr->bits = 32;
        return 0;
    }
    if (inet_pton(AF_INET6, text, addr->bytes) == 1) {
        addr->family = AF_INET6;
        addr->bits = 128;
        if (memcmp(addr->bytes, mapped, sizeof mapped) == 0) {
            memmove(addr->bytes, addr->bytes + sizeof mapped, 4);
            memset(addr->bytes + 4, 0, sizeof addr->bytes - 4);
            addr->family = AF_INET;
            addr->bits = 32;
        }
        return 0;
    }
    return -1;
}

/*  Parse "address" or "address/prefix" (entry is len bytes, not
    NUL-terminated). Returns 0 or -1.  */
static int s_cidr_parse(const char *entry, size_t len, s_addr_t *net, int *prefix)
{
    char text[INET6_ADDRSTRLEN + 8];
    if (len == 0 || len >= sizeof text)
        return -1;
    memcpy(text, entry, len);
    text[len] = 0;
    char *slash = strchr(text, '/');
    if (slash)
        *slash = 0;
    if (s_addr_parse(text, net))
        return -1;
    *prefix = net->bits;
    if (slash) {
        int64_t bits;
        size_t n = strlen(slash + 1);
        if (n == 0 || strspn(slash + 1, "0123456789") != n ||
            sh_parse_int(slash + 1, 0, net->bits, &bits))
            return -1;
        *prefix = (int)bits;
    }
    return 0;
}

static bool s_addr_in(const s_addr_t *addr, const s_addr_t *net, int prefix)
{
    if (addr->family != net->family)
        return false;
    int whole = prefix / 8, rest = prefix % 8;
    if (memcmp(addr->bytes, net->bytes, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (addr->bytes[whole] & mask) == (net->bytes[whole] & mask);
}

/*  Calls fn for each entry of a comma list with blanks trimmed; stops at
    the first nonzero return and returns it.  */
static int s_each_entry(const char *list, int (*fn)(const char *entry, size_t len, void *arg),
                        void *arg)
{
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *start = p;
        while (n && (*start == ' ' || *start == '\t')) {
            start++;
            n--;
        }
        while (n && (start[n - 1] == ' ' || start[n - 1] == '\t'))
            n--;
        if (n) {
            int rc = fn(start, n, arg);
            if (rc)
                return rc;
        }
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

typedef struct {
    s_addr_t addr;
    char *bad;
    size_t bad_size;
} s_match_t;

static int s_match_entry(const char *entry, size_t len, void *arg)
{
    s_match_t *match = arg;
    s_addr_t net;
    int prefix;
    if (s_cidr_parse(entry, len, &net, &prefix)) {
        if (match->bad)
            snprintf(match->bad, match->bad_size, "%.*s", (int)len, entry);
        return -1;
    }
    return s_addr_in(&match->addr, &net, prefix) ? 1 : 0;
}

int edge_proxies_check(const char *list, char *bad, size_t bad_size)
{
    s_match_t match = {.bad = bad, .bad_size = bad_size};
    /*  an address no entry can contain: only parse errors stop the walk  */
    match.addr.family = AF_UNSPEC;
    return s_each_entry(list, s_match_entry, &match) < 0 ? -1 : 0;
}

bool edge_ip_in_list(const char *ip, const char *list)
{
    s_match_t match = {0};
    if (!ip || s_addr_parse(ip, &match.addr))
        return false;
    return s_each_entry(list, s_match_entry, &match) == 1;
}

/*  Normalised text of an address (inet_ntop of what inet_pton read).  */
static int s_addr_text(const char *text, size_t len, char *out, size_t size)
{
    char copy[INET6_ADDRSTRLEN + 1];
    s_addr_t addr;
    if (len == 0 || len >= sizeof copy)
        return -1;
    memcpy(copy, text, len);
    copy[len] = 0;
    if (s_addr_parse(copy, &addr) || !inet_ntop(addr.family, addr.bytes, out, (socklen_t)size))
        return -1;
    return 0;
}

const char *edge_client_ip(const char *peer, const char *forwarded, const char *trusted, char *out,
                           size_t size)
{
    out[0] = 0;
    if (peer && edge_ip_in_list(peer, trusted) && forwarded && *forwarded) {
        /*  the proxy appends the address it saw: the last entry  */
        const char *last = strrchr(forwarded, ',');
        last = last ? last + 1 : forwarded;
        while (*last == ' ' || *last == '\t')
            last++;
        size_t n = strlen(last);
        while (n && (last[n - 1] == ' ' || last[n - 1] == '\t'))
            n--;
        if (s_addr_text(last, n, out, size) == 0)
            return out;
    }
    if (!peer || s_addr_text(peer, strlen(peer), out, size))
        snprintf(out, size, "%s", peer ? peer : "");
    return out;
}

void edge_lowercase(const char *in, size_t len, char *out, size_t size)
{
    size_t n = len < size ? len : size - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[n] = 0;
}

static int s_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int edge_file_name_decode(const char *in, char *out, size_t size, const char **why)
{
    size_t n = 0;
    for (const char *p = in; *p; p++) {
        int byte = (unsigned char)*p;
        if (*p == '%') {
            int hi = s_hex_value(p[1]), lo = hi < 0 ? -1 : s_hex_value(p[2]);
            if (lo < 0) {
                *why = "X-File-Name has a bad percent-escape";
                return -1;
            }
            byte = hi * 16 + lo;
            p += 2;
        }
        if (n + 1 >= size || n >= SH_FILENAME_MAX) {
            *why = "file name longer than 1024 bytes";
            return -1;
        }
        out[n++] = (char)byte;
    }
    out[n] = 0;
    if (n == 0) {
        *why = "X-File-Name (the file name, percent-encoded) is required";
        return -1;
    }
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t used = sh_utf8_decode((const unsigned char *)out + i, n - i, &cp);
        if (used == 0) {
            *why = "file name is not valid UTF-8";
            return -1;
        }
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) { /* C0, DEL and C1 */
            *why = "file name contains a control character";
            return -1;
        }
        i += used;
    }
    return (int)n;
}

/*  RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"  */
static bool s_attr_char(unsigned char c)
{
    return isalnum(c) || (c && strchr("!#$&+-.^_`|~", c));
}

int edge_content_disposition(const char *name, char *out, size_t size)
{
    sh_buf_t buf = {0};
    int rc = sh_buf_append(&buf, "attachment; filename=\"", 22);
    /*  the fallback: printable ASCII without quote, backslash or slash
        (some clients take it as a path), every other byte '_'  */
    for (const unsigned char *p = (const unsigned char *)name; *p && rc == 0; p++) {
        char c = (*p >= 0x20 && *p < 0x7f && !strchr("\"\\/%", *p)) ? (char)*p : '_';
        rc = sh_buf_append(&buf, &c, 1);
    }
    rc |= sh_buf_append(&buf, "\"; filename*=UTF-8''", 20);
    for (const unsigned char *p = (const unsigned char *)name; *p && rc == 0; p++) {
        char esc[4];
        if (s_attr_char(*p))
            rc = sh_buf_append(&buf, p, 1);
        else {
            snprintf(esc, sizeof esc, "%%%02X", *p);
            rc = sh_buf_append(&buf, esc, 3);
        }
    }
    if (rc == 0 && buf.len < size) {
        memcpy(out, buf.data, buf.len);
        out[buf.len] = 0;
    } else
        rc = -1;
    sh_buf_free(&buf);
    return rc;
}

/*  Digits at *p as a number (at most 19); advances *p. -1 when none.  */
static int s_range_number(const char **p, uint64_t *out)
{
    const char *start = *p;
    uint64_t value = 0;
    while (isdigit((unsigned char)**p) && *p - start < 19)
        value = value * 10 + (uint64_t)(*(*p)++ - '0');
    if (*p == start || isdigit((unsigned char)**p))
        return -1;
    *out = value;
    return 0;
}

int edge_range_parse(const char *header, uint64_t size, uint64_t *first, uint64_t *last)
{
    if (!header || strncmp(header, "bytes=", 6) != 0)
        return 0;
    const char *p = header + 6;
    while (*p == ' ')
        p++;
    uint64_t a = 0, b = 0;
    bool has_first = isdigit((unsigned char)*p);
    if (has_first && s_range_number(&p, &a))
        return 0;
    if (*p++ != '-')
        return 0;
    bool has_last = isdigit((unsigned char)*p);
    if (has_last && s_range_number(&p, &b))
        return 0;
    while (*p == ' ')
        p++;
    if (*p || (!has_first && !has_last))
        return 0; /* several ranges, or junk: send the whole object */
    if (!has_first) {
        /*  the last b bytes  */
        if (b == 0 || size == 0)
            return -1;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return 1;
    }
    if (has_last && b < a)
        return 0; /* invalid: ignored, as RFC 9110 14.2 allows */
    if (a >= size)
        return -1;
    *first = a;
    *last = has_last && b < size ? b : size - 1;
    return 1;
}

/*  --- the WebSocket proof cookie ---------------------------------------------------  */

/*  "<user_id>.<expires>": the part of the proof that is signed with sid  */
static void s_proof_mac(const unsigned char *key, const char *sid, uint64_t user_id,
                        int64_t expires_s, unsigned char mac[crypto_auth_hmacsha256_BYTES])
{
    char text[EDGE_COOKIE_MAX + 64];
    int n = snprintf(text, sizeof text, "ws1|%s|%llu|%lld", sid, (unsigned long long)user_id,
                     (long long)expires_s);
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, key, EDGE_SECRET_BYTES);
    crypto_auth_hmacsha256_update(&state, (const unsigned char *)text, (size_t)n);
    crypto_auth_hmacsha256_final(&state, mac);
}

void edge_ws_proof_make(const unsigned char *key, const char *sid, uint64_t user_id,
                        int64_t expires_s, char *out, size_t size)
{
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    s_proof_mac(key, sid, user_id, expires_s, mac);
    char b64[sodium_base64_ENCODED_LEN(sizeof mac, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    sodium_bin2base64(b64, sizeof b64, mac, sizeof mac, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(out, size, "%llu.%lld.%s", (unsigned long long)user_id, (long long)expires_s, b64);
}

uint64_t edge_ws_proof_check(const unsigned char *key, const char *sid, const char *proof,
                             int64_t now_s)
{
    if (!sid || !sid[0] || !proof)
        return 0;
    const char *dot1 = strchr(proof, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || dot1 - proof > 20 || dot2 - dot1 - 1 > 20)
        return 0;
    char id_text[24], exp_text[24];
    memcpy(id_text, proof, (size_t)(dot1 - proof));
    id_text[dot1 - proof] = 0;
    memcpy(exp_text, dot1 + 1, (size_t)(dot2 - dot1 - 1));
    exp_text[dot2 - dot1 - 1] = 0;
    uint64_t user_id;
    int64_t expires_s;
    if (edge_parse_id(id_text, &user_id) != 0 ||
        sh_parse_int(exp_text, 0, INT64_MAX, &expires_s) != 0 || expires_s < now_s)
        return 0;
    unsigned char given[crypto_auth_hmacsha256_BYTES], want[crypto_auth_hmacsha256_BYTES];
    size_t given_len = 0;
    if (sodium_base642bin(given, sizeof given, dot2 + 1, strlen(dot2 + 1), NULL, &given_len, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        given_len != sizeof given)
        return 0;
    s_proof_mac(key, sid, user_id, expires_s, want);
    return sodium_memcmp(given, want, sizeof want) == 0 ? user_id : 0;
}

bool edge_origin_listed(const char *list, const char *origin)
{
    size_t len = strlen(origin);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        while (n && *p == ' ') {
            p++;
            n--;
        }
        while (n && p[n - 1] == ' ')
            n--;
        if (len && n == len && strncmp(p, origin, n) == 0)
            return true;
        p = comma ? comma + 1 : NULL;
    }
    return false;
}
