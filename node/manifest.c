/* manifest.c - the descriptors a manifest or index names (manifest.h).
 *
 * jansson parses; this file only picks the fields the cache needs and
 * checks each before it is handed on.
 */
#include "manifest.h"

#include "../common/digest.h"
#include "../common/errors.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static void copy_field(char *dst, size_t cap, const json_t *o, const char *key) {
  const char *v = json_string_value(json_object_get(o, key));
  size_t i = 0;
  for (; v && v[i] && i + 1 < cap; i++)
    dst[i] = (v[i] > 0x20 && v[i] < 0x7f) ? v[i] : '?';
  dst[i] = '\0';
}

static int visit(const json_t *desc, enum manifest_ref_kind kind, manifest_ref_fn fn,
                 void *ud) {
  struct manifest_ref ref;
  const char *d = json_string_value(json_object_get(desc, "digest"));
  if (!d || digest_parse(d, strlen(d), ref.hex) != 0)
    return 0;
  ref.kind = kind;
  const json_t *s = json_object_get(desc, "size");
  ref.size = json_is_integer(s) && json_integer_value(s) >= 0 ? (int64_t)json_integer_value(s)
                                                               : -1;
  const json_t *p = json_object_get(desc, "platform");
  copy_field(ref.os, sizeof ref.os, p, "os");
  copy_field(ref.arch, sizeof ref.arch, p, "architecture");
  copy_field(ref.variant, sizeof ref.variant, p, "variant");
  return fn(&ref, ud);
}

int manifest_each_ref(const char *buf, size_t len, manifest_ref_fn fn, void *ud) {
  json_t *doc = json_loadb(buf, len, 0, NULL);
  if (!json_is_object(doc)) {
    json_decref(doc);
    return RM_EPARSE;
  }
  int r = 0;
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(doc, "manifests"), i, v) if (!r) r =
      visit(v, MANIFEST_REF_CHILD, fn, ud);
  if (!r)
    r = visit(json_object_get(doc, "config"), MANIFEST_REF_CONFIG, fn, ud);
  json_array_foreach(json_object_get(doc, "layers"), i, v) if (!r) r =
      visit(v, MANIFEST_REF_LAYER, fn, ud);
  json_array_foreach(json_object_get(doc, "blobs"), i, v) if (!r) r =
      visit(v, MANIFEST_REF_BLOB, fn, ud);
  json_decref(doc);
  return r;
}

int manifest_platform_matches(const struct manifest_ref *ref, const char *want) {
  char spec[120];
  snprintf(spec, sizeof spec, "%s/%s", ref->os, ref->arch);
  if (strcmp(spec, want) == 0)
    return 1;
  if (!ref->variant[0])
    return 0;
  snprintf(spec, sizeof spec, "%s/%s/%s", ref->os, ref->arch, ref->variant);
  return strcmp(spec, want) == 0;
}
