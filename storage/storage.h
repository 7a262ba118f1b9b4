/* storage.h - the content-addressed cache on disk.
 *
 *   <root>/blobs/sha256/<2 hex>/<64 hex>        exact bytes
 *   <root>/blobs/sha256/<2 hex>/<64 hex>.meta   media type (manifests only)
 *   <root>/tags/<upstream>/<name>/_tags/<tag>   tag record (text)
 *   <root>/tmp/                                 downloads in progress
 *   <root>/pins/<sha256 of the pin's name>      pinned digests (pins.c)
 *   <root>/quarantine/sha256-<hex>.<time>       blobs found corrupt
 *   <root>/lock                                 flock'ed by the owner; its PID
 *
 * A download goes to tmp/, is hashed while written, and on commit is checked
 * against its digest, fsynced, renamed into place and the directory fsynced:
 * a partial or mismatching file is never visible as a cache entry, and a
 * kill -9 loses at most the downloads in flight (tmp/ is emptied at open).
 *
 * A size budget (max_size) is kept by evicting the least recently used
 * blobs. A blob open for reading (the API's "pin"/"unpin" of readers) or
 * named by a durable pin ("regmesh cache pin": blobstore_pin_set) is never
 * evicted; one being written is in tmp/ and so not a candidate.
 *
 * Thread safety: every function may be called from any thread (the node runs
 * commits, with their fsyncs, on libuv's thread pool); one mutex guards the
 * index. Ownership: the blobstore owns its index; a blob_writer is owned by
 * its caller until commit or abort, which free it.
 */
#ifndef REGMESH_STORAGE_STORAGE_H
#define REGMESH_STORAGE_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#define STORAGE_MEDIA_TYPE_MAX 256

struct blobstore;
struct blob_writer;

struct blob_info {
  uint64_t size;
  char media_type[STORAGE_MEDIA_TYPE_MAX]; /* "" when none was stored */
};

struct blobstore_stats {
  uint64_t bytes;      /* committed bytes */
  uint64_t blobs;      /* committed blobs */
  uint64_t evictions;  /* blobs evicted since open */
  uint64_t evicted_bytes;
  uint64_t max_size;
  uint64_t kept_bytes; /* committed bytes named by durable pins */
};

/* blobstore_open creates the layout under root if missing, locks it
 * (RM_ELOCKED, logged with the holder's PID, when another open store holds
 * it, in this process or another), empties tmp/, and indexes the committed blobs (size, last access from mtime). Files whose
 * name is not a valid digest are ignored. max_size 0 = no budget.
 * Returns 0 or a negative error; *out is owned by the caller. */
int blobstore_open(struct blobstore **out, const char *root, uint64_t max_size);
void blobstore_close(struct blobstore *bs);
/* blobstore_set_max_size changes the budget (a reload) and evicts down to
 * it at once. Unlinks files: call it off the event loop. */
void blobstore_set_max_size(struct blobstore *bs, uint64_t max_size);

/* blobstore_stat looks a blob up by its validated hex digest and counts as an
 * access for LRU. Returns 0, RM_ENOTFOUND or a negative error. */
int blobstore_stat(struct blobstore *bs, const char *hex, struct blob_info *info);

/* blobstore_peek is blobstore_stat without counting an access (for the
 * admin's listings, which must not reorder the LRU). */
int blobstore_peek(struct blobstore *bs, const char *hex, struct blob_info *info);
/* blobstore_read_small reads a committed blob of at most max bytes into a
 * new NUL-terminated buffer (*out, free() it), without counting an access.
 * Returns 0, RM_ENOTFOUND, RM_ETOOBIG or an error. Blocking. */
int blobstore_read_small(struct blobstore *bs, const char *hex, size_t max, char **out,
                         size_t *len);

/* blobstore_open_read opens a committed blob read-only, pins it against
 * eviction and counts an access. The caller owns *fd (close it) and must call
 * blobstore_unpin(hex) once when done with it. Returns 0 or RM_ENOTFOUND. */
int blobstore_open_read(struct blobstore *bs, const char *hex, int *fd,
                        struct blob_info *info);
void blobstore_unpin(struct blobstore *bs, const char *hex);

/* blobstore_remove deletes a committed blob. Returns 0, RM_ENOTFOUND,
 * UV_EBUSY when it is being read, UV_EPERM when a durable pin names it. */
int blobstore_remove(struct blobstore *bs, const char *hex);

void blobstore_get_stats(struct blobstore *bs, struct blobstore_stats *st);
/* blobstore_root: the root directory, without a trailing slash. */
const char *blobstore_root(const struct blobstore *bs);

/* The admin's view (regmesh cache ...). */
struct blob_listing {
  char hex[65];
  uint64_t size;
  int64_t last_use_s; /* wall clock, to the minute (accesses touch lazily) */
  uint32_t readers;   /* open for reading now */
  int pinned;         /* named by a durable pin */
  char media_type[STORAGE_MEDIA_TYPE_MAX];
};
/* blobstore_list copies every committed blob's entry, least recently used
 * first, into a new array (*out, free() it). Returns 0 or UV_ENOMEM. */
int blobstore_list(struct blobstore *bs, struct blob_listing **out, size_t *n);
/* blobstore_verify re-hashes the committed blob `hex`. A file whose bytes do
 * not hash to its name (or whose size changed) is moved to quarantine/ and
 * dropped from the index, so it is fetched again. Returns 0 (intact),
 * RM_EDIGEST (quarantined), UV_EBUSY (corrupt but being read: left, retry),
 * RM_ENOTFOUND (gone meanwhile) or an error; *hashed gets the bytes read.
 * Blocking: run it off the event loop. */
int blobstore_verify(struct blobstore *bs, const char *hex, uint64_t *hashed);

/* Durable pins: a named set of digests (an image's manifests and blobs) that
 * eviction never takes, in <root>/pins/, reloaded at open. A digest may be
 * named before it is cached: it is kept from its commit on. Blocking. */
#define STORAGE_PIN_NAME_MAX 512
#define STORAGE_PIN_MAX_DIGESTS 8192
struct blobstore_pin {
  char name[STORAGE_PIN_NAME_MAX + 1];
  size_t n;
  char (*hex)[65]; /* owned */
};
/* blobstore_pin_set creates or replaces the pin `name` (printable ASCII, at
 * most STORAGE_PIN_NAME_MAX bytes). Returns 0, RM_EPARSE, RM_ETOOBIG or an
 * I/O error (then nothing changed). */
int blobstore_pin_set(struct blobstore *bs, const char *name,
                      const char (*hex)[65], size_t n);
/* blobstore_pin_clear removes it: 0 or RM_ENOTFOUND. */
int blobstore_pin_clear(struct blobstore *bs, const char *name);
/* blobstore_pins reads every pin into a new array; free with
 * blobstore_pins_free. */
int blobstore_pins(struct blobstore *bs, struct blobstore_pin **out, size_t *n);
void blobstore_pins_free(struct blobstore_pin *p, size_t n);
/* blobstore_pinned: whether a durable pin names hex (1 or 0). */
int blobstore_pinned(struct blobstore *bs, const char *hex);
/* storage_pin_parse reads a pin file's bytes into *out (its hex owned by
 * the caller). Exposed for the fuzzer. Returns 0 or RM_EPARSE/RM_ETOOBIG. */
int storage_pin_parse(const char *buf, size_t len, struct blobstore_pin *out);

/* blobstore_writer_open starts a download of the blob `hex` into a new file
 * in tmp/. expected_size (or 0 when unknown) lets the store make room early.
 * Returns 0, RM_ENOSPACE when the blob alone exceeds max_size, or an error. */
int blobstore_writer_open(struct blobstore *bs, const char *hex,
                          uint64_t expected_size, struct blob_writer **out);
/* blob_writer_write appends and hashes. Returns 0 or a negative error. */
int blob_writer_write(struct blob_writer *w, const void *p, size_t n);
/* Bytes written so far, and the temp file's path: readers of a download in
 * progress open it themselves and read up to the bytes written (the inode
 * stays valid across the commit's rename). */
uint64_t blob_writer_size(const struct blob_writer *w);
const char *blob_writer_path(const struct blob_writer *w);
/* blob_writer_defer_hash (before the first write) makes writes skip the
 * hash; blob_writer_hash_step then hashes up to max bytes of what was
 * written, reading the file, and returns how many (0 when caught up) or an
 * error. It may run on another thread than the writes (one thread at a
 * time), which takes SHA-256 off the thread that receives the download. */
int blob_writer_defer_hash(struct blob_writer *w);
int64_t blob_writer_hash_step(struct blob_writer *w, size_t max);
/* blob_writer_verify finishes the hash and compares it with the digest:
 * 0, or RM_EDIGEST (then commit fails too). No more writes after it. Cheap
 * (no I/O), so it can run on the event loop before the commit. */
int blob_writer_verify(struct blob_writer *w);
/* blob_writer_commit verifies the digest (unless blob_writer_verify did) (RM_EDIGEST: the temp file is
 * removed), fsyncs, renames into place, fsyncs the directory, records the
 * media type (NULL or "" for none) and evicts LRU blobs past the budget.
 * Frees w whatever the result. Blocking: run it off the event loop. */
int blob_writer_commit(struct blob_writer *w, const char *media_type);
/* blob_writer_abort removes the temp file and frees w. */
void blob_writer_abort(struct blob_writer *w);

/* blobstore_put stores a small in-memory object (a manifest) the same way:
 * verify, fsync, rename. Returns 0 or RM_EDIGEST or an error. Blocking. */
int blobstore_put(struct blobstore *bs, const char *hex, const void *p,
                  size_t n, const char *media_type);

/* Tags: (upstream, name, tag) -> digest. Components are validated by the
 * caller against the registry grammar; the store rejects any component that
 * could leave its directory ("", ".", "..", a leading '.', or '/' in
 * upstream/tag) with RM_EPARSE. */
struct tag_record {
  char hex[65];
  char media_type[STORAGE_MEDIA_TYPE_MAX];
  uint64_t size;
  int64_t fetched_at_ms; /* wall clock, ms since the epoch */
};
int tagstore_get(struct blobstore *bs, const char *upstream, const char *name,
                 const char *tag, struct tag_record *out);
int tagstore_put(struct blobstore *bs, const char *upstream, const char *name,
                 const char *tag, const struct tag_record *rec);
/* tagstore_remove deletes one record: 0, RM_ENOTFOUND or RM_EPARSE. */
int tagstore_remove(struct blobstore *bs, const char *upstream, const char *name,
                    const char *tag);
/* tagstore_each calls fn for every record that parses, in no set order
 * (tag is the file name: tag[@variant]). fn returns 0 to go on. Records
 * nested deeper than a name can be are skipped. Returns 0, fn's non-zero
 * value, or an error opening tags/. Blocking. */
typedef int (*tagstore_each_fn)(const char *upstream, const char *name, const char *tag,
                                const struct tag_record *rec, void *ud);
int tagstore_each(struct blobstore *bs, tagstore_each_fn fn, void *ud);

#endif
