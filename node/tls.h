/* tls.h - a listener's certificate, kept current.
 *
 * A tls_source owns the SSL_CTX built from one `tls:` block and replaces it
 * when the files change on disk (checked every TLS_WATCH_MS) or on
 * tls_source_reload (SIGHUP). Files are read on the thread pool, never on
 * the loop; a new context is swapped in only when it builds, so a bad file
 * leaves the old certificate serving and a log line saying why.
 * Connections keep the context they started with.
 */
#ifndef REGMESH_NODE_TLS_H
#define REGMESH_NODE_TLS_H

#include <openssl/ssl.h>
#include <uv.h>

struct config_tls;
struct tls_source;

#define TLS_WATCH_MS 2000

/* tls_source_new loads cfg's files now (blocking: call at start) and
 * starts watching them. what names the listener in logs. Returns 0 or
 * RM_ETLS / UV_ENOMEM (logged); cfg must outlive the source. */
int tls_source_new(struct tls_source **out, uv_loop_t *loop,
                   const struct config_tls *cfg, const char *what);
/* tls_source_ctx: where the current context lives, for
 * http_server_listen_tls. */
SSL_CTX *const *tls_source_ctx(struct tls_source *ts);
/* tls_source_reload rebuilds the context from the files (asynchronously). */
void tls_source_reload(struct tls_source *ts);
/* tls_source_reloads: successful swaps and refused reloads so far. */
void tls_source_counts(const struct tls_source *ts, uint64_t *ok,
                       uint64_t *failed);
/* tls_source_close stops watching and frees ts once no reload is running
 * (the current context is released; connections hold their own ref). */
void tls_source_close(struct tls_source *ts);

#endif
