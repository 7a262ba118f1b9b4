/* config.h - regmesh's configuration: YAML file -> validated struct.
 *
 * Every field has a default (config_init), so the minimal file of the README
 * works as it stands, and so does no file at all (`make run`). Errors name
 * the place: "file:line:col: key: why".
 *
 * Ownership: a struct config owns every string and array it points to;
 * config_free releases them.
 */
#ifndef REGMESH_CONFIG_CONFIG_H
#define REGMESH_CONFIG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct sockaddr;

#define CONFIG_MAX_UPSTREAMS 64
/* `allow:` entries; a list longer than this wants a firewall, not a config */
#define CONFIG_MAX_ALLOW 1024
/* `aliases:` of one upstream, and `proxy.hosts:` entries */
#define CONFIG_MAX_ALIASES 32
#define CONFIG_MAX_PROXY_HOSTS 1024
/* Configuration files (and strings) larger than this are refused. */
#define CONFIG_MAX_FILE_SIZE (1024 * 1024)
/* A load reports up to this many errors, one per line; an err buffer of
 * CONFIG_ERR_LEN bytes holds them. */
#define CONFIG_MAX_ERRORS 20
#define CONFIG_ERR_LEN 4096

/* One entry of an `allow:` list: an IPv4 or IPv6 network. A bare address
 * is a host (/32 or /128). */
struct config_cidr {
  int family;      /* AF_INET or AF_INET6 */
  unsigned prefix; /* 0..32 or 0..128 */
  uint8_t addr[16]; /* network bytes, host bits zero; v4 in the first 4 */
};

/* A `tls:` block. On a client listener `ca` is `client_ca:` (clients must
 * then present a certificate it signed); under `cluster.tls:` it is `ca:`,
 * required, and verifies peers both ways. Files are read and checked when
 * the config is loaded (so check-config names file:line:col) and again by
 * the node at start and on every reload. */
struct config_tls {
  char *cert;      /* PEM certificate chain, leaf first */
  char *key;       /* PEM private key */
  char *ca;        /* PEM CA bundle, or NULL */
  int min_version; /* 0x0303 (TLS 1.2, default) or 0x0304 (TLS 1.3) */
};

struct config_upstream {
  char *host;       /* registry name clients use: "docker.io", "ghcr.io" */
  char *url;        /* base URL, no trailing slash: "https://ghcr.io" */
  int is_default;   /* default upstream for listeners without their own */
  char *listen;     /* optional "host:port" listener owned by this upstream */
  uint64_t tag_ttl_ms;      /* tag cache lifetime (default 60 s) */
  /* a tag past its TTL whose HEAD has no answer by then is served stale
   * from the cache while the HEAD goes on (default 3 s) */
  uint64_t resolve_timeout_ms;
  /* a cold blob or manifest whose upstream sent nothing by then is a 504
   * (the download goes on); 0 = no deadline (default 10 s) */
  uint64_t first_byte_timeout_ms;
  uint64_t tags_list_ttl_ms; /* tags/list cache lifetime (default 30 s) */
  char *username;     /* optional credentials (basic, or for the token realm) */
  char *password;     /* literal password (discouraged), or ... */
  char *password_env; /* ... the name of an environment variable holding it */
  int tls_verify;     /* default 1 */
  char *ca_file;      /* optional CA bundle for this upstream */
  uint64_t connect_timeout_ms; /* default 10 s */
  uint64_t low_speed_time_ms;  /* abort when below 1 KiB/s this long (30 s) */
  unsigned max_retries;        /* for idempotent requests (default 3) */
  int is_private;   /* `private: true`: authenticated clients only, blobs only
                       under repositories the upstream confirmed */
  struct config_tls *tls; /* `tls:` of its own listener, NULL = the top-level
                             one (which may be NULL too: plain HTTP) */
  /* `aliases:`: more host names (host or host:port) the proxy listener
   * intercepts for this upstream, e.g. a registry's auth or CDN hosts. For
   * Docker Hub, registry-1.docker.io, index.docker.io and auth.docker.io are
   * implied (config_upstream_proxy_match). Owned, lower case. */
  char **aliases;
  size_t n_aliases;
};

struct config_storage {
  char *root;        /* default "./regmesh-data" */
  uint64_t max_size; /* bytes; 0 = unlimited. "20GiB", "500MB", "1048576" */
};

struct config_http {
  size_t max_header_bytes;     /* whole request head (default 16 KiB) */
  unsigned max_headers;        /* header count (default 100) */
  uint64_t header_timeout_ms;  /* time to receive a request head (10 s) */
  uint64_t idle_timeout_ms;    /* keep-alive idle (60 s) */
  uint64_t send_timeout_ms;    /* client made no progress reading (60 s) */
  unsigned max_connections;    /* default 4096 */
};

/* The `cluster:` section (docs/cluster.md). Without one, enabled is 0 and
 * every other field still holds its default, so code may read them either
 * way. Strings are owned like the rest of struct config. The secret is the
 * decoded key only: neither its base64 text nor secret_file's path is kept,
 * and config_free wipes it. */
#define CONFIG_CLUSTER_PORT 7946
#define CONFIG_CLUSTER_MAX_JOIN 64

struct config_cluster {
  int enabled;              /* a cluster: section was given */
  char *name;               /* default: gethostname(); NULL only when the
                               section is absent and the host name could not
                               be read */
  int name_defaulted;       /* name is the host name: the node may add its
                               address when another member has it */
  char *bind;               /* default "0.0.0.0:7946" */
  char *advertise;          /* NULL = derived from bind at start */
  char *peer_listen;        /* default "<bind ip>:<bind port + 1>" */
  char *peer_url;           /* NULL = http(s)://<advertise ip>:<peer_listen port> */
  struct config_tls *tls;   /* `cluster.tls:` (cert, key, ca), or NULL */
  char **join;              /* n_join "host:port" seeds (port defaults to 7946 when omitted) */
  size_t n_join;
  uint8_t secret[32];       /* decoded key */
  size_t secret_len;        /* 0 = no secret; else 16, 24 or 32 */
  unsigned replicas;        /* 2; 1..8 */
  unsigned weight;          /* 1; 1..16 */
  char *zone;               /* "" */
  uint64_t peer_timeout_ms;       /* 2000 */
  uint64_t peer_stall_timeout_ms; /* 5000 */
  uint64_t probe_interval_ms;     /* 1000 */
  uint64_t probe_timeout_ms;      /* 500 */
  uint64_t push_pull_interval_ms; /* 30000 */
  /* spreading a hot blob (docs/cluster.md, "Beyond the owner") */
  unsigned fanout;           /* 2: peers a node streams one blob to before
                                it sends further askers to holders; 0 =
                                owner only */
  unsigned max_peer_uploads; /* 8: blob streams to peers at once */
  uint64_t peer_egress;      /* bytes/s to peers, 0 = unlimited */
  uint64_t replica_rate;     /* bytes/s of background replica fills, 0 = unlimited */
  unsigned replica_queue;    /* 1024: replica fills waiting */
};

/* `proxy.hosts:` entry: the proxy's own name resolution (like /etc/hosts)
 * for tunnel targets. */
struct config_proxy_host {
  char *name; /* lower case host name */
  char *addr; /* numeric IPv4 or IPv6 address */
};

/* The `proxy:` section (docs/proxy.md): an HTTP proxy listener that
 * terminates TLS for configured upstream hosts with leaf certificates
 * signed by `ca:` and serves them from the cache; other CONNECT targets are
 * tunnelled (or refused). listen is NULL without the section. */
struct config_proxy {
  char *listen;             /* "host:port", NULL: no proxy listener */
  char *ca_cert;            /* PEM CA certificate (CA:TRUE) */
  char *ca_key;             /* its private key */
  int tunnel_others;        /* 1 (default): CONNECT to other hosts is tunnelled */
  /* tunnel targets inside these networks are allowed even though they are
   * loopback or link-local (refused by default) */
  struct config_cidr *tunnel_allow;
  size_t n_tunnel_allow;
  struct config_proxy_host *hosts; /* n_hosts entries, owned */
  size_t n_hosts;
  uint64_t leaf_ttl_ms;     /* leaf certificate lifetime (default 24 h) */
};

struct config {
  char *path;   /* file it was read from, or NULL for the built-in default */
  char *listen; /* main listener "host:port" (default "127.0.0.1:5000") */
  char *admin_listen; /* optional separate listener for /metrics etc. */
  char *log_level;    /* "debug" | "info" | "warn" | "error" (info) */
  int access_log;     /* default 1 */
  int log_json;       /* log_format: json (default text) */
  /* SIGTERM: responses in flight get this long to finish (default 30 s) */
  uint64_t shutdown_timeout_ms;
  struct config_storage storage;
  struct config_http http;
  struct config_upstream *upstreams; /* n_upstreams entries, owned */
  size_t n_upstreams;
  struct config_cluster cluster;
  /* `allow:`: who may use the client listeners (and the peer listener when
   * there is no cluster secret). allow_set is 0 when the key is absent:
   * then only loopback may, and the node warns for every listener bound
   * beyond loopback. */
  struct config_cidr *allow; /* n_allow entries, owned */
  size_t n_allow;
  int allow_set;
  char *auth_htpasswd;     /* `auth: {htpasswd: FILE}`, or NULL */
  struct config_tls *tls;  /* `tls:` of the client listeners, or NULL */
  struct config_proxy proxy;
};

/* config_init fills every default, with no upstreams and cluster.name
 * NULL (a load fills it from the host name). It cannot fail: its string
 * defaults point at static storage, which config_free recognises. A loaded
 * or built-in configuration owns heap copies of every string. */
void config_init(struct config *cfg);

/* config_default_builtin: what `regmesh serve` runs without --config:
 * listen 127.0.0.1:5000, storage ./regmesh-data, upstreams docker.io
 * (default), ghcr.io, quay.io. Returns 0 or UV_ENOMEM. */
int config_default_builtin(struct config *cfg);

/* config_load_file parses and validates a YAML file into cfg (which it
 * initialises). On error returns RM_ECONFIG (or a UV_E* for I/O) and writes
 * "file:line:col: key: why" into err, one line per error (up to
 * CONFIG_MAX_ERRORS; checks across keys of a section run only once its keys
 * are valid, and certificate files only once the whole file is). cfg is left empty
 * (config_free is still safe). cluster.secret_file is read here, blocking;
 * a relative one is relative to the file's directory. */
int config_load_file(struct config *cfg, const char *path, char *err,
                     size_t errlen);

/* config_load_string: the same from memory; `name` stands in for the path
 * in messages and as the base of a relative cluster.secret_file. */
int config_load_string(struct config *cfg, const char *yaml, size_t len,
                       const char *name, char *err, size_t errlen);

/* config_parse_size: "20GiB", "512MiB", "500MB", "1.5G", "1024" -> bytes.
 * Units B, KB/MB/GB/TB (1000), KiB/MiB/GiB/TiB and K/M/G/T (1024), any case.
 * Returns 0, RM_EPARSE (malformed) or RM_ETOOBIG (over 64 bits); *out is
 * written only on success. */
int config_parse_size(const char *s, uint64_t *out);
/* config_parse_duration: "60s", "500ms", "5m", "1h", "30" (seconds) -> ms.
 * "1.5s" is 1500 ms. Returns like config_parse_size. */
int config_parse_duration(const char *s, uint64_t *out_ms);

/* config_upstream_find returns the upstream whose host equals `host`
 * (docker.io, index.docker.io and registry-1.docker.io are one), or NULL. */
const struct config_upstream *config_upstream_find(const struct config *cfg,
                                                   const char *host,
                                                   size_t len);
const struct config_upstream *config_upstream_default(const struct config *cfg);

/* config_upstream_proxy_match: the index of the upstream the proxy listener
 * intercepts `host` (len bytes, any case, no port; an IPv6 literal with or
 * without brackets) on `port` for: its host or one of its aliases, where a
 * name without a port means 443, or 80 for a plain http:// proxy request
 * (`plain` = 1), and "name:5000" means port 5000 only; Docker Hub also
 * answers to registry-1.docker.io, index.docker.io, docker.io and
 * auth.docker.io. -1 when none. */
int config_upstream_proxy_match(const struct config *cfg, const char *host, size_t len,
                                unsigned port, int plain);

/* config_parse_cidr: "10.0.0.0/8", "::1", "fd00::/8", "192.168.1.7" ->
 * *out. Host bits set under the prefix ("10.0.0.1/8") are an error, so a
 * typo does not silently open a wider net. Returns 0 or RM_EPARSE. */
int config_parse_cidr(const char *s, struct config_cidr *out);
/* config_cidr_match: 1 when the address (AF_INET or AF_INET6; an
 * IPv4-mapped IPv6 address counts as its IPv4 address) is inside one of
 * the n entries, else 0. */
int config_cidr_match(const struct config_cidr *list, size_t n,
                      const struct sockaddr *sa);

void config_free(struct config *cfg);

/* config_read_file reads path whole into a new heap buffer
 * (*out, owned by the caller) of at most max bytes: the config, htpasswd,
 * and the client files client-config merges into. 0, a negative errno,
 * UV_ENOMEM, or RM_ECONFIG when the file is larger; err gets "path: why". */
int config_read_file(const char *path, size_t max, char **out, size_t *outlen,
                      char *err, size_t errlen);
/* config_read_regular_file: the same for a file a configuration names,
 * which must be a regular file (UV_EISDIR, UV_EINVAL otherwise). */
int config_read_regular_file(const char *path, size_t max, char **out, size_t *outlen,
                             char *err, size_t errlen);

#endif
