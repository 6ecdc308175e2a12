/* A TLS ClientHello read in clear, before any TLS engine sees it: which session it offers
 * to resume (legacy session ID, session_ticket, pre_shared_key identities), and the route
 * that ftpsgate writes into the tickets and session IDs it issues (the control connection
 * they belong to). Pure: no OpenSSL, no libuv; resumable on partial input. */
#ifndef GW_TLS_HELLO_H
#define GW_TLS_HELLO_H

#include <stddef.h>
#include <stdint.h>

enum gw_hello_status {
    GW_HELLO_AGAIN = 0,    /* a complete ClientHello needs more bytes */
    GW_HELLO_OK = 1,       /* parsed: the fields of gw_tls_hello are set */
    GW_HELLO_NOT_TLS = -1, /* the bytes are not a TLS handshake record */
    GW_HELLO_BAD = -2,     /* malformed, not a ClientHello, or larger than the scratch */
};

#define GW_HELLO_MAX_PSK 8 /* identities looked at (clients send one or two) */
#define GW_ROUTE_LEN 12    /* the route: a prefix of the control connection's tag */

typedef struct gw_hello_span {
    const uint8_t *p; /* into the scratch buffer given to gw_tls_hello_parse */
    size_t len;
} gw_hello_span;

typedef struct gw_tls_hello {
    gw_hello_span session_id; /* legacy_session_id (0..32 bytes) */
    gw_hello_span ticket;     /* session_ticket extension (35), len 0 when absent or empty */
    int n_psk;                /* pre_shared_key (41) identities kept, at most GW_HELLO_MAX_PSK */
    gw_hello_span psk[GW_HELLO_MAX_PSK];
} gw_tls_hello;

/* Parse the ClientHello at the start of in[0..n) (TLS records as read from the socket; the
 * message may span several records). The handshake message is reassembled into scratch
 * (cap bytes); spans in h point there. */
enum gw_hello_status gw_tls_hello_parse(const uint8_t *in, size_t n, uint8_t *scratch, size_t cap,
                                        gw_tls_hello *h);

/* Tickets: the 16-byte key_name opens every ticket in clear. ftpsgate writes
 * GW_TICKET_MAGIC (3 bytes), a key generation byte and the route there. */
#define GW_TICKET_NAME_LEN 16
#define GW_SESSION_ID_LEN 32
extern const uint8_t gw_ticket_magic[3];
/* Write the key_name (16 bytes) for key generation gen and route. */
void gw_ticket_name_make(uint8_t name[GW_TICKET_NAME_LEN], uint8_t gen,
                         const uint8_t route[GW_ROUTE_LEN]);
/* A TLS 1.2 session ID (32 bytes): magic, 0xff, route, then 16 bytes of the caller's. */
void gw_session_id_make(uint8_t id[GW_SESSION_ID_LEN], const uint8_t route[GW_ROUTE_LEN],
                        const uint8_t rnd[16]);
/* The route of a ticket, PSK identity or session ID this gateway issued: 1 and route
 * written, or 0 when it is not one of ours (too short, other magic). *gen: the key
 * generation (tickets), 0xff for session IDs; may be NULL. */
int gw_route_from_identity(const uint8_t *p, size_t len, uint8_t route[GW_ROUTE_LEN], uint8_t *gen);

#endif
