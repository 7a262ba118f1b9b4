/* storage_internal.h - what the files of storage/ share, and nobody else.
 *
 * blobstore.c owns the index (hash table + LRU list, one mutex) and is the
 * only file that changes the blobs/ namespace; blob_writer.c produces fsynced
 * temp files and hands them to storage__install; tagstore.c only needs the
 * root and a temp name. fsutil.c holds the small file-system helpers
 * (EINTR-safe writes, mkdir -p, emptying tmp/) they all use.
 */
#ifndef REGMESH_STORAGE_STORAGE_INTERNAL_H
#define REGMESH_STORAGE_STORAGE_INTERNAL_H

#include "storage.h"

#include <stddef.h>
#include <stdint.h>

#include "fsutil.h" /* rm_write_all, rm_mkdir_p */

/* Longest file name we create in tmp/ or under blobs/, beyond the root:
 * "/blobs/sha256/xx/" + 64 hex + ".evict.<pid>.<seq>" stays well below. */
#define STORAGE__NAME_RESERVE 192

/* --- blobstore.c ------------------------------------------------------- */

/* The store's root, without a trailing slash. */
const char *storage__root(const struct blobstore *bs);
/* A process-unique number for temp names (atomic, any thread). */
uint64_t storage__next_seq(struct blobstore *bs);

/* storage__reserve counts `n` bytes about to be written in tmp/ against the
 * budget and evicts LRU blobs to make room. Returns 0, or RM_ENOSPACE when n
 * alone exceeds max_size (nothing is reserved then). */
int storage__reserve(struct blobstore *bs, uint64_t n);
/* storage__unreserve gives back a reservation (writer aborted or failed). */
void storage__unreserve(struct blobstore *bs, uint64_t n);

/* storage__install makes an fsynced temp file the committed blob `hex`:
 * renames meta_tmp (may be NULL) then blob_tmp into place, fsyncs the
 * directory, indexes the blob, releases `reserved` and evicts past the
 * budget. On any result the temp files are gone (renamed or unlinked).
 * media_type is NULL or a validated, non-empty string. Returns 0 or an
 * error. */
int storage__install(struct blobstore *bs, const char *hex, const char *blob_tmp,
                     const char *meta_tmp, const char *media_type, uint64_t size,
                     uint64_t reserved);

/* storage__keep_adjust adds (delta > 0) or drops one durable pin's claim on
 * each of the n digests; dropping may evict what the budget no longer fits. */
void storage__keep_adjust(struct blobstore *bs, const char (*hex)[65], size_t n,
                          int delta);
/* pin_mu: one pin file change at a time (read old, write new, adjust). */
void storage__pin_lock(struct blobstore *bs);
void storage__pin_unlock(struct blobstore *bs);

/* --- pins.c ------------------------------------------------------------ */

/* storage__pins_load reads <root>/pins/ at open and applies every pin; a
 * file that does not parse is logged and ignored. Returns 0 or an error
 * creating the directory. */
int storage__pins_load(struct blobstore *bs);

/* --- fsutil.c ---------------------------------------------------------- */

/* storage__read_upto reads until EOF or cap bytes, retrying EINTR; *len gets
 * the count. Callers pass cap = limit + 1 to detect an oversized file. */
int storage__read_upto(int fd, char *buf, size_t cap, size_t *len);
/* storage__fsync_dir makes the directory's entries durable. */
int storage__fsync_dir(const char *path);
/* storage__empty_dir removes everything inside path (not path itself),
 * without following symlinks. Returns 0 or the last error met. */
int storage__empty_dir(const char *path);
/* storage__create_tmp creates a new file <root>/tmp/<prefix>.<pid>.<seq>
 * with O_CREAT|O_EXCL|O_CLOEXEC, writing its path into path[size].
 * Returns the fd or a negative errno. */
int storage__create_tmp(struct blobstore *bs, const char *prefix, char *path,
                        size_t size);
/* storage__media_type_valid: printable ASCII, shorter than
 * STORAGE_MEDIA_TYPE_MAX, so it fits one line of a .meta or tag file. */
int storage__media_type_valid(const char *s);

#endif
