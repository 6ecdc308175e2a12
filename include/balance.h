/* Backend selection for a new session. Pure: no libuv, no OpenSSL; the caller gathers the
 * candidates (a frontend's backends in its written order) and keeps the per-frontend state. */
#ifndef GW_BALANCE_H
#define GW_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config.h"

typedef struct gw_bal_cand {
    int weight;       /* 1..1000; 0 or less: never picked */
    int live;         /* live sessions on the backend, all workers */
    int max_sessions; /* 0: no limit; live >= max_sessions: full, skipped */
    bool up;          /* health */
} gw_bal_cand;

/* Per-frontend state: smooth weighted round robin (nginx) and the leastconn tie rotation.
 * A zeroed state is valid; current[] grows to the candidate count on first use (heap:
 * release it with gw_bal_state_free). */
typedef struct gw_bal_state {
    int *current;
    int n_current;
    int next;
} gw_bal_state;

/* A zeroed state with room for n candidates: 0, or -1 when out of memory. */
int gw_bal_state_init(gw_bal_state *st, int n);
void gw_bal_state_free(gw_bal_state *st);

/* May candidate i get a session (up, not full, not excluded, weight > 0)? exclude covers
 * candidates 0..31 only (bit i); a caller with more marks tried ones not up instead. */
bool gw_balance_eligible(const gw_bal_cand *c, int i, uint32_t exclude);

/* Pick one of c[0..n-1] by policy, skipping those whose bit is set in
 * exclude (already tried by this session) and those not eligible. rnd: a random number from
 * the caller (random); key/keylen: the client address bytes (source) or the USER name
 * (user). Returns the index, or -1 when none is eligible. Under source and user the same key
 * gets the same backend while it is eligible; when it is not, the next eligible one in the
 * same order. */
int gw_balance_pick(enum gw_balance policy, const gw_bal_cand *c, int n, gw_bal_state *st,
                    uint32_t exclude, uint32_t rnd, const uint8_t *key, size_t keylen);

/* The policy's name in logs ("roundrobin", ...). */
const char *gw_balance_name(enum gw_balance policy);

/* route_user: "name@BACKEND" -> the user name the backend sees and the backend's name, split
 * at the LAST '@' (user names may hold '@' themselves: "a@corp@b" is user "a@corp" on b).
 * Returns the backend part (inside `user`, which is cut at the '@'), or NULL when there is
 * no '@' or nothing after it (then `user` is unchanged: routed by the policy). */
char *gw_route_user_split(char *user);

#endif
