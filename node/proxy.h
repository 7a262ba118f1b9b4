/* proxy.h - the proxy listener: HTTPS_PROXY for every client (docs/proxy.md).
 *
 * A CONNECT to a configured upstream's host or alias is answered 200 and
 * its TLS terminated with a leaf certificate for that host (leafcert.c);
 * the requests inside are then the registry's, routed to that upstream like
 * requests on its own port (registry.c reads req->proxy_host). A plain
 * http:// request for an upstream is served the same way. A CONNECT to any
 * other host is tunnelled (tunnel.c) unless proxy.tunnel_others is off,
 * never to the node's own listeners, and to loopback or link-local
 * addresses only inside proxy.tunnel_allow. With auth: on, a tunnel needs
 * Proxy-Authorization; an intercepted CONNECT may carry it (then its
 * requests are that user's) or log in inside with a node token.
 */
#ifndef REGMESH_NODE_PROXY_H
#define REGMESH_NODE_PROXY_H

#include <stddef.h>
#include <sys/socket.h>

struct node;
struct proxy;
struct http_request;

#define PROXY_HOST_MAX 253

/* proxy_new loads the CA (blocking: call at start) and notes the node's
 * listener addresses, which must all be bound by now. 0 or a negative
 * error (logged). */
int proxy_new(struct proxy **out, struct node *n);
/* proxy_handle serves a request on the proxy listener that is not inside
 * an intercepted tunnel. Returns 1 when it took the request, or 0 when it
 * is a plain http:// request for an upstream, for the registry to serve. */
int proxy_handle(struct proxy *p, struct http_request *req);
/* proxy_request_upstream: the upstream a request on the proxy listener is
 * for (inside an intercepted tunnel, or absolute-form), or -1. */
int proxy_request_upstream(const struct node *n, const struct http_request *req);
/* proxy_update_metrics sets the leaf and tunnel figures (a scrape). */
void proxy_update_metrics(const struct proxy *p);
/* proxy_close cuts the tunnels and frees p once they are gone. */
void proxy_close(struct proxy *p);

/* proxy_parse_target: "host:port", "[v6]:port" or, with default_port set,
 * "host" -> host (lower case, no brackets, NUL-terminated, cap >= 256) and
 * port 1..65535. A host is a DNS-ish name ([a-z0-9._-], labels of at most
 * 63, at most PROXY_HOST_MAX) or an IP literal. 0 or RM_EPARSE. */
int proxy_parse_target(const char *s, size_t len, unsigned default_port, char *host,
                       size_t cap, unsigned *port);
/* proxy_addr_refused: why a tunnel to sa is refused by default (loopback,
 * link-local, unspecified, multicast), or NULL. */
const char *proxy_addr_refused(const struct sockaddr *sa);

#endif
