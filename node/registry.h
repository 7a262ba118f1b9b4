/* registry.h - the registry HTTP API (Docker Registry v2 / OCI distribution)
 * served from the cache, in-flight downloads and the upstreams. */
#ifndef REGMESH_NODE_REGISTRY_H
#define REGMESH_NODE_REGISTRY_H

struct node;
struct http_request;

/* registry_init registers the node's metrics descriptions and sets up the
 * first-byte deadline tick; registry_stop closes that tick (node_stop). */
void registry_init(struct node *n);
void registry_stop(struct node *n);
/* registry_handle is the HTTP server's handler for every request. */
void registry_handle(struct http_request *req, void *node);
/* registry_tagslist_free drops the tag list cache (at shutdown). */
void registry_tagslist_free(struct node *n);

#endif
