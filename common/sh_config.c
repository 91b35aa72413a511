/*  sh_config.c - typed settings table.  */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "sh_config.h"
#include "sh_log.h"
#include "sh_util.h"

#define SH_CONFIG_NAME_MAX 64
#define SH_VERSION_TEXT    "0.1.0"

/*  "http_port" -> "SHOAL_HTTP_PORT"  */
static void s_env_name(const char *name, char *out, size_t size)
{
    int n = snprintf(out, size, "SHOAL_");
    for (const char *p = name; *p && (size_t)n + 1 < size; p++)
        out[n++] = (char)toupper((unsigned char)*p);
    out[n] = 0;
}

/*  "http_port" -> "http-port"  */
static void s_flag_name(const char *name, char *out, size_t size)
{
    snprintf(out, size, "%s", name);
    for (char *p = out; *p; p++)
        if (*p == '_')
            *p = '-';
}

static int s_parse_bool(const char *text, bool *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"};
    static const char *no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(yes); i++) {
        if (strcasecmp(text, yes[i]) == 0)
            return *out = true, 0;
        if (strcasecmp(text, no[i]) == 0)
            return *out = false, 0;
    }
    return -1;
}

/*  Store text into the setting; prints why when it is invalid.  */
static int s_assign(const sh_setting_t *s, void *config, const char *text, const char *source)
{
    char *slot = (char *)config + s->offset;
    switch (s->type) {
    case SH_CFG_STR: {
        if ((int64_t)strlen(text) > s->max) {
            fprintf(stderr, "invalid %s: %s is longer than %lld characters\n", source, s->name,
                    (long long)s->max);
            return -1;
        }
        char *copy = strdup(text);
        if (!copy)
            return -1;
        free(*(char **)slot);
        *(char **)slot = copy;
        return 0;
    }
    case SH_CFG_INT:
        if (sh_parse_int(text, s->min, s->max, (int64_t *)slot)) {
            fprintf(stderr, "invalid %s: %s=\"%s\" is not a whole number in %lld..%lld\n", source,
                    s->name, text, (long long)s->min, (long long)s->max);
            return -1;
        }
        return 0;
    case SH_CFG_BOOL:
        if (s_parse_bool(text, (bool *)slot)) {
            fprintf(stderr, "invalid %s: %s=\"%s\" is not a boolean (true/false/1/0/yes/no)\n",
                    source, s->name, text);
            return -1;
        }
        return 0;
    }
    return -1;
}

void sh_config_usage(const sh_setting_t *table, size_t count, const char *service,
                     const char *summary)
{
    printf("usage: shoal-%s [--setting VALUE]...\n%s\n\n", service, summary);
    printf("Every setting is read from its default, then from the environment variable,\n"
           "then from the flag. Settings:\n\n");
    for (size_t i = 0; i < count; i++) {
        const sh_setting_t *s = &table[i];
        char env[SH_CONFIG_NAME_MAX], flag[SH_CONFIG_NAME_MAX];
        s_env_name(s->name, env, sizeof env);
        s_flag_name(s->name, flag, sizeof flag);
        const char *kind = s->type == SH_CFG_INT ? "N" : s->type == SH_CFG_BOOL ? "BOOL" : "TEXT";
        printf("  --%s %s  (%s)\n      %s\n      default: \"%s\"", flag, kind, env, s->help,
               s->def);
        if (s->type == SH_CFG_INT)
            printf("; range %lld..%lld", (long long)s->min, (long long)s->max);
        printf("\n");
    }
    printf("\n  --help     print this text\n  --version  print the version\n");
}

int sh_config_load(const sh_setting_t *table, size_t count, void *config, const char *service,
                   const char *summary, int argc, char **argv)
{
    for (size_t i = 0; i < count; i++)
        if (s_assign(&table[i], config, table[i].def, "default"))
            return -1;
    for (size_t i = 0; i < count; i++) {
        char env[SH_CONFIG_NAME_MAX];
        s_env_name(table[i].name, env, sizeof env);
        const char *value = getenv(env);
        if (value && s_assign(&table[i], config, value, env))
            return -1;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            sh_config_usage(table, count, service, summary);
            return 1;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("shoal-%s %s\n", service, SH_VERSION_TEXT);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "unexpected argument \"%s\" (see --help)\n", arg);
            return -1;
        }
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        const sh_setting_t *found = NULL;
        for (size_t i = 0; i < count && !found; i++) {
            char flag[SH_CONFIG_NAME_MAX];
            s_flag_name(table[i].name, flag, sizeof flag);
            if (strlen(flag) == name_len && strncmp(flag, arg + 2, name_len) == 0)
                found = &table[i];
        }
        if (!found) {
            fprintf(stderr, "unknown flag \"%s\" (see --help)\n", arg);
            return -1;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (found->type == SH_CFG_BOOL && (a + 1 >= argc || strncmp(argv[a + 1], "--", 2) == 0))
                value = "true";
            else if (a + 1 < argc)
                value = argv[++a];
            else {
                fprintf(stderr, "flag \"%s\" needs a value\n", arg);
                return -1;
            }
        }
        if (s_assign(found, config, value, "flag"))
            return -1;
    }
    return 0;
}

void sh_config_free(const sh_setting_t *table, size_t count, void *config)
{
    for (size_t i = 0; i < count; i++)
        if (table[i].type == SH_CFG_STR) {
            char **slot = (char **)((char *)config + table[i].offset);
            free(*slot);
            *slot = NULL;
        }
}

int sh_config_base_finish(sh_base_config_t *base, const char *service)
{
    if (sh_log_level_parse(base->log_level) < 0) {
        fprintf(stderr, "invalid log_level \"%s\" (debug, info, warn, error)\n", base->log_level);
        return -1;
    }
    if (!base->instance[0]) {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        char name[SH_CONFIG_NAME_MAX];
        snprintf(name, sizeof name, "%s-%.30s-%d", service, host, (int)getpid());
        free(base->instance);
        base->instance = strdup(name);
        if (!base->instance)
            return -1;
    }
    for (const char *p = base->instance; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-_.", *p)) {
            fprintf(stderr, "invalid instance \"%s\": use letters, digits, - _ .\n",
                    base->instance);
            return -1;
        }
    return 0;
}

int sh_config_start(const sh_setting_t *table, size_t count, void *config, sh_base_config_t *base,
                    const char *service, const char *summary, int argc, char **argv)
{
    int rc = sh_config_load(table, count, config, service, summary, argc, argv);
    if (rc == 0 && sh_config_base_finish(base, service))
        rc = -1;
    if (rc == 0)
        return -1;
    sh_config_free(table, count, config);
    return rc > 0 ? 0 : 2;
}
