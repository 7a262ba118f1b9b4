/* egress.c - the peer egress token bucket (egress.h).
 *
 * Tokens refill continuously at the rate (from uv_hrtime), up to a burst
 * of 50 ms of traffic (at least 64 KiB, so a slow rate still moves whole
 * socket writes). One timer wakes the parked waiters when the bucket has
 * refilled enough for the first of them.
 */
#include "egress.h"

#include <stdlib.h>

#define BURST_MIN (64u * 1024)

struct egress {
  uv_loop_t *loop;
  uv_timer_t timer;
  uint64_t rate, burst;
  uint64_t tokens;
  uint64_t at_ns;
  struct egress_waiter *head, *tail;
};

int egress_new(struct egress **out, uv_loop_t *loop, uint64_t rate) {
  struct egress *e = calloc(1, sizeof *e);
  if (!e || rate == 0) {
    free(e);
    return e ? UV_EINVAL : UV_ENOMEM;
  }
  e->loop = loop;
  e->rate = rate;
  e->burst = rate / 20 > BURST_MIN ? rate / 20 : BURST_MIN;
  e->tokens = e->burst;
  e->at_ns = uv_hrtime();
  uv_timer_init(loop, &e->timer);
  e->timer.data = e;
  *out = e;
  return 0;
}

static void on_closed(uv_handle_t *h) { free(h->data); }

void egress_free(struct egress *e) {
  if (e)
    uv_close((uv_handle_t *)&e->timer, on_closed);
}

static void refill(struct egress *e) {
  uint64_t now = uv_hrtime();
  uint64_t add = (now - e->at_ns) * e->rate / 1000000000u;
  if (add == 0)
    return;
  /* time is only consumed for the tokens granted, so no rounding drift */
  e->at_ns += add * 1000000000u / e->rate;
  e->tokens = e->tokens + add > e->burst ? e->burst : e->tokens + add;
  if (e->tokens == e->burst)
    e->at_ns = now;
}

uint64_t egress_take(struct egress *e, uint64_t want) {
  refill(e);
  uint64_t got = want < e->tokens ? want : e->tokens;
  e->tokens -= got;
  return got;
}

static void unlink_waiter(struct egress *e, struct egress_waiter *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    e->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    e->tail = w->prev;
  w->prev = w->next = NULL;
  w->parked = 0;
}

static void arm(struct egress *e);

static void on_timer(uv_timer_t *t) {
  struct egress *e = t->data;
  /* Wake the waiters parked now, in order; each takes what it can and
   * parks again at the tail if it got nothing. */
  struct egress_waiter *last = e->tail;
  while (e->head) {
    struct egress_waiter *w = e->head;
    int was_last = w == last;
    unlink_waiter(e, w);
    w->cb(w);
    refill(e);
    if (was_last || e->tokens == 0)
      break;
  }
  arm(e);
}

static void arm(struct egress *e) {
  if (!e->head || uv_is_active((uv_handle_t *)&e->timer))
    return;
  uint64_t need = BURST_MIN > e->tokens ? BURST_MIN - e->tokens : 0;
  uint64_t ms = need * 1000 / e->rate;
  uv_timer_start(&e->timer, on_timer, ms ? ms : 1, 0);
}

void egress_wait(struct egress *e, struct egress_waiter *w) {
  if (w->parked)
    return;
  w->parked = 1;
  w->next = NULL;
  w->prev = e->tail;
  if (e->tail)
    e->tail->next = w;
  else
    e->head = w;
  e->tail = w;
  arm(e);
}

void egress_cancel(struct egress *e, struct egress_waiter *w) {
  if (e && w->parked)
    unlink_waiter(e, w);
}
