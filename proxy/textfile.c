/* Small text files read whole, and the lines of their text (textfile.h). */
#include "textfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int gw_textfile_fail(char *err, size_t cap, const char *origin, int line, const char *fmt, ...)
{
    if (!err || cap == 0)
        return -1;
    char problem[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(err, cap, "%s:%d: %s", origin, line, problem);
    else
        snprintf(err, cap, "%s: %s", origin, problem);
    return -1;
}

char *gw_textfile_read(const char *path, size_t max, unsigned forbid, size_t *len, char *err,
                       size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        gw_textfile_fail(err, cap, path, 0, "cannot read: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        gw_textfile_fail(err, cap, path, 0, "not a regular file");
    } else if (st.st_mode & forbid) {
        /* SECURITY: hashes and passwords are offline guessing targets. */
        bool group = forbid & 070;
        gw_textfile_fail(err, cap, path, 0, "mode %04o: readable or writable by %s (chmod %s)",
                         (unsigned)(st.st_mode & 07777), group ? "group or others" : "others",
                         group ? "600 or 400" : "o-rwx");
    } else if ((size_t)st.st_size > max) {
        gw_textfile_fail(err, cap, path, 0, "file too large (more than %zu bytes)", max);
    } else if (!(buf = malloc((size_t)st.st_size + 1))) {
        gw_textfile_fail(err, cap, path, 0, "out of memory");
    } else {
        while (got < (size_t)st.st_size) {
            ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                gw_textfile_fail(err, cap, path, 0, "cannot read: %s", strerror(errno));
                free(buf);
                buf = NULL;
                break;
            }
            if (r == 0) /* shrank meanwhile */
                break;
            got += (size_t)r;
        }
    }
    close(fd);
    if (buf) {
        buf[got] = '\0';
        *len = got;
    }
    return buf;
}

gw_lines gw_lines_start(const char *text, size_t len)
{
    const char *p = text ? text : "";
    return (gw_lines){.p = p, .end = p + (text ? len : 0)};
}

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

bool gw_lines_next(gw_lines *it, const char **s, size_t *n)
{
    while (it->p < it->end) {
        const char *l = it->p, *nl = memchr(l, '\n', (size_t)(it->end - l));
        size_t k = (size_t)((nl ? nl : it->end) - l);
        it->p = nl ? nl + 1 : it->end;
        it->line++;
        if (k && l[k - 1] == '\r')
            k--;
        for (size_t i = 0; i < k; i++) {
            unsigned char c = (unsigned char)l[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                it->bad = c ? c : 0xff; /* 0xff stands for NUL: 0 means "no problem" */
                it->p = it->end;
                return false;
            }
        }
        while (k && blank(*l))
            l++, k--;
        while (k && blank(l[k - 1]))
            k--;
        if (k == 0 || l[0] == '#')
            continue;
        *s = l;
        *n = k;
        return true;
    }
    return false;
}

const char *gw_lines_bad_text(const gw_lines *it, char *buf, size_t cap)
{
    if (it->bad == 0xff)
        snprintf(buf, cap, "a NUL byte");
    else
        snprintf(buf, cap, "control character 0x%02x in line", it->bad);
    return buf;
}
