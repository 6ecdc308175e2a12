/* Pure FEAT rewriting (RFC 2389, RFC 4217, MS-FTPS §3.2.5.5). */
#ifndef GW_FEAT_H
#define GW_FEAT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct gw_feat_opts {
    bool tls; /* frontend offers TLS: write AUTH TLS;SSL;, PBSZ, PROT C;P; */
    bool ccc; /* write CCC (only when allowed) */
} gw_feat_opts;

/* backend: the backend's whole FEAT reply as received (may be a 211 multi-line reply, a
 * single "211 ..." line, or an error such as "500 ..."; then only the gateway's lines are
 * written). Writes the gateway's reply: "211-Features:\r\n", one feature per line with one
 * leading space, "211 End\r\n". Gateway lines first (AUTH TLS;SSL; PBSZ PROT C;P; CCC as
 * opts say, then EPSV and EPRT), then the backend's other features in their order, dropping
 * the backend's AUTH, PBSZ, PROT, CCC, CPSV, SSCN, EPSV, EPRT lines (case-insensitive on the
 * first word) and duplicates. Returns the length written (NUL-terminated), 0 if cap is too
 * small. */
size_t gw_feat_rewrite(const char *backend, size_t len, const gw_feat_opts *o, char *out,
                       size_t cap);

#endif
