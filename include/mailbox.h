/* A loop's mailbox: the one way another thread has work done on an event loop (libuv's
 * threadpool.c uv__work_done: one queue, one mutex, one uv_async_t per loop). Any thread
 * posts a message; the loop's thread runs the messages in the order they were posted.
 *
 * A message is the poster's own memory with a gw_mail inside (so posting cannot fail for
 * lack of memory); from a successful post until its function runs it belongs to the
 * mailbox, then to the function.
 *
 * Closing (the loop's thread, once its loop has ended): posts fail from then on, so the
 * poster keeps (and frees) its message; the messages still queued are not lost but run at
 * once, in order, with cancelled = true: they must only release what they hold (the loop is
 * ending). So every message posted successfully runs exactly once. */
#ifndef GW_MAILBOX_H
#define GW_MAILBOX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct gw_mail gw_mail;
typedef void (*gw_mail_fn)(gw_mail *m, bool cancelled);
struct gw_mail {
    gw_mail *next;
    gw_mail_fn fn;
};
/* The message that holds m as its field `member`. */
#define GW_MAIL_OWNER(m, type, member) ((type *)(void *)((char *)(m)-offsetof(type, member)))

typedef struct gw_mailbox {
    uv_async_t async;
    pthread_mutex_t lock; /* guards the queue and closed */
    gw_mail *head, *tail;
    bool closed;
} gw_mailbox;

/* On the loop's thread, before anything is posted. The mailbox keeps the loop running
 * until it is closed, and is found from the loop (gw_mailbox_of). 0 or a libuv error. */
int gw_mailbox_init(gw_mailbox *mb, uv_loop_t *loop);
/* Any thread: fn(m, false) will run on the mailbox's loop. 0, or -1 when the mailbox is
 * closed (m is the caller's again). */
int gw_mailbox_post(gw_mailbox *mb, gw_mail *m, gw_mail_fn fn);
/* The loop's thread (or any, once the loop has ended): refuse posts from now on, run what
 * is queued as cancelled, close the async handle (it finishes with the loop's next run). */
void gw_mailbox_close(gw_mailbox *mb);
/* After the loop has closed. */
void gw_mailbox_destroy(gw_mailbox *mb);
/* The mailbox of loop, NULL when it has none. */
gw_mailbox *gw_mailbox_of(uv_loop_t *loop);

#endif
