/* errors.c - descriptions for regmesh's error codes.
 *
 * One table for our own codes; everything else is libuv's (negative errno),
 * so callers can print any return value the same way.
 */
#include "errors.h"

#include <uv.h>

const char *rm_strerror(int err) {
  switch (err) {
  case RM_EDIGEST: return "content does not match its digest";
  case RM_EPARSE: return "malformed input";
  case RM_ECONFIG: return "invalid configuration";
  case RM_ENOTFOUND: return "not found";
  case RM_EUPSTREAM: return "upstream returned an error";
  case RM_EUNREACH: return "upstream unreachable";
  case RM_ETOOBIG: return "input too large";
  case RM_EAUTH: return "authentication failed";
  case RM_ERATELIMIT: return "upstream rate limit reached";
  case RM_ESIZE: return "content length mismatch";
  case RM_ENOSPACE: return "storage budget exceeded";
  case RM_ETLS: return "TLS error";
  case RM_ELOCKED: return "storage root in use by another process";
  case RM_EREDIRECT: return "peer sent us to other holders";
  case RM_EBUSY: return "peer busy with other uploads";
  default: return uv_strerror(err);
  }
}
