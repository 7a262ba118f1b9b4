/* cluster.h - the node's place in its fleet: gossip membership, the hash
 * ring over live members, the peers' HTTP clients, and the plans that send a
 * missing digest to its owner before the upstream (docs/cluster.md).
 *
 * The cluster runs the gossip library on the node's loop (gossip/env_uv.h)
 * and keeps, per member, a struct cluster_peer built from its metadata
 * (serf tags: url, weight, zone, version, rl). Peers are never freed while
 * the node runs (a request may hold their HTTP client); a member that comes
 * back with another URL gets a new client and the old one is retired.
 */
#ifndef REGMESH_NODE_CLUSTER_H
#define REGMESH_NODE_CLUSTER_H

#include "fetch.h"
#include "peerauth.h"

#include <stddef.h>
#include <stdint.h>

struct node;
struct cluster;
struct upstream;

#define CLUSTER_HOP_HEADER "X-Regmesh-Hop"
#define CLUSTER_AUTH_HEADER "X-Regmesh-Auth"
#define CLUSTER_REPLY_HEADER "X-Regmesh-Auth-Reply"
#define CLUSTER_TAG_TIME_HEADER "X-Regmesh-Tag-Fetched"
#define CLUSTER_DELEGATE_HEADER "X-Regmesh-Delegate"
/* spreading a blob beyond its owner (docs/cluster.md, "Beyond the owner") */
#define CLUSTER_HOLDERS_HEADER "X-Regmesh-Holders"         /* busy peer: ask these */
#define CLUSTER_HOLDER_ONLY_HEADER "X-Regmesh-Holder-Only" /* cache or in-flight only */
#define CLUSTER_NO_REDIRECT_HEADER "X-Regmesh-No-Redirect" /* serve it yourself */
#define CLUSTER_NOTICE_HEADER "X-Regmesh-Notice" /* held | replicate | handover */

/* cluster_start: gossip bound, metadata set, joining in the background.
 * Needs n->cfg->cluster.enabled, n->upc and n->ups. Returns 0 or an error
 * (logged). */
int cluster_start(struct cluster **out, struct node *n);
/* cluster_stop tells the new owners of our keys who holds them (bounded),
 * leaves gracefully (bounded), then calls done(ud) once. */
void cluster_stop(struct cluster *c, void (*done)(void *ud), void *ud);
/* cluster_free after the loop stopped and the upstream client was freed. */
void cluster_free(struct cluster *c);

const char *cluster_self(const struct cluster *c);
const struct peerauth *cluster_auth(const struct cluster *c);

/* cluster_plan fills plan for digest hex of upstream index up (repository
 * name from the request). For a client's request (asker NULL): the owners
 * in preference order (skipping us and members not alive), then the
 * upstream; for manifests also delegates with rate-limit budget (before the
 * upstream when our own budget is spent). When we are the first owner,
 * client's request or peer's (asker: its name), the hand-over comes first:
 * holders we were told of and the owner the ring had before us, each asked
 * for its cache or in-flight download only. A peer's request to a node
 * that is not the first owner goes to the upstream only (no loops). */
void cluster_plan(struct cluster *c, int is_manifest, const char *hex, const char *repo,
                  int up, const char *asker, struct fetch_plan *plan);

/* A peer (asker) GETs blob hex from us. cluster_upload_decide notes it as a
 * holder and says whether to stream it (CLUSTER_SERVE, then bracket the
 * stream with cluster_upload_begin/end), to send it to other holders
 * (CLUSTER_REDIRECT: holders gets the X-Regmesh-Holders value, location the
 * first one's URL for target), or to refuse (CLUSTER_BUSY: 503). */
enum cluster_upload { CLUSTER_SERVE, CLUSTER_REDIRECT, CLUSTER_BUSY };
enum cluster_upload cluster_upload_decide(struct cluster *c, const char *hex,
                                          const char *asker, const char *repo,
                                          const char *ns, const char *target,
                                          int may_redirect, char *holders, size_t hl,
                                          char *location, size_t ll);
void cluster_upload_begin(struct cluster *c, const char *hex);
void cluster_upload_end(struct cluster *c, const char *hex);

/* cluster_notice handles a peer's X-Regmesh-Notice (value kind) about
 * digest hex under repo of upstream up: "held" (from has it whole),
 * "replicate" (keep a copy, fetched from `from` in the background),
 * "handover" (holders, a comma list, hold it: we own it now). Returns the
 * HTTP status to answer with. */
int cluster_notice(struct cluster *c, const char *kind, int is_manifest, const char *hex,
                   const char *repo, int up, const char *from, const char *holders);

/* cluster_owner_peer: the first usable owner of key that is not us (NULL
 * when we are the first owner, or when need_auth and there is no secret).
 * Fills the request headers for method and target (path?query) into hdrs
 * and the signature (when signed) into sig (65). Tags (need_auth) go to
 * their owner this way; so do HEADs of missing digests. */
struct upstream *cluster_owner_peer(struct cluster *c, const char *key, const char *method,
                                    const char *target, int need_auth, char *hdrs,
                                    size_t hdrs_len, char *sig);

/* JSON bodies of GET /cluster/members and /cluster/owners (malloc'd, the
 * caller frees); owners: NULL and UV_EINVAL for a bad key. */
char *cluster_members_json(struct cluster *c);
int cluster_owners_json(struct cluster *c, const char *key, char **out);

/* Gauges for /metrics (members by state, ring share). */
void cluster_update_metrics(struct cluster *c);

#endif
