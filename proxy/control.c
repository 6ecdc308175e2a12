/* The control socket: see control.h. Runs on the main loop (worker 0's). */
#include "control.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "inherit.h"
#include "log.h"

#define MAX_CLIENTS 16
#define MAX_LINE 128

typedef struct ctl_client {
    uv_pipe_t pipe;
    char line[MAX_LINE];
    size_t n;
    bool asked;    /* sent "reload": waits for an outcome */
    bool upgrade;  /* sent "upgrade": waits for gw_control_upgrade_finished */
    bool replying; /* its answer is being written: closed once written */
    bool current;  /* for the reload under way (else for the next one) */
    bool closing;
    uv_write_t wr;
    char reply[1400];
    struct ctl_client *next, **prevp;
} ctl_client;

static struct {
    uv_pipe_t srv;
    bool open;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    void (*on_reload)(void);
    void (*on_upgrade)(void);
    bool keep_file; /* inherited from an old process: the file is not ours until we serve */
    ctl_client *clients;
    int n_clients;
} ctl;

int gw_control_path(const gw_config *cfg, const char *state_dir, char *out, size_t cap, char *err,
                    size_t errcap)
{
    const char *set = cfg->control_socket;
    if (strcmp(set, "off") == 0) {
        snprintf(out, cap, "%s", "");
        return 0;
    }
    int n =
        set[0] ? snprintf(out, cap, "%s", set) : snprintf(out, cap, "%s/control.sock", state_dir);
    if (n < 0 || (size_t)n >= cap || (size_t)n >= sizeof ctl.path) {
        snprintf(err, errcap, "%s%s: longer than %zu bytes, the limit of a unix socket address",
                 set[0] ? "" : "the default ", set[0] ? set : "STATE_DIR/control.sock",
                 sizeof ctl.path - 1);
        return -1;
    }
    return 0;
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        return -1;
    memcpy(sa->sun_path, path, strlen(path));
    return 0;
}

/* ---- server side ---- */

static void on_client_closed(uv_handle_t *h)
{
    ctl_client *c = h->data;
    *c->prevp = c->next;
    if (c->next)
        c->next->prevp = c->prevp;
    ctl.n_clients--;
    free(c);
}

static void client_close(ctl_client *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void on_written(uv_write_t *wr, int status)
{
    client_close(wr->data);
}

static void client_reply(ctl_client *c, const char *fmt, const char *text)
{
    if (c->closing)
        return;
    c->asked = false;
    c->upgrade = false;
    c->replying = true;
    snprintf(c->reply, sizeof c->reply, fmt, text);
    for (char *p = c->reply; *p && p[1]; p++)
        if (*p == '\n')
            *p = ' '; /* one line, whatever the reason says */
    uv_buf_t b = uv_buf_init(c->reply, (unsigned)strlen(c->reply));
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->pipe, &b, 1, on_written) != 0)
        client_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ctl_client *c = h->data;
    *buf = uv_buf_init(c->line + c->n, (unsigned)(sizeof c->line - 1 - c->n));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    ctl_client *c = s->data;
    if (nread < 0) {
        client_close(c); /* gone before its answer: nothing to tell */
        return;
    }
    c->n += (size_t)nread;
    c->line[c->n] = 0;
    char *nl = strchr(c->line, '\n');
    if (!nl) {
        if (c->n >= sizeof c->line - 1)
            client_reply(c, "failed %s\n", "line too long");
        return;
    }
    uv_read_stop(s);
    *nl = 0;
    /* SECURITY: the file is 0600, and the peer must be root or the gateway's own user. The
     * check comes once the request is read: closing a socket with unread data would reset
     * it, and the peer would not read why. */
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (uv_fileno((uv_handle_t *)s, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != 0 && cred.uid != geteuid())) {
        GW_LOG_WARN(0, "event=control_refused reason=\"not root nor the gateway's user\"");
        client_reply(c, "failed %s\n", "permission denied");
        return;
    }
    if (nl > c->line && nl[-1] == '\r')
        nl[-1] = 0;
    if (strcmp(c->line, "upgrade") == 0 && ctl.on_upgrade) {
        GW_LOG_INFO(0, "event=control_command command=upgrade");
        c->upgrade = true;
        ctl.on_upgrade(); /* may answer at once (an upgrade cannot start now) */
        return;
    }
    if (strcmp(c->line, "reload") != 0) {
        GW_LOG_WARN(0, "event=control_refused reason=\"unknown command\"");
        client_reply(c, "failed unknown command: %s\n", c->line);
        return;
    }
    GW_LOG_INFO(0, "event=control_command command=reload");
    c->asked = true;
    c->current = false;
    ctl.on_reload(); /* may answer at once (a file that does not parse) */
}

static void on_connection(uv_stream_t *srv, int status)
{
    if (status < 0)
        return;
    ctl_client *c = ctl.n_clients < MAX_CLIENTS ? calloc(1, sizeof *c) : NULL;
    uv_pipe_t *p = c ? &c->pipe : malloc(sizeof *p);
    if (!p)
        return; /* libuv keeps the connection pending until memory is back */
    uv_pipe_init(srv->loop, p, 0);
    p->data = c;
    if (!c) { /* too many at once: refused */
        (void)uv_accept(srv, (uv_stream_t *)p);
        uv_close((uv_handle_t *)p, (uv_close_cb)free);
        return;
    }
    c->next = ctl.clients;
    if (c->next)
        c->next->prevp = &c->next;
    c->prevp = &ctl.clients;
    ctl.clients = c;
    ctl.n_clients++;
    if (uv_accept(srv, (uv_stream_t *)p) != 0) {
        client_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)p, on_alloc, on_read);
}

/* A socket file left by a process that has gone is replaced; a live one is not. */
static int clear_stale(const char *path, char *err, size_t cap)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, cap, "%s exists and is not a socket", path);
        return -1;
    }
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || unix_addr(path, &sa) != 0) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa), e = errno;
    close(fd);
    if (r == 0) {
        snprintf(err, cap, "%s is in use by a running process", path);
        return -1;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, cap, "%s: %s", path, strerror(e));
        return -1;
    }
    unlink(path);
    return 0;
}

int gw_control_start(uv_loop_t *loop, const char *path, void (*on_reload)(void), char *err,
                     size_t cap)
{
    struct sockaddr_un sa;
    if (unix_addr(path, &sa) != 0) {
        snprintf(err, cap, "%s: too long for a unix socket address", path);
        return -1;
    }
    /* A hitless upgrade hands the old process's socket over: same file, never unbound. */
    int fd = gw_inherit_take("ctl", (struct sockaddr *)&sa, sizeof sa), r = 0, e = 0;
    ctl.keep_file = fd >= 0;
    if (fd < 0) {
        if (clear_stale(path, err, cap) != 0)
            return -1;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            snprintf(err, cap, "%s: %s", path, strerror(errno));
            return -1;
        }
        mode_t old = umask(0177); /* srw------- from the start: no window with a wider mode */
        r = bind(fd, (struct sockaddr *)&sa, sizeof sa), e = errno;
        umask(old);
    }
    struct stat st;
    if (r != 0 || listen(fd, 8) != 0 || stat(path, &st) != 0) {
        e = r != 0 ? e : errno;
        close(fd);
        snprintf(err, cap, "cannot listen on %s: %s", path, strerror(e));
        return -1;
    }
    uv_pipe_init(loop, &ctl.srv, 0);
    if (uv_pipe_open(&ctl.srv, fd) != 0 ||
        uv_listen((uv_stream_t *)&ctl.srv, 8, on_connection) != 0) {
        uv_close((uv_handle_t *)&ctl.srv, NULL); /* closes fd */
        if (!ctl.keep_file)
            unlink(path);
        snprintf(err, cap, "cannot listen on %s", path);
        return -1;
    }
    uv_unref((uv_handle_t *)&ctl.srv); /* the loop ends by uv_stop, never for lack of work */
    snprintf(ctl.path, sizeof ctl.path, "%s", path);
    ctl.dev = st.st_dev;
    ctl.ino = st.st_ino;
    ctl.on_reload = on_reload;
    ctl.open = true;
    GW_LOG_INFO(0, "event=control_listening path=%s%s", path,
                ctl.keep_file ? " inherited=yes" : "");
    return 0;
}

void gw_control_on_upgrade(void (*on_upgrade)(void))
{
    ctl.on_upgrade = on_upgrade;
}

int gw_control_fd(void)
{
    uv_os_fd_t fd;
    return ctl.open && uv_fileno((uv_handle_t *)&ctl.srv, &fd) == 0 ? fd : -1;
}

void gw_control_serving(void)
{
    ctl.keep_file = false;
}

void gw_control_upgrade_finished(bool ok, const char *text)
{
    for (ctl_client *c = ctl.clients, *next; c; c = next) {
        next = c->next;
        if (c->upgrade)
            client_reply(c, ok ? "ok %s\n" : "failed %s\n", text);
    }
}

void gw_control_release(void)
{
    if (!ctl.open)
        return;
    ctl.open = false;
    for (ctl_client *c = ctl.clients; c; c = c->next)
        if (!c->replying)
            client_close(c); /* the answers being written are sent first */
    if (!uv_is_closing((uv_handle_t *)&ctl.srv))
        uv_close((uv_handle_t *)&ctl.srv, NULL); /* the file and socket are the new process's */
}

void gw_control_reload_started(void)
{
    for (ctl_client *c = ctl.clients; c; c = c->next)
        if (c->asked)
            c->current = true;
}

void gw_control_reload_finished(bool ok, const char *why)
{
    for (ctl_client *c = ctl.clients, *next; c; c = next) {
        next = c->next;
        if (c->asked && c->current)
            client_reply(c, ok ? "ok %s\n" : "failed %s\n", ok ? "reloaded" : why);
    }
}

void gw_control_stop(void)
{
    if (!ctl.open)
        return;
    ctl.open = false;
    for (ctl_client *c = ctl.clients; c; c = c->next)
        client_close(c);
    if (!uv_is_closing((uv_handle_t *)&ctl.srv))
        uv_close((uv_handle_t *)&ctl.srv, NULL);
    struct stat st; /* another gateway may have taken the path meanwhile: not ours to remove */
    if (!ctl.keep_file && stat(ctl.path, &st) == 0 && st.st_dev == ctl.dev && st.st_ino == ctl.ino)
        unlink(ctl.path);
}

/* ---- client side (`ftpsgate -s`) ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int gw_control_send(const char *path, const char *command, int timeout_s, char *out, size_t cap)
{
    struct sockaddr_un sa;
    char req[MAX_LINE];
    if (unix_addr(path, &sa) != 0) {
        snprintf(out, cap, "%s: too long for a unix socket address", path);
        return 2;
    }
    snprintf(req, sizeof req, "%s\n", command);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        snprintf(out, cap, "cannot reach the running gateway at %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 2;
    }
    /* A refusal may be written and the socket closed before our request is: its answer is
     * read all the same. */
    int send_errno = send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req) ? 0 : errno;
    char buf[1400];
    size_t n = 0;
    int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
    while (n < sizeof buf - 1 && !memchr(buf, '\n', n)) {
        int64_t left = deadline - now_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (r < 0 && errno == EINTR)
            continue;
        ssize_t got = r > 0 ? recv(fd, buf + n, sizeof buf - 1 - n, 0) : -1;
        if (got <= 0) {
            if (send_errno)
                snprintf(out, cap, "cannot reach the running gateway at %s: %s", path,
                         strerror(send_errno));
            else
                snprintf(out, cap, "%s",
                         r == 0 ? "no answer from the gateway in time"
                                : "the gateway closed the connection (stopping?)");
            close(fd);
            return 2;
        }
        n += (size_t)got;
    }
    close(fd);
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    bool ok = strncmp(buf, "ok", 2) == 0 && (buf[2] == ' ' || buf[2] == 0);
    const char *text = strchr(buf, ' ') ? strchr(buf, ' ') + 1 : buf;
    snprintf(out, cap, "%s", text);
    return ok ? 0 : strncmp(buf, "failed", 6) == 0 ? 1 : 2;
}
