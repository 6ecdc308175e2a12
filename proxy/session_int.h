/* Inside a session: the struct, its state enums and what the session files call of each
 * other. Private to proxy/session.c (core: states, timers, the one fail/close path),
 * proxy/client_cmd.c (the client's command queue and the gateway's own commands),
 * proxy/backend.c (the backend control leg and its set-up), proxy/reply_dispatch.c (each
 * backend reply, by what is pending), proxy/transfer.c (data channels and transfers),
 * proxy/session_info.c (the admin view) and proxy/edge_auth.c (the gateway's own login
 * check and command policy). Nothing outside these seven files sees a gw_session's
 * fields. */
#ifndef GW_SESSION_INT_H
#define GW_SESSION_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "bug.h"
#include "conn.h"
#include "ftp_codes.h"
#include "ftp_cmd.h"
#include "ftp_reply.h"
#include "generation.h"
#include "rate.h"
#include "session.h"
#include "timeline.h"

#define INBUF_MAX (16 * 1024) /* queued client bytes before we stop reading it */
#define HELD_MAX (8 * 1024)   /* a held reply larger than this is cut */

typedef struct gw_data gw_data;

enum gw_client_state {
    CS_HANDSHAKE, /* implicit: waiting for the ClientHello and handshake; nothing sent */
    CS_READY,     /* commands flow (implicit: TLS up, PBSZ 0 / PROT P implied) */
    CS_AUTH,      /* explicit: 234 sent, TLS handshake running, commands wait */
    CS_CLOSING,   /* final reply and close_notify sent; waiting for handles to close */
};

/* The backend connection's set-up, one step at a time: each step waits for one event or
 * for the server's reply to one command of the gateway's own. Advanced by gw_backend_advance
 * alone (backend.c), changed by gw_sess_set_backend_state alone (logged). */
enum gw_be_step {
    BE_IDLE,     /* no connection: self_greet before USER, after REIN, or not started */
    BE_CONNECT,  /* name lookup and TCP connect, under connect_timeout */
    BE_GREETING, /* the 220 awaited (implicit TLS: the handshake first), connect_timeout */
    BE_AUTH,     /* explicit TLS toward the server: AUTH TLS sent, its 234 awaited */
    BE_TLS,      /* 234 received: the handshake with the server runs */
    BE_PBSZ,     /* TLS toward the server: PBSZ 0 sent */
    BE_PROT,     /* PROT P sent */
    BE_UTF8,     /* self_greet: the client's OPTS UTF8 ON replayed, its reply swallowed */
    /* auth = file: the login the gateway checked, replayed (edge_auth.c) */
    BE_LOGIN_USER, /* USER sent; its 331 is consumed (a 230 is the answer to the PASS) */
    BE_LOGIN_PASS, /* the client's password sent; a 2xx is the answer to its PASS */
    BE_READY,      /* the client's commands are relayed (self_greet: its USER first) */
    BE_LATE_PBSZ,  /* PBSZ/PROT refused before login: PBSZ 0 again after the 230 (held) */
    BE_LATE_PROT,  /* PROT P after the 230; its reply releases the 230 */
    BE_CLOSED,     /* the session ends */
};

/* The server's data legs, as PBSZ/PROT toward it decided. */
enum gw_be_data {
    BE_DATA_CLEAR, /* a plain backend, or PROT P refused after login too */
    BE_DATA_TLS,   /* PROT P accepted: its data legs are TLS */
    BE_DATA_LATER, /* refused before login (many servers want them after it): retried then */
};

/* What the one outstanding command to the backend is waiting for. */
enum gw_pending {
    PEND_NONE,
    PEND_SETUP,    /* the backend connection's set-up: bconn.step says which step */
    PEND_RELAY,    /* plain relay of the reply */
    PEND_PASV,     /* internal PASV/EPSV: the backend's 227/229 is consumed */
    PEND_PORT,     /* internal PORT/EPRT toward an active-mode backend */
    PEND_ABORT,    /* ABOR during a transfer: the transfer's final reply, then ABOR's */
    PEND_FEAT,     /* buffered, rewritten */
    PEND_TRANSFER, /* 1yz relayed, final reply held until the data legs are done */
    PEND_QUIT,
    PEND_CHECK, /* auth = file: PASS is checked in the thread pool (edge_auth.c), or its 530
                   waits out the delay; nothing was sent to the backend */
};
#define PEND_LAST PEND_CHECK

/* What one command carries across its round trip to the backend and back. Reset when the
 * next command is taken from the queue. */
typedef struct gw_cmd_ctx {
    char verb[8];
    /* PASV/EPSV/PORT/EPRT: what the client asked for on its leg, answered once the backend
     * leg is armed. */
    enum { WANT_PASV, WANT_EPSV, WANT_PORT, WANT_EPRT } want;
    gw_addr want_addr;  /* WANT_PORT/WANT_EPRT: the client's address */
    bool sent_extended; /* the backend leg was armed with EPSV/EPRT (fallback possible) */
    gw_addr be_listen;  /* backend leg active: where the gateway listens */
    /* A reply held back from the client: the transfer's final reply until its data legs are
     * done, a failed PASS's 530 until the delay has passed, or the 230 until PBSZ/PROT
     * toward the backend are answered. */
    char *held;
    size_t heldlen;
    int held_code; /* PEND_TRANSFER: the final reply's code once it is complete */
    /* PEND_TRANSFER: be_sent once the command reached the backend. An upload is deferred
     * (PROTOCOL.md §5): sent only when the client's data leg is accepted; own_1xx: the
     * client has the gateway's 150, the backend's 1yz is consumed. */
    bool deferred, be_sent, own_1xx;
    /* ABOR (PEND_ABORT) */
    int abort_expect;     /* final replies still due from the backend */
    bool abort_xfer_sent; /* the client has its reply for the transfer */
    bool abort_internal;  /* the gateway answered the transfer: the backend's replies are
                             consumed (PROTOCOL.md §5 "One reply per command") */
    int owed;             /* abort_internal: final replies the backend still owes */
    bool abort_marked;    /* abort_internal: ABOR and NOOP sent, the NOOP's 200 ends it */
    uint64_t abort_started_ms;
    char *feat; /* PEND_FEAT: the backend's reply so far (heap) */
    size_t featlen;
} gw_cmd_ctx;

/* The parts of a session, by lifetime. A part is reset whole (REIN: login, prot and bconn;
 * failover: bconn), never field by field. */

/* The client's command queue: its bytes not yet parsed (PROTOCOL.md §4). Session life. */
typedef struct gw_sess_cmdq {
    gw_cmd_parser parser;
    char *buf; /* heap */
    size_t len, cap;
    int too_long; /* over-long lines so far (MAX_LONG_LINES ends the session) */
} gw_sess_cmdq;

/* The client control connection's TLS identity. Session life: survives REIN and CCC. */
typedef struct gw_sess_ctl {
    SSL_CTX *ctx; /* the control TLS's context (its tickets): data legs use it */
    bool has_tag;
    uint8_t tag[GW_TLS_TAG_LEN]; /* the client control session's tag (siblings.h) */
    gw_tls_peer *cert;           /* the client's certificate (client_cert), NULL: none (heap) */
    int8_t data_resumed; /* the last TLS data connection: 1 resumed, -1 did not, 0 none yet */
} gw_sess_ctl;

/* The backend chosen for the session. Session life: REIN keeps it (same backend). */
typedef struct gw_sess_route {
    gw_backend_rt *be;
    uint32_t *tried; /* bitmap of fe->backends[] tried by this session (heap) */
    bool counted;    /* be->live counts this session */
    bool committed;  /* a 220 arrived: the client talks to this backend, no failover */
    bool pinned;     /* route_user named it: no failover to another */
    bool self_greet; /* the gateway sent the 220; the backend is connected at USER */
    /* prelogin_backend_per_ip / _max: this session holds one of prelogin_fe's pre-login
     * backend places (health.h) until it logs in or ends. */
    bool prelogin_counted;
    gw_frontend *prelogin_fe;
} gw_sess_route;

/* One backend control connection and its set-up. Replaced whole on failover and REIN
 * (gw_backend_drop). */
typedef struct gw_sess_bconn {
    gw_conn *conn;
    enum gw_be_step step;
    enum gw_be_data data;
    gw_reply_parser reply;
    gw_addr peer;
    uint64_t attempt_ms;   /* the connect attempt, then the wait for its 220, started
                              (connect_timeout each) */
    bool resolving;        /* uv_getaddrinfo pending on s->resolve_req */
    bool reported;         /* this connect attempt's outcome went to health */
    bool swallow_greeting; /* REIN: the client already got its 220 */
} gw_sess_bconn;

/* The client's login. Reset by REIN (RFC 959: as after the connection). */
typedef struct gw_sess_login {
    char user[64]; /* the USER argument, for the transfer log (never the password) */
    char *be_user; /* self_greet: the name sent to the backend's USER (heap, NULL: none;
                      gw_sess_set_be_user) */
    bool user_sent, logged_in;
    bool utf8;                  /* self_greet: OPTS UTF8 ON before the backend: replayed */
    int failed;                 /* failed logins (3 end the session; REIN keeps the count) */
    uint64_t reply_delay_until; /* a failed PASS is answered only then (slows guessing) */
    uint64_t started_ms;        /* login_timeout (and the handshake's) count from here */
    /* auth = file: the gateway's check of USER/PASS and who passed it (edge_auth.c; heap,
     * NULL: none yet). Reset with the part: gw_edge_free first. */
    struct gw_edge *edge;
} gw_sess_login;

/* The protection the client's commands set (TLS/PBSZ/PROT/CCC/EPSV ALL). Reset by REIN. */
typedef struct gw_sess_prot {
    bool tls_up; /* the control connection is protected now */
    bool pbsz, prot_p;
    bool ccc; /* CCC cleared it: no AUTH, PBSZ or PROT any more */
    bool epsv_all;
} gw_sess_prot;

/* The data channel (PASV/PORT to the transfer's end) and the transfer using it. */
typedef struct gw_sess_xfer {
    gw_data *data;
    bool finished, ok; /* the data legs are done; ok: without failure */
    bool open;         /* a transfer started and is not recorded yet (gw_xfer_record) */
    bool type_ascii;   /* TYPE A in force (the wu-ftpd transfer log says a or b) */
    uint64_t bytes, started_ms, done_ms;
    char arg[256]; /* the transfer command's argument, for the transfer log */
    char *line;    /* a deferred upload's command line until it is sent (heap, NULL: none) */
    char fail_reply[128];
} gw_sess_xfer;

struct gw_session {
    uint64_t id;
    gw_frontend *fe;
    bool vh_none; /* virtual hosts without a default: no frontend chosen yet */
    bool vh_sni;  /* the client's TLS SNI chose s->fe: HOST cannot change it */
    uv_loop_t *loop;
    gw_conn *client;
    uv_timer_t timer;
    /* bconn's name lookup; outside bconn: libuv holds it while it runs. */
    uv_getaddrinfo_t resolve_req;
    enum gw_client_state cstate;
    enum gw_pending pending;
    gw_cmd_ctx cur; /* the command in progress */
    gw_addr client_peer, client_local;
    gw_addr client_reached; /* the address the client connected to: the PROXY header's
                               destination, else client_local (pasv_address = auto) */
    uint64_t last_active_ms;
    int handles;                   /* open uv handles; the session is freed when this drops to 0 */
    const gw_session_hooks *hooks; /* the listener's: on_end(host) once it is freed */
    void *host;
    gw_timeline tl; /* the admin endpoint's recent events (session_info.c) */

    gw_sess_cmdq cmdq;
    gw_sess_ctl ctl;
    gw_sess_route route;
    gw_sess_bconn bconn;
    gw_sess_login login;
    gw_sess_prot prot;
    gw_sess_xfer xfer;
};

/* session.c: the core */
void gw_sess_set_client_state(gw_session *s, enum gw_client_state st);
void gw_sess_set_backend_state(gw_session *s, enum gw_be_step st);
void gw_sess_set_pending(gw_session *s, enum gw_pending p);
/* Their names, as logged and shown by the admin endpoint. */
const char *gw_sess_client_state_name(enum gw_client_state st);
const char *gw_sess_backend_step_name(enum gw_be_step st);
const char *gw_sess_pending_name(enum gw_pending p);
uint64_t gw_sess_now(gw_session *s);
/* A reply to the client (dropped unless its control leg is ready). */
void gw_sess_reply(gw_session *s, const char *text);
/* self_greet: the frontend's own "220 <greeting>". */
void gw_sess_greet(gw_session *s);
/* Virtual hosts: the session serves fe (of those sharing its address) from now on. */
void gw_sess_set_frontend(gw_session *s, gw_frontend *fe, const char *by);
/* Start the client control TLS on s->fe's context. 0 or a libuv error. */
int gw_sess_start_tls(gw_session *s);
/* The name the backend's USER gets (a copy; NULL clears it). false: out of memory (the
 * caller fails the session). */
bool gw_sess_set_be_user(gw_session *s, const char *name);
/* s->login.be_user, "" when none. */
#define GW_SESS_BE_USER(s) ((s)->login.be_user ? (s)->login.be_user : "")
/* Append to a held buffer (cut at max). */
void gw_sess_append(char **buf, size_t *len, const char *p, size_t n, size_t max);
void gw_sess_drop_data(gw_session *s, bool ok);
/* The single way a session ends: `text` is the client's last reply (or NULL). */
void gw_sess_fail(gw_session *s, const char *text, const char *why);
/* A "cannot happen" inside session s (bug.h): aborts in SAN/fuzz builds; in release it is
 * logged with the session and ends just that session (421) through gw_sess_fail. true when
 * cond held: the caller returns. */
#define GW_SESS_BUG_ON(s, cond)                                                                    \
    (__builtin_expect(!!(cond), 0) ? gw_sess_bug((s), __FILE__, __LINE__, #cond) : false)
bool gw_sess_bug(gw_session *s, const char *file, int line, const char *cond);
void gw_sess_rearm(gw_session *s);
/* The client or backend control leg closed: the session may end. */
void gw_sess_leg_closed(gw_session *s);
/* One of the session's handles (or a pending lookup) is gone; the last frees it. */
void gw_sess_release(gw_session *s);
/* The outstanding exchange is over: take the next command. */
void gw_sess_command_done(gw_session *s);

/* client_cmd.c: the command queue */
void gw_cmdq_receive(gw_session *s, const char *buf, size_t n);
void gw_cmdq_pump(gw_session *s);

/* backend.c: the backend control leg */
/* Choose s->be among the frontend's eligible backends not tried yet (counted in its live
 * sessions, logged). false when none is eligible. */
bool gw_backend_choose(gw_session *s);
/* route_user: s->be = the frontend's backends[i], whatever the policy and health (pinned:
 * no failover). false when it is full. */
bool gw_backend_choose_index(gw_session *s, int i);
/* s->be no longer counts this session (at its end, or when it fails over). */
void gw_backend_uncount(gw_session *s);
/* A connect attempt failed before the 220: reported to health; when nothing of the client's
 * has reached a backend yet, the next eligible backend is tried (true: a new attempt runs,
 * the caller does nothing more). */
bool gw_backend_failover(gw_session *s, const char *reason);
void gw_backend_connect(gw_session *s);
/* prelogin_backend_per_ip / _max: may the backend be connected before any command? true:
 * counted. false: over a bound (the session greets itself and connects at USER). */
bool gw_backend_prelogin_admit(gw_session *s);
/* The session logged in or ends: its pre-login place is given back (once). */
void gw_backend_prelogin_release(gw_session *s);
/* Failover and REIN: the backend connection part is replaced whole (its connection closed,
 * step IDLE). false when the session failed instead. */
bool gw_backend_drop(gw_session *s);
void gw_backend_send(gw_session *s, const char *line, enum gw_pending pending);
/* The set-up's one driver: the current step (bconn.step) is over, the next begins. r: the
 * server's last reply line to the step's command, NULL for the steps that end with an event
 * (CONNECT: TCP up; TLS: handshake done). From BE_READY: the login's 230 (held by the
 * caller), when PBSZ/PROT waited for it (BE_DATA_LATER). */
void gw_backend_advance(gw_session *s, gw_reply_parser *r);
/* PEND_SETUP: a backend reply line during the set-up (the greeting, or a step's reply). */
void gw_backend_setup_line(gw_session *s, gw_reply_parser *r);
void gw_backend_greeting_line(gw_session *s, gw_reply_parser *r);

/* reply_dispatch.c: each backend reply, where the pending exchange says */
void gw_reply_dispatch_line(gw_session *s, gw_reply_parser *r);
/* A failed login (the backend's 530 to PASS, or the gateway's own check): logged, counted
 * (ban list, 3 end the session); else its 530 (cur.held, or the gateway's) waits out the
 * delay, and on_tick releases it and the queue. The caller returns. */
void gw_reply_login_failed(gw_session *s);

/* transfer.c: the session's data channels and transfers */
/* PASV/EPSV/PORT/EPRT: arm the backend leg as data_mode says (the client's leg and answer
 * follow its reply: gw_xfer_pasv_reply, gw_xfer_port_reply). */
void gw_xfer_arm_backend_leg(gw_session *s);
void gw_xfer_pasv_reply(gw_session *s, gw_reply_parser *r);
void gw_xfer_port_reply(gw_session *s, gw_reply_parser *r);
/* PEND_TRANSFER, the command reached the backend: its 1yz and final reply. */
void gw_xfer_final_reply(gw_session *s, gw_reply_parser *r);
/* PEND_ABORT: the replies to ABOR (and to the transfer it cut). */
void gw_xfer_abort_reply(gw_session *s, gw_reply_parser *r);
/* The transfer cannot end normally: the client gets `text` now, what the backend still owes
 * is consumed (ABOR, NOOP). */
void gw_xfer_abort(gw_session *s, const char *text, const char *why);
/* The transfer's one record (the transfer_end line, the transfer log, the metrics), once
 * however it ended: `reply` is the final reply the client got for it (NULL: none), result
 * ok | failed | aborted | unused, why the reason of a failure (or NULL). */
void gw_xfer_record(gw_session *s, const char *reply, const char *result, const char *why);
/* The backend owes replies the gateway consumes (cur.owed) and is overdue: ABOR, then a
 * NOOP whose 200 marks the end of what it owes. */
void gw_xfer_abort_marked(gw_session *s);
/* STOR/APPE/STOU: keep `line` from the backend until the client's data leg is accepted.
 * false: out of memory, the session fails (the caller returns). */
bool gw_xfer_defer_upload(gw_session *s, const char *line);
/* A deferred upload ends before the backend had its command: `text` is the client's final
 * reply (NULL: none), recorded with `result` (gw_xfer_record); the caller ends the
 * command. */
void gw_xfer_end_unsent(gw_session *s, const char *text, const char *result, const char *why);
/* The address a 227 names for this client (pasv_address_for, pasv_address = auto or an
 * address, else bind). false when it is not IPv4. */
bool gw_xfer_pasv_addr(gw_session *s, const gw_addr *bind, gw_addr *adv);

/* edge_auth.c: authentication at the gateway (auth = file) and the command policy */
/* USER on an auth = file frontend (after the client_cert checks): answered by the gateway.
 * false: not such a frontend, the caller goes on. */
bool gw_edge_user(gw_session *s, const char *arg);
/* PASS on an auth = file frontend, and a logged-in session's command under its [policy]
 * (550 when refused): true when the gateway took the command. */
bool gw_edge_command(gw_session *s, const gw_cmd_def *def, const char *verb, const char *arg);
/* The backend connection was opened for a login the gateway checked: its set-up ends with
 * that login replayed (BE_LOGIN_USER, BE_LOGIN_PASS). */
bool gw_edge_login_due(const gw_session *s);
/* BE_LOGIN_USER answered 331: "PASS <the client's password>" into line (cap bytes; the
 * caller wipes it once sent), and the gateway forgets the password. false: none kept. */
bool gw_edge_pass_line(gw_session *s, char *line, size_t cap);
/* The replayed login is over (accepted, or the session ends): the password is wiped. */
void gw_edge_forget(gw_session *s);
/* The bandwidth limits of this session's transfers (rate.h), by direction: the frontend's
 * rate_* and frontend_rate_*, the user's (its [policy]'s and the users file's, the lower).
 * Keys point into the session and its frontend: copied by gw_data_new. */
void gw_edge_rates(const gw_session *s, gw_rate_spec *down, gw_rate_spec *up);
/* The backend refused the replayed login (r: its last reply line): the client gets 530,
 * the backend connection is dropped (the next PASS connects again), the command is done. */
void gw_edge_login_refused(gw_session *s, gw_reply_parser *r);
/* The login part's edge state is freed (session end, REIN); s->login.edge is NULL after. */
void gw_edge_free(gw_session *s);

/* session_info.c: the admin endpoint's view (timeline ring, metrics of session events) */
void gw_sinfo_start(gw_session *s);
void gw_sinfo_end(gw_session *s);
void gw_sinfo_frontend(gw_session *s, gw_frontend *to);
void gw_sinfo_handshake(gw_session *s);
void gw_sinfo_command(gw_session *s, const char *verb, const char *arg);
void gw_sinfo_reply(gw_session *s, const char *text);
void gw_sinfo_login(gw_session *s, bool ok);
void gw_sinfo_backend(gw_session *s, bool ok, const char *why);
void gw_sinfo_backend_busy(gw_session *s, int code);
void gw_sinfo_transfer_end(gw_session *s, const char *result);
void gw_sinfo_data_done(gw_session *s, int result, uint64_t bytes); /* enum gw_data_result */

#endif
