/* reference.h - the distribution spec's grammar for names, tags, digests.
 *
 * Everything a client sends is checked here before any other use: names and
 * tags become file paths in the tag store and upstream URLs.
 */
#ifndef REGMESH_NODE_REFERENCE_H
#define REGMESH_NODE_REFERENCE_H

#include <stddef.h>

#define REF_NAME_MAX 255
#define REF_TAG_MAX 128

/* ref_name_valid: path components [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by
 * '/', at most REF_NAME_MAX bytes. Returns 1 or 0. */
int ref_name_valid(const char *s, size_t len);
/* ref_tag_valid: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}. Returns 1 or 0. */
int ref_tag_valid(const char *s, size_t len);
/* ref_component_is_host: the first component of a name names a registry
 * host when it has a '.' or ':' or is "localhost" (docker's rule). */
int ref_component_is_host(const char *s, size_t len);

#endif
