/* Shared, reopenable log files: see logfile.h. */
#include "logfile.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct open_file {
    int fd, refs;
    char *path;
} open_file;

static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;
static open_file *files; /* n_files entries, under files_lock */
static int n_files, files_cap;

static int open_append(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

int gw_logfile_open(const char *path, char *err, size_t cap)
{
    int fd = -1;
    pthread_mutex_lock(&files_lock);
    for (int i = 0; i < n_files; i++)
        if (!strcmp(files[i].path, path)) {
            files[i].refs++;
            fd = files[i].fd;
            goto out;
        }
    if (n_files == files_cap) {
        int ncap = files_cap ? 2 * files_cap : 4;
        open_file *f = realloc(files, (size_t)ncap * sizeof *f);
        if (!f) {
            snprintf(err, cap, "out of memory");
            goto out;
        }
        files = f;
        files_cap = ncap;
    }
    char *copy = strdup(path);
    if (!copy) {
        snprintf(err, cap, "out of memory");
        goto out;
    }
    fd = open_append(path);
    if (fd < 0) {
        snprintf(err, cap, "cannot open %s: %s", path, strerror(errno));
        free(copy);
        goto out;
    }
    files[n_files++] = (open_file){.fd = fd, .refs = 1, .path = copy};
out:
    pthread_mutex_unlock(&files_lock);
    return fd;
}

void gw_logfile_close(int fd)
{
    if (fd < 0)
        return;
    pthread_mutex_lock(&files_lock);
    for (int i = 0; i < n_files; i++) {
        if (files[i].fd != fd || --files[i].refs > 0)
            continue;
        /* Closed under the lock: a reopen cannot dup3 onto a number reused meanwhile. */
        close(fd);
        free(files[i].path);
        files[i] = files[--n_files];
        break;
    }
    if (n_files == 0) {
        free(files);
        files = NULL;
        files_cap = 0;
    }
    pthread_mutex_unlock(&files_lock);
}

int gw_logfile_reopen_all(int *failed, char *err, size_t cap)
{
    int done = 0;
    *failed = 0;
    pthread_mutex_lock(&files_lock);
    for (int i = 0; i < n_files; i++) {
        int fd = open_append(files[i].path);
        /* dup3 replaces the old file atomically: a concurrent write lands in one or the
         * other, whole (O_APPEND, one write(2) per line). */
        if (fd < 0 || dup3(fd, files[i].fd, O_CLOEXEC) < 0) {
            snprintf(err, cap, "cannot reopen %s: %s", files[i].path, strerror(errno));
            (*failed)++;
        } else {
            done++;
        }
        if (fd >= 0)
            close(fd);
    }
    pthread_mutex_unlock(&files_lock);
    return done;
}
