/* libFuzzer target for proxy/xferlog.c. Byte 0: format and TYPE; bytes 1-8: the end time;
 * 9-16: duration and bytes; 17: the buffer size; then NUL-separated peer, host, user, verb,
 * file and result. Checked: the return value is the string's length, a line has exactly one
 * '\n' (at its end), fits its buffer, and a wuftpd line has 18 blank-separated fields. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xferlog.h"

static const char *next_field(const char **p, const char *end, char *buf, size_t cap)
{
    size_t n = 0;
    while (*p < end && **p && n + 1 < cap)
        buf[n++] = *(*p)++;
    while (*p < end && **p) /* the rest of an overlong field is dropped */
        (*p)++;
    if (*p < end)
        (*p)++;
    buf[n] = 0;
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 18)
        return 0;
    gw_xfer_rec r = {0};
    enum gw_xferlog_format f = (data[0] & 1) ? GW_XFERLOG_WUFTPD : GW_XFERLOG_KV;
    r.ascii = data[0] & 2;
    int64_t t;
    memcpy(&t, data + 1, sizeof t);
    r.end = (time_t)(t % ((int64_t)1 << 40)); /* years gmtime can express */
    uint32_t ms, bytes;
    memcpy(&ms, data + 9, sizeof ms);
    memcpy(&bytes, data + 13, sizeof bytes);
    r.ms = ms;
    r.bytes = bytes;
    r.code = data[9] * 3;
    size_t cap = (size_t)data[17] * 4;
    const char *p = (const char *)data + 18, *end = (const char *)data + size;
    char peer[300], host[300], user[300], verb[32], file[4096], result[32];
    r.peer = next_field(&p, end, peer, sizeof peer);
    r.host = next_field(&p, end, host, sizeof host);
    r.user = next_field(&p, end, user, sizeof user);
    r.verb = next_field(&p, end, verb, sizeof verb);
    r.file = next_field(&p, end, file, sizeof file);
    r.result = next_field(&p, end, result, sizeof result);

    char *out = malloc(cap ? cap : 1);
    if (!out)
        abort();
    size_t n = gw_xferlog_line(out, cap, f, &r);
    if (n > 0) {
        if (n >= cap || strlen(out) != n || out[n - 1] != '\n' || memchr(out, '\n', n - 1))
            abort();
        if (f == GW_XFERLOG_WUFTPD) {
            int fields = 0;
            for (size_t i = 0; i < n - 1; i++) {
                if (out[i] == '\r' || out[i] == '\t')
                    abort();
                if (out[i] != ' ' && (i == 0 || out[i - 1] == ' '))
                    fields++;
            }
            if (fields != 18)
                abort();
        }
    }
    free(out);
    return 0;
}
