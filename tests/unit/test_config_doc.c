/* config/README.md documents exactly the keys of proxy/config.c's key table: every key the
 * parser knows has a row ("| `key` |") in the table under each "### [section]" heading it
 * may appear in, every row names a key the parser knows, a [tls] key's [frontend] row says
 * it defaults to the [tls] value (the merge step), and no key listed under "## Planned" is
 * known yet. Run from the repository root (make unit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define DOC "config/README.md"
#define MAX_ROWS 256

struct row {
    char section[16];
    char key[64];
    char def[128]; /* the default column, as written */
    int line;
};

static struct row rows[MAX_ROWS], planned[MAX_ROWS];
static int n_rows, n_planned;

static bool known(const char *section, const char *key)
{
    const char *s, *k;
    for (size_t i = 0; (k = gw_config_key(i, &s)) != NULL; i++)
        if (strcmp(s, section) == 0 && strcmp(k, key) == 0)
            return true;
    return false;
}

/* "`word`" at p: copy word, return the character after the closing backquote or NULL. */
static const char *backquoted(const char *p, char *out, size_t cap)
{
    if (*p != '`')
        return NULL;
    const char *end = strchr(p + 1, '`');
    if (!end || (size_t)(end - p - 1) >= cap)
        return NULL;
    memcpy(out, p + 1, (size_t)(end - p - 1));
    out[end - p - 1] = '\0';
    return end + 1;
}

static void read_doc(void)
{
    FILE *f = fopen(DOC, "r");
    if (!f)
        fail_msg("cannot open %s: run the unit tests from the repository root", DOC);
    char line[1024], section[16] = "";
    bool in_planned = false;
    int lineno = 0;
    n_rows = n_planned = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (strncmp(line, "## ", 3) == 0) { /* a new part: no key table until "### [" */
            section[0] = '\0';
            in_planned = strncmp(line, "## Planned", 10) == 0;
        } else if (strncmp(line, "### [", 5) == 0) {
            size_t n = strcspn(line + 5, " ]");
            assert_true(n > 0 && n < sizeof section);
            memcpy(section, line + 5, n);
            section[n] = '\0';
            in_planned = false;
        } else if (section[0] && strncmp(line, "| `", 3) == 0) {
            assert_true(n_rows < MAX_ROWS);
            struct row *r = &rows[n_rows++];
            const char *after = backquoted(line + 2, r->key, sizeof r->key);
            if (!after || strncmp(after, " | ", 3) != 0)
                fail_msg("%s:%d: a key row must start with | `key` |", DOC, lineno);
            size_t n = strcspn(after + 3, "|");
            while (n && after[3 + n - 1] == ' ')
                n--;
            snprintf(r->def, sizeof r->def, "%.*s", (int)n, after + 3);
            strcpy(r->section, section);
            r->line = lineno;
        } else if (in_planned && strncmp(line, "- `[", 4) == 0) {
            /* "- `[sect] key`, `[sect] key`: what" */
            const char *p = line + 2;
            char item[96];
            while ((p = backquoted(p, item, sizeof item)) != NULL) {
                assert_true(n_planned < MAX_ROWS);
                struct row *r = &planned[n_planned++];
                if (sscanf(item, "[%15[^]]] %63s", r->section, r->key) != 2)
                    fail_msg("%s:%d: a planned item is `[section] key`", DOC, lineno);
                r->line = lineno;
                if (strncmp(p, ", ", 2) != 0)
                    break;
                p += 2;
            }
        }
    }
    fclose(f);
}

static void test_every_key_documented(void **state)
{
    const char *s, *k;
    int missing = 0;
    read_doc();
    for (size_t i = 0; (k = gw_config_key(i, &s)) != NULL; i++) {
        bool found = false;
        for (int j = 0; j < n_rows && !found; j++)
            found = strcmp(rows[j].section, s) == 0 && strcmp(rows[j].key, k) == 0;
        if (!found) {
            print_error("%s: [%s] %s is not documented\n", DOC, s, k);
            missing++;
        }
    }
    assert_int_equal(missing, 0);
    (void)state;
}

static void test_every_documented_key_exists(void **state)
{
    int unknown = 0;
    read_doc();
    assert_true(n_rows > 0);
    for (int j = 0; j < n_rows; j++)
        if (!known(rows[j].section, rows[j].key)) {
            print_error("%s:%d: [%s] %s is documented but the parser does not know it\n", DOC,
                        rows[j].line, rows[j].section, rows[j].key);
            unknown++;
        }
    for (int i = 0; i < n_rows; i++)
        for (int j = i + 1; j < n_rows; j++)
            if (strcmp(rows[i].section, rows[j].section) == 0 &&
                strcmp(rows[i].key, rows[j].key) == 0) {
                print_error("%s:%d: [%s] %s documented twice\n", DOC, rows[j].line, rows[j].section,
                            rows[j].key);
                unknown++;
            }
    assert_int_equal(unknown, 0);
    (void)state;
}

/* A [tls] key is also a [frontend] key, merged from [tls] when the frontend does not set it:
 * its [frontend] row's default names the [tls] value. */
static void test_inherited_keys_documented(void **state)
{
    int wrong = 0;
    read_doc();
    for (int j = 0; j < n_rows; j++) {
        if (strcmp(rows[j].section, "frontend") != 0 || !known("tls", rows[j].key))
            continue;
        char want[96];
        snprintf(want, sizeof want, "`[tls] %s`", rows[j].key);
        if (strcmp(rows[j].def, want) != 0) {
            print_error("%s:%d: [frontend] %s: the default should read %s (it is merged from "
                        "[tls]), not %s\n",
                        DOC, rows[j].line, rows[j].key, want, rows[j].def);
            wrong++;
        }
    }
    /* and the parser agrees: every [tls] key is a [frontend] key */
    const char *s, *k;
    for (size_t i = 0; (k = gw_config_key(i, &s)) != NULL; i++)
        if (strcmp(s, "tls") == 0 && !known("frontend", k)) {
            print_error("[tls] %s is not a [frontend] key\n", k);
            wrong++;
        }
    assert_int_equal(wrong, 0);
    (void)state;
}

static void test_planned_keys_not_known(void **state)
{
    int wrong = 0;
    read_doc(); /* every reserved name is built now: the list may be empty or absent */
    for (int j = 0; j < n_planned; j++)
        if (known(planned[j].section, planned[j].key)) {
            print_error("%s:%d: [%s] %s is listed as planned but the parser knows it: "
                        "document it in its section\n",
                        DOC, planned[j].line, planned[j].section, planned[j].key);
            wrong++;
        }
    assert_int_equal(wrong, 0);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_key_documented),
        cmocka_unit_test(test_every_documented_key_exists),
        cmocka_unit_test(test_inherited_keys_documented),
        cmocka_unit_test(test_planned_keys_not_known),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
