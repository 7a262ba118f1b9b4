/* fsutil.h - blocking file-system helpers (fsutil.c). */
#ifndef REGMESH_COMMON_FSUTIL_H
#define REGMESH_COMMON_FSUTIL_H

#include <stddef.h>

/* rm_write_all writes n bytes, retrying short writes and EINTR.
 * Returns 0 or a negative errno (UV_EIO when a write makes no progress). */
int rm_write_all(int fd, const void *p, size_t n);
/* rm_mkdir creates one directory (0755); *created (may be NULL) says
 * whether it was new. An existing directory is success, anything else on
 * the path UV_ENOTDIR. */
int rm_mkdir(const char *path, int *created);
/* rm_mkdir_p creates path and its parents. 0, a negative errno,
 * UV_ENAMETOOLONG or UV_ENOTDIR. */
int rm_mkdir_p(const char *path);

#endif
