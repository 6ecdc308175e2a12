/* A loop's mailbox: see mailbox.h. uv_async_send is called only under the lock and only
 * while the mailbox is open, and the handle is closed only after closed was set under that
 * lock: so no post can reach a closing handle, whatever thread posts. */
#include "mailbox.h"

#include <stddef.h>

/* Take the queue as it is now (under the lock). */
static gw_mail *take_all(gw_mailbox *mb)
{
    gw_mail *m = mb->head;
    mb->head = mb->tail = NULL;
    return m;
}

static void run_all(gw_mail *m, bool cancelled)
{
    while (m) {
        gw_mail *next = m->next; /* m belongs to its function from here on */
        m->fn(m, cancelled);
        m = next;
    }
}

static void on_mail(uv_async_t *a)
{
    gw_mailbox *mb = a->data;
    pthread_mutex_lock(&mb->lock);
    gw_mail *m = take_all(mb);
    pthread_mutex_unlock(&mb->lock);
    run_all(m, false); /* what they post meanwhile waits for the next wake-up */
}

int gw_mailbox_init(gw_mailbox *mb, uv_loop_t *loop)
{
    mb->head = mb->tail = NULL;
    mb->closed = false;
    pthread_mutex_init(&mb->lock, NULL);
    int r = uv_async_init(loop, &mb->async, on_mail);
    if (r != 0) {
        mb->closed = true; /* posts fail */
        return r;
    }
    mb->async.data = mb;
    loop->data = mb;
    return 0;
}

int gw_mailbox_post(gw_mailbox *mb, gw_mail *m, gw_mail_fn fn)
{
    m->next = NULL;
    m->fn = fn;
    pthread_mutex_lock(&mb->lock);
    bool open = !mb->closed;
    if (open) {
        if (mb->tail)
            mb->tail->next = m;
        else
            mb->head = m;
        mb->tail = m;
        uv_async_send(&mb->async);
    }
    pthread_mutex_unlock(&mb->lock);
    return open ? 0 : -1;
}

void gw_mailbox_close(gw_mailbox *mb)
{
    pthread_mutex_lock(&mb->lock);
    bool was_open = !mb->closed;
    mb->closed = true;
    gw_mail *m = take_all(mb);
    pthread_mutex_unlock(&mb->lock);
    run_all(m, true);
    if (was_open && !uv_is_closing((uv_handle_t *)&mb->async))
        uv_close((uv_handle_t *)&mb->async, NULL);
}

void gw_mailbox_destroy(gw_mailbox *mb)
{
    pthread_mutex_destroy(&mb->lock);
}

gw_mailbox *gw_mailbox_of(uv_loop_t *loop)
{
    return loop ? loop->data : NULL;
}
