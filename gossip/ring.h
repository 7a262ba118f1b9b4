/* ring.h - consistent hashing over the live members.
 *
 * Pure: members in, owners out. Each member gets a number of virtual nodes
 * proportional to its weight; a key is owned by the first members found
 * walking clockwise from the key's hash. Every node that sees the same
 * member set (names and weights) computes the same ring, whatever the order
 * the members were added in.
 *
 * Vnode points are the first 8 bytes (big-endian) of SHA-256("name#i");
 * keys hash with XXH64 (seed 0). Both are fleet-wide contracts. A key is
 * hashed as the bytes given: a digest passed as 32 raw bytes and the same
 * digest as 64 hex characters land on different owners, so callers must
 * always pass one form for one kind of key.
 */
#ifndef REGMESH_GOSSIP_RING_H
#define REGMESH_GOSSIP_RING_H

#include <stddef.h>
#include <stdint.h>

/* Weights above RING_WEIGHT_MAX count as RING_WEIGHT_MAX. */
#define RING_WEIGHT_MAX 16
/* Largest vnodes_per_weight ring_new accepts. */
#define RING_VNODES_MAX 4096
/* What ring_new(&r, 0) picks: enough that 10 equal members stay within
 * 1.10x of the mean load (see tests/unit/test_ring.c for the figures). */
#define RING_VNODES_DEFAULT 2048

struct ring;

/* ring_new: vnodes_per_weight virtual nodes per unit of weight; 0 picks
 * RING_VNODES_DEFAULT. A member's load strays from its fair share by about
 * 1/sqrt(vnodes * weight): at 128 the most loaded of 10 members sits ~14%
 * over the mean. Returns 0, UV_EINVAL above RING_VNODES_MAX, or
 * UV_ENOMEM. The caller owns *out and releases it with ring_free. */
int ring_new(struct ring **out, unsigned vnodes_per_weight);
void ring_free(struct ring *r);
/* ring_set replaces the member set: names[i] with weights[i] (>= 1,
 * capped). Duplicate names are an error (UV_EINVAL). Returns 0 or error.
 * Also: weights may be NULL (all 1); a weight of 0, or a NULL or empty name,
 * is UV_EINVAL; n == 0 empties the ring. The ring copies the names (the
 * caller keeps its own). On error the previous member set stays in force.
 * Cost: P SHA-256 digests and a radix sort, for P = sum(weights) *
 * vnodes_per_weight points; about 14 bytes kept per point. At the default,
 * 10 members take ~3 ms and 280 KiB, 100 members ~40 ms and 2.8 MiB. */
int ring_set(struct ring *r, const char *const *names, const unsigned *weights, size_t n);
/* ring_lookup writes up to n distinct owners of key (preference order) as
 * indexes into the last ring_set arrays; returns how many (min(n, members)).
 * Meant for short preference lists: the distinct check is O(n^2). */
size_t ring_lookup(const struct ring *r, const void *key, size_t key_len, size_t *owners,
                   size_t n);
size_t ring_members(const struct ring *r);

/* ring_key_hash: the key's spot on the circle (XXH64, seed 0). */
uint64_t ring_key_hash(const void *key, size_t len);
/* ring_lookup_hash is ring_lookup for a key already hashed with
 * ring_key_hash (hash once, look up in several rings). */
size_t ring_lookup_hash(const struct ring *r, uint64_t hash, size_t *owners, size_t n);
/* ring_member_name: member i's name (owned by the ring, valid until the
 * next successful ring_set or ring_free), or NULL when i is out of range. */
const char *ring_member_name(const struct ring *r, size_t i);
/* ring_member_weight: member i's weight after capping, or 0 out of range. */
unsigned ring_member_weight(const struct ring *r, size_t i);
/* ring_share: the exact fraction of the hash circle for which member i is
 * the first owner (0 out of range); the shares of all members sum to 1.
 * O(points); for metrics and tests, not per request. */
double ring_share(const struct ring *r, size_t member);

#endif
