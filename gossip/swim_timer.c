/* swim_timer.c - the one deadline structure of the SWIM core.
 *
 * Every timer of the core (probe period, probe timeout, gossip, push/pull,
 * join retry, reconnect, leave, suspicion per member, indirect-probe relays,
 * stream deadlines) is a struct swim__timer embedded in its owner and kept
 * in one binary min-heap ordered by deadline. The host only ever asks for
 * the earliest deadline (swim_next_deadline) and calls swim_tick once it has
 * passed, which is how the simulation runs thousands of cores on one fake
 * clock without any of them reading a real one. Arm, cancel and pop are
 * O(log n); each timer remembers its heap slot so cancel needs no search.
 */
#include "swim_internal.h"

#include <errno.h>
#include <stdlib.h>

void swim__timer_init(struct swim__timer *t,
                      void (*fn)(struct swim *, struct swim__timer *)) {
  t->when = 0;
  t->idx = SWIM__TIMER_IDLE;
  t->fn = fn;
}

static void heap_set(struct swim *s, size_t i, struct swim__timer *t) {
  s->heap[i] = t;
  t->idx = i;
}

static void sift_up(struct swim *s, size_t i) {
  struct swim__timer *t = s->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (s->heap[parent]->when <= t->when)
      break;
    heap_set(s, i, s->heap[parent]);
    i = parent;
  }
  heap_set(s, i, t);
}

static void sift_down(struct swim *s, size_t i) {
  struct swim__timer *t = s->heap[i];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    uint64_t mw = t->when;
    if (l < s->heap_len && s->heap[l]->when < mw) {
      m = l;
      mw = s->heap[l]->when;
    }
    if (r < s->heap_len && s->heap[r]->when < mw)
      m = r;
    if (m == i)
      break;
    heap_set(s, i, s->heap[m]);
    i = m;
  }
  heap_set(s, i, t);
}

static void heap_remove(struct swim *s, size_t i) {
  struct swim__timer *t = s->heap[i];
  t->idx = SWIM__TIMER_IDLE;
  s->heap_len--;
  if (i == s->heap_len)
    return;
  struct swim__timer *moved = s->heap[s->heap_len];
  heap_set(s, i, moved);
  sift_down(s, i);
  sift_up(s, moved->idx);
}

int swim__timer_arm(struct swim *s, struct swim__timer *t, uint64_t when) {
  if (swim__timer_armed(t)) {
    uint64_t old = t->when;
    t->when = when;
    if (when < old)
      sift_up(s, t->idx);
    else
      sift_down(s, t->idx);
    return 0;
  }
  if (s->heap_len == s->heap_cap) {
    size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
    struct swim__timer **h = realloc(s->heap, cap * sizeof *h);
    if (h == NULL)
      return -ENOMEM;
    s->heap = h;
    s->heap_cap = cap;
  }
  t->when = when;
  heap_set(s, s->heap_len++, t);
  sift_up(s, t->idx);
  return 0;
}

void swim__timer_cancel(struct swim *s, struct swim__timer *t) {
  if (swim__timer_armed(t))
    heap_remove(s, t->idx);
}

void swim__timers_run(struct swim *s, uint64_t now) {
  while (s->heap_len > 0 && s->heap[0]->when <= now) {
    struct swim__timer *t = s->heap[0];
    heap_remove(s, 0);
    t->fn(s, t);
  }
}

uint64_t swim__timers_next(const struct swim *s) {
  return s->heap_len ? s->heap[0]->when : UINT64_MAX;
}
