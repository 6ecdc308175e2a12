/* Command policies (cmd_policy.h): verb lists are blank-separated words, compared without
 * regard to case. */
#include "cmd_policy.h"

#include <string.h>
#include <strings.h>

/* Is the word w (n bytes) one of list's words (separated by blanks or commas)? */
static bool word_in(const char *list, const char *w, size_t n, bool fold)
{
    if (n == 0)
        return false;
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t m = strcspn(p, " \t,");
        if (m == n && (fold ? strncasecmp(p, w, n) == 0 : strncmp(p, w, n) == 0))
            return true;
        p += m;
    }
    return false;
}

bool gw_policy_verb_in(const char *list, const char *verb)
{
    return word_in(list, verb, strlen(verb), true);
}

bool gw_policy_allows(const gw_policy_conf *p, const char *verb)
{
    if (!p)
        return true;
    if (gw_policy_verb_in(p->deny, verb))
        return false;
    if (p->read_only && gw_policy_verb_in(GW_POLICY_WRITE_VERBS, verb))
        return false;
    if (p->allow[0])
        return gw_policy_verb_in(p->allow, verb) ||
               gw_policy_verb_in(GW_POLICY_SESSION_VERBS, verb);
    return true;
}

int gw_policy_select(const gw_config *cfg, int fe_policy, const char *user, const char *groups,
                     const char *own)
{
    if (own && own[0]) {
        int i = gw_config_policy(cfg, own);
        if (i >= 0)
            return i;
    }
    for (int i = 0; i < cfg->n_policies; i++) {
        const char *p = cfg->policies[i].users;
        while (*p) {
            p += strspn(p, " \t,");
            size_t m = strcspn(p, " \t,");
            if (m == 0)
                break;
            /* user names are case-sensitive, as the users file's */
            if (p[0] == '@' ? word_in(groups ? groups : "", p + 1, m - 1, false)
                            : (strlen(user) == m && strncmp(p, user, m) == 0))
                return i;
            p += m;
        }
    }
    return fe_policy >= 0 && fe_policy < cfg->n_policies ? fe_policy : -1;
}
