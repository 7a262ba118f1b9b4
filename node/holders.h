/* holders.h - who in the fleet holds, or is downloading, a blob.
 *
 * A node that streams a blob to peers (its owner, mostly) remembers which
 * peers asked for it: each is a holder from the moment it asks (its
 * download can be streamed from while it runs) and tells us when it has
 * the whole blob. Once a node streams a blob to `fanout` peers at once,
 * further askers are sent to holders instead (holders_pick), each holder
 * given at most `fanout` askers, so copies spread down a tree. Entries
 * expire; the table is bounded. Pure data: no I/O, no loop, the caller
 * passes the time.
 */
#ifndef REGMESH_NODE_HOLDERS_H
#define REGMESH_NODE_HOLDERS_H

#include <stddef.h>
#include <stdint.h>

struct holders;

#define HOLDERS_NAME_MAX 64   /* a member name (gossip names are shorter) */
#define HOLDERS_PER_DIGEST 32 /* the oldest entry goes when a digest has more */
#define HOLDERS_DIGESTS_MAX 4096
#define HOLDERS_TTL_FETCHING_MS (10 * 60 * 1000)
#define HOLDERS_TTL_HELD_MS (60 * 60 * 1000)

/* holders_rank_fn: how good a candidate is for the asker (lower is better),
 * or a negative value to skip it (not alive, quarantined). */
typedef int (*holders_rank_fn)(void *ud, const char *asker, const char *candidate);

int holders_new(struct holders **out);
void holders_free(struct holders *h);

/* holders_note: name asked for hex (held = 0) or has it whole (held = 1),
 * at loop time now. repo and ns (the upstream's host) are kept per digest
 * for the hand-over (holders_each); NULL keeps what is there. A node that
 * asks again is registered anew: it may be sent only to holders older than
 * its new entry, so no two downloads wait on each other. Returns 0 or
 * UV_ENOMEM / UV_ENOSPC (table full of live entries). */
int holders_note(struct holders *h, const char *hex, const char *name, int held,
                 const char *repo, const char *ns, uint64_t now);

/* holders_forget drops name's entry for hex (it said it no longer has it). */
void holders_forget(struct holders *h, const char *hex, const char *name);

/* holders_pick: up to max holders of hex for asker, best first, each one
 * registered before asker, not expired, with fewer than fanout askers sent
 * to it, and ranked (rank >= 0) by rank then fewest askers then age. The
 * first one is charged one more asker. Returns how many were written to
 * out (names valid until the next call that changes h). */
size_t holders_pick(struct holders *h, const char *hex, const char *asker, unsigned fanout,
                    uint64_t now, holders_rank_fn rank, void *ud, const char **out,
                    size_t max);

/* holders_known: up to max live holders of hex that have it whole (not
 * those still downloading, maybe from us), without charging any. */
size_t holders_known(struct holders *h, const char *hex, uint64_t now, const char **out,
                     size_t max);

/* Streams of hex to peers running now (the fanout test). */
void holders_upload_begin(struct holders *h, const char *hex);
void holders_upload_end(struct holders *h, const char *hex);
unsigned holders_uploads(const struct holders *h, const char *hex);

/* holders_each calls fn for every digest with live holders: their names
 * (held ones first), count, and the digest's repo and ns ("" if unknown). */
typedef void (*holders_each_fn)(void *ud, const char *hex, const char *const *names,
                                size_t n, const char *repo, const char *ns);
void holders_each(struct holders *h, uint64_t now, holders_each_fn fn, void *ud);

size_t holders_digests(const struct holders *h);

/* holders_parse_list splits a peer's list ("n1,n2", commas and/or spaces)
 * into up to max names; a name too long for an entry is skipped. Returns
 * how many were written. */
size_t holders_parse_list(const char *v, char (*out)[HOLDERS_NAME_MAX], size_t max);

#endif
