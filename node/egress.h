/* egress.h - a token bucket for bytes sent to peers (cluster.peer_egress).
 *
 * A sender asks egress_take for the bytes it wants to send now and gets
 * what the bucket allows (maybe 0); on 0 it parks an egress_waiter, whose
 * callback runs on the loop once tokens are back. Waiters are served in
 * turn, so parallel streams share the rate.
 */
#ifndef REGMESH_NODE_EGRESS_H
#define REGMESH_NODE_EGRESS_H

#include <stdint.h>
#include <uv.h>

struct egress;

struct egress_waiter {
  void (*cb)(struct egress_waiter *w);
  /* owned by the bucket while parked */
  struct egress_waiter *prev, *next;
  int parked;
};

/* egress_new: rate in bytes per second (> 0). */
int egress_new(struct egress **out, uv_loop_t *loop, uint64_t rate);
/* egress_free closes the timer (the struct goes with its close callback);
 * parked waiters are dropped without a call. */
void egress_free(struct egress *e);

uint64_t egress_take(struct egress *e, uint64_t want);
void egress_wait(struct egress *e, struct egress_waiter *w);
void egress_cancel(struct egress *e, struct egress_waiter *w);

#endif
