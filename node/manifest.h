/* manifest.h - what an image manifest or index refers to.
 *
 * One reader of the JSON the upstreams send (OCI image index and manifest,
 * Docker manifest list and schema 2, OCI artifact manifests): the cache
 * walks it to size and pin images, `cache warm` to know what to fetch. The
 * bytes come from the network, so every field is type-checked and bounded;
 * a descriptor whose digest is not a valid sha256 is skipped.
 */
#ifndef REGMESH_NODE_MANIFEST_H
#define REGMESH_NODE_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

enum manifest_ref_kind {
  MANIFEST_REF_CHILD,  /* an index's manifests[] entry */
  MANIFEST_REF_CONFIG, /* an image's config */
  MANIFEST_REF_LAYER,  /* layers[] */
  MANIFEST_REF_BLOB,   /* an artifact's blobs[] */
};

struct manifest_ref {
  enum manifest_ref_kind kind;
  char hex[65];
  int64_t size;        /* -1 when absent or not a non-negative integer */
  /* platform of a CHILD ("" when absent): printable ASCII, bounded */
  char os[32], arch[32], variant[32];
};

/* manifest_each_ref calls fn for each descriptor of the document, in
 * document order (children, config, layers, blobs); fn returns 0 to go on.
 * Returns 0, fn's non-zero value, or RM_EPARSE when buf is not a JSON
 * object. */
typedef int (*manifest_ref_fn)(const struct manifest_ref *ref, void *ud);
int manifest_each_ref(const char *buf, size_t len, manifest_ref_fn fn, void *ud);

/* manifest_platform_matches: "os/arch" or "os/arch/variant" against a
 * child's platform. Returns 1 or 0. */
int manifest_platform_matches(const struct manifest_ref *ref, const char *want);

#endif
