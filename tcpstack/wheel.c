/*
 * wheel.c - per-core hashed timer wheel with 1 ms slots. Every connection
 * has one node, armed at the earliest of its deadlines, so the wheel holds at
 * most one entry per connection and arming is O(1). Deadlines further away
 * than one turn stay in their slot and are passed over until due.
 */
#include "tcpstack/tcp_internal.h"

void wheel_init(struct wheel *w, uint64_t now)
{
    for (unsigned i = 0; i < WHEEL_SLOTS; i++)
        w->slot[i] = NULL;
    w->last = now;
    w->count = 0;
}

void wheel_del(struct wheel *w, struct wheel_node *n)
{
    if (!n->pprev)
        return;
    *n->pprev = n->next;
    if (n->next)
        n->next->pprev = n->pprev;
    n->next = NULL;
    n->pprev = NULL;
    w->count--;
}

void wheel_add(struct wheel *w, struct wheel_node *n, uint64_t expire)
{
    wheel_del(w, n);
    /* A deadline in the past fires on the next run. */
    if (expire <= w->last)
        expire = w->last + 1;
    n->expire = expire;
    struct wheel_node **head = &w->slot[expire & (WHEEL_SLOTS - 1)];
    n->next = *head;
    if (n->next)
        n->next->pprev = &n->next;
    *head = n;
    n->pprev = head;
    w->count++;
}

void wheel_run(struct wheel *w, uint64_t now, void (*fire)(struct wheel_node *n, void *arg),
               void *arg)
{
    if (now <= w->last)
        return;
    /* After a jump of a whole turn or more every slot is visited once. */
    uint64_t from = w->last + 1;
    if (now - w->last > WHEEL_SLOTS)
        from = now - WHEEL_SLOTS + 1;
    /* Set first: a node re-armed by fire() for "now or earlier" lands on the
     * next run instead of looping here. */
    w->last = now;
    for (uint64_t t = from; t <= now; t++) {
        struct wheel_node **head = &w->slot[t & (WHEEL_SLOTS - 1)];
    again:
        /* fire() may arm or cancel any node, so rescan the slot after each. */
        for (struct wheel_node *n = *head; n; n = n->next) {
            if (n->expire <= now) {
                wheel_del(w, n);
                fire(n, arg);
                goto again;
            }
        }
    }
}
