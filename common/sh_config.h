/*  sh_config.h - typed settings table: defaults, then SHOAL_* environment
    variables, then command-line flags; validated at start.

    A service declares its settings as a table of sh_setting_t rows that
    point (by offset) into its own config struct. Setting "http_port" is
    read from SHOAL_HTTP_PORT and from --http-port N (or --http-port=N).
*/
#ifndef SH_CONFIG_H_INCLUDED
#define SH_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SH_CFG_STR, SH_CFG_INT, SH_CFG_BOOL } sh_cfg_type_t;

typedef struct {
    const char *name; /* lower_snake_case */
    sh_cfg_type_t type;
    const char *def;  /* default, as text */
    int64_t min, max; /* INT: range; STR: max is the longest length */
    const char *help;
    size_t offset; /* STR: char *, INT: int64_t, BOOL: bool */
} sh_setting_t;

/*  A row for config struct SH_CONFIG_T (define it before use).  */
#define SH_SETTING(type, name, field, def, min, max, help)                     \
    {                                                                          \
        name, SH_CFG_##type, def, min, max, help, offsetof(SH_CONFIG_T, field) \
    }

/*  Settings every service has; embed as member `base` of its config.  */
typedef struct {
    char *instance;
    char *log_level;
    bool log_json;
    int64_t load_max_ms;
    int64_t workers;
    int64_t drain_timeout_ms;
    char *health_endpoints;
    char *advertise;
    int64_t heartbeat_ms;
    int64_t capacity;
} sh_base_config_t;

#define SH_BASE_SETTINGS                                                                          \
    SH_SETTING(STR, "instance", base.instance, "", 0, 63,                                         \
               "instance name (default: <service>-<host>-<pid>)"),                                \
        SH_SETTING(STR, "log_level", base.log_level, "info", 0, 5, "debug, info, warn or error"), \
        SH_SETTING(BOOL, "log_json", base.log_json, "false", 0, 0,                                \
                   "log one JSON object per line instead of logfmt"),                             \
        SH_SETTING(INT, "load_max_ms", base.load_max_ms, "1000", 0, 60000,                        \
                   "cap for the `load` operation (ms of CPU per request)"),                       \
        SH_SETTING(INT, "workers", base.workers, "2", 1, 64,                                      \
                   "worker threads for blocking work such as `load`"),                            \
        SH_SETTING(INT, "drain_timeout_ms", base.drain_timeout_ms, "5000", 0, 600000,             \
                   "on SIGTERM, how long to wait for in-flight work before exiting"),             \
        SH_SETTING(STR, "health_endpoints", base.health_endpoints, "", 0, 2047,                   \
                   "comma-separated ROUTER endpoints of every health instance (empty: no "        \
                   "registry)"),                                                                  \
        SH_SETTING(STR, "advertise", base.advertise, "", 0, 255,                                  \
                   "endpoint others use to reach this instance (default: the bound one, a "       \
                   "wildcard host replaced by this host's address)"),                             \
        SH_SETTING(INT, "heartbeat_ms", base.heartbeat_ms, "300", 50, 10000,                      \
                   "heartbeat interval; an instance missing 3 is declared dead"),                 \
        SH_SETTING(INT, "capacity", base.capacity, "1000", 1, 1000000,                            \
                   "requests in flight at which the instance reports itself busy")

/*  Load settings into config (zeroed by the caller) from the table.
    Returns 0 when the service should start, 1 when --help or --version
    was answered (exit 0), -1 on an invalid setting (message printed on
    stderr, exit 2). Allocated strings are released by sh_config_free.  */
int sh_config_load(const sh_setting_t *table, size_t count, void *config, const char *service,
                   const char *summary, int argc, char **argv);

/*  Print the --help text: every setting with its variable, flag, default.  */
void sh_config_usage(const sh_setting_t *table, size_t count, const char *service,
                     const char *summary);

/*  What every main does first: load the settings (config's base at
    `base`), finish the base settings, and on --help/--version or an invalid
    setting release the strings. Returns -1 to go on, else the exit code
    (0 after --help/--version, 2 for an invalid setting).  */
int sh_config_start(const sh_setting_t *table, size_t count, void *config, sh_base_config_t *base,
                    const char *service, const char *summary, int argc, char **argv);

/*  Release strings allocated by sh_config_load.  */
void sh_config_free(const sh_setting_t *table, size_t count, void *config);

/*  Fill base->instance with a default name when it is empty and check the
    log level. Returns 0 or -1 (message printed).  */
int sh_config_base_finish(sh_base_config_t *base, const char *service);

#endif
