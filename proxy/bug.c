/* "Cannot happen": abort (sanitizer and fuzz builds) or log and go on (release). */
#include "bug.h"

#include <stdio.h>
#include <stdlib.h>

#include "log.h"

bool gw_bug(uint64_t session, const char *file, int line, const char *cond, bool fatal)
{
    if (fatal) {
        /* Straight to stderr and unfiltered by log_level: the process ends here. */
        fprintf(stderr, "ftpsgate: BUG at %s:%d (session %llu): %s\n", file, line,
                (unsigned long long)session, cond);
        fflush(stderr);
        abort();
    }
    gw_log(GW_LOG_ERROR, session, "event=bug at=%s:%d cond=\"%s\"", file, line, cond);
    return true;
}
