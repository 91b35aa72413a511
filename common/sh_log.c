/*  sh_log.c - structured logging.  */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sh_log.h"

#define SH_LOG_LINE_MAX 2048
#define SH_LOG_NAME_MAX 64

static struct {
    char service[SH_LOG_NAME_MAX];
    char instance[SH_LOG_NAME_MAX];
    sh_log_level_t level;
    bool json;
} s_log = {"shoal", "-", SH_LOG_INFO, false};

static const char *s_level_names[] = {"debug", "info", "warn", "error"};

void sh_log_init(const char *service, const char *instance, sh_log_level_t level, bool json)
{
    snprintf(s_log.service, sizeof s_log.service, "%s", service ? service : "shoal");
    snprintf(s_log.instance, sizeof s_log.instance, "%s", instance ? instance : "-");
    s_log.level = level;
    s_log.json = json;
}

int sh_log_level_parse(const char *name)
{
    for (int i = 0; i < (int)SH_ARRAY_SIZE(s_level_names); i++)
        if (name && strcmp(name, s_level_names[i]) == 0)
            return i;
    return -1;
}

bool sh_log_enabled(sh_log_level_t level)
{
    return level >= s_log.level;
}

/*  Appends text quoted for logfmt or JSON (both escape " \ and control
    characters the same way for the characters we emit).  */
static void s_quote(sh_buf_t *out, const char *text)
{
    sh_buf_append(out, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            sh_buf_append(out, esc, 2);
        } else if (*p == '\n')
            sh_buf_append(out, "\\n", 2);
        else if (*p < 0x20 || *p == 0x7f)
            sh_buf_printf(out, "\\u%04x", *p);
        else
            sh_buf_append(out, p, 1);
    }
    sh_buf_append(out, "\"", 1);
}

void sh_log(sh_log_level_t level, const char *rid, const char *fmt, ...)
{
    if (!sh_log_enabled(level))
        return;
    char msg[SH_LOG_LINE_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(msg, sizeof msg, fmt, args);
    va_end(args);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);

    sh_buf_t line = {0};
    if (s_log.json) {
        sh_buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"service\":", when,
                      s_level_names[level]);
        s_quote(&line, s_log.service);
        sh_buf_append(&line, ",\"instance\":", 12);
        s_quote(&line, s_log.instance);
        sh_buf_append(&line, ",\"rid\":", 7);
        s_quote(&line, rid ? rid : "-");
        sh_buf_append(&line, ",\"msg\":", 7);
        s_quote(&line, msg);
        sh_buf_append(&line, "}\n", 2);
    } else {
        sh_buf_printf(&line, "ts=%s level=%s service=%s instance=%s rid=%s msg=", when,
                      s_level_names[level], s_log.service, s_log.instance, rid ? rid : "-");
        s_quote(&line, msg);
        sh_buf_append(&line, "\n", 1);
    }
    if (line.data) {
        /*  one write per line keeps lines whole when processes share stderr  */
        ssize_t rc = write(STDERR_FILENO, line.data, line.len);
        (void)rc;
    }
    sh_buf_free(&line);
}
