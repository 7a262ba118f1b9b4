/* swim_serf.c - the two things of serf's protocol the core must know.
 *
 * memberlist's user messages and push/pull user state belong to serf, and
 * regmesh otherwise passes them by (memberlist-wire.md section 10). Two
 * exceptions: to be shown as "left" rather than "failed" by serf, a leaving
 * node first gossips a serf leave intent {LTime, Node, Prune} (serf message
 * type 0), and its LTime must beat what serf has recorded for that node.
 * So we watch serf's Lamport clock where it shows (the LTime of the
 * push/pull user state, and of join and leave intents) and send one more.
 */
#include "swim_internal.h"

#include "../common/errors.h"

#include <msgpack.h>
#include <string.h>

enum { SERF_LEAVE_INTENT = 0, SERF_JOIN_INTENT = 1, SERF_PUSH_PULL = 2 };

struct fixed_buf {
  uint8_t *p;
  size_t len, cap;
  int overflow;
};

static int fixed_write(void *data, const char *buf, size_t len) {
  struct fixed_buf *b = data;
  if (b->cap - b->len < len) {
    b->overflow = 1;
    return -1;
  }
  memcpy(b->p + b->len, buf, len);
  b->len += len;
  return 0;
}

static void pack_raw(msgpack_packer *pk, const char *s) {
  size_t n = strlen(s);
  /* Go's raw-string form, as serf itself writes strings */
  msgpack_pack_v4raw(pk, n);
  msgpack_pack_v4raw_body(pk, s, n);
}

int swim__serf_leave_intent(uint8_t *out, size_t cap, uint64_t ltime, const char *node) {
  struct fixed_buf b = {out, 0, cap, 0};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fixed_write);
  uint8_t head[2] = {WIRE_USER, SERF_LEAVE_INTENT};
  fixed_write(&b, (const char *)head, 2);
  msgpack_pack_map(&pk, 3); /* keys sorted like go-msgpack emits them */
  pack_raw(&pk, "LTime");
  msgpack_pack_uint64(&pk, ltime);
  pack_raw(&pk, "Node");
  pack_raw(&pk, node);
  pack_raw(&pk, "Prune");
  msgpack_pack_false(&pk);
  return b.overflow ? RM_ETOOBIG : (int)b.len;
}

static int key_is(const msgpack_object *k, const char *name) {
  size_t n = strlen(name);
  if (k->type == MSGPACK_OBJECT_STR)
    return k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0;
  if (k->type == MSGPACK_OBJECT_BIN)
    return k->via.bin.size == n && memcmp(k->via.bin.ptr, name, n) == 0;
  return 0;
}

/* LTime of the msgpack map at p, if any. */
static void note_ltime(struct swim *s, const uint8_t *p, size_t len) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  if (msgpack_unpack_next(&u, (const char *)p, len, &off) == MSGPACK_UNPACK_SUCCESS &&
      u.data.type == MSGPACK_OBJECT_MAP) {
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
      const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
      if (key_is(&kv->key, "LTime") && kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
          kv->val.via.u64 > s->serf_ltime)
        s->serf_ltime = kv->val.via.u64;
    }
  }
  msgpack_unpacked_destroy(&u);
}

void swim__serf_user_msg(struct swim *s, const uint8_t *p, size_t len) {
  if (len < 2)
    return;
  if (p[0] == SERF_LEAVE_INTENT || p[0] == SERF_JOIN_INTENT)
    note_ltime(s, p + 1, len - 1);
}

void swim__serf_user_state(struct swim *s, const uint8_t *p, size_t len) {
  if (len >= 2 && p[0] == SERF_PUSH_PULL)
    note_ltime(s, p + 1, len - 1);
}
