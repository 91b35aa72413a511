/*  test_config.c - defaults, then SHOAL_* environment, then flags; bad
    values are refused with a message, never half-applied silently.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <cmocka.h>

#include "sh_config.h"
#include "sh_util.h"

typedef struct {
    sh_base_config_t base;
    char *name;
    int64_t port;
    bool secure;
} t_config_t;

#define SH_CONFIG_T t_config_t
static const sh_setting_t s_table[] = {
    SH_BASE_SETTINGS,
    SH_SETTING(STR, "name", name, "alpha", 0, 8, "a name"),
    SH_SETTING(INT, "test_port", port, "8081", 1, 65535, "a port"),
    SH_SETTING(BOOL, "secure", secure, "false", 0, 0, "a flag"),
};
#undef SH_CONFIG_T

static int s_load(t_config_t *config, int argc, char **argv)
{
    memset(config, 0, sizeof *config);
    return sh_config_load(s_table, SH_ARRAY_SIZE(s_table), config, "test", "test", argc, argv);
}

static int s_setup(void **state)
{
    (void)state;
    unsetenv("SHOAL_NAME");
    unsetenv("SHOAL_TEST_PORT");
    unsetenv("SHOAL_SECURE");
    unsetenv("SHOAL_INSTANCE");
    return 0;
}

static void test_config_defaults_apply(void **state)
{
    (void)state;
    t_config_t c;
    char *argv[] = {"prog", NULL};
    assert_int_equal(s_load(&c, 1, argv), 0);
    assert_string_equal(c.name, "alpha");
    assert_int_equal(c.port, 8081);
    assert_false(c.secure);
    assert_int_equal(c.base.workers, 2);
    assert_int_equal(sh_config_base_finish(&c.base, "test"), 0);
    assert_true(strncmp(c.base.instance, "test-", 5) == 0);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
}

static void test_config_environment_overrides_default_and_flag_overrides_both(void **state)
{
    (void)state;
    t_config_t c;
    setenv("SHOAL_TEST_PORT", "9000", 1);
    setenv("SHOAL_NAME", "beta", 1);
    char *argv[] = {"prog", "--test-port", "9001", "--secure", NULL};
    assert_int_equal(s_load(&c, 4, argv), 0);
    assert_int_equal(c.port, 9001);
    assert_string_equal(c.name, "beta");
    assert_true(c.secure);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    char *argv2[] = {"prog", "--name=gamma", "--secure=no", NULL};
    assert_int_equal(s_load(&c, 3, argv2), 0);
    assert_string_equal(c.name, "gamma");
    assert_false(c.secure);
    assert_int_equal(c.port, 9000);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
}

static void test_config_refuses_invalid_values(void **state)
{
    (void)state;
    t_config_t c;
    const char *bad_ports[] = {"0", "65536", "12x", "", "-1", "99999999999999999999"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad_ports); i++) {
        setenv("SHOAL_TEST_PORT", bad_ports[i], 1);
        char *argv[] = {"prog", NULL};
        assert_int_equal(s_load(&c, 1, argv), -1);
        sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    }
    unsetenv("SHOAL_TEST_PORT");
    char *too_long[] = {"prog", "--name", "123456789", NULL};
    assert_int_equal(s_load(&c, 3, too_long), -1);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    char *bad_bool[] = {"prog", "--secure=maybe", NULL};
    assert_int_equal(s_load(&c, 2, bad_bool), -1);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    char *unknown[] = {"prog", "--nope", "1", NULL};
    assert_int_equal(s_load(&c, 3, unknown), -1);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    char *missing[] = {"prog", "--test-port", NULL};
    assert_int_equal(s_load(&c, 2, missing), -1);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    char *positional[] = {"prog", "stray", NULL};
    assert_int_equal(s_load(&c, 2, positional), -1);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
}

static void test_config_help_lists_every_setting(void **state)
{
    (void)state;
    t_config_t c;
    char *argv[] = {"prog", "--help", NULL};
    fflush(stdout);
    FILE *saved = stdout;
    char *text = NULL;
    size_t size = 0;
    stdout = open_memstream(&text, &size);
    int rc = s_load(&c, 2, argv);
    fclose(stdout);
    stdout = saved;
    assert_int_equal(rc, 1);
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_table); i++) {
        char env[64] = "SHOAL_";
        for (size_t k = 0; s_table[i].name[k]; k++)
            env[6 + k] = (char)toupper((unsigned char)s_table[i].name[k]);
        assert_non_null(strstr(text, env));
    }
    assert_non_null(strstr(text, "--test-port"));
    free(text);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
}

static void test_config_instance_names_are_checked(void **state)
{
    (void)state;
    t_config_t c;
    setenv("SHOAL_INSTANCE", "edge 1;rm", 1);
    char *argv[] = {"prog", NULL};
    assert_int_equal(s_load(&c, 1, argv), 0);
    assert_int_equal(sh_config_base_finish(&c.base, "test"), -1);
    sh_config_free(s_table, SH_ARRAY_SIZE(s_table), &c);
    unsetenv("SHOAL_INSTANCE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_config_defaults_apply, s_setup),
        cmocka_unit_test_setup(test_config_environment_overrides_default_and_flag_overrides_both,
                               s_setup),
        cmocka_unit_test_setup(test_config_refuses_invalid_values, s_setup),
        cmocka_unit_test_setup(test_config_help_lists_every_setting, s_setup),
        cmocka_unit_test_setup(test_config_instance_names_are_checked, s_setup),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
