/*  upload_sniff.h - what the first bytes of an upload are, and whether
    that agrees with the type its sender declared. Pure functions: no
    allocation, no state, no I/O.

    The board stores what the bytes are, never what the client said: a
    signature (PNG, JPEG, GIF, WebP, PDF, ZIP), else text/plain when the
    first UPLOAD_SNIFF_BYTES are strict UTF-8 without control bytes (but
    tab, newline, carriage return, form feed and escape), else
    application/octet-stream.
*/
#ifndef UPLOAD_SNIFF_H_INCLUDED
#define UPLOAD_SNIFF_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  Bytes the sniffer looks at (fewer when the file is shorter).  */
#define UPLOAD_SNIFF_BYTES 512

#define UPLOAD_TYPE_PNG   "image/png"
#define UPLOAD_TYPE_JPEG  "image/jpeg"
#define UPLOAD_TYPE_GIF   "image/gif"
#define UPLOAD_TYPE_WEBP  "image/webp"
#define UPLOAD_TYPE_PDF   "application/pdf"
#define UPLOAD_TYPE_ZIP   "application/zip"
#define UPLOAD_TYPE_TEXT  "text/plain"
#define UPLOAD_TYPE_OCTET "application/octet-stream"

/*  The type of a file from its first len bytes (at most
    UPLOAD_SNIFF_BYTES are looked at). more says the file goes on after
    them, so a UTF-8 sequence cut at the end still counts as text. Returns
    one of the UPLOAD_TYPE_* strings (static).  */
const char *upload_sniff_type(const uint8_t *data, size_t len, bool more);

/*  Whether bytes sniffed as `sniffed` (an UPLOAD_TYPE_* string) may be
    stored under the declared type (declared_len bytes, not NUL-
    terminated; parameters after ';', surrounding blanks and case are
    ignored). A declared signature type must be what was sniffed, declared
    text/plain must be text; anything else declared is accepted.  */
bool upload_sniff_agrees(const char *declared, size_t declared_len, const char *sniffed);

#endif
