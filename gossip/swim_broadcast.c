/* swim_broadcast.c - the transmit-limited gossip queue.
 *
 * Membership news (alive, suspect, dead, and our serf user messages) is not
 * sent on its own: it rides on probes, acks and the periodic gossip rounds,
 * as many messages as fit in one datagram. Each message is sent at most
 * retransmit_mult x ceil(log10(n+1)) times (memberlist-wire.md section 9),
 * which is enough for it to reach everyone with high probability, and the
 * least-sent messages go first so fresh news overtakes old news. Messages
 * are keyed by the member they are about: a newer message about X replaces
 * the queued one, because only the latest state of X matters.
 *
 * Layout: one doubly linked list per transmit count (newest at the head),
 * so taking the least-sent messages is a walk from bucket 0 up, and a name
 * map for the replacement. take/commit are split because the caller builds
 * its datagram from the queued bytes before their transmit counts move.
 */
#include "swim_internal.h"

#include "../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* smallest message worth looking for once the budget runs low */
#define SWIM__BCAST_MIN_LEN 16

void swim__bq_init(struct swim__bqueue *q) {
  memset(q, 0, sizeof *q);
  strmap_init(&q->by_key);
}

void swim__bq_free(struct swim__bqueue *q) {
  for (size_t b = 0; b < SWIM__BCAST_BUCKETS; b++) {
    struct swim__bcast *x = q->buckets[b];
    while (x) {
      struct swim__bcast *next = x->next;
      free(x);
      x = next;
    }
    q->buckets[b] = NULL;
  }
  strmap_free(&q->by_key);
  q->count = 0;
}

static void unlink_bcast(struct swim__bqueue *q, struct swim__bcast *b) {
  unsigned t =
      b->transmits < SWIM__BCAST_BUCKETS ? b->transmits : SWIM__BCAST_BUCKETS - 1;
  if (b->prev)
    b->prev->next = b->next;
  else
    q->buckets[t] = b->next;
  if (b->next)
    b->next->prev = b->prev;
  b->prev = b->next = NULL;
}

static void link_bcast(struct swim__bqueue *q, struct swim__bcast *b) {
  unsigned t =
      b->transmits < SWIM__BCAST_BUCKETS ? b->transmits : SWIM__BCAST_BUCKETS - 1;
  b->prev = NULL;
  b->next = q->buckets[t];
  if (b->next)
    b->next->prev = b;
  q->buckets[t] = b;
}

/* Drops b from the queue. Returns what a leave step waiting for it must be
 * told, which the caller does once the queue is consistent again (the leave
 * step queues the next message). */
static enum swim__notify retire(struct swim *s, struct swim__bcast *b) {
  struct swim__bqueue *q = &s->bq;
  unlink_bcast(q, b);
  strmap_del(&q->by_key, b->key);
  q->count--;
  enum swim__notify n = b->notify;
  free(b);
  return n;
}

void swim__bq_push(struct swim *s, const char *name, int user, const uint8_t *msg,
                   size_t len, enum swim__notify notify) {
  struct swim__bqueue *q = &s->bq;
  if (len == 0)
    return;
  /* a take is never open across calls into the queue */
  struct swim__bcast *b = malloc(sizeof *b + len);
  if (b == NULL) {
    LOG_W("swim %s: out of memory queueing gossip about %s", s->cfg.name, name);
    return;
  }
  memset(b, 0, sizeof *b);
  snprintf(b->key, sizeof b->key, "%c:%s", user ? 'u' : 'm', name);
  b->notify = notify;
  b->len = len;
  memcpy(b->msg, msg, len);
  enum swim__notify replaced = SWIM__NOTIFY_NONE;
  struct swim__bcast *old = strmap_get(&q->by_key, b->key);
  if (old)
    replaced = retire(s, old);
  if (strmap_put(&q->by_key, b->key, b) != 0) {
    free(b);
  } else {
    link_bcast(q, b);
    q->count++;
  }
  if (replaced != SWIM__NOTIFY_NONE)
    swim__leave_notify(s, replaced);
}

size_t swim__bq_take(struct swim *s, size_t overhead, size_t avail, const uint8_t **parts,
                     size_t *lens, size_t max) {
  struct swim__bqueue *q = &s->bq;
  q->ntaken = 0;
  if (q->count == 0)
    return 0;
  if (max > WIRE_COMPOUND_MAX_SEND)
    max = WIRE_COMPOUND_MAX_SEND;
  for (size_t t = 0; t < SWIM__BCAST_BUCKETS && q->ntaken < max; t++) {
    for (struct swim__bcast *b = q->buckets[t]; b && q->ntaken < max; b = b->next) {
      if (avail < overhead + SWIM__BCAST_MIN_LEN)
        return q->ntaken;
      if (b->len + overhead > avail)
        continue;
      avail -= b->len + overhead;
      parts[q->ntaken] = b->msg;
      lens[q->ntaken] = b->len;
      q->taken[q->ntaken++] = b;
    }
  }
  return q->ntaken;
}

void swim__bq_commit(struct swim *s) {
  struct swim__bqueue *q = &s->bq;
  unsigned limit = swim__retransmit_limit(s->cfg.retransmit_mult, swim__est_nodes(s));
  if (limit >= SWIM__BCAST_BUCKETS)
    limit = SWIM__BCAST_BUCKETS - 1;
  size_t n = q->ntaken;
  enum swim__notify notes[WIRE_COMPOUND_MAX_SEND];
  size_t nnotes = 0;
  q->ntaken = 0;
  for (size_t i = 0; i < n; i++) {
    struct swim__bcast *b = q->taken[i];
    unlink_bcast(q, b);
    b->transmits++;
    if (b->transmits >= limit) {
      enum swim__notify note = retire(s, b);
      if (note != SWIM__NOTIFY_NONE)
        notes[nnotes++] = note;
    } else {
      link_bcast(q, b);
    }
  }
  for (size_t i = 0; i < nnotes; i++)
    swim__leave_notify(s, notes[i]);
}

static void queue_encoded(struct swim *s, const char *name, int type, const void *m,
                          enum swim__notify notify) {
  uint8_t buf[WIRE_META_MAX + 2 * WIRE_NAME_MAX + 128];
  int n;
  switch (type) {
  case WIRE_ALIVE: n = wire_encode_alive(buf, sizeof buf, m); break;
  case WIRE_SUSPECT: n = wire_encode_suspect(buf, sizeof buf, m); break;
  default: n = wire_encode_dead(buf, sizeof buf, m); break;
  }
  if (n <= 0) {
    LOG_W("swim %s: cannot encode %s about %s: %d", s->cfg.name, wire_type_str(type),
          name, n);
    return;
  }
  swim__bq_push(s, name, 0, buf, (size_t)n, notify);
}

void swim__queue_alive(struct swim *s, const struct wire_alive *a) {
  queue_encoded(s, a->node, WIRE_ALIVE, a, SWIM__NOTIFY_NONE);
}

void swim__queue_suspect(struct swim *s, const struct wire_suspect *m) {
  queue_encoded(s, m->node, WIRE_SUSPECT, m, SWIM__NOTIFY_NONE);
}

void swim__queue_dead(struct swim *s, const struct wire_suspect *d, enum swim__notify n) {
  queue_encoded(s, d->node, WIRE_DEAD, d, n);
}
