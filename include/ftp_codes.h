/* Every reply the gateway writes itself, named in one place (as vsftpd's ftpcodes.h).
 * Texts are byte-for-byte what clients and tests see; change them here or not at all.
 * Each text is one line: "ddd text\r\n". GW_REPLY_TEXTS lists them all so that a unit test
 * can check the form of every one. */
#ifndef GW_FTP_CODES_H
#define GW_FTP_CODES_H

/* Reply codes (RFC 959 §4.2, RFC 2228, RFC 4217, RFC 2428), for comparing replies from
 * the backend. */
#define GW_FTP_DATACONN_ALREADY 125
#define GW_FTP_DATACONN_OPENING 150
#define GW_FTP_CMD_OK 200
#define GW_FTP_FEAT_OK 211
#define GW_FTP_GREET 220
#define GW_FTP_GOODBYE 221
#define GW_FTP_ABOR_NOCONN 225
#define GW_FTP_TRANSFER_OK 226
#define GW_FTP_PASV_OK 227
#define GW_FTP_EPSV_OK 229
#define GW_FTP_LOGIN_OK 230
#define GW_FTP_AUTH_OK 234
#define GW_FTP_UNAVAILABLE 421
#define GW_FTP_DATA_CANT_OPEN 425
#define GW_FTP_DATA_ABORTED 426
#define GW_FTP_LOCAL_ERROR 451
#define GW_FTP_BAD_COMMAND 500
#define GW_FTP_BAD_ARGS 501
#define GW_FTP_NOT_IMPLEMENTED 502
#define GW_FTP_BAD_SEQUENCE 503
#define GW_FTP_BAD_PARAM 504
#define GW_FTP_PROT_REFUSED 521
#define GW_FTP_BAD_NETPROTO 522
#define GW_FTP_NOT_LOGGED_IN 530
#define GW_FTP_CCC_NO_TLS 533
#define GW_FTP_POLICY_DENIED 534
#define GW_FTP_PROT_UNSUPPORTED 536

/* RFC 959: session and command syntax */
#define GW_R_REIN_OK "220 Service ready for new user.\r\n"
#define GW_R_FEAT_END "211 End\r\n"
#define GW_R_SYNTAX "500 Syntax error, command unrecognized.\r\n"
#define GW_R_LINE_TOO_LONG "500 Command line too long.\r\n"
#define GW_R_NOT_IMPLEMENTED "502 Command not implemented.\r\n"
#define GW_R_LOCAL_ERROR "451 Local error in processing.\r\n"
#define GW_R_LOGIN_INCORRECT "530 Login incorrect.\r\n"
/* auth = file: the gateway's own login dialogue (vsftpd's texts), and [policy] refusals */
#define GW_R_EDGE_PASSWORD "331 Please specify the password.\r\n"
#define GW_R_EDGE_USER_FIRST "503 Login with USER first.\r\n"
#define GW_R_EDGE_LOGGED_IN "230 Already logged in.\r\n"
#define GW_R_EDGE_OTHER_USER "530 Can't change to another user.\r\n"
#define GW_R_POLICY_DENIED "550 Permission denied.\r\n"

/* RFC 959: the session ends (421) */
#define GW_R_UNAVAILABLE "421 Service not available.\r\n"
#define GW_R_OUT_OF_MEMORY "421 Out of memory.\r\n"
#define GW_R_UNAVAILABLE_NOMEM "421 Service not available: out of memory.\r\n"
/* a "cannot happen" (bug.h) ended the session */
#define GW_R_INTERNAL_ERROR "421 Service not available: internal error.\r\n"
#define GW_R_SHUTTING_DOWN "421 Service not available: the gateway is shutting down.\r\n"
#define GW_R_TOO_MANY_CONNECTIONS "421 Too many connections, try again later.\r\n"
#define GW_R_TOO_MANY_LOGINS "421 Too many failed logins.\r\n"
#define GW_R_BANNED "421 Too many failed logins from your address, try again later.\r\n"
#define GW_R_TOO_MANY_LONG_LINES "421 Too many overlong command lines.\r\n"
#define GW_R_LOGIN_TIMEOUT "421 Login timeout.\r\n"
#define GW_R_IDLE_TIMEOUT "421 Idle timeout, closing control connection.\r\n"
#define GW_R_BACKEND_CONNECT_TIMEOUT "421 Service not available: backend connect timeout.\r\n"
#define GW_R_BACKEND_UNREACHABLE "421 Service not available: backend unreachable.\r\n"
#define GW_R_BACKEND_NO_GREETING "421 Service not available: no greeting from the server.\r\n"
#define GW_R_BACKEND_CLOSED "421 Service not available: the server closed the connection.\r\n"
#define GW_R_BACKEND_BAD_REPLY "421 Service not available: invalid reply from the server.\r\n"
#define GW_R_BACKEND_NO_ABOR_REPLY "421 Service not available: the server did not answer ABOR.\r\n"
#define GW_R_BACKEND_REFUSED_AUTH "421 Service not available: the server refused AUTH TLS.\r\n"
#define GW_R_UNAVAILABLE_RESOURCES                                                                 \
    "421 Service not available: the gateway is short of resources, try again later.\r\n"

/* RFC 959: data connections (PORT, PASV, transfers, ABOR) */
#define GW_R_PORT_OK "200 PORT command successful.\r\n"
#define GW_R_BAD_PORT "501 Bad PORT argument.\r\n"
#define GW_R_PORT_BOUNCE "504 Command not implemented for that parameter (bounce refused).\r\n"
#define GW_R_NEED_DATA_CMD "425 Use PORT, EPRT, PASV or EPSV first.\r\n"
#define GW_R_CANT_OPEN_DATA "425 Can't open data connection.\r\n"
#define GW_R_CANT_OPEN_DATA_BACKEND "425 Can't open data connection to the server.\r\n"
#define GW_R_CANT_OPEN_DATA_NOMEM "425 Can't open data connection: out of memory.\r\n"
#define GW_R_CANT_OPEN_DATA_BAD_PASV                                                               \
    "425 Can't open data connection: bad passive reply from the server.\r\n"
#define GW_R_CANT_OPEN_DATA_NO_LISTEN                                                              \
    "425 Can't open data connection: cannot listen toward the server.\r\n"
#define GW_R_NO_PASV_PORT "425 Can't open passive connection: no free port.\r\n"
/* pasv_shared_port without pasv_ports: another session from this address waits on the
 * shared port and this one could only be matched by address. */
#define GW_R_SHARED_PORT_BUSY                                                                      \
    "425 Can't open passive connection: another session from your address is waiting on the "      \
    "shared data port; try again.\r\n"
#define GW_R_XFER_ABORTED "426 Connection closed; transfer aborted.\r\n"
#define GW_R_XFER_DATA_TIMEOUT "426 Connection closed; transfer aborted (data timeout).\r\n"
#define GW_R_XFER_NO_FINAL_REPLY "426 Transfer aborted: no final reply from the server.\r\n"
#define GW_R_ABOR_OK "226 ABOR successful.\r\n"
/* A deferred upload (PROTOCOL.md §5): the client's TLS data leg is connected, the server
 * has not been told yet. */
#define GW_R_UPLOAD_OPENING "150 Ok to send data.\r\n"

/* RFC 2428: EPRT, EPSV */
#define GW_R_EPRT_OK "200 EPRT command successful.\r\n"
#define GW_R_EPSV_ALL_OK "200 EPSV ALL ok.\r\n"
#define GW_R_BAD_EPRT "501 Bad EPRT argument.\r\n"
#define GW_R_BAD_EPSV "501 Bad EPSV argument.\r\n"
#define GW_R_EPSV_ALL_IN_EFFECT "503 EPSV ALL in effect: use EPSV.\r\n"
#define GW_R_BAD_NETPROTO "522 Network protocol not supported, use (1,2)\r\n"
#define GW_R_PASV_IPV4_ONLY "522 PASV is IPv4 only: use EPSV.\r\n"

/* RFC 2228, RFC 4217: AUTH, PBSZ, PROT, CCC and TLS policy */
#define GW_R_AUTH_OK "234 Proceed with TLS negotiation.\r\n"
#define GW_R_AUTH_UNSUPPORTED "502 AUTH not supported on this frontend.\r\n"
#define GW_R_AUTH_IMPLICIT "503 AUTH not allowed: TLS is already active (implicit FTPS).\r\n"
#define GW_R_AUTH_ALREADY "503 Already protected by TLS.\r\n"
#define GW_R_AUTH_AFTER_USER "503 AUTH must come before USER.\r\n"
#define GW_R_AUTH_BAD_MECH "504 AUTH mechanism not supported (use TLS or SSL).\r\n"
#define GW_R_TLS_REQUIRED_LOGIN "530 TLS required: send AUTH TLS before USER and PASS.\r\n"
#define GW_R_TLS_REQUIRED "530 Please log in over TLS (AUTH TLS) first.\r\n"
#define GW_R_PBSZ_OK "200 PBSZ=0\r\n"
#define GW_R_PBSZ_NEEDS_TLS "503 PBSZ needs a protected control connection (AUTH TLS first).\r\n"
#define GW_R_PBSZ_BAD_ARG "501 PBSZ needs a number.\r\n"
#define GW_R_PROT_C_OK "200 PROT now Clear.\r\n"
#define GW_R_PROT_P_OK "200 PROT now Private.\r\n"
#define GW_R_PROT_NEEDS_PBSZ "503 PROT needs PBSZ first.\r\n"
#define GW_R_PROT_NO_ARG "501 PROT needs a level.\r\n"
#define GW_R_PROT_BAD_LEVEL "504 PROT level not supported.\r\n"
#define GW_R_PROT_UNSUPPORTED "536 PROT level not supported.\r\n"
#define GW_R_PROT_P_REQUIRED "521 Data connection cannot be opened with this PROT setting.\r\n"
#define GW_R_CCC_OK "200 Control connection now in clear.\r\n"
#define GW_R_CCC_NEEDS_TLS "533 CCC needs a protected control connection.\r\n"
#define GW_R_CCC_REFUSED "534 CCC refused by policy.\r\n"
#define GW_R_CCC_IMPLICIT "534 CCC refused: implicit FTPS sessions stay protected.\r\n"
#define GW_R_DATA_TLS_NOT_RESUMED "522 TLS session of data connection not resumed.\r\n"
#define GW_R_XFER_NO_CLOSE_NOTIFY "426 Transfer aborted: upload ended without TLS close_notify.\r\n"
#define GW_R_REIN_PIPELINED "503 Command sent before REIN completed; send it again.\r\n"

/* Frontends that greet themselves (greeting, balance = user, route_user): before USER there
 * is no backend, the gateway answers these itself. */
#define GW_R_PRELOGIN "530 Please login with USER and PASS.\r\n"
#define GW_R_SYST "215 UNIX Type: L8\r\n"
#define GW_R_NOOP_OK "200 NOOP ok.\r\n"
#define GW_R_HELP "214 Log in with USER and PASS; the server's help follows login.\r\n"
#define GW_R_OPTS_UTF8_OK "200 UTF8 mode on.\r\n"
#define GW_R_GOODBYE "221 Goodbye.\r\n"
#define GW_R_ROUTE_UNKNOWN "530 Unknown server in USER name@server.\r\n"
#define GW_R_ROUTE_REIN_OTHER "530 This session stays on its server (REIN keeps it).\r\n"
/* Virtual hosts (RFC 7151 HOST, TLS SNI) */
#define GW_R_HOST_OK "220 Host accepted.\r\n"
#define GW_R_HOST_UNKNOWN "504 Unknown host.\r\n"
#define GW_R_HOST_OTHER "504 HOST names another host than the TLS server name.\r\n"
#define GW_R_HOST_LATE "503 HOST must come before USER.\r\n"
#define GW_R_HOST_NONE "530 No host chosen: send HOST first.\r\n"
/* client_cert_user = yes: USER is not the client certificate's name (or there is none) */
#define GW_R_CERT_REQUIRED "530 A TLS client certificate is required: send AUTH TLS with one.\r\n"
#define GW_R_CERT_USER_MISMATCH "530 USER does not match the TLS client certificate.\r\n"
/* one %s: the frontend's greeting text */
#define GW_R_FMT_GREETING "220 %s\r\n"

/* printf formats: one %s, the reason. Not fixed texts, so not in GW_REPLY_TEXTS. */
#define GW_R_FMT_BACKEND_TLS_FAILED "421 Service not available: backend TLS failed (%s).\r\n"
/* one %d: the code of a greeting other than 120/220 */
#define GW_R_FMT_BAD_GREETING "421 Service not available: the server greeted with %d.\r\n"
/* one %d: the 4xx of a busy server's greeting (max_clients reached): try again later */
#define GW_R_FMT_BUSY_GREETING                                                                     \
    "421 Service not available: the server is busy (%d), try again later.\r\n"

/* X(name) for every text above: tests walk the list (and check it is complete). */
#define GW_REPLY_TEXTS(X)                                                                          \
    X(GW_R_REIN_OK)                                                                                \
    X(GW_R_REIN_PIPELINED)                                                                         \
    X(GW_R_PRELOGIN)                                                                               \
    X(GW_R_SYST)                                                                                   \
    X(GW_R_NOOP_OK)                                                                                \
    X(GW_R_HELP)                                                                                   \
    X(GW_R_OPTS_UTF8_OK)                                                                           \
    X(GW_R_GOODBYE)                                                                                \
    X(GW_R_ROUTE_UNKNOWN)                                                                          \
    X(GW_R_ROUTE_REIN_OTHER)                                                                       \
    X(GW_R_HOST_OK)                                                                                \
    X(GW_R_HOST_UNKNOWN)                                                                           \
    X(GW_R_HOST_OTHER)                                                                             \
    X(GW_R_HOST_LATE)                                                                              \
    X(GW_R_HOST_NONE)                                                                              \
    X(GW_R_FEAT_END)                                                                               \
    X(GW_R_SYNTAX)                                                                                 \
    X(GW_R_LINE_TOO_LONG)                                                                          \
    X(GW_R_NOT_IMPLEMENTED)                                                                        \
    X(GW_R_LOCAL_ERROR)                                                                            \
    X(GW_R_LOGIN_INCORRECT)                                                                        \
    X(GW_R_EDGE_PASSWORD)                                                                          \
    X(GW_R_EDGE_USER_FIRST)                                                                        \
    X(GW_R_EDGE_LOGGED_IN)                                                                         \
    X(GW_R_EDGE_OTHER_USER)                                                                        \
    X(GW_R_POLICY_DENIED)                                                                          \
    X(GW_R_UNAVAILABLE)                                                                            \
    X(GW_R_OUT_OF_MEMORY)                                                                          \
    X(GW_R_UNAVAILABLE_NOMEM)                                                                      \
    X(GW_R_INTERNAL_ERROR)                                                                         \
    X(GW_R_SHUTTING_DOWN)                                                                          \
    X(GW_R_TOO_MANY_CONNECTIONS)                                                                   \
    X(GW_R_TOO_MANY_LOGINS)                                                                        \
    X(GW_R_BANNED)                                                                                 \
    X(GW_R_TOO_MANY_LONG_LINES)                                                                    \
    X(GW_R_LOGIN_TIMEOUT)                                                                          \
    X(GW_R_IDLE_TIMEOUT)                                                                           \
    X(GW_R_BACKEND_CONNECT_TIMEOUT)                                                                \
    X(GW_R_BACKEND_UNREACHABLE)                                                                    \
    X(GW_R_BACKEND_NO_GREETING)                                                                    \
    X(GW_R_BACKEND_CLOSED)                                                                         \
    X(GW_R_BACKEND_BAD_REPLY)                                                                      \
    X(GW_R_BACKEND_NO_ABOR_REPLY)                                                                  \
    X(GW_R_BACKEND_REFUSED_AUTH)                                                                   \
    X(GW_R_UNAVAILABLE_RESOURCES)                                                                  \
    X(GW_R_PORT_OK)                                                                                \
    X(GW_R_BAD_PORT)                                                                               \
    X(GW_R_PORT_BOUNCE)                                                                            \
    X(GW_R_NEED_DATA_CMD)                                                                          \
    X(GW_R_CANT_OPEN_DATA)                                                                         \
    X(GW_R_CANT_OPEN_DATA_BACKEND)                                                                 \
    X(GW_R_CANT_OPEN_DATA_NOMEM)                                                                   \
    X(GW_R_CANT_OPEN_DATA_BAD_PASV)                                                                \
    X(GW_R_CANT_OPEN_DATA_NO_LISTEN)                                                               \
    X(GW_R_NO_PASV_PORT)                                                                           \
    X(GW_R_SHARED_PORT_BUSY)                                                                       \
    X(GW_R_XFER_ABORTED)                                                                           \
    X(GW_R_XFER_DATA_TIMEOUT)                                                                      \
    X(GW_R_XFER_NO_FINAL_REPLY)                                                                    \
    X(GW_R_ABOR_OK)                                                                                \
    X(GW_R_UPLOAD_OPENING)                                                                         \
    X(GW_R_EPRT_OK)                                                                                \
    X(GW_R_EPSV_ALL_OK)                                                                            \
    X(GW_R_BAD_EPRT)                                                                               \
    X(GW_R_BAD_EPSV)                                                                               \
    X(GW_R_EPSV_ALL_IN_EFFECT)                                                                     \
    X(GW_R_BAD_NETPROTO)                                                                           \
    X(GW_R_PASV_IPV4_ONLY)                                                                         \
    X(GW_R_AUTH_OK)                                                                                \
    X(GW_R_AUTH_UNSUPPORTED)                                                                       \
    X(GW_R_AUTH_IMPLICIT)                                                                          \
    X(GW_R_AUTH_ALREADY)                                                                           \
    X(GW_R_AUTH_AFTER_USER)                                                                        \
    X(GW_R_AUTH_BAD_MECH)                                                                          \
    X(GW_R_TLS_REQUIRED_LOGIN)                                                                     \
    X(GW_R_TLS_REQUIRED)                                                                           \
    X(GW_R_PBSZ_OK)                                                                                \
    X(GW_R_PBSZ_NEEDS_TLS)                                                                         \
    X(GW_R_PBSZ_BAD_ARG)                                                                           \
    X(GW_R_PROT_C_OK)                                                                              \
    X(GW_R_PROT_P_OK)                                                                              \
    X(GW_R_PROT_NEEDS_PBSZ)                                                                        \
    X(GW_R_PROT_NO_ARG)                                                                            \
    X(GW_R_PROT_BAD_LEVEL)                                                                         \
    X(GW_R_PROT_UNSUPPORTED)                                                                       \
    X(GW_R_PROT_P_REQUIRED)                                                                        \
    X(GW_R_CCC_OK)                                                                                 \
    X(GW_R_CCC_NEEDS_TLS)                                                                          \
    X(GW_R_CCC_REFUSED)                                                                            \
    X(GW_R_CCC_IMPLICIT)                                                                           \
    X(GW_R_DATA_TLS_NOT_RESUMED)                                                                   \
    X(GW_R_XFER_NO_CLOSE_NOTIFY)                                                                   \
    X(GW_R_CERT_REQUIRED)                                                                          \
    X(GW_R_CERT_USER_MISMATCH)

#endif
