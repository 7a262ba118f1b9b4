/* storage.h - the content-addressed cache on disk.
 *
 *   <root>/blobs/sha256/<2 hex>/<64 hex>        exact bytes
 *   <root>/blobs/sha256/<2 hex>/<64 hex>.meta   media type (manifests only)
 *   <root>/tags/<upstream>/<name>/_tags/<tag>   tag record (text)
 *   <root>/tmp/                                 downloads in progress
 *   <root>/lock                                 flock'ed by the owner; its PID
 *
 * A download goes to tmp/, is hashed while written, and on commit is checked
 * against its digest, fsynced, renamed into place and the directory fsynced:
 * a partial or mismatching file is never visible as a cache entry, and a
 * kill -9 loses at most the downloads in flight (tmp/ is emptied at open).
 *
 * A size budget (max_size) is kept by evicting the least recently used
 * blobs. A blob that is pinned (open for reading) is never evicted; one being
 * written is in tmp/ and so not a candidate.
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

/* blobstore_open_read opens a committed blob read-only, pins it against
 * eviction and counts an access. The caller owns *fd (close it) and must call
 * blobstore_unpin(hex) once when done with it. Returns 0 or RM_ENOTFOUND. */
int blobstore_open_read(struct blobstore *bs, const char *hex, int *fd,
                        struct blob_info *info);
void blobstore_unpin(struct blobstore *bs, const char *hex);

/* blobstore_remove deletes a committed blob (e.g. found corrupt). Returns 0,
 * RM_ENOTFOUND, or UV_EBUSY when it is pinned. */
int blobstore_remove(struct blobstore *bs, const char *hex);

void blobstore_get_stats(struct blobstore *bs, struct blobstore_stats *st);

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

#endif
