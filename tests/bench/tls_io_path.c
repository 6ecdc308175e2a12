/* TLS I/O path microbenchmark: what does the gateway's memory-BIO design cost in CPU, compared
 * with letting OpenSSL do the socket I/O itself (a socket BIO on the fd)?
 *
 * ftpsgate (proxy/conn.c, proxy/tls.c) runs TLS over memory BIOs: on the way out, SSL_write
 * (16 KiB at a time) fills a "sink" BIO buffer reserved for the whole 256 KiB chunk, which goes
 * to the socket in one write(2); on the way in, read(2) of up to 256 KiB is copied into a
 * memory BIO with BIO_write and decrypted with SSL_read until WANT_READ. That costs extra
 * memcpy (sink on the way out; BIO_write and OpenSSL's read from the memory BIO on the way in)
 * but few syscalls; a socket BIO saves those copies but makes a write(2) per 16 KiB record
 * and, without read-ahead, two read(2)s per record (header, then body).
 *
 * Over loopback TCP, TLS 1.3 TLS_AES_128_GCM_SHA256, an in-memory ECDSA P-256 certificate:
 *   encrypt side (like RETR): this process SSL_writes 256 KiB chunks, a forked peer decrypts;
 *   decrypt side (like STOR): the forked peer encrypts and sends, this process decrypts.
 * Variant a = memory BIO as in conn.c, b = SSL_set_fd on the non-blocking socket; poll()
 * stands in for libuv's epoll. Only this process's CPU is counted (getrusage RUSAGE_SELF around
 * the transfer, handshake excluded), and its read/write/poll calls are counted in the code (for
 * the socket BIO through a BIO callback: one BIO_read/BIO_write = one read(2)/write(2)).
 * Every transfer is checked: byte count and an order-sensitive checksum.
 *
 * Usage: tls_io_path [MiB, default 1024] [--read-ahead (variant b decrypts with read-ahead and
 * a 256 KiB read buffer)] */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define RUNS 5

static unsigned char plain_src[CHUNK]; /* what senders send, over and over */
static unsigned char plain_dst[CHUNK]; /* where receivers decrypt to */
static unsigned char net_buf[CHUNK];   /* conn.c's read_buf */
static uint64_t total;                 /* bytes per transfer */
static int read_ahead;                 /* --read-ahead */
static struct {
    long reads, writes, polls;
} sys_n; /* syscalls of the measured side */

static void die(const char *what)
{
    fprintf(stderr, "tls_io_path: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Order-sensitive checksum over the byte stream (Fletcher-style on 64-bit words). */
typedef struct {
    uint64_t s1, s2, bytes;
    unsigned char tail[8];
    unsigned nt;
} cksum;

static void ck_word(cksum *c, const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    c->s1 += w;
    c->s2 += c->s1;
}

static void ck_update(cksum *c, const unsigned char *p, size_t n)
{
    c->bytes += n;
    while (c->nt && n) {
        c->tail[c->nt++] = *p++, n--;
        if (c->nt == 8)
            ck_word(c, c->tail), c->nt = 0;
    }
    for (; n >= 8; p += 8, n -= 8)
        ck_word(c, p);
    while (n--)
        c->tail[c->nt++] = *p++;
}

static void ck_final(cksum *c)
{
    if (c->nt) {
        memset(c->tail + c->nt, 0, 8 - c->nt);
        ck_word(c, c->tail);
        c->nt = 0;
    }
}

/* --- TLS set-up ------------------------------------------------------------------------ */

static SSL_CTX *server_ctx(void)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!pk || !x)
        die("key generation");
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pk);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    if (!X509_sign(x, pk, EVP_sha256()))
        die("X509_sign");
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    /* The gateway's settings (tls.c); a data connection sends no tickets (GW_TLS_SERVER_DATA). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (!SSL_CTX_use_certificate(ctx, x) || !SSL_CTX_use_PrivateKey(ctx, pk))
        die("server context");
    X509_free(x);
    EVP_PKEY_free(pk);
    return ctx;
}

static SSL_CTX *client_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"))
        die("ciphersuites");
    /* The peer should not be the bottleneck: few, large reads. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, CHUNK);
    return ctx;
}

/* --- the sink BIO of tls.c --------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
} sink;

static int sink_write(BIO *b, const char *data, int len)
{
    sink *s = BIO_get_data(b);
    if (s->len + (size_t)len > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + (size_t)len)
            cap *= 2;
        char *n = realloc(s->buf, cap);
        if (!n)
            return -1;
        s->buf = n, s->cap = cap;
    }
    memcpy(s->buf + s->len, data, (size_t)len);
    s->len += (size_t)len;
    return len;
}

static long sink_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num, (void)ptr;
    sink *s = BIO_get_data(b);
    return cmd == BIO_CTRL_FLUSH                                   ? 1
           : (cmd == BIO_CTRL_PENDING || cmd == BIO_CTRL_WPENDING) ? (long)s->len
                                                                   : 0;
}

static BIO *sink_new(sink *s)
{
    static BIO_METHOD *m;
    if (!m) {
        m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sink");
        BIO_meth_set_write(m, sink_write);
        BIO_meth_set_ctrl(m, sink_ctrl);
    }
    BIO *b = BIO_new(m);
    BIO_set_data(b, s);
    BIO_set_init(b, 1);
    return b;
}

/* Counts the socket BIO's calls: each BIO_read/BIO_write on it is one read(2)/write(2). */
static long count_cb(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret,
                     size_t *processed)
{
    (void)b, (void)argp, (void)len, (void)argi, (void)argl, (void)processed;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN))
        sys_n.reads++;
    else if (oper == (BIO_CB_WRITE | BIO_CB_RETURN))
        sys_n.writes++;
    return ret;
}

/* --- the measured side ------------------------------------------------------------------- */

static int fcntl_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void wait_fd(int fd, short ev)
{
    struct pollfd p = {.fd = fd, .events = ev};
    sys_n.polls++;
    if (poll(&p, 1, -1) < 0)
        die("poll");
}

/* conn.c send_bytes: write(2) at once, and on a short write wait for POLLOUT like libuv. */
static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        sys_n.writes++;
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno != EAGAIN)
            die("write");
        if (w > 0)
            p += w, n -= (size_t)w;
        if (n)
            wait_fd(fd, POLLOUT);
    }
}

static void encrypt_mem(SSL *ssl, int fd, sink *s)
{
    for (uint64_t sent = 0; sent < total;) {
        size_t n = total - sent < CHUNK ? (size_t)(total - sent) : CHUNK;
        size_t need = n + (n / 16384 + 1) * 64; /* tls.c reserve_out */
        if (!(s->buf = realloc(s->buf, need)))  /* s->buf is NULL: the last one was handed over */
            die("out of memory");
        s->cap = need;
        for (size_t off = 0; off < n;) {
            int r = SSL_write(ssl, plain_src + off, n - off > 16384 ? 16384 : (int)(n - off));
            if (r <= 0)
                die("SSL_write");
            off += (size_t)r;
        }
        write_all(fd, s->buf, s->len); /* gw_tls_out_take_buffer + send_bytes + free */
        free(s->buf);
        s->buf = NULL, s->len = s->cap = 0;
        sent += n;
    }
    SSL_shutdown(ssl); /* close_notify into the sink */
    write_all(fd, s->buf, s->len);
}

static void ssl_wait(SSL *ssl, int fd, int r, const char *what)
{
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_WRITE)
        wait_fd(fd, POLLOUT);
    else if (e == SSL_ERROR_WANT_READ)
        wait_fd(fd, POLLIN);
    else
        die(what);
}

static void encrypt_sock(SSL *ssl, int fd)
{
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    for (uint64_t sent = 0; sent < total;) {
        size_t n = total - sent < CHUNK ? (size_t)(total - sent) : CHUNK;
        for (size_t off = 0; off < n;) {
            int r = SSL_write(ssl, plain_src + off, (int)(n - off));
            if (r > 0)
                off += (size_t)r;
            else
                ssl_wait(ssl, fd, r, "SSL_write");
        }
        sent += n;
    }
    int r;
    while ((r = SSL_shutdown(ssl)) < 0)
        ssl_wait(ssl, fd, r, "SSL_shutdown");
}

/* conn.c process_tls: gather up to 256 KiB of plaintext, hand it on, until WANT_READ.
 * Returns 1 on close_notify, 0 when OpenSSL wants more input. */
static int drain(SSL *ssl, int fd, cksum *ck, int mem)
{
    for (;;) {
        size_t got = 0;
        int r;
        while ((r = SSL_read(ssl, plain_dst + got, CHUNK - (int)got)) > 0)
            if ((got += (size_t)r) == CHUNK)
                break;
        ck_update(ck, plain_dst, got);
        if (r > 0)
            continue;
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 1;
        if (e != SSL_ERROR_WANT_READ)
            die("SSL_read");
        if (!mem)
            wait_fd(fd, POLLIN);
        return 0;
    }
}

static void decrypt_mem(SSL *ssl, int fd, BIO *rbio, cksum *ck)
{
    for (;;) {
        sys_n.reads++;
        ssize_t n = read(fd, net_buf, CHUNK);
        if (n < 0 && errno == EAGAIN) {
            wait_fd(fd, POLLIN);
            continue;
        }
        if (n <= 0)
            die(n ? "read" : "EOF before close_notify");
        if (BIO_write(rbio, net_buf, (int)n) != n)
            die("BIO_write");
        if (drain(ssl, fd, ck, 1))
            return;
    }
}

static void decrypt_sock(SSL *ssl, int fd, cksum *ck)
{
    if (read_ahead) {
        SSL_set_read_ahead(ssl, 1);
        SSL_set_default_read_buffer_len(ssl, CHUNK);
    }
    while (!drain(ssl, fd, ck, 0))
        ;
}

/* --- the peer (forked; its CPU is not counted) ------------------------------------------- */

typedef struct {
    uint64_t bytes, s1, s2;
} result;

static void peer(SSL_CTX *ctx, uint16_t port, int encrypt_side, int go_fd, int res_fd)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("peer connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        die("peer handshake");
    if (encrypt_side) { /* receive everything, report what arrived */
        cksum ck = {0};
        int r;
        while ((r = SSL_read(ssl, plain_dst, CHUNK)) > 0)
            ck_update(&ck, plain_dst, (size_t)r);
        if (SSL_get_error(ssl, r) != SSL_ERROR_ZERO_RETURN)
            die("peer SSL_read");
        ck_final(&ck);
        result res = {ck.bytes, ck.s1, ck.s2};
        if (write(res_fd, &res, sizeof res) != sizeof res)
            die("peer result");
    } else { /* wait until the measured side has started its clock, then send */
        char go;
        if (read(go_fd, &go, 1) != 1)
            die("peer go");
        for (uint64_t sent = 0; sent < total;) {
            size_t n = total - sent < CHUNK ? (size_t)(total - sent) : CHUNK;
            if (SSL_write(ssl, plain_src, (int)n) != (int)n)
                die("peer SSL_write");
            sent += n;
        }
        SSL_shutdown(ssl);
    }
    exit(0);
}

/* --- one run ------------------------------------------------------------------------------ */

typedef struct {
    double wall, user, sys;
    long reads, writes, polls;
} sample;

static double secs(struct timeval t)
{
    return (double)t.tv_sec + t.tv_usec / 1e6;
}

static sample run(SSL_CTX *sctx, SSL_CTX *cctx, int encrypt_side, int sock_bio, const cksum *expect)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1, go[2], res[2];
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) != 0 || pipe(go) != 0 || pipe(res) != 0)
        die("listen");
    fflush(stdout); /* or the child's exit() prints it again */
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0)
        peer(cctx, ntohs(a.sin_port), encrypt_side, go[0], res[1]);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        die("accept");
    close(lfd);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* uv_tcp_nodelay */

    /* Handshake on the blocking socket, then switch to the variant's I/O, non-blocking. */
    SSL *ssl = SSL_new(sctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1)
        die("handshake");
    sink s = {0};
    BIO *rbio = NULL;
    if (sock_bio) {
        BIO_set_callback_ex(SSL_get_rbio(ssl), count_cb);
    } else {
        rbio = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(rbio, -1);
        SSL_set_bio(ssl, rbio, sink_new(&s));
    }
    if (fcntl_nonblock(fd) != 0)
        die("O_NONBLOCK");

    memset(&sys_n, 0, sizeof sys_n);
    cksum ck = {0};
    result got = {0};
    struct rusage r0, r1;
    struct timespec t0, t1;
    getrusage(RUSAGE_SELF, &r0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (encrypt_side) {
        sock_bio ? encrypt_sock(ssl, fd) : encrypt_mem(ssl, fd, &s);
        if (read(res[0], &got, sizeof got) != sizeof got) /* the peer has it all */
            die("no result from the peer");
    } else {
        if (write(go[1], "g", 1) != 1)
            die("go");
        sock_bio ? decrypt_sock(ssl, fd, &ck) : decrypt_mem(ssl, fd, rbio, &ck);
        ck_final(&ck);
        got = (result){ck.bytes, ck.s1, ck.s2};
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &r1);

    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("peer failed");
    if (got.bytes != expect->bytes || got.s1 != expect->s1 || got.s2 != expect->s2) {
        fprintf(stderr, "tls_io_path: CORRUPT: got %llu bytes, expected %llu (or checksum)\n",
                (unsigned long long)got.bytes, (unsigned long long)expect->bytes);
        exit(1);
    }
    SSL_free(ssl);
    free(s.buf);
    close(fd);
    close(go[0]), close(go[1]), close(res[0]), close(res[1]);
    return (sample){(double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
                    secs(r1.ru_utime) - secs(r0.ru_utime),
                    secs(r1.ru_stime) - secs(r0.ru_stime),
                    sys_n.reads,
                    sys_n.writes,
                    sys_n.polls};
}

/* --- report ------------------------------------------------------------------------------- */

static const char *const side_name[] = {"decrypt", "encrypt"};
static const char *const var_name[] = {"a mem BIO", "b sock BIO"};

static double median(double *v)
{
    double t[RUNS];
    memcpy(t, v, sizeof t);
    for (int i = 1; i < RUNS; i++) /* insertion sort */
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            double x = t[j];
            t[j] = t[j - 1], t[j - 1] = x;
        }
    return t[RUNS / 2];
}

static void print_row(const char *tag, int side, int var, double wall, double user, double sys,
                      double cpu, double reads, double writes, double polls)
{
    double gib = (double)total / (1 << 30);
    printf("%-7s %-7s %-10s %7.3f %8.3f %8.3f %8.3f %8.0f %9.0f %9.0f %9.0f\n", tag,
           side_name[side], var_name[var], wall, user / gib, sys / gib, cpu / gib,
           (double)total / 1e6 / wall, reads, writes, polls);
}

int main(int argc, char **argv)
{
    long mib = 1024;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--read-ahead") == 0)
            read_ahead = 1;
        else if ((mib = strtol(argv[i], NULL, 10)) <= 0) {
            fprintf(stderr, "usage: %s [MiB (default 1024)] [--read-ahead]\n", argv[0]);
            return 2;
        }
    }
    total = (uint64_t)mib << 20;
    signal(SIGPIPE, SIG_IGN);
    uint64_t x = 0x9e3779b97f4a7c15u; /* xorshift: incompressible, reproducible plaintext */
    for (size_t i = 0; i < CHUNK; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(plain_src + i, &x, 8);
    }
    /* The expected checksum, and what the checksum itself costs the receiving side. */
    cksum expect = {0};
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    for (uint64_t sent = 0; sent < total; sent += CHUNK)
        ck_update(&expect, plain_src, total - sent < CHUNK ? (size_t)(total - sent) : CHUNK);
    ck_final(&expect);
    getrusage(RUSAGE_SELF, &r1);
    double ck_cpu = secs(r1.ru_utime) - secs(r0.ru_utime) + secs(r1.ru_stime) - secs(r0.ru_stime);

    SSL_CTX *sctx = server_ctx(), *cctx = client_ctx();
    printf("%s, %ld MiB per transfer, TLS 1.3 TLS_AES_128_GCM_SHA256, ECDSA P-256, "
           "loopback TCP, %d runs per variant%s\n",
           OpenSSL_version(OPENSSL_VERSION), mib, RUNS,
           read_ahead ? "; variant b decrypts with read-ahead (256 KiB buffer)" : "");
    printf("the receiver's checksum alone: %.3f CPU s/GiB (in both decrypt-side variants)\n",
           ck_cpu / ((double)total / (1 << 30)));
    printf("CPU = the measured process only; syscalls = its read(2)/write(2)/poll(2) calls\n\n");
    printf("%-7s %-7s %-10s %7s %8s %8s %8s %8s %9s %9s %9s\n", "run", "side", "variant", "wall s",
           "usr/GiB", "sys/GiB", "cpu/GiB", "MB/s", "reads", "writes", "polls");

    sample s[2][2][RUNS]; /* side, variant, run */
    for (int i = 0; i < RUNS; i++)
        for (int side = 1; side >= 0; side--)
            for (int var = 0; var < 2; var++) {
                sample *p = &s[side][var][i];
                *p = run(sctx, cctx, side, var, &expect);
                char tag[16];
                snprintf(tag, sizeof tag, "%d", i + 1);
                print_row(tag, side, var, p->wall, p->user, p->sys, p->user + p->sys,
                          (double)p->reads, (double)p->writes, (double)p->polls);
                fflush(stdout);
            }

    printf("\nmedians of %d runs (each column on its own)\n", RUNS);
    double cpu[2][2];
    for (int side = 1; side >= 0; side--)
        for (int var = 0; var < 2; var++) {
            double v[7][RUNS];
            for (int i = 0; i < RUNS; i++) {
                sample *p = &s[side][var][i];
                double row[7] = {p->wall,          p->user,          p->sys,
                                 p->user + p->sys, (double)p->reads, (double)p->writes,
                                 (double)p->polls};
                for (int k = 0; k < 7; k++)
                    v[k][i] = row[k];
            }
            cpu[side][var] = median(v[3]);
            print_row("median", side, var, median(v[0]), median(v[1]), median(v[2]), cpu[side][var],
                      median(v[4]), median(v[5]), median(v[6]));
        }
    printf("\nratio b/a of median CPU s/GiB (user+sys): encrypt side %.3f, decrypt side %.3f\n",
           cpu[1][1] / cpu[1][0], cpu[0][1] / cpu[0][0]);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    return 0;
}
