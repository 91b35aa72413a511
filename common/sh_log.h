/*  sh_log.h - structured logging: one line per event on stderr.

    Text format (logfmt):
      ts=2026-11-22T04:40:00.123Z level=info service=edge instance=edge-1 rid=- msg="..."
    JSON format: the same keys as one JSON object per line.
    Never log secrets (session ids, passwords) or request bodies.
*/
#ifndef SH_LOG_H_INCLUDED
#define SH_LOG_H_INCLUDED

#include <stdbool.h>

#include "sh_util.h"

typedef enum { SH_LOG_DEBUG = 0, SH_LOG_INFO, SH_LOG_WARN, SH_LOG_ERROR } sh_log_level_t;

/*  Set who is logging and how. Strings are copied.  */
void sh_log_init(const char *service, const char *instance, sh_log_level_t level, bool json);
/*  "debug", "info", "warn", "error" -> level; -1 when unknown.  */
int sh_log_level_parse(const char *name);
bool sh_log_enabled(sh_log_level_t level);

/*  Log one event; rid is the request id or NULL.  */
void sh_log(sh_log_level_t level, const char *rid, const char *fmt, ...) SH_PRINTF(3, 4);

#define sh_debug(...) sh_log(SH_LOG_DEBUG, NULL, __VA_ARGS__)
#define sh_info(...)  sh_log(SH_LOG_INFO, NULL, __VA_ARGS__)
#define sh_warn(...)  sh_log(SH_LOG_WARN, NULL, __VA_ARGS__)
#define sh_error(...) sh_log(SH_LOG_ERROR, NULL, __VA_ARGS__)

#endif
