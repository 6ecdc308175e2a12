/* Files the gateway appends to (the transfer log), shared by path across workers and
 * configuration generations, and reopened in place on SIGUSR1 for log rotation: the new
 * file takes the old descriptor's number (dup3), so every holder writes to it at once and
 * none has to be told. Thread-safe. */
#ifndef GW_LOGFILE_H
#define GW_LOGFILE_H

#include <stddef.h>

/* A descriptor appending to path (created 0640 when missing), shared with earlier opens of
 * the same path; -1 with a message in err. */
int gw_logfile_open(const char *path, char *err, size_t cap);
/* Give back one gw_logfile_open; the last one closes the file. */
void gw_logfile_close(int fd);
/* Reopen every open path (after logrotate renamed it). Returns how many were reopened; a
 * path that cannot be opened keeps its old file and is named in err (the last failure). */
int gw_logfile_reopen_all(int *failed, char *err, size_t cap);

#endif
