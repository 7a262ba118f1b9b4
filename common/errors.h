/* errors.h - regmesh's own negative error codes.
 *
 * Functions return 0 or a negative code. System and libuv errors pass through
 * as UV_E* values (negative errno on Unix); the codes below are regmesh's own
 * and live in a range libuv never uses.
 */
#ifndef REGMESH_COMMON_ERRORS_H
#define REGMESH_COMMON_ERRORS_H

enum {
  RM_EDIGEST = -30001,    /* content does not match its digest */
  RM_EPARSE = -30002,     /* malformed input (request, header, document) */
  RM_ECONFIG = -30003,    /* invalid configuration */
  RM_ENOTFOUND = -30004,  /* no such blob, manifest, tag or name */
  RM_EUPSTREAM = -30005,  /* upstream answered with an error status */
  RM_EUNREACH = -30006,   /* upstream could not be reached */
  RM_ETOOBIG = -30007,    /* input over a configured or fixed limit */
  RM_EAUTH = -30008,      /* authentication failed */
  RM_ERATELIMIT = -30009, /* upstream answered 429 */
  RM_ESIZE = -30010,      /* content length differs from the announced size */
  RM_ENOSPACE = -30011,   /* storage budget cannot fit the object */
  RM_ETLS = -30012,       /* TLS files unusable or handshake failed */
  RM_ELOCKED = -30013,    /* storage root held by another process */
  RM_EREDIRECT = -30014,  /* a peer sent us to other holders of the blob */
  RM_EBUSY = -30015,      /* a peer is at its limit of uploads */
};

/* rm_strerror returns a static description of any code: regmesh's own, or a
 * libuv/errno code (through uv_strerror). Never NULL. */
const char *rm_strerror(int err);

#endif
