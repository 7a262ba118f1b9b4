/* cache.h - the operator's view of the cache: what `regmesh cache ls|stat|
 * rm|pin|unpin|verify` asks of the admin API (docs/operations.md).
 *
 * Each request is one job. cache_job_run does the work, blocking (it reads
 * tag records and manifests and may re-hash every blob), so the node runs it
 * on libuv's thread pool; unit tests call it directly. The job copies what
 * it needs of the configuration, so a reload meanwhile changes nothing
 * under it.
 */
#ifndef REGMESH_NODE_CACHE_H
#define REGMESH_NODE_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct blobstore;
struct config;

enum cache_op { CACHE_OP_LS, CACHE_OP_STAT, CACHE_OP_RM, CACHE_OP_PIN, CACHE_OP_UNPIN,
                CACHE_OP_VERIFY };

#define CACHE_ARG_MAX 700
#define CACHE_MAX_FORGET 16

struct cache_job {
  struct blobstore *bs;
  enum cache_op op;
  char arg[CACHE_ARG_MAX];  /* rm/pin/unpin: an image reference or a digest */
  char upstream[256];       /* ls: only this upstream ("" = all) */
  char **hosts;             /* the upstreams' host names (owned copies) */
  size_t n_hosts, default_up;
  /* result: an HTTP status and a JSON body (owned), with the tag records
   * that rm removed, for the node to drop from its memory too */
  int status;
  char *body;
  size_t n_forget;
  struct {
    char host[128], name[300], tag[200];
  } forget[CACHE_MAX_FORGET];
  /* verify's counts, for metrics */
  uint64_t verified, corrupt;
  /* the node's stop flag (atomic int; NULL: none): verify stops at it */
  const int *cancel;
};

/* cache_job_new prepares a job. Returns 0 or UV_ENOMEM. */
int cache_job_new(struct cache_job **out, struct blobstore *bs, const struct config *cfg,
                  enum cache_op op, const char *arg, const char *upstream);
/* cache_job_run does it (blocking) and sets status and body. */
void cache_job_run(struct cache_job *j);
void cache_job_free(struct cache_job *j);

#endif
