/* Hitless upgrade: see upgrade.h. The old side runs on the main loop (worker 0's). */
#include "upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "bans.h"
#include "control.h"
#include "inherit.h"
#include "log.h"
#include "shared_port.h"
#include "worker.h"

#define READY_TIMEOUT_MS 60000 /* below `ftpsgate -s`'s 90 s wait: the client hears why */
#define CHILD_FD 3             /* the socketpair in the new process; its sockets follow */
#define BACK_FD 4              /* the new process's way back: shared-port connections */
#define FIRST_FD 5             /* the listening sockets */
#define BACK_MSG_MAX 32768     /* a handed-back connection's message (header, ClientHello) */
#define STATE_TIMEOUT_MS 5000  /* the new process waits this long for the old one's state */
#define STATE_MAX (16u << 20)  /* bytes of state at most (65536 bans take about 3 MB) */

extern char **environ;

static char exe[PATH_MAX * 2];
static char **args;

void gw_upgrade_remember(int argc, char **argv)
{
    (void)argc;
    args = argv;
    char cwd[PATH_MAX];
    if (argv[0][0] == '/' || !strchr(argv[0], '/') || !getcwd(cwd, sizeof cwd))
        snprintf(exe, sizeof exe, "%s", argv[0]); /* a bare name: PATH, as the shell did */
    else
        snprintf(exe, sizeof exe, "%s/%s", cwd, argv[0]);
    /* Not realpath(): a symbolic link switched to a new version must be followed then. */
}

/* ---- the old process ---- */

/* One attempt; freed once its three handles are closed. */
typedef struct attempt {
    uv_process_t proc;
    uv_pipe_t pipe;
    uv_timer_t timer;
    int open; /* handles not yet closed */
    bool answered, exited;
    gw_upgrade_done done;
    char buf[128];
    size_t n;
    uv_write_t wr;
    char *state; /* written to the new process (freed with the attempt) */
    int back;    /* our end of the way back (-1: none) */
} attempt;

/* ---- the old process's way back: shared-port connections the new one could not match
 * (shared_port.h), read on the main loop until the new process closes its end ---- */

static uv_poll_t back_poll;
static int back_fd = -1;

static void on_back(uv_poll_t *h, int status, int events)
{
    static uint8_t msg[BACK_MSG_MAX];
    for (;;) {
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = {msg, sizeof msg};
        struct msghdr m = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
        ssize_t n = recvmsg(back_fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) { /* the new process has closed it: nothing more will come */
            uv_poll_stop(h);
            uv_close((uv_handle_t *)h, NULL);
            close(back_fd);
            back_fd = -1;
            return;
        }
        int fd = -1;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(cm), sizeof fd);
        if (fd >= 0)
            gw_shport_adopt(h->loop, fd, msg, (size_t)n);
    }
}

static void back_start(uv_loop_t *loop, int fd)
{
    if (back_fd >= 0 || uv_poll_init(loop, &back_poll, fd) != 0) {
        close(fd); /* an earlier new process still uses one (a chain): cannot happen */
        return;
    }
    back_fd = fd;
    uv_poll_start(&back_poll, UV_READABLE, on_back);
}

/* The state handed over, one item a line: "ban IP UNTIL_MS" (a ban in force; the monotonic
 * clock is the machine's), "down BACKEND" (marked down by health checks), "admin BACKEND
 * drain|maint" (its runtime state, set through the admin endpoint), then "end". */
typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} state_text;

static void text_add(state_text *t, const char *fmt, const char *s, unsigned long long v)
{
    char line[GW_NAME_MAX + 96];
    int k = snprintf(line, sizeof line, fmt, s, v);
    if (t->oom || k < 0 || (size_t)k >= sizeof line)
        return;
    if (t->n + (size_t)k + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4096;
        char *p = cap <= STATE_MAX ? realloc(t->p, cap) : NULL;
        if (!p) {
            t->oom = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->n, line, (size_t)k + 1);
    t->n += (size_t)k;
}

static void state_ban(const gw_addr *key, uint64_t until_ms, void *arg)
{
    char ip[64];
    text_add(arg, "ban %s %llu\n", gw_addr_ip_str(key, ip, sizeof ip),
             (unsigned long long)until_ms);
}

static void state_down(const char *backend, bool down, enum gw_be_admin admin, void *arg)
{
    if (down)
        text_add(arg, "down %s\n", backend, 0);
    if (admin == GW_BE_ADMIN_DRAIN)
        text_add(arg, "admin %s drain\n", backend, 0);
    else if (admin == GW_BE_ADMIN_MAINT)
        text_add(arg, "admin %s maint\n", backend, 0);
}

/* Sockets collected for the new process. */
typedef struct {
    int n, cap;
    int *fd;
    char *list; /* "fe=4,fe=5,sp=6,..." ($FTPSGATE_INHERIT) */
    size_t len, list_cap;
    bool oom;
} collected;

static void collect(const char *kind, int fd, void *arg)
{
    collected *c = arg;
    if (c->oom)
        return;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        int *v = realloc(c->fd, (size_t)cap * sizeof *v);
        if (!v) {
            c->oom = true;
            return;
        }
        c->fd = v;
        c->cap = cap;
    }
    char item[32];
    int k = snprintf(item, sizeof item, "%s%s=%d", c->n ? "," : "", kind, FIRST_FD + c->n);
    if (c->len + (size_t)k + 1 > c->list_cap) {
        size_t cap = c->list_cap ? c->list_cap * 2 : 256;
        char *l = realloc(c->list, cap);
        if (!l) {
            c->oom = true;
            return;
        }
        c->list = l;
        c->list_cap = cap;
    }
    memcpy(c->list + c->len, item, (size_t)k + 1);
    c->len += (size_t)k;
    c->fd[c->n++] = fd;
}

static void on_closed(uv_handle_t *h)
{
    attempt *a = h->data;
    if (--a->open == 0) {
        free(a->state);
        free(a);
    }
}

static void on_state_written(uv_write_t *wr, int status)
{
    if (status != 0 && status != UV_ECANCELED)
        GW_LOG_WARN(0, "event=upgrade_state_lost reason=\"%s\"", uv_strerror(status));
}

static void close_handle(attempt *a, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, on_closed);
}

static void answer(attempt *a, bool ok, const char *text)
{
    if (a->answered)
        return;
    a->answered = true;
    uv_timer_stop(&a->timer);
    close_handle(a, (uv_handle_t *)&a->timer);
    close_handle(a, (uv_handle_t *)&a->pipe);
    long pid = a->proc.pid;
    if (ok || a->exited)
        close_handle(a, (uv_handle_t *)&a->proc); /* the new process runs on, on its own */
    if (ok)
        back_start(a->timer.loop, a->back);
    else
        close(a->back);
    a->back = -1;
    if (!ok)
        GW_LOG_ERR(0, "event=upgrade_failed pid=%ld reason=\"%s\" note=\"this process serves on\"",
                   pid, text);
    a->done(ok, pid, text);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    attempt *a = p->data;
    a->exited = true;
    char why[128];
    if (sig)
        snprintf(why, sizeof why, "the new process was killed by signal %d before it was ready",
                 sig);
    else
        snprintf(why, sizeof why, "the new process exited with status %lld before it was ready",
                 (long long)status);
    if (a->answered)
        close_handle(a, (uv_handle_t *)p); /* after a timeout: killed, now reaped */
    else
        answer(a, false, why);
}

static void on_timeout(uv_timer_t *t)
{
    attempt *a = t->data;
    uv_process_kill(&a->proc, SIGKILL);
    answer(a, false, "the new process was not ready within 60 s (killed)");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    attempt *a = h->data;
    *buf = uv_buf_init(a->buf + a->n, (unsigned)(sizeof a->buf - 1 - a->n));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    attempt *a = s->data;
    if (nread < 0) {
        uv_read_stop(s); /* the new process closed it: its exit (or the timeout) tells */
        return;
    }
    a->n += (size_t)nread;
    a->buf[a->n] = 0;
    if (strncmp(a->buf, "ready ", 6) == 0 && strchr(a->buf, '\n')) {
        uv_read_stop(s);
        answer(a, true, "ready");
    } else if (a->n >= sizeof a->buf - 1) {
        uv_process_kill(&a->proc, SIGKILL);
        answer(a, false, "the new process said something else than ready (killed)");
    }
}

/* The environment of the new process: ours, with the hand-over variables set and
 * WATCHDOG_PID dropped (it names this process; the new one pings for itself). */
static char **child_env(const char *list)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 4, sizeof *env);
    size_t len = strlen("FTPSGATE_INHERIT=") + strlen(list) + 1;
    char *inherit = malloc(len), *fdvar = malloc(32), *backvar = malloc(32);
    if (!env || !inherit || !fdvar || !backvar) {
        free(env);
        free(inherit);
        free(fdvar);
        free(backvar);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "FTPSGATE_INHERIT=", 17) != 0 &&
            strncmp(environ[i], "FTPSGATE_UPGRADE_FD=", 20) != 0 &&
            strncmp(environ[i], "FTPSGATE_BACK_FD=", 17) != 0 &&
            strncmp(environ[i], "WATCHDOG_PID=", 13) != 0)
            env[k++] = environ[i];
    snprintf(inherit, len, "FTPSGATE_INHERIT=%s", list);
    snprintf(fdvar, 32, "FTPSGATE_UPGRADE_FD=%d", CHILD_FD);
    snprintf(backvar, 32, "FTPSGATE_BACK_FD=%d", BACK_FD);
    env[k++] = inherit;
    env[k++] = fdvar;
    env[k++] = backvar;
    return env;
}

static void free_env(char **env)
{
    size_t n = 0;
    while (env[n])
        n++;
    free(env[n - 1]); /* the three strings of ours, last */
    free(env[n - 2]);
    free(env[n - 3]);
    free(env);
}

int gw_upgrade_start(uv_loop_t *loop, gw_health *health, gw_upgrade_done done, char *err,
                     size_t cap)
{
    collected c = {0};
    if (gw_workers_each_listen_fd(collect, &c) != 0) {
        snprintf(err, cap, "a reload is under way");
        free(c.fd);
        free(c.list);
        return -1;
    }
    int fd = gw_admin_listen_fd();
    if (fd >= 0)
        collect("admin", fd, &c);
    fd = gw_control_fd();
    if (fd >= 0)
        collect("ctl", fd, &c);
    attempt *a = c.oom ? NULL : calloc(1, sizeof *a);
    uv_stdio_container_t *io = a ? calloc((size_t)(FIRST_FD + c.n), sizeof *io) : NULL;
    char **env = io ? child_env(c.list ? c.list : "") : NULL;
    int back[2] = {-1, -1};
    if (env && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, back) != 0) {
        free_env(env);
        env = NULL;
    }
    if (!env) {
        snprintf(err, cap, "out of memory or descriptors");
        free(io);
        free(a);
        free(c.fd);
        free(c.list);
        return -1;
    }
    a->done = done;
    uv_pipe_init(loop, &a->pipe, 0);
    uv_timer_init(loop, &a->timer);
    a->pipe.data = a->timer.data = a->proc.data = a;
    a->open = 3;
    for (int i = 0; i < CHILD_FD; i++) {
        io[i].flags = UV_INHERIT_FD; /* the log goes where ours goes */
        io[i].data.fd = i;
    }
    io[CHILD_FD].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
    io[CHILD_FD].data.stream = (uv_stream_t *)&a->pipe;
    io[BACK_FD].flags = UV_INHERIT_FD;
    io[BACK_FD].data.fd = back[1];
    for (int i = 0; i < c.n; i++) {
        io[FIRST_FD + i].flags = UV_INHERIT_FD;
        io[FIRST_FD + i].data.fd = c.fd[i];
    }
    uv_process_options_t opt = {.exit_cb = on_exit_cb,
                                .file = exe,
                                .args = args,
                                .env = env,
                                .stdio_count = FIRST_FD + c.n,
                                .stdio = io};
    int r = uv_spawn(loop, &a->proc, &opt);
    close(back[1]); /* the new process's now */
    a->back = back[0];
    free_env(env);
    free(io);
    free(c.fd);
    free(c.list);
    if (r != 0) {
        snprintf(err, cap, "cannot start %s: %s", exe, uv_strerror(r));
        close(a->back);
        close_handle(a, (uv_handle_t *)&a->timer);
        close_handle(a, (uv_handle_t *)&a->pipe);
        close_handle(a, (uv_handle_t *)&a->proc); /* uv_spawn initialized it all the same */
        return -1;
    }
    state_text st = {0};
    gw_bans_each(state_ban, &st);
    gw_health_each_down(health, state_down, &st);
    text_add(&st, "%send\n", "", 0);
    GW_LOG_INFO(0, "event=upgrade_started pid=%ld exe=%s sockets=%d state_bytes=%zu%s",
                (long)a->proc.pid, exe, c.n, st.n, st.oom ? " state=lost" : "");
    if (st.oom) { /* the new process starts without it (it waits STATE_TIMEOUT_MS) */
        free(st.p);
        st.p = NULL;
    }
    a->state = st.p;
    uv_buf_t b = uv_buf_init(st.p, (unsigned)st.n);
    if (st.p && uv_write(&a->wr, (uv_stream_t *)&a->pipe, &b, 1, on_state_written) != 0)
        GW_LOG_WARN(0, "event=upgrade_state_lost reason=\"write failed\"");
    uv_read_start((uv_stream_t *)&a->pipe, on_alloc, on_read);
    uv_timer_start(&a->timer, on_timeout, READY_TIMEOUT_MS, 0);
    return 0;
}

/* ---- the new process ---- */

static int ready_fd = -1;
/* Backends down (admin: ready) or in a runtime state in the old process, applied later. */
static struct handed_backend {
    char name[GW_NAME_MAX];
    bool down;
    enum gw_be_admin admin;
} * downs;
static int n_downs;

static void hand_backend(const char *name, bool down, enum gw_be_admin admin)
{
    struct handed_backend *more = realloc(downs, (size_t)(n_downs + 1) * sizeof *downs);
    if (!more)
        return;
    downs = more;
    downs[n_downs] = (struct handed_backend){.down = down, .admin = admin};
    snprintf(downs[n_downs++].name, GW_NAME_MAX, "%s", name);
}

/* Read the old process's state (see text above) until "end": bans now, backends later. */
static void read_state(void)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    struct pollfd p = {.fd = ready_fd, .events = POLLIN};
    int bans = 0, failed = 0;
    while (buf) {
        bool end = n >= 4 && memcmp(buf + n - 4, "end\n", 4) == 0 && (n == 4 || buf[n - 5] == '\n');
        if (end)
            break;
        if (n + 1 >= cap) {
            char *more = cap < STATE_MAX ? realloc(buf, cap * 2) : NULL;
            if (!more)
                break;
            buf = more;
            cap *= 2;
        }
        int r = poll(&p, 1, STATE_TIMEOUT_MS);
        if (r < 0 && errno == EINTR)
            continue;
        ssize_t got = r > 0 ? read(ready_fd, buf + n, cap - 1 - n) : -1;
        if (got <= 0) {
            GW_LOG_WARN(0, "event=upgrade_state_incomplete note=\"bans and backend states may "
                           "be lost\"");
            break;
        }
        n += (size_t)got;
    }
    if (!buf)
        return;
    buf[n] = 0;
    for (char *line = buf, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = 0;
        char ip[64], name[GW_NAME_MAX], state[16];
        unsigned long long until;
        if (sscanf(line, "ban %63s %llu", ip, &until) == 2) {
            struct sockaddr_storage ss = {0};
            struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
            struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
            if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1)
                ss.ss_family = AF_INET;
            else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1)
                ss.ss_family = AF_INET6;
            gw_addr a;
            gw_addr_from_sockaddr(&a, (struct sockaddr *)&ss);
            if (ss.ss_family && gw_bans_restore(&a, until) == 0)
                bans++;
            else
                failed++;
        } else if (sscanf(line, "down %63s", name) == 1) {
            hand_backend(name, true, GW_BE_ADMIN_READY);
        } else if (sscanf(line, "admin %63s %15s", name, state) == 2) {
            for (int k = GW_BE_ADMIN_DRAIN; k < GW_BE_ADMIN_STATES; k++)
                if (strcmp(state, gw_be_admin_name((enum gw_be_admin)k)) == 0)
                    hand_backend(name, false, (enum gw_be_admin)k);
        }
    }
    GW_LOG_INFO(0, "event=upgrade_state bans=%d bans_failed=%d backends_down=%d", bans, failed,
                n_downs);
    free(buf);
}

void gw_upgrade_apply_health(gw_health *h)
{
    for (int i = 0; i < n_downs; i++) {
        enum gw_be_admin previous;
        if (downs[i].down)
            gw_health_restore_down(h, downs[i].name);
        else if (gw_health_set_admin(h, downs[i].name, downs[i].admin, &previous) == 0)
            GW_LOG_INFO(0, "event=backend_admin_state backend=%s state=%s from=upgrade",
                        downs[i].name, gw_be_admin_name(downs[i].admin));
    }
    free(downs);
    downs = NULL;
    n_downs = 0;
}

int gw_upgrade_child_init(char *err, size_t cap)
{
    const char *fdvar = getenv("FTPSGATE_UPGRADE_FD"), *list = getenv("FTPSGATE_INHERIT");
    if (fdvar) {
        ready_fd = atoi(fdvar);
        if (ready_fd < 0 || fcntl(ready_fd, F_SETFD, FD_CLOEXEC) != 0)
            ready_fd = -1;
    }
    const char *backvar = getenv("FTPSGATE_BACK_FD");
    int back = backvar ? atoi(backvar) : -1;
    if (back >= 0 && fcntl(back, F_SETFD, FD_CLOEXEC) == 0)
        gw_shport_forward_to(back); /* what no session of ours waits for goes back */
    unsetenv("FTPSGATE_BACK_FD");
    if (ready_fd >= 0)
        read_state();
    int r = gw_inherit_load(list, err, cap);
    unsetenv("FTPSGATE_UPGRADE_FD");
    unsetenv("FTPSGATE_INHERIT");
    if (r == 0 && gw_inherit_count() > 0)
        GW_LOG_INFO(0, "event=upgrade_child sockets=%d", gw_inherit_count());
    return r;
}

bool gw_upgrade_is_child(void)
{
    return ready_fd >= 0;
}

void gw_upgrade_child_ready(void)
{
    int unused = gw_inherit_close_unused();
    if (ready_fd < 0)
        return;
    GW_LOG_INFO(0, "event=upgrade_ready pid=%ld sockets=%d unused_closed=%d", (long)getpid(),
                gw_inherit_count(), unused);
    char line[64];
    int n = snprintf(line, sizeof line, "ready %ld\n", (long)getpid());
    ssize_t w;
    do
        w = write(ready_fd, line, (size_t)n);
    while (w < 0 && errno == EINTR);
    close(ready_fd);
    ready_fd = -1;
}
