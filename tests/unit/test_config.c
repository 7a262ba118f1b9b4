/* test_config.c - config/: the YAML schema, its defaults and its errors.
 *
 * Errors are part of the interface (operators read them), so most cases
 * assert the exact message, including line and column. The last tests feed
 * garbage, truncations and mutations of a valid file and only ask that the
 * loader answers 0 or RM_ECONFIG with a message, without crashing or
 * leaking (run under ASan in CI).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four headers above first */
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "errors.h"

static const char minimal_yaml[] = "listen: 127.0.0.1:5000\n"
                                   "storage:\n"
                                   "  root: ./regmesh-data\n"
                                   "  max_size: 20GiB\n"
                                   "upstreams:\n"
                                   "  - host: docker.io\n"
                                   "    url: https://registry-1.docker.io\n"
                                   "    default: true\n"
                                   "  - host: ghcr.io\n"
                                   "    url: https://ghcr.io\n"
                                   "    listen: 127.0.0.1:5002\n";

static const char full_yaml[] =
    "listen: 0.0.0.0:6000\n"
    "admin_listen: 127.0.0.1:6001\n"
    "log_level: debug\n"
    "access_log: false\n"
    "allow: [10.0.0.0/8, \"fd00::/8\", 192.168.7.1]\n"
    "storage:\n"
    "  root: /var/cache/regmesh\n"
    "  max_size: 500MB\n"
    "http:\n"
    "  max_header_bytes: 32KiB\n"
    "  max_headers: 64\n"
    "  header_timeout: 5s\n"
    "  idle_timeout: 2m\n"
    "  send_timeout: 1500ms\n"
    "  max_connections: 1000\n"
    "upstreams:\n"
    "  - host: docker.io\n"
    "    url: https://registry-1.docker.io/\n"
    "    listen: 127.0.0.1:6002\n"
    "    tag_ttl: 1h\n"
    "    tags_list_ttl: 45\n"
    "    username: bob\n"
    "    password_env: REGMESH_HUB_PASSWORD\n"
    "    tls_verify: yes\n"
    "    connect_timeout: 3s\n"
    "    low_speed_time: 1m\n"
    "    max_retries: 5\n"
    "  - host: Registry.Example.com:8443\n"
    "    url: http://registry.example.com:8443/mirror//\n"
    "    default: on\n"
    "    username: alice\n"
    "    password: \"s3cret\"\n"
    "    tls_verify: off\n"
    "    ca_file: /etc/ssl/x.pem\n"
    "    max_retries: 0\n"
    "    tag_ttl: 0\n"
    "    private: false\n"
    "cluster:\n"
    "  name: build-07\n"
    "  bind: 0.0.0.0:7946\n"
    "  advertise: 10.0.0.7:7946\n"
    "  peer_url: http://10.0.0.7:6000/\n"
    "  peer_listen: 10.0.0.7:7950\n"
    "  join:\n"
    "    - regmesh-headless.ci.svc.cluster.local:7946\n"
    "    - 10.0.0.8\n"
    "    - \"[fd00::9]:8000\"\n"
    "  secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    "  replicas: 3\n"
    "  fanout: 3\n"
    "  max_peer_uploads: 16\n"
    "  peer_egress: 40MiB\n"
    "  replica_rate: 50MB\n"
    "  replica_queue: 64\n"
    "  weight: 16\n"
    "  zone: rack-3\n"
    "  peer_timeout: 1s\n"
    "  peer_stall_timeout: 10s\n"
    "  probe_interval: 2s\n"
    "  probe_timeout: 800ms\n"
    "  push_pull_interval: 1m\n";

/* The 32-byte key 00 01 .. 1f that full_yaml's secret encodes. */
static void assert_key_0_to(const struct config_cluster *c, size_t n) {
  assert_int_equal(c->secret_len, n);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(c->secret[i], i);
}

/* load: config_load_string on a C string, named "t.yml" in messages. */
static int load(struct config *cfg, const char *yaml, char *err, size_t n) {
  return config_load_string(cfg, yaml, strlen(yaml), "t.yml", err, n);
}

static void test_minimal(void **state) {
  (void)state;
  struct config cfg;
  char err[512];
  int rc = load(&cfg, minimal_yaml, err, sizeof err);
  assert_int_equal(rc, 0);
  assert_string_equal(err, "");
  assert_string_equal(cfg.path, "t.yml");
  assert_string_equal(cfg.listen, "127.0.0.1:5000");
  assert_null(cfg.admin_listen);
  assert_string_equal(cfg.log_level, "info");
  assert_int_equal(cfg.access_log, 1);
  assert_string_equal(cfg.storage.root, "./regmesh-data");
  assert_true(cfg.storage.max_size == 20ULL * 1024 * 1024 * 1024);
  assert_int_equal(cfg.http.max_header_bytes, 16 * 1024);
  assert_int_equal(cfg.http.max_headers, 100);
  assert_int_equal(cfg.http.header_timeout_ms, 10000);
  assert_int_equal(cfg.http.idle_timeout_ms, 60000);
  assert_int_equal(cfg.http.send_timeout_ms, 60000);
  assert_int_equal(cfg.http.max_connections, 4096);
  assert_int_equal(cfg.n_upstreams, 2);

  const struct config_upstream *hub = &cfg.upstreams[0];
  assert_string_equal(hub->host, "docker.io");
  assert_string_equal(hub->url, "https://registry-1.docker.io");
  assert_int_equal(hub->is_default, 1);
  assert_null(hub->listen);
  assert_int_equal(hub->tag_ttl_ms, 60000);
  assert_int_equal(hub->tags_list_ttl_ms, 30000);
  assert_null(hub->username);
  assert_null(hub->password);
  assert_null(hub->password_env);
  assert_int_equal(hub->tls_verify, 1);
  assert_null(hub->ca_file);
  assert_int_equal(hub->connect_timeout_ms, 10000);
  assert_int_equal(hub->low_speed_time_ms, 30000);
  assert_int_equal(hub->max_retries, 3);

  const struct config_upstream *gh = &cfg.upstreams[1];
  assert_string_equal(gh->host, "ghcr.io");
  assert_string_equal(gh->url, "https://ghcr.io");
  assert_int_equal(gh->is_default, 0);
  assert_string_equal(gh->listen, "127.0.0.1:5002");
  assert_ptr_equal(config_upstream_default(&cfg), hub);
  config_free(&cfg);
  config_free(&cfg); /* safe twice */
}

static void test_full(void **state) {
  (void)state;
  struct config cfg;
  char err[512];
  int rc = load(&cfg, full_yaml, err, sizeof err);
  assert_string_equal(err, "");
  assert_int_equal(rc, 0);
  assert_string_equal(cfg.listen, "0.0.0.0:6000");
  assert_string_equal(cfg.admin_listen, "127.0.0.1:6001");
  assert_string_equal(cfg.log_level, "debug");
  assert_int_equal(cfg.access_log, 0);
  assert_string_equal(cfg.storage.root, "/var/cache/regmesh");
  assert_int_equal(cfg.storage.max_size, 500000000);
  assert_int_equal(cfg.http.max_header_bytes, 32768);
  assert_int_equal(cfg.http.max_headers, 64);
  assert_int_equal(cfg.http.header_timeout_ms, 5000);
  assert_int_equal(cfg.http.idle_timeout_ms, 120000);
  assert_int_equal(cfg.http.send_timeout_ms, 1500);
  assert_int_equal(cfg.http.max_connections, 1000);
  assert_int_equal(cfg.n_upstreams, 2);

  const struct config_upstream *a = &cfg.upstreams[0];
  assert_string_equal(a->host, "docker.io");
  assert_string_equal(a->url, "https://registry-1.docker.io");
  assert_string_equal(a->listen, "127.0.0.1:6002");
  assert_int_equal(a->is_default, 0);
  assert_int_equal(a->tag_ttl_ms, 3600000);
  assert_int_equal(a->tags_list_ttl_ms, 45000);
  assert_string_equal(a->username, "bob");
  assert_null(a->password);
  assert_string_equal(a->password_env, "REGMESH_HUB_PASSWORD");
  assert_int_equal(a->tls_verify, 1);
  assert_int_equal(a->connect_timeout_ms, 3000);
  assert_int_equal(a->low_speed_time_ms, 60000);
  assert_int_equal(a->max_retries, 5);

  const struct config_upstream *b = &cfg.upstreams[1];
  assert_string_equal(b->host, "registry.example.com:8443"); /* lower case */
  assert_string_equal(b->url, "http://registry.example.com:8443/mirror");
  assert_int_equal(b->is_default, 1); /* explicit default beats docker.io */
  assert_null(b->listen);
  assert_string_equal(b->username, "alice");
  assert_string_equal(b->password, "s3cret");
  assert_null(b->password_env);
  assert_int_equal(b->tls_verify, 0);
  assert_string_equal(b->ca_file, "/etc/ssl/x.pem");
  assert_int_equal(b->max_retries, 0);
  assert_int_equal(b->tag_ttl_ms, 0);
  assert_int_equal(b->tags_list_ttl_ms, 30000);
  assert_ptr_equal(config_upstream_default(&cfg), b);

  const struct config_cluster *c = &cfg.cluster;
  assert_int_equal(c->enabled, 1);
  assert_string_equal(c->name, "build-07");
  assert_string_equal(c->bind, "0.0.0.0:7946");
  assert_string_equal(c->advertise, "10.0.0.7:7946");
  assert_string_equal(c->peer_url, "http://10.0.0.7:6000"); /* no slash */
  assert_string_equal(c->peer_listen, "10.0.0.7:7950");
  assert_null(c->tls);
  assert_int_equal(cfg.allow_set, 1);
  assert_int_equal(cfg.n_allow, 3);
  assert_int_equal(cfg.allow[2].prefix, 32);
  assert_int_equal(b->is_private, 0);
  assert_int_equal(c->n_join, 3);
  assert_string_equal(c->join[0], "regmesh-headless.ci.svc.cluster.local:7946");
  assert_string_equal(c->join[1], "10.0.0.8:7946"); /* default port */
  assert_string_equal(c->join[2], "[fd00::9]:8000");
  assert_key_0_to(c, 32);
  assert_int_equal(c->replicas, 3);
  assert_int_equal(c->fanout, 3);
  assert_int_equal(c->max_peer_uploads, 16);
  assert_int_equal(c->peer_egress, 40u << 20);
  assert_int_equal(c->replica_rate, 50000000);
  assert_int_equal(c->replica_queue, 64);
  assert_int_equal(c->weight, 16);
  assert_string_equal(c->zone, "rack-3");
  assert_int_equal(c->peer_timeout_ms, 1000);
  assert_int_equal(c->peer_stall_timeout_ms, 10000);
  assert_int_equal(c->probe_interval_ms, 2000);
  assert_int_equal(c->probe_timeout_ms, 800);
  assert_int_equal(c->push_pull_interval_ms, 60000);
  config_free(&cfg);
  assert_int_equal(cfg.cluster.secret_len, 0);
  assert_null(cfg.cluster.join);
}

static void test_builtin(void **state) {
  (void)state;
  struct config cfg;
  assert_int_equal(config_default_builtin(&cfg), 0);
  assert_null(cfg.path);
  assert_string_equal(cfg.listen, "127.0.0.1:5000");
  assert_string_equal(cfg.storage.root, "./regmesh-data");
  assert_true(cfg.storage.max_size == 20ULL << 30);
  assert_int_equal(cfg.n_upstreams, 3);
  assert_string_equal(cfg.upstreams[0].host, "docker.io");
  assert_string_equal(cfg.upstreams[0].url, "https://registry-1.docker.io");
  assert_string_equal(cfg.upstreams[1].host, "ghcr.io");
  assert_string_equal(cfg.upstreams[1].url, "https://ghcr.io");
  assert_string_equal(cfg.upstreams[2].host, "quay.io");
  assert_string_equal(cfg.upstreams[2].url, "https://quay.io");
  assert_ptr_equal(config_upstream_default(&cfg), &cfg.upstreams[0]);
  assert_int_equal(cfg.upstreams[1].is_default + cfg.upstreams[2].is_default,
                   0);
  assert_int_equal(cfg.upstreams[2].tag_ttl_ms, 60000);
  /* every string is owned after a load: replacing one must be safe */
  free(cfg.listen);
  cfg.listen = strdup("127.0.0.1:7000");
  config_free(&cfg);
}

static void test_init_defaults(void **state) {
  (void)state;
  struct config cfg;
  config_init(&cfg);
  assert_string_equal(cfg.listen, "127.0.0.1:5000");
  assert_string_equal(cfg.log_level, "info");
  assert_string_equal(cfg.storage.root, "./regmesh-data");
  assert_int_equal(cfg.storage.max_size, 0);
  assert_int_equal(cfg.n_upstreams, 0);
  assert_null(config_upstream_default(&cfg));
  config_free(&cfg); /* must not free the static defaults */
}

static void test_parse_size(void **state) {
  (void)state;
  static const struct {
    const char *s;
    int rc;
    uint64_t v;
  } cases[] = {
      {"0", 0, 0},
      {"1024", 0, 1024},
      {"20GiB", 0, 20ULL << 30},
      {"512MiB", 0, 512ULL << 20},
      {"500MB", 0, 500000000ULL},
      {"1.5G", 0, 3ULL << 29},
      {"16KiB", 0, 16384},
      {"16kib", 0, 16384},
      {"2 TB", 0, 2000000000000ULL},
      {"1T", 0, 1ULL << 40},
      {"7B", 0, 7},
      {"1KB", 0, 1000},
      {"1K", 0, 1024},
      {"0.5KiB", 0, 512},
      {"18446744073709551615", 0, UINT64_MAX},
      {"18446744073709551616", RM_ETOOBIG, 0},
      {"99999999999999999999999999999999", RM_ETOOBIG, 0},
      {"16777216TiB", RM_ETOOBIG, 0},
      {"16777215.99TiB", 0, 18446742974197923840ULL + 1088516511498ULL},
      {"", RM_EPARSE, 0},
      {"GiB", RM_EPARSE, 0},
      {"-1", RM_EPARSE, 0},
      {"+1", RM_EPARSE, 0},
      {"1.", RM_EPARSE, 0},
      {".5G", RM_EPARSE, 0},
      {"1.5", RM_EPARSE, 0},
      {"1.5B", RM_EPARSE, 0},
      {"10XB", RM_EPARSE, 0},
      {"10 GiB extra", RM_EPARSE, 0},
      {"0x10", RM_EPARSE, 0},
      {" 10", RM_EPARSE, 0},
      {"1e9", RM_EPARSE, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t v = 12345;
    int rc = config_parse_size(cases[i].s, &v);
    if (rc != cases[i].rc || (rc == 0 && v != cases[i].v))
      fail_msg("size \"%s\": rc %d v %llu, want rc %d v %llu", cases[i].s, rc,
               (unsigned long long)v, cases[i].rc,
               (unsigned long long)cases[i].v);
    if (rc != 0)
      assert_true(v == 12345); /* untouched on error */
  }
  assert_int_equal(config_parse_size(NULL, NULL), RM_EPARSE);
}

static void test_parse_duration(void **state) {
  (void)state;
  static const struct {
    const char *s;
    int rc;
    uint64_t v;
  } cases[] = {
      {"60s", 0, 60000},
      {"500ms", 0, 500},
      {"5m", 0, 300000},
      {"1h", 0, 3600000},
      {"30", 0, 30000},
      {"0", 0, 0},
      {"1.5s", 0, 1500},
      {"0.25h", 0, 900000},
      {"10S", 0, 10000},
      {"18446744073709551615ms", 0, UINT64_MAX},
      {"18446744073709551615s", RM_ETOOBIG, 0},
      {"1.5ms", RM_EPARSE, 0},
      {"10x", RM_EPARSE, 0},
      {"1d", RM_EPARSE, 0},
      {"s", RM_EPARSE, 0},
      {"-5s", RM_EPARSE, 0},
      {"5 s", 0, 5000},
      {"5s ", RM_EPARSE, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t v = 0;
    int rc = config_parse_duration(cases[i].s, &v);
    if (rc != cases[i].rc || (rc == 0 && v != cases[i].v))
      fail_msg("duration \"%s\": rc %d v %llu, want rc %d v %llu", cases[i].s,
               rc, (unsigned long long)v, cases[i].rc,
               (unsigned long long)cases[i].v);
  }
}

/* Upstream list used by error cases that are about something else. */
#define UP "upstreams:\n  - host: docker.io\n    url: https://r.io\n"

static void test_errors(void **state) {
  (void)state;
  static const struct {
    const char *yaml;
    const char *want;
  } cases[] = {
      /* unknown keys, with and without a suggestion */
      {"listne: 127.0.0.1:5000\n" UP,
       "t.yml:1:1: listne: unknown key (did you mean listen?)"},
      {UP "storage:\n  maxsize: 1G\n",
       "t.yml:5:3: storage.maxsize: unknown key (did you mean max_size?)"},
      {UP "    pasword: x\n",
       "t.yml:4:5: upstreams[0].pasword: unknown key (did you mean "
       "password?)"},
      {UP "clustre:\n  bind: x\n",
       "t.yml:4:1: clustre: unknown key (did you mean cluster?)"},
      {UP "Listen: 127.0.0.1:1\n",
       "t.yml:4:1: Listen: unknown key (did you mean listen?)"},
      /* types */
      {"listen:\n  host: x\n" UP,
       "t.yml:2:3: listen: expected a scalar, got a mapping"},
      {UP "log_level: [debug]\n",
       "t.yml:4:12: log_level: expected a scalar, got a sequence"},
      {UP "storage: big\n",
       "t.yml:4:10: storage: expected a mapping, got a scalar"},
      {"upstreams:\n  host: docker.io\n",
       "t.yml:2:3: upstreams: expected a sequence, got a mapping"},
      {UP "access_log: maybe\n",
       "t.yml:4:13: access_log: expected true or false, got \"maybe\""},
      {UP "    tls_verify: 1\n",
       "t.yml:4:17: upstreams[0].tls_verify: expected true or false, got "
       "\"1\""},
      {UP "log_level: verbose\n",
       "t.yml:4:12: log_level: expected debug, info, warn or error, got "
       "\"verbose\""},
      /* empty values */
      {UP "storage:\n  root: \"\"\n",
       "t.yml:5:9: storage.root: value is empty"},
      {UP "    username:\n",
       "t.yml:4:14: upstreams[0].username: value is empty"},
      {"listen: ~\n" UP, "t.yml:1:9: listen: value is empty"},
      {UP "storage:\n  root: \"a\\0b\"\n",
       "t.yml:5:9: storage.root: value contains a NUL byte"},
      /* sizes, durations and numbers */
      {UP "storage:\n  max_size: 20XB\n",
       "t.yml:5:13: storage.max_size: invalid size \"20XB\" (examples: "
       "512MiB, 20GiB, 1048576)"},
      {UP "storage:\n  max_size: 99999999999999999999999\n",
       "t.yml:5:13: storage.max_size: size \"99999999999999999999999\" is too "
       "large"},
      {UP "http:\n  max_header_bytes: 100\n",
       "t.yml:5:21: http.max_header_bytes: must be at least 1024 bytes"},
      {UP "http:\n  idle_timeout: 10 minutes\n",
       "t.yml:5:17: http.idle_timeout: invalid duration \"10 minutes\" "
       "(examples: 500ms, 10s, 5m, 1h)"},
      {UP "http:\n  header_timeout: 0s\n",
       "t.yml:5:19: http.header_timeout: must be at least 1 ms"},
      {UP "http:\n  send_timeout: 99999999999999999999h\n",
       "t.yml:5:17: http.send_timeout: duration \"99999999999999999999h\" is "
       "too large"},
      {UP "http:\n  max_headers: -3\n",
       "t.yml:5:16: http.max_headers: expected a whole number, got \"-3\""},
      {UP "http:\n  max_connections: 123456789012345678901234567890\n",
       "t.yml:5:20: http.max_connections: number "
       "\"123456789012345678901234567890\" is too large"},
      {UP "http:\n  max_connections: 0\n",
       "t.yml:5:20: http.max_connections: must be at least 1"},
      {UP "    max_retries: 1000\n",
       "t.yml:4:18: upstreams[0].max_retries: must be at most 100"},
      /* listen addresses */
      {"listen: 127.0.0.1\n" UP,
       "t.yml:1:9: listen: invalid address \"127.0.0.1\": expected host:port "
       "or [v6]:port"},
      {"listen: 127.0.0.1:0\n" UP,
       "t.yml:1:9: listen: invalid address \"127.0.0.1:0\": port must be a "
       "number from 1 to 65535"},
      {"listen: 127.0.0.1:65536\n" UP,
       "t.yml:1:9: listen: invalid address \"127.0.0.1:65536\": port must be "
       "a number from 1 to 65535"},
      {"listen: \"::1:5000\"\n" UP,
       "t.yml:1:9: listen: invalid address \"::1:5000\": IPv6 addresses need "
       "brackets, as in [::1]:5000"},
      {"listen: \"[::g]:5000\"\n" UP,
       "t.yml:1:9: listen: invalid address \"[::g]:5000\": invalid IPv6 "
       "address"},
      {"listen: 300.1.1.1:80\n" UP,
       "t.yml:1:9: listen: invalid address \"300.1.1.1:80\": invalid IPv4 "
       "address"},
      {"admin_listen: :9000\n" UP,
       "t.yml:1:15: admin_listen: invalid address \":9000\": missing host "
       "(use 0.0.0.0 for every address)"},
      /* upstream host and url */
      {"upstreams:\n  - host: https://ghcr.io/x\n    url: https://ghcr.io\n",
       "t.yml:2:11: upstreams[0].host: host is the registry's name, not a "
       "URL: write host: ghcr.io (and the URL under url:)"},
      {"upstreams:\n  - host: ghcr.io\n    url: https://ghcr.io/v2/\n",
       "t.yml:3:10: upstreams[0].url: url is the registry's base URL, "
       "without /v2: write url: https://ghcr.io"},
      {"upstreams:\n  - host: ghcr.io\n    url: https://r.example/mirror/V2\n",
       "t.yml:3:10: upstreams[0].url: url is the registry's base URL, "
       "without /v2: write url: https://r.example/mirror"},
      {"upstreams:\n  - host: ghcr_io\n    url: https://ghcr.io\n",
       "t.yml:2:11: upstreams[0].host: invalid registry host \"ghcr_io\": "
       "letters, digits, dots and dashes, with an optional :port"},
      {"upstreams:\n  - host: ghcr.io\n    url: ftp://ghcr.io\n",
       "t.yml:3:10: upstreams[0].url: invalid URL \"ftp://ghcr.io\": must "
       "start with http:// or https://"},
      {"upstreams:\n  - host: ghcr.io\n    url: https://ghcr.io/?x=1\n",
       "t.yml:3:10: upstreams[0].url: invalid URL \"https://ghcr.io/?x=1\": "
       "must not have a query or a fragment"},
      {"upstreams:\n  - host: ghcr.io\n    url: https://ghcr.io#top\n",
       "t.yml:3:10: upstreams[0].url: invalid URL \"https://ghcr.io#top\": "
       "must not have a query or a fragment"},
      {"upstreams:\n  - host: ghcr.io\n    url: https://u:p@ghcr.io\n",
       "t.yml:3:10: upstreams[0].url: invalid URL \"https://u:p@ghcr.io\": "
       "must not carry credentials; use username and password"},
      {"upstreams:\n  - host: ghcr.io\n    url: https:///v2\n",
       "t.yml:3:10: upstreams[0].url: invalid URL \"https:///v2\": invalid "
       "host in URL"},
      /* required keys, counts, duplicates */
      {"upstreams:\n  - host: ghcr.io\n",
       "t.yml:2:5: upstreams[0].url: required key is missing"},
      {"upstreams:\n  - url: https://ghcr.io\n",
       "t.yml:2:5: upstreams[0].host: required key is missing"},
      {"listen: 127.0.0.1:5000\n",
       "t.yml:1:1: upstreams: at least one upstream is required"},
      {"upstreams: []\n",
       "t.yml:1:12: upstreams: at least one upstream is required"},
      {"upstreams:\n",
       "t.yml:1:11: upstreams: at least one upstream is required"},
      {UP "  - host: registry-1.docker.io\n    url: https://x.io\n",
       "t.yml:4:11: upstreams[1].host: duplicate upstream: "
       "registry-1.docker.io is already upstreams[0] (docker.io)"},
      {UP "  - host: DOCKER.io\n    url: https://x.io\n",
       "t.yml:4:11: upstreams[1].host: duplicate upstream: docker.io is "
       "already upstreams[0] (docker.io)"},
      {UP "    default: true\n  - host: ghcr.io\n    url: https://ghcr.io\n"
          "    default: yes\n",
       "t.yml:7:14: upstreams[1].default: only one upstream can be the "
       "default (upstreams[0] already is)"},
      {UP "    password: a\n    password_env: B\n",
       "t.yml:5:19: upstreams[0].password_env: password and password_env "
       "cannot both be set"},
      {UP "    password_env: B\n    password: a\n",
       "t.yml:5:15: upstreams[0].password: password and password_env cannot "
       "both be set"},
      {UP "    password_env: REGMESH_TEST_NEVER_SET\n",
       "t.yml:4:19: upstreams[0].password_env: environment variable "
       "REGMESH_TEST_NEVER_SET is not set (put it in the service's "
       "environment, e.g. EnvironmentFile=/etc/regmesh/env)"},
      {UP "    password_env: 9LIVES\n",
       "t.yml:4:19: upstreams[0].password_env: invalid environment variable "
       "name \"9LIVES\" (letters, digits and _, not starting with a digit)"},
      {UP "storage:\n  root: a\n  root: b\n",
       "t.yml:6:3: storage.root: duplicate key (first at 5:3)"},
      {UP "upstreams: []\n",
       "t.yml:4:1: upstreams: duplicate key (first at 1:1)"},
      /* listeners */
      {"listen: 127.0.0.1:5000\nadmin_listen: 127.0.0.1:5000\n" UP,
       "t.yml:2:15: admin_listen: address 127.0.0.1:5000 is already used by "
       "listen"},
      {UP "    listen: 127.0.0.1:5000\n",
       "t.yml:4:13: upstreams[0].listen: address 127.0.0.1:5000 is already "
       "used by listen (default)"},
      {UP "    listen: 127.0.0.1:5002\n"
          "  - host: ghcr.io\n    url: https://ghcr.io\n"
          "    listen: 127.0.0.1:5002\n",
       "t.yml:7:13: upstreams[1].listen: address 127.0.0.1:5002 is already "
       "used by upstreams[0].listen"},
      {UP "    listen: 127.0.0.1:5002\nlisten: \"[::]:5002\"\n",
       "t.yml:5:9: listen: address [::]:5002 overlaps upstreams[0].listen "
       "(127.0.0.1:5002) on port 5002"},
      {"admin_listen: \"[0:0::1]:5000\"\nlisten: \"[::1]:5000\"\n" UP,
       "t.yml:2:9: listen: address [::1]:5000 is already used by "
       "admin_listen"},
      /* the document itself */
      {"", "t.yml:1:1: no configuration"},
      {"# only a comment\n", "t.yml:1:1: no configuration"},
      {"---\n...\n", "t.yml:2:1: no configuration"},
      {"- listen: 127.0.0.1:5000\n",
       "t.yml:1:1: the configuration must be a mapping, got a sequence"},
      {"hello\n", "t.yml:1:1: the configuration must be a mapping, got a "
                  "scalar"},
      {UP "---\nlisten: 127.0.0.1:5000\n",
       "t.yml:4:1: more than one YAML document"},
      {"listen: [127.0.0.1:5000\n" UP,
       "t.yml:2:10: did not find expected ',' or ']' (while parsing a flow "
       "sequence at 1:9)"},
      {"storage:\n  root: a\n bad: b\n" UP,
       "t.yml:3:2: did not find expected key (while parsing a block mapping "
       "at 1:1)"},
      {"listen: \"abc\n",
       "t.yml:2:1: found unexpected end of stream (while scanning a quoted "
       "scalar at 1:9)"},
      {"listen: a\tb\x01\n",
       "t.yml:1:12: control characters are not allowed (byte 0x01)"},
      {"storage: &s\n  root: a\n" UP,
       "t.yml:1:10: storage: anchors and aliases are not supported"},
      /* every error, one per line, in file order */
      {"x: &a 1\nlisten: *a\n" UP,
       "t.yml:1:1: x: unknown key\n"
       "t.yml:2:9: listen: anchors and aliases are not supported"},
      {"listen: &a 127.0.0.1:1\nadmin_listen: *a\n" UP,
       "t.yml:1:9: listen: anchors and aliases are not supported\n"
       "t.yml:2:15: admin_listen: anchors and aliases are not supported"},
      {UP "? [a, b]\n: c\n", "t.yml:4:3: keys must be scalars, got a sequence"},
  };
  int failed = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct config cfg;
    char err[512];
    int rc = load(&cfg, cases[i].yaml, err, sizeof err);
    if (rc != RM_ECONFIG || strcmp(err, cases[i].want) != 0) {
      print_error("case %zu: rc %d\n got: %s\nwant: %s\n", i, rc, err,
                  cases[i].want);
      failed++;
    }
    /* a failed load leaves a freeable, upstream-less config */
    assert_int_equal(cfg.n_upstreams, 0);
    assert_null(cfg.upstreams);
    config_free(&cfg);
  }
  assert_int_equal(failed, 0);
}

/* A file with many mistakes lists CONFIG_MAX_ERRORS of them, then says
 * there are more. */
static void test_error_cap(void **state) {
  (void)state;
  char yaml[4096];
  size_t n = (size_t)snprintf(yaml, sizeof yaml, UP);
  for (int i = 0; i < 30; i++)
    n += (size_t)snprintf(yaml + n, sizeof yaml - n, "bogus%d: 1\n", i);
  struct config cfg;
  char err[CONFIG_ERR_LEN];
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  size_t lines = 1;
  for (const char *p = err; *p; p++)
    lines += *p == '\n';
  assert_int_equal(lines, CONFIG_MAX_ERRORS + 1);
  assert_non_null(strstr(err, "t.yml:4:1: bogus0: unknown key\n"));
  assert_non_null(strstr(err, "t.yml:23:1: bogus19: unknown key\n"));
  assert_null(strstr(err, "bogus20"));
  assert_non_null(strstr(err, "\nt.yml: more errors follow"));
  config_free(&cfg);
}

static void test_too_many_upstreams(void **state) {
  (void)state;
  char *yaml = malloc(64 * 1024);
  size_t n = (size_t)sprintf(yaml, "upstreams:\n");
  for (int i = 0; i <= CONFIG_MAX_UPSTREAMS; i++)
    n += (size_t)sprintf(yaml + n,
                         "  - host: r%d.io\n    url: https://r%d.io\n", i, i);
  struct config cfg;
  char err[256];
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_string_equal(err, "t.yml:2:3: upstreams: too many upstreams (65, at "
                           "most 64)");
  /* exactly the maximum loads */
  char *last = strstr(yaml, "  - host: r64.io");
  *last = '\0';
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_int_equal(cfg.n_upstreams, CONFIG_MAX_UPSTREAMS);
  assert_string_equal(cfg.upstreams[63].host, "r63.io");
  /* no docker.io and no default: the first one */
  assert_ptr_equal(config_upstream_default(&cfg), &cfg.upstreams[0]);
  config_free(&cfg);
  free(yaml);
}

static void test_default_rules(void **state) {
  (void)state;
  struct config cfg;
  char err[256];
  /* none marked, docker.io (by an alias) present but not first */
  assert_int_equal(load(&cfg,
                        "upstreams:\n"
                        "  - {host: ghcr.io, url: https://ghcr.io}\n"
                        "  - {host: index.docker.io, url: https://d.io}\n"
                        "  - {host: quay.io, url: https://quay.io, default: "
                        "false}\n",
                        err, sizeof err),
                   0);
  assert_int_equal(cfg.upstreams[0].is_default, 0);
  assert_int_equal(cfg.upstreams[1].is_default, 1);
  assert_int_equal(cfg.upstreams[2].is_default, 0);
  assert_ptr_equal(config_upstream_default(&cfg), &cfg.upstreams[1]);
  config_free(&cfg);

  /* username without a password source is allowed */
  assert_int_equal(load(&cfg,
                        "upstreams:\n"
                        "  - {host: quay.io, url: 'https://quay.io', "
                        "username: robot}\n",
                        err, sizeof err),
                   0);
  assert_string_equal(cfg.upstreams[0].username, "robot");
  assert_null(cfg.upstreams[0].password);
  assert_int_equal(cfg.upstreams[0].is_default, 1);
  config_free(&cfg);

  /* "storage:" with nothing under it keeps the defaults */
  assert_int_equal(load(&cfg, "storage:\nhttp: {}\n" UP, err, sizeof err), 0);
  assert_string_equal(cfg.storage.root, "./regmesh-data");
  assert_int_equal(cfg.http.max_headers, 100);
  config_free(&cfg);

  /* IPv6 listener, hostname listener */
  assert_int_equal(load(&cfg,
                        "listen: '[::]:5000'\nadmin_listen: "
                        "localhost:5001\n" UP,
                        err, sizeof err),
                   0);
  assert_string_equal(cfg.listen, "[::]:5000");
  assert_string_equal(cfg.admin_listen, "localhost:5001");
  config_free(&cfg);
}

static void test_upstream_find(void **state) {
  (void)state;
  struct config cfg;
  assert_int_equal(config_default_builtin(&cfg), 0);
  const struct config_upstream *hub = &cfg.upstreams[0];
  assert_ptr_equal(config_upstream_find(&cfg, "docker.io", 9), hub);
  assert_ptr_equal(config_upstream_find(&cfg, "index.docker.io", 15), hub);
  assert_ptr_equal(config_upstream_find(&cfg, "registry-1.docker.io", 20), hub);
  assert_ptr_equal(config_upstream_find(&cfg, "Docker.IO", 9), hub);
  assert_ptr_equal(config_upstream_find(&cfg, "GHCR.io", 7), &cfg.upstreams[1]);
  /* not NUL-terminated: only len bytes count */
  assert_ptr_equal(config_upstream_find(&cfg, "quay.io/org/app", 7),
                   &cfg.upstreams[2]);
  assert_null(config_upstream_find(&cfg, "quay.io", 6));
  assert_null(config_upstream_find(&cfg, "quay.io.evil", 12));
  assert_null(config_upstream_find(&cfg, "docker", 6));
  assert_null(config_upstream_find(&cfg, "", 0));
  assert_null(config_upstream_find(&cfg, NULL, 0));
  config_free(&cfg);

  /* a configured alias is found by the canonical name too */
  char err[256];
  assert_int_equal(load(&cfg,
                        "upstreams:\n  - host: registry-1.docker.io\n"
                        "    url: https://registry-1.docker.io\n",
                        err, sizeof err),
                   0);
  assert_ptr_equal(config_upstream_find(&cfg, "docker.io", 9),
                   &cfg.upstreams[0]);
  config_free(&cfg);
}

static char tmpdir[64];

static void write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

static void test_load_file(void **state) {
  (void)state;
  struct config cfg;
  char err[512], path[128], want[256];
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config.XXXXXX");
  assert_non_null(mkdtemp(tmpdir));

  snprintf(path, sizeof path, "%s/regmesh.yml", tmpdir);
  write_file(path, minimal_yaml, strlen(minimal_yaml));
  assert_int_equal(config_load_file(&cfg, path, err, sizeof err), 0);
  assert_string_equal(cfg.path, path);
  assert_int_equal(cfg.n_upstreams, 2);
  config_free(&cfg);

  /* errors name the file */
  write_file(path, "listen: x\n", 10);
  assert_int_equal(config_load_file(&cfg, path, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want,
           "%s:1:9: listen: invalid address \"x\": expected host:port or "
           "[v6]:port",
           path);
  assert_string_equal(err, want);
  config_free(&cfg);

  /* a missing file: the errno text and the UV code */
  snprintf(path, sizeof path, "%s/missing.yml", tmpdir);
  assert_int_equal(config_load_file(&cfg, path, err, sizeof err), UV_ENOENT);
  snprintf(want, sizeof want, "%s: No such file or directory", path);
  assert_string_equal(err, want);
  config_free(&cfg);

  /* a directory */
  assert_int_equal(config_load_file(&cfg, tmpdir, err, sizeof err), UV_EISDIR);
  snprintf(want, sizeof want, "%s: Is a directory", tmpdir);
  assert_string_equal(err, want);

  /* over 1 MiB: refused before parsing, even if it were valid YAML */
  size_t big = CONFIG_MAX_FILE_SIZE + 1;
  char *data = malloc(big);
  memset(data, '#', big);
  data[big - 1] = '\n';
  snprintf(path, sizeof path, "%s/big.yml", tmpdir);
  write_file(path, data, big);
  assert_int_equal(config_load_file(&cfg, path, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want, "%s: file is larger than 1048576 bytes", path);
  assert_string_equal(err, want);
  assert_int_equal(config_load_string(&cfg, data, big, "s", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "s:1:1: configuration is larger than 1048576 bytes");
  /* a pipe-like endless source is bounded too */
  assert_int_equal(config_load_file(&cfg, "/dev/zero", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "/dev/zero: file is larger than 1048576 bytes");
  unlink(path);
  free(data);

  /* a tiny err buffer truncates, never overflows; NULL err is fine */
  char tiny[8];
  assert_int_equal(load(&cfg, "listen: x\n", tiny, sizeof tiny), RM_ECONFIG);
  assert_string_equal(tiny, "t.yml:1");
  assert_int_equal(load(&cfg, "listen: x\n", NULL, 0), RM_ECONFIG);

  snprintf(path, sizeof path, "%s/regmesh.yml", tmpdir);
  unlink(path);
  rmdir(tmpdir);
}

/* ---- cluster: ---- */

/* check_cluster_defaults: every default of docs/cluster.md, name aside. */
static void check_cluster_defaults(const struct config_cluster *c) {
  assert_string_equal(c->bind, "0.0.0.0:7946");
  assert_null(c->advertise);
  assert_string_equal(c->peer_listen, "0.0.0.0:7947");
  assert_null(c->peer_url);
  assert_null(c->tls);
  assert_null(c->join);
  assert_int_equal(c->n_join, 0);
  assert_int_equal(c->secret_len, 0);
  assert_int_equal(c->replicas, 2);
  assert_int_equal(c->fanout, 2);
  assert_int_equal(c->max_peer_uploads, 8);
  assert_int_equal(c->peer_egress, 0);
  assert_int_equal(c->replica_queue, 1024);
  assert_int_equal(c->weight, 1);
  assert_string_equal(c->zone, "");
  assert_int_equal(c->peer_timeout_ms, 2000);
  assert_int_equal(c->peer_stall_timeout_ms, 5000);
  assert_int_equal(c->probe_interval_ms, 1000);
  assert_int_equal(c->probe_timeout_ms, 500);
  assert_int_equal(c->push_pull_interval_ms, 30000);
}

static void test_cluster_defaults(void **state) {
  (void)state;
  struct config cfg;
  char err[512], host[256];
  assert_int_equal(gethostname(host, sizeof host), 0);
  host[sizeof host - 1] = '\0';

  /* no cluster: section: disabled, yet every default is there */
  assert_int_equal(load(&cfg, minimal_yaml, err, sizeof err), 0);
  assert_int_equal(cfg.cluster.enabled, 0);
  assert_string_equal(cfg.cluster.name, host);
  check_cluster_defaults(&cfg.cluster);
  config_free(&cfg);

  /* "cluster:" with nothing under it, and "{}": enabled, all defaults */
  static const char *const empty[] = {UP "cluster:\n", UP "cluster: {}\n",
                                      UP "cluster:\n  join:\n",
                                      UP "cluster:\n  join: []\n"};
  for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
    assert_int_equal(load(&cfg, empty[i], err, sizeof err), 0);
    assert_int_equal(cfg.cluster.enabled, 1);
    assert_string_equal(cfg.cluster.name, host);
    check_cluster_defaults(&cfg.cluster);
    config_free(&cfg);
  }

  /* config_init and the built-in configuration: disabled, defaults */
  config_init(&cfg);
  assert_int_equal(cfg.cluster.enabled, 0);
  assert_null(cfg.cluster.name);
  check_cluster_defaults(&cfg.cluster);
  config_free(&cfg); /* must not free the static defaults */
  assert_int_equal(config_default_builtin(&cfg), 0);
  assert_int_equal(cfg.cluster.enabled, 0);
  assert_string_equal(cfg.cluster.name, host);
  check_cluster_defaults(&cfg.cluster);
  /* owned after a load: replacing one must be safe */
  free(cfg.cluster.bind);
  cfg.cluster.bind = strdup("127.0.0.1:7000");
  config_free(&cfg);
}

static void test_cluster_values(void **state) {
  (void)state;
  struct config cfg;
  char err[512];

  /* keys of 16 and 24 bytes, padding optional; port 0 for bind; IPv6 */
  assert_int_equal(load(&cfg,
                        UP "cluster:\n"
                           "  secret: AAECAwQFBgcICQoLDA0ODw\n"
                           "  bind: \"[::1]:0\"\n"
                           "  advertise: \"[fd00::7]:7946\"\n"
                           "  peer_url: https://[fd00::7]\n"
                           "  join: [Seed.Example.COM, '[::1]', "
                           "'a-1.b:1', 192.168.0.1:65535]\n"
                           "  name: \"n!~#\"\n",
                        err, sizeof err),
                   0);
  assert_string_equal(err, "");
  assert_key_0_to(&cfg.cluster, 16);
  assert_string_equal(cfg.cluster.bind, "[::1]:0");
  assert_string_equal(cfg.cluster.advertise, "[fd00::7]:7946");
  assert_string_equal(cfg.cluster.peer_url, "https://[fd00::7]");
  assert_int_equal(cfg.cluster.n_join, 4);
  assert_string_equal(cfg.cluster.join[0], "seed.example.com:7946");
  assert_string_equal(cfg.cluster.join[1], "[::1]:7946");
  assert_string_equal(cfg.cluster.join[2], "a-1.b:1");
  assert_string_equal(cfg.cluster.join[3], "192.168.0.1:65535");
  assert_string_equal(cfg.cluster.name, "n!~#");
  config_free(&cfg);

  assert_int_equal(
      load(&cfg,
           UP "cluster: {secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYX, "
              "name: x}\n",
           err, sizeof err),
      0);
  assert_key_0_to(&cfg.cluster, 24);
  config_free(&cfg);

  /* a name of exactly 128 bytes; the gossip port shared with nothing */
  char yaml[1024];
  char name[129];
  memset(name, 'n', 128);
  name[128] = '\0';
  snprintf(yaml, sizeof yaml, "%scluster:\n  name: %s\n", UP, name);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_string_equal(cfg.cluster.name, name);
  config_free(&cfg);
}

#define K32 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define CL UP "cluster:\n"

static void test_cluster_errors(void **state) {
  (void)state;
  static const struct {
    const char *yaml;
    const char *want;
  } cases[] = {
      {CL "  nam: x\n",
       "t.yml:5:3: cluster.nam: unknown key (did you mean name?)"},
      {UP "cluster: [a]\n",
       "t.yml:4:10: cluster: expected a mapping, got a sequence"},
      {UP "cluster: on\n",
       "t.yml:4:10: cluster: expected a mapping, got a scalar"},
      /* name and zone */
      {CL "  name: \"\"\n", "t.yml:5:9: cluster.name: value is empty"},
      {CL "  name: build 07\n",
       "t.yml:5:9: cluster.name: invalid value \"build 07\": printable ASCII "
       "without spaces only"},
      {CL "  name: \"b\\u00e9\"\n",
       "t.yml:5:9: cluster.name: invalid value \"b\\xc3\\xa9\": printable "
       "ASCII without spaces only"},
      {CL "  name: \"a\\tb\"\n",
       "t.yml:5:9: cluster.name: invalid value \"a\\x09b\": printable ASCII "
       "without spaces only"},
      {CL "  name: "
          "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
          "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\n",
       "t.yml:5:9: cluster.name: \"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...\" "
       "is 130 bytes, at most 128"},
      {CL "  zone: rack 3\n",
       "t.yml:5:9: cluster.zone: invalid value \"rack 3\": printable ASCII "
       "without spaces only"},
      /* bind and advertise */
      {CL "  bind: localhost:7946\n",
       "t.yml:5:9: cluster.bind: invalid address \"localhost:7946\": expected "
       "an IP address, not a host name"},
      {CL "  bind: 10.0.0.7\n",
       "t.yml:5:9: cluster.bind: invalid address \"10.0.0.7\": expected "
       "ip:port or [v6]:port"},
      {CL "  bind: 10.0.0.7:65536\n",
       "t.yml:5:9: cluster.bind: invalid address \"10.0.0.7:65536\": port "
       "must be a number from 0 to 65535"},
      {CL "  bind: 10.0.0.256:1\n",
       "t.yml:5:9: cluster.bind: invalid address \"10.0.0.256:1\": invalid "
       "IPv4 address"},
      {CL "  bind: \"fd00::1:7946\"\n",
       "t.yml:5:9: cluster.bind: invalid address \"fd00::1:7946\": IPv6 "
       "addresses need brackets, as in [fd00::7]:7946"},
      {CL "  bind: \"[fd00::g]:1\"\n",
       "t.yml:5:9: cluster.bind: invalid address \"[fd00::g]:1\": invalid "
       "IPv6 address"},
      {CL "  advertise: 10.0.0.7:0\n",
       "t.yml:5:14: cluster.advertise: invalid address \"10.0.0.7:0\": port "
       "must be a number from 1 to 65535"},
      {CL "  advertise: 0.0.0.0:7946\n",
       "t.yml:5:14: cluster.advertise: invalid address \"0.0.0.0:7946\": "
       "other nodes cannot dial a wildcard address; give this node's own IP"},
      {CL "  advertise: \"[::]:7946\"\n",
       "t.yml:5:14: cluster.advertise: invalid address \"[::]:7946\": other "
       "nodes cannot dial a wildcard address; give this node's own IP"},
      {CL "  advertise: node7.example.com:7946\n",
       "t.yml:5:14: cluster.advertise: invalid address "
       "\"node7.example.com:7946\": expected an IP address, not a host name"},
      /* peer_url */
      {CL "  peer_url: 10.0.0.7:5000\n",
       "t.yml:5:13: cluster.peer_url: invalid URL \"10.0.0.7:5000\": must "
       "start with http:// or https://"},
      {CL "  peer_url: http://\n",
       "t.yml:5:13: cluster.peer_url: invalid URL \"http://\": invalid host "
       "in URL"},
      {CL "  peer_url: http://u:p@10.0.0.7:5000\n",
       "t.yml:5:13: cluster.peer_url: invalid URL \"http://u:p@10.0.0.7:5000\": "
       "must not carry credentials"},
      /* join */
      {CL "  join: 10.0.0.8:7946\n",
       "t.yml:5:9: cluster.join: expected a sequence of host:port, got a "
       "scalar"},
      {CL "  join: [10.0.0.8, {a: b}]\n",
       "t.yml:5:20: cluster.join[1]: expected a scalar, got a mapping"},
      {CL "  join:\n    - a.b\n    - \"\"\n",
       "t.yml:7:7: cluster.join[1]: value is empty"},
      {CL "  join: [a_b:1]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \"a_b:1\": invalid host "
       "(letters, digits, dots and dashes, or an IP address)"},
      {CL "  join: [\"10.0.0.8:0\"]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \"10.0.0.8:0\": port must be "
       "a number from 1 to 65535"},
      {CL "  join: [\"fd00::8\"]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \"fd00::8\": IPv6 addresses "
       "need brackets, as in [fd00::7]:7946"},
      {CL "  join: [\"[fd00::8]x\"]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \"[fd00::8]x\": expected "
       "[v6] or [v6]:port"},
      {CL "  join: [\":7946\"]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \":7946\": missing host"},
      {CL "  join: [10.0.0.300]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \"10.0.0.300\": invalid "
       "IPv4 address"},
      {CL "  join: [http://a.b]\n",
       "t.yml:5:10: cluster.join[0]: invalid seed \"http://a.b\": expected "
       "host or host:port, not a URL"},
      /* secret: never quoted */
      {CL "  secret: \"AAECAwQFBgcICQoLDA0ODw=!\"\n",
       "t.yml:5:11: cluster.secret: the secret is not base64 (make one with: "
       "head -c 32 /dev/urandom | base64)"},
      {CL "  secret: AAECAwQFBgcICQoLDA0ODxAREhM=\n",
       "t.yml:5:11: cluster.secret: the secret decodes to 20 bytes; a key is "
       "16, 24 or 32 bytes (make one with: head -c 32 /dev/urandom | base64)"},
      {CL "  secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g\n",
       "t.yml:5:11: cluster.secret: the secret decodes to 33 bytes; a key is "
       "16, 24 or 32 bytes (make one with: head -c 32 /dev/urandom | base64)"},
      {CL "  secret: AAECAwQFBgcICQoLDA0ODw=\n",
       "t.yml:5:11: cluster.secret: the secret is not base64 (make one with: "
       "head -c 32 /dev/urandom | base64)"},
      {CL "  secret: AAECAwQFBgcICQoLDA0ODw===\n",
       "t.yml:5:11: cluster.secret: the secret is not base64 (make one with: "
       "head -c 32 /dev/urandom | base64)"},
      {CL "  secret: AAECAwQF-gcICQoLDA0ODw==\n",
       "t.yml:5:11: cluster.secret: the secret is not base64 (make one with: "
       "head -c 32 /dev/urandom | base64)"},
      {CL "  secret: \"AAECAwQF BgcICQoLDA0ODw==\"\n",
       "t.yml:5:11: cluster.secret: the secret is not base64 (make one with: "
       "head -c 32 /dev/urandom | base64)"},
      {CL "  secret: ~\n", "t.yml:5:11: cluster.secret: value is empty"},
      {CL "  secret: " K32 "\n  secret_file: /k\n",
       "t.yml:6:16: cluster.secret_file: secret and secret_file cannot both "
       "be set"},
      {CL "  secret_file: /nonexistent/k\n  secret: " K32 "\n",
       "t.yml:6:11: cluster.secret: secret and secret_file cannot both be "
       "set"},
      /* numbers and durations */
      {CL "  replicas: 0\n",
       "t.yml:5:13: cluster.replicas: must be at least 1"},
      {CL "  replicas: 9\n",
       "t.yml:5:13: cluster.replicas: must be at most 8"},
      {CL "  weight: 0\n", "t.yml:5:11: cluster.weight: must be at least 1"},
      {CL "  fanout: 65\n", "t.yml:5:11: cluster.fanout: must be at most 64"},
      {CL "  max_peer_uploads: 0\n",
       "t.yml:5:21: cluster.max_peer_uploads: must be at least 1"},
      {CL "  weight: 17\n", "t.yml:5:11: cluster.weight: must be at most 16"},
      {CL "  weight: 1.5\n",
       "t.yml:5:11: cluster.weight: expected a whole number, got \"1.5\""},
      {CL "  peer_timeout: 0s\n",
       "t.yml:5:17: cluster.peer_timeout: must be at least 1 ms"},
      {CL "  peer_stall_timeout: soon\n",
       "t.yml:5:23: cluster.peer_stall_timeout: invalid duration \"soon\" "
       "(examples: 500ms, 10s, 5m, 1h)"},
      {CL "  push_pull_interval: 0\n",
       "t.yml:5:23: cluster.push_pull_interval: must be at least 1 ms"},
      {CL "  probe_interval: 0ms\n",
       "t.yml:5:19: cluster.probe_interval: must be at least 1 ms"},
      {CL "  probe_timeout: 1s\n",
       "t.yml:5:18: cluster.probe_timeout: probe_timeout must be shorter "
       "than probe_interval"},
      {CL "  probe_interval: 400ms\n",
       "t.yml:5:19: cluster.probe_interval: probe_timeout must be shorter "
       "than probe_interval"},
      {CL "  probe_timeout: 2s\n  probe_interval: 2s\n",
       "t.yml:6:19: cluster.probe_interval: probe_timeout must be shorter "
       "than probe_interval"},
      /* the gossip port against the listeners */
      {"listen: 0.0.0.0:7946\n" CL "  name: a\n",
       "t.yml:1:9: listen: address 0.0.0.0:7946 is already used by "
       "cluster.bind (default)"},
      {"listen: 127.0.0.1:7000\n" CL "  bind: 0.0.0.0:7000\n",
       "t.yml:6:9: cluster.bind: address 0.0.0.0:7000 overlaps listen "
       "(127.0.0.1:7000) on port 7000"},
      {CL "  bind: 10.0.0.7:7001\nadmin_listen: 10.0.0.7:7001\n",
       "t.yml:6:15: admin_listen: address 10.0.0.7:7001 is already used by "
       "cluster.bind"},
      {CL "  bind: 127.0.0.1:5000\n",
       "t.yml:5:9: cluster.bind: address 127.0.0.1:5000 is already used by "
       "listen (default)"},
  };
  int failed = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct config cfg;
    char err[512];
    int rc = load(&cfg, cases[i].yaml, err, sizeof err);
    if (rc != RM_ECONFIG || strcmp(err, cases[i].want) != 0) {
      print_error("case %zu: rc %d\n got: %s\nwant: %s\n", i, rc, err,
                  cases[i].want);
      failed++;
    }
    /* no message may carry any part of a key */
    if (strstr(err, "AAECAwQF") != NULL) {
      print_error("case %zu leaks the secret: %s\n", i, err);
      failed++;
    }
    assert_int_equal(cfg.cluster.enabled, 0);
    assert_null(cfg.cluster.join);
    assert_int_equal(cfg.cluster.secret_len, 0);
    config_free(&cfg);
  }
  assert_int_equal(failed, 0);

  /* port 0 for bind never collides, even with a wildcard listener */
  struct config cfg;
  char err[512];
  assert_int_equal(load(&cfg, "listen: 0.0.0.0:5000\n" CL "  bind: 0.0.0.0:0\n",
                        err, sizeof err),
                   0);
  config_free(&cfg);
  /* without cluster: the default gossip port collides with nothing */
  assert_int_equal(load(&cfg, "listen: 0.0.0.0:7946\n" UP, err, sizeof err),
                   0);
  config_free(&cfg);
}

static void write_file(const char *path, const char *data, size_t len);

static void test_cluster_secret_file(void **state) {
  (void)state;
  struct config cfg;
  char dir[64], sub[128], cfgpath[160], keypath[160], yaml[512], err[512],
      want[512];
  snprintf(dir, sizeof dir, "/tmp/test_config_key.XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(sub, sizeof sub, "%s/etc", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  snprintf(cfgpath, sizeof cfgpath, "%s/regmesh.yml", sub);
  snprintf(keypath, sizeof keypath, "%s/cluster.key", sub);

  /* relative to the config's directory, trailing whitespace ignored */
  write_file(keypath, K32 "\n \r\n\t", strlen(K32) + 5);
  snprintf(yaml, sizeof yaml, CL "  secret_file: cluster.key\n");
  write_file(cfgpath, yaml, strlen(yaml));
  assert_int_equal(config_load_file(&cfg, cfgpath, err, sizeof err), 0);
  assert_int_equal(cfg.cluster.enabled, 1);
  assert_key_0_to(&cfg.cluster, 32);
  config_free(&cfg);

  /* absolute; unpadded 16-byte key without a newline */
  write_file(keypath, "AAECAwQFBgcICQoLDA0ODw", 22);
  snprintf(yaml, sizeof yaml, CL "  secret_file: %s\n", keypath);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_key_0_to(&cfg.cluster, 16);
  config_free(&cfg);

  /* missing: the path as resolved, and the system's reason */
  snprintf(yaml, sizeof yaml, CL "  secret_file: ../missing.key\n");
  write_file(cfgpath, yaml, strlen(yaml));
  assert_int_equal(config_load_file(&cfg, cfgpath, err, sizeof err),
                   RM_ECONFIG);
  snprintf(want, sizeof want,
           "%s:5:16: cluster.secret_file: cannot read \"%s/etc/../"
           "missing.key\": No such file or directory",
           cfgpath, dir);
  assert_string_equal(err, want);
  config_free(&cfg);

  /* a directory */
  snprintf(yaml, sizeof yaml, CL "  secret_file: %s\n", sub);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want,
           "t.yml:5:16: cluster.secret_file: cannot read \"%s\": Is a "
           "directory",
           sub);
  assert_string_equal(err, want);
  config_free(&cfg);

  /* empty, only whitespace, too big, not base64, wrong length: the
   * message never shows the content */
  static const struct {
    const char *content;
    const char *why;
  } bad[] = {
      {"", "is empty"},
      {" \n\n", "is empty"},
      {"AAECAwQFBgcICQoLDA0ODxAREhM=\n",
       "decodes to 20 bytes; a key is 16, 24 or 32 bytes (make one with: "
       "head -c 32 /dev/urandom | base64)"},
      {"secret: AAECAwQFBgcICQoLDA0ODw==\n",
       "is not base64 (make one with: head -c 32 /dev/urandom | base64)"},
      {" AAECAwQFBgcICQoLDA0ODw==\n",
       "is not base64 (make one with: head -c 32 /dev/urandom | base64)"},
  };
  snprintf(yaml, sizeof yaml, CL "  secret_file: %s\n", keypath);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    write_file(keypath, bad[i].content, strlen(bad[i].content));
    assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
    if (strcmp(bad[i].why, "is empty") == 0)
      snprintf(want, sizeof want, "t.yml:5:16: cluster.secret_file: \"%s\" %s",
               keypath, bad[i].why);
    else
      snprintf(want, sizeof want,
               "t.yml:5:16: cluster.secret_file: the content of \"%s\" %s",
               keypath, bad[i].why);
    assert_string_equal(err, want);
    assert_null(strstr(err, "AAECAwQF"));
    config_free(&cfg);
  }
  char *big = malloc(5000);
  memset(big, 'A', 5000);
  write_file(keypath, big, 5000);
  free(big);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want,
           "t.yml:5:16: cluster.secret_file: \"%s\" is larger than 4096 bytes",
           keypath);
  assert_string_equal(err, want);
  config_free(&cfg);

  /* both given: refused before the file is read (it does not exist) */
  snprintf(yaml, sizeof yaml,
           CL "  secret_file: %s/none\n  secret: " K32 "\n", dir);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_string_equal(err, "t.yml:6:11: cluster.secret: secret and "
                           "secret_file cannot both be set");
  config_free(&cfg);

  unlink(keypath);
  unlink(cfgpath);
  rmdir(sub);
  rmdir(dir);
}

/* Secrets from systemd's LoadCredential=: $CREDENTIALS_DIRECTORY/ in a
 * path, and an upstream's password_file. */
static void test_credentials_directory(void **state) {
  (void)state;
  struct config cfg;
  char dir[64], path[160], yaml[512], err[512];
  snprintf(dir, sizeof dir, "/tmp/test_config_cred.XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/cluster-key", dir);
  write_file(path, K32 "\n", strlen(K32) + 1);
  snprintf(path, sizeof path, "%s/hub-token", dir);
  write_file(path, "s3cr3t pass\n", 12);

  snprintf(yaml, sizeof yaml,
           "upstreams:\n  - host: docker.io\n    url: https://r.io\n    username: u\n"
           "    password_file: $CREDENTIALS_DIRECTORY/hub-token\n"
           "cluster:\n  secret_file: $CREDENTIALS_DIRECTORY/cluster-key\n");
  unsetenv("CREDENTIALS_DIRECTORY");
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_non_null(strstr(err, "upstreams[0].password_file: $CREDENTIALS_DIRECTORY is not set"));
  config_free(&cfg);

  setenv("CREDENTIALS_DIRECTORY", dir, 1);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_string_equal(cfg.upstreams[0].password, "s3cr3t pass");
  assert_key_0_to(&cfg.cluster, 32);
  config_free(&cfg);

  /* one source of a password only; a missing file names its path */
  snprintf(yaml, sizeof yaml,
           "upstreams:\n  - host: docker.io\n    url: https://r.io\n    password: x\n"
           "    password_file: $CREDENTIALS_DIRECTORY/hub-token\n");
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_non_null(strstr(err, "password_file excludes password and password_env"));
  config_free(&cfg);
  snprintf(yaml, sizeof yaml,
           "upstreams:\n  - host: docker.io\n    url: https://r.io\n"
           "    password_file: $CREDENTIALS_DIRECTORY/nope\n");
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_non_null(strstr(err, "/nope\": No such file or directory"));
  config_free(&cfg);
  unsetenv("CREDENTIALS_DIRECTORY");

  snprintf(path, sizeof path, "%s/cluster-key", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/hub-token", dir);
  unlink(path);
  rmdir(dir);
}

/* ---- allow: ---- */

static void test_parse_cidr(void **state) {
  (void)state;
  static const struct {
    const char *s;
    int rc;
    int family;
    unsigned prefix;
    const char *net; /* the stored address, as inet_ntop writes it */
  } cases[] = {
      {"10.0.0.0/8", 0, AF_INET, 8, "10.0.0.0"},
      {"192.168.1.7", 0, AF_INET, 32, "192.168.1.7"},
      {"0.0.0.0/0", 0, AF_INET, 0, "0.0.0.0"},
      {"172.16.0.0/12", 0, AF_INET, 12, "172.16.0.0"},
      {"10.1.2.128/25", 0, AF_INET, 25, "10.1.2.128"},
      {"::1", 0, AF_INET6, 128, "::1"},
      {"fd00::/8", 0, AF_INET6, 8, "fd00::"},
      {"::/0", 0, AF_INET6, 0, "::"},
      {"2001:DB8::/32", 0, AF_INET6, 32, "2001:db8::"},
      {"fe80::1/128", 0, AF_INET6, 128, "fe80::1"},
      /* the long spelling of an IPv4 net is that net */
      {"::ffff:10.0.0.0/104", 0, AF_INET, 8, "10.0.0.0"},
      {"::ffff:192.168.1.7", 0, AF_INET, 32, "192.168.1.7"},
      {"::ffff:0:0/96", 0, AF_INET, 0, "0.0.0.0"},
      {"10.0.0.1/8", RM_EPARSE, 0, 0, NULL},
      {"11.0.0.0/7", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/7", 0, AF_INET, 7, "10.0.0.0"},
      {"fd00::1/8", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/33", RM_EPARSE, 0, 0, NULL},
      {"::/129", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/8/8", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/+8", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/0x8", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/1000", RM_EPARSE, 0, 0, NULL},
      {"/8", RM_EPARSE, 0, 0, NULL},
      {"", RM_EPARSE, 0, 0, NULL},
      {"10.0.0", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.256", RM_EPARSE, 0, 0, NULL},
      {" 10.0.0.0/8", RM_EPARSE, 0, 0, NULL},
      {"10.0.0.0/8 ", RM_EPARSE, 0, 0, NULL},
      {"fe80::1%eth0", RM_EPARSE, 0, 0, NULL},
      {"[::1]", RM_EPARSE, 0, 0, NULL},
      {"localhost", RM_EPARSE, 0, 0, NULL},
      {"garbage", RM_EPARSE, 0, 0, NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct config_cidr c;
    char ip[INET6_ADDRSTRLEN] = "";
    memset(&c, 0x5a, sizeof c);
    int rc = config_parse_cidr(cases[i].s, &c);
    if (rc == 0)
      inet_ntop(c.family, c.addr, ip, sizeof ip);
    if (rc != cases[i].rc ||
        (rc == 0 && (c.family != cases[i].family ||
                     c.prefix != cases[i].prefix ||
                     strcmp(ip, cases[i].net) != 0)))
      fail_msg("cidr \"%s\": rc %d family %d prefix %u net %s", cases[i].s, rc,
               c.family, c.prefix, ip);
    if (rc == 0 && c.family == AF_INET)
      for (int b = 4; b < 16; b++)
        assert_int_equal(c.addr[b], 0);
  }
  assert_int_equal(config_parse_cidr(NULL, NULL), RM_EPARSE);
}

static struct sockaddr_storage sa_of(const char *ip) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (strchr(ip, ':') != NULL) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
  }
  return ss;
}

static void test_cidr_match(void **state) {
  (void)state;
  static const char *const nets[] = {"10.0.0.0/8",    "192.168.1.7",
                                     "172.16.0.0/12", "fd00::/8",
                                     "2001:db8::5",   "10.200.1.128/25"};
  struct config_cidr list[6];
  for (size_t i = 0; i < 6; i++)
    assert_int_equal(config_parse_cidr(nets[i], &list[i]), 0);
  static const struct {
    const char *ip;
    int want;
  } cases[] = {
      /* IPv4 in and out */
      {"10.0.0.0", 1},
      {"10.255.255.255", 1},
      {"11.0.0.0", 0},
      {"9.255.255.255", 0},
      {"172.16.0.1", 1},
      {"172.31.255.255", 1},
      {"172.32.0.0", 0},
      {"172.15.255.255", 0},
      /* a /32 is that host only */
      {"192.168.1.7", 1},
      {"192.168.1.6", 0},
      {"192.168.1.8", 0},
      /* IPv6 in and out; a /128 is that host only */
      {"fd00::1", 1},
      {"fdff:ffff::1", 1},
      {"fe00::1", 0},
      {"fc00::1", 0},
      {"2001:db8::5", 1},
      {"2001:db8::4", 0},
      {"2001:db8::5:0", 0},
      {"::1", 0},
      /* IPv4-mapped addresses are their IPv4 address */
      {"::ffff:10.1.2.3", 1},
      {"::ffff:192.168.1.7", 1},
      {"::ffff:192.168.1.8", 0},
      {"::ffff:11.0.0.1", 0},
      /* a partial last byte */
      {"10.200.1.128", 1},
      {"10.200.1.255", 1},
      {"127.0.0.1", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct sockaddr_storage ss = sa_of(cases[i].ip);
    int got = config_cidr_match(list, 6, (struct sockaddr *)&ss);
    if (got != cases[i].want)
      fail_msg("%s: match %d, want %d", cases[i].ip, got, cases[i].want);
  }

  /* /0 of one family is every address of that family, and only of it */
  struct config_cidr any4, any6;
  assert_int_equal(config_parse_cidr("0.0.0.0/0", &any4), 0);
  assert_int_equal(config_parse_cidr("::/0", &any6), 0);
  static const char *const v4[] = {"0.0.0.0", "1.2.3.4", "255.255.255.255",
                                   "::ffff:1.2.3.4"};
  static const char *const v6[] = {"::", "::1", "fd00::1", "ffff::ffff"};
  for (size_t i = 0; i < 4; i++) {
    struct sockaddr_storage a = sa_of(v4[i]), b = sa_of(v6[i]);
    assert_int_equal(config_cidr_match(&any4, 1, (struct sockaddr *)&a), 1);
    assert_int_equal(config_cidr_match(&any6, 1, (struct sockaddr *)&a), 0);
    assert_int_equal(config_cidr_match(&any6, 1, (struct sockaddr *)&b), 1);
    assert_int_equal(config_cidr_match(&any4, 1, (struct sockaddr *)&b), 0);
  }
  /* an empty list, and a family we do not know, match nothing */
  struct sockaddr_storage lo = sa_of("127.0.0.1");
  assert_int_equal(config_cidr_match(list, 0, (struct sockaddr *)&lo), 0);
  struct sockaddr_storage unix_sa;
  memset(&unix_sa, 0, sizeof unix_sa);
  unix_sa.ss_family = AF_UNIX;
  assert_int_equal(config_cidr_match(&any4, 1, (struct sockaddr *)&unix_sa),
                   0);
}

/* check_errors loads each case and compares the message; returns the number
 * of mismatches, after printing them. */
struct error_case {
  const char *yaml;
  const char *want;
};

static int check_errors(const struct error_case *cases, size_t n) {
  int failed = 0;
  for (size_t i = 0; i < n; i++) {
    struct config cfg;
    char err[1024];
    int rc = load(&cfg, cases[i].yaml, err, sizeof err);
    if (rc != RM_ECONFIG || strcmp(err, cases[i].want) != 0) {
      print_error("case %zu: rc %d\n got: %s\nwant: %s\n", i, rc, err,
                  cases[i].want);
      failed++;
    }
    /* a refused file leaves nothing of the new keys behind */
    assert_null(cfg.allow);
    assert_int_equal(cfg.allow_set, 0);
    assert_null(cfg.auth_htpasswd);
    assert_null(cfg.tls);
    assert_null(cfg.cluster.tls);
    assert_null(cfg.proxy.listen);
    assert_null(cfg.proxy.ca_cert);
    assert_null(cfg.proxy.tunnel_allow);
    assert_null(cfg.proxy.hosts);
    config_free(&cfg);
  }
  return failed;
}

static void test_allow(void **state) {
  (void)state;
  struct config cfg;
  char err[512];

  /* absent: not set, nothing stored (the node then serves loopback only) */
  assert_int_equal(load(&cfg, minimal_yaml, err, sizeof err), 0);
  assert_int_equal(cfg.allow_set, 0);
  assert_int_equal(cfg.n_allow, 0);
  assert_null(cfg.allow);
  config_free(&cfg);
  config_init(&cfg);
  assert_int_equal(cfg.allow_set, 0);
  assert_null(cfg.allow);
  assert_null(cfg.auth_htpasswd);
  assert_null(cfg.tls);
  config_free(&cfg);

  assert_int_equal(load(&cfg,
                        UP "allow:\n"
                           "  - 10.0.0.0/8\n"
                           "  - \"::1\"\n"
                           "  - fd00::/8\n"
                           "  - 0.0.0.0/0\n"
                           "  - \"::/0\"\n"
                           "  - 192.168.1.7\n",
                        err, sizeof err),
                   0);
  assert_string_equal(err, "");
  assert_int_equal(cfg.allow_set, 1);
  assert_int_equal(cfg.n_allow, 6);
  assert_int_equal(cfg.allow[0].family, AF_INET);
  assert_int_equal(cfg.allow[0].prefix, 8);
  assert_int_equal(cfg.allow[0].addr[0], 10);
  assert_int_equal(cfg.allow[1].family, AF_INET6);
  assert_int_equal(cfg.allow[1].prefix, 128);
  assert_int_equal(cfg.allow[1].addr[15], 1);
  assert_int_equal(cfg.allow[2].family, AF_INET6);
  assert_int_equal(cfg.allow[2].prefix, 8);
  assert_int_equal(cfg.allow[2].addr[0], 0xfd);
  assert_int_equal(cfg.allow[3].family, AF_INET);
  assert_int_equal(cfg.allow[3].prefix, 0);
  assert_int_equal(cfg.allow[4].family, AF_INET6);
  assert_int_equal(cfg.allow[4].prefix, 0);
  assert_int_equal(cfg.allow[5].prefix, 32);
  struct sockaddr_storage ss = sa_of("203.0.113.9");
  assert_int_equal(
      config_cidr_match(cfg.allow, cfg.n_allow, (struct sockaddr *)&ss), 1);
  config_free(&cfg);
  assert_null(cfg.allow);
  assert_int_equal(cfg.n_allow, 0);

  /* flow style */
  assert_int_equal(load(&cfg, UP "allow: [127.0.0.1, '::1']\n", err, sizeof err),
                   0);
  assert_int_equal(cfg.n_allow, 2);
  config_free(&cfg);

  static const struct error_case cases[] = {
      {UP "allow: []\n",
       "t.yml:4:8: allow: empty list lets nobody in; remove the key for "
       "loopback-only"},
      {UP "allow:\nlisten: 127.0.0.1:5000\n",
       "t.yml:4:7: allow: empty list lets nobody in; remove the key for "
       "loopback-only"},
      {UP "allow: 10.0.0.0/8\n",
       "t.yml:4:8: allow: expected a sequence of networks (\"10.0.0.0/8\", "
       "\"::1\"), got a scalar"},
      {UP "allow: {net: 10.0.0.0/8}\n",
       "t.yml:4:8: allow: expected a sequence of networks (\"10.0.0.0/8\", "
       "\"::1\"), got a mapping"},
      {UP "allow:\n  - 10.0.0.0/8\n  - 10.0.0.1/8\n",
       "t.yml:6:5: allow[1]: invalid network \"10.0.0.1/8\": host bits are "
       "set below the prefix; did you mean 10.0.0.0/8?"},
      {UP "allow: [192.168.1.1/24]\n",
       "t.yml:4:9: allow[0]: invalid network \"192.168.1.1/24\": host bits "
       "are set below the prefix; did you mean 192.168.1.0/24?"},
      {UP "allow: ['::1', 'fd00::1/8']\n",
       "t.yml:4:16: allow[1]: invalid network \"fd00::1/8\": host bits are "
       "set below the prefix; did you mean fd00::/8?"},
      {UP "allow: [10.0.0.0/33]\n",
       "t.yml:4:9: allow[0]: invalid network \"10.0.0.0/33\": an IPv4 prefix "
       "is at most /32"},
      {UP "allow: ['::/129']\n",
       "t.yml:4:9: allow[0]: invalid network \"::/129\": an IPv6 prefix is at "
       "most /128"},
      {UP "allow: [10.0.0.0/]\n",
       "t.yml:4:9: allow[0]: invalid network \"10.0.0.0/\": the prefix after "
       "/ must be a number"},
      {UP "allow: [10.0.0.0/x]\n",
       "t.yml:4:9: allow[0]: invalid network \"10.0.0.0/x\": the prefix "
       "after / must be a number"},
      {UP "allow:\n  - garbage\n",
       "t.yml:5:5: allow[0]: invalid network \"garbage\": expected an IPv4 "
       "or IPv6 address, optionally with /prefix"},
      {UP "allow: [localhost]\n",
       "t.yml:4:9: allow[0]: invalid network \"localhost\": expected an IPv4 "
       "or IPv6 address, optionally with /prefix"},
      {UP "allow: ['fe80::1%eth0']\n",
       "t.yml:4:9: allow[0]: invalid network \"fe80::1%eth0\": expected an "
       "IPv4 or IPv6 address, optionally with /prefix"},
      {UP "allow: ['']\n", "t.yml:4:9: allow[0]: value is empty"},
      {UP "allow:\n  -\n", "t.yml:5:4: allow[0]: value is empty"},
      {UP "allow: [[10.0.0.0/8]]\n",
       "t.yml:4:9: allow[0]: expected a scalar, got a sequence"},
      {UP "allow: ['::1']\nallow: ['::1']\n",
       "t.yml:5:1: allow: duplicate key (first at 4:1)"},
      {UP "alow: ['::1']\n",
       "t.yml:4:1: alow: unknown key (did you mean allow?)"},
  };
  assert_int_equal(check_errors(cases, sizeof cases / sizeof cases[0]), 0);

  /* at most 1024 entries; exactly that many load */
  char *yaml = malloc(64 * 1024);
  assert_non_null(yaml);
  size_t n = (size_t)sprintf(yaml, UP "allow:\n");
  for (int i = 0; i < CONFIG_MAX_ALLOW; i++)
    n += (size_t)sprintf(yaml + n, "  - 10.%d.%d.0/24\n", i / 256, i % 256);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_int_equal(cfg.n_allow, CONFIG_MAX_ALLOW);
  assert_int_equal(cfg.allow[1023].addr[1], 3);
  assert_int_equal(cfg.allow[1023].addr[2], 255);
  config_free(&cfg);
  sprintf(yaml + n, "  - 11.0.0.0/8\n");
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_string_equal(err,
                      "t.yml:5:3: allow: too many entries (1025, at most 1024)");
  assert_null(cfg.allow);
  config_free(&cfg);
  free(yaml);
}

/* ---- auth: and private: ---- */

#define BCRYPT_PASS "$2y$05$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW"

static void test_auth(void **state) {
  (void)state;
  struct config cfg;
  char dir[64], sub[128], cfgpath[192], pwpath[192], yaml[1024], err[1024],
      want[1024];
  snprintf(dir, sizeof dir, "/tmp/test_config_auth.XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(sub, sizeof sub, "%s/etc", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  snprintf(cfgpath, sizeof cfgpath, "%s/regmesh.yml", sub);
  snprintf(pwpath, sizeof pwpath, "%s/htpasswd", sub);
  static const char users[] = "# mirror users\nci:" BCRYPT_PASS "\n"
                              "dev:" BCRYPT_PASS "\n";
  write_file(pwpath, users, strlen(users));

  /* relative to the config's directory; stored resolved; private ok */
  snprintf(yaml, sizeof yaml,
           "upstreams:\n"
           "  - host: ghcr.io\n"
           "    url: https://ghcr.io\n"
           "    private: true\n"
           "  - host: quay.io\n"
           "    url: https://quay.io\n"
           "    private: no\n"
           "auth:\n"
           "  htpasswd: htpasswd\n");
  write_file(cfgpath, yaml, strlen(yaml));
  assert_int_equal(config_load_file(&cfg, cfgpath, err, sizeof err), 0);
  assert_string_equal(err, "");
  assert_string_equal(cfg.auth_htpasswd, pwpath);
  assert_int_equal(cfg.upstreams[0].is_private, 1);
  assert_int_equal(cfg.upstreams[1].is_private, 0);
  config_free(&cfg);
  assert_null(cfg.auth_htpasswd);

  /* absolute; private defaults to false */
  snprintf(yaml, sizeof yaml, "auth: {htpasswd: %s}\n" UP, pwpath);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_string_equal(cfg.auth_htpasswd, pwpath);
  assert_int_equal(cfg.upstreams[0].is_private, 0);
  config_free(&cfg);

  /* a bad line in the file: both positions, config first */
  static const char bad[] = "ci:" BCRYPT_PASS "\n\ndev:$apr1$abc$def\n";
  write_file(pwpath, bad, strlen(bad));
  snprintf(yaml, sizeof yaml, UP "auth:\n  htpasswd: htpasswd\n");
  write_file(cfgpath, yaml, strlen(yaml));
  assert_int_equal(config_load_file(&cfg, cfgpath, err, sizeof err),
                   RM_ECONFIG);
  snprintf(want, sizeof want,
           "%s:5:13: auth.htpasswd: %s:3:5: an MD5 ($apr1$) hash; only bcrypt "
           "(htpasswd -B) is accepted",
           cfgpath, pwpath);
  assert_string_equal(err, want);
  config_free(&cfg);
  static const char dup[] = "ci:" BCRYPT_PASS "\r\nci:" BCRYPT_PASS "\r\n";
  write_file(pwpath, dup, strlen(dup));
  assert_int_equal(config_load_file(&cfg, cfgpath, err, sizeof err),
                   RM_ECONFIG);
  snprintf(want, sizeof want,
           "%s:5:13: auth.htpasswd: %s:2:1: user \"ci\" is listed twice "
           "(first on line 1)",
           cfgpath, pwpath);
  assert_string_equal(err, want);
  config_free(&cfg);

  /* missing: the resolved path and the system's reason */
  snprintf(yaml, sizeof yaml, UP "auth:\n  htpasswd: ../none\n");
  write_file(cfgpath, yaml, strlen(yaml));
  assert_int_equal(config_load_file(&cfg, cfgpath, err, sizeof err),
                   RM_ECONFIG);
  snprintf(want, sizeof want,
           "%s:5:13: auth.htpasswd: %s/etc/../none: No such file or directory",
           cfgpath, dir);
  assert_string_equal(err, want);
  config_free(&cfg);

  static const struct error_case cases[] = {
      {UP "auth: {}\n", "t.yml:4:7: auth.htpasswd: required key is missing"},
      {UP "auth:\n", "t.yml:4:6: auth.htpasswd: required key is missing"},
      {UP "auth: /etc/htpasswd\n",
       "t.yml:4:7: auth: expected a mapping, got a scalar"},
      {UP "auth:\n  passwd: /etc/htpasswd\n",
       "t.yml:5:3: auth.passwd: unknown key (did you mean htpasswd?)\n"
       "t.yml:5:3: auth.htpasswd: required key is missing"},
      {UP "auth:\n  realm: regmesh\n  htpasswd: /nonexistent\n",
       "t.yml:5:3: auth.realm: unknown key\n"
       "t.yml:6:13: auth.htpasswd: /nonexistent: No such file or directory"},
      {UP "auth:\n  htpasswd: \"\"\n",
       "t.yml:5:13: auth.htpasswd: value is empty"},
      {UP "auth:\n  htpasswd: /nonexistent/htpasswd\n",
       "t.yml:5:13: auth.htpasswd: /nonexistent/htpasswd: No such file or "
       "directory"},
      {UP "auth:\n  htpasswd: /tmp\n",
       "t.yml:5:13: auth.htpasswd: /tmp: Is a directory"},
      /* private */
      {UP "    private: true\n",
       "t.yml:4:14: upstreams[0].private: private: true needs auth.htpasswd "
       "(nobody could pull it)"},
      {UP "  - host: ghcr.io\n    url: https://ghcr.io\n    private: yes\n",
       "t.yml:6:14: upstreams[1].private: private: true needs auth.htpasswd "
       "(nobody could pull it)"},
      {UP "    private: maybe\n",
       "t.yml:4:14: upstreams[0].private: expected true or false, got "
       "\"maybe\""},
  };
  assert_int_equal(check_errors(cases, sizeof cases / sizeof cases[0]), 0);

  unlink(pwpath);
  unlink(cfgpath);
  rmdir(sub);
  rmdir(dir);
}

/* ---- cluster.peer_listen ---- */

static void test_peer_listen(void **state) {
  (void)state;
  struct config cfg;
  char err[512];

  /* without cluster: the default bind's + 1, like everything else there */
  config_init(&cfg);
  assert_string_equal(cfg.cluster.peer_listen, "0.0.0.0:7947");
  config_free(&cfg);
  assert_int_equal(load(&cfg, minimal_yaml, err, sizeof err), 0);
  assert_string_equal(cfg.cluster.peer_listen, "0.0.0.0:7947");
  free(cfg.cluster.peer_listen); /* owned after a load */
  cfg.cluster.peer_listen = strdup("127.0.0.1:1");
  config_free(&cfg);
  assert_int_equal(config_default_builtin(&cfg), 0);
  assert_string_equal(cfg.cluster.peer_listen, "0.0.0.0:7947");
  config_free(&cfg);

  /* derived from bind: its host as written, port + 1; port 0 stays 0 */
  static const struct {
    const char *cluster;
    const char *want;
  } derived[] = {
      {"cluster: {}\n", "0.0.0.0:7947"},
      {"cluster:\n  bind: 10.0.0.7:8000\n", "10.0.0.7:8001"},
      {"cluster:\n  bind: \"[::]:7946\"\n", "[::]:7947"},
      {"cluster:\n  bind: \"[fd00::7]:65534\"\n", "[fd00::7]:65535"},
      {"cluster:\n  bind: 127.0.0.1:0\n", "127.0.0.1:0"},
      {"cluster:\n  bind: 10.0.0.7:8000\n  peer_listen: 10.0.0.7:9000\n",
       "10.0.0.7:9000"},
      {"cluster:\n  peer_listen: \"[::]:9000\"\n", "[::]:9000"},
      {"cluster:\n  bind: 127.0.0.1:65535\n  peer_listen: 127.0.0.1:7000\n",
       "127.0.0.1:7000"},
  };
  for (size_t i = 0; i < sizeof derived / sizeof derived[0]; i++) {
    char yaml[512];
    snprintf(yaml, sizeof yaml, UP "%s", derived[i].cluster);
    int rc = load(&cfg, yaml, err, sizeof err);
    if (rc != 0 || strcmp(cfg.cluster.peer_listen, derived[i].want) != 0)
      fail_msg("case %zu: rc %d err %s peer_listen %s, want %s", i, rc, err,
               rc == 0 ? cfg.cluster.peer_listen : "-", derived[i].want);
    config_free(&cfg);
  }

  static const struct error_case cases[] = {
      {CL "  bind: 10.0.0.7:65535\n",
       "t.yml:5:9: cluster.bind: port 65535 leaves no port for the default "
       "peer_listen (bind port + 1); set peer_listen"},
      {CL "  peer_listen: localhost:7947\n",
       "t.yml:5:16: cluster.peer_listen: invalid address \"localhost:7947\": "
       "expected an IP address, not a host name"},
      {CL "  peer_listen: 10.0.0.7\n",
       "t.yml:5:16: cluster.peer_listen: invalid address \"10.0.0.7\": "
       "expected ip:port or [v6]:port"},
      {CL "  peer_listen: 10.0.0.7:0\n",
       "t.yml:5:16: cluster.peer_listen: invalid address \"10.0.0.7:0\": "
       "port must be a number from 1 to 65535"},
      {CL "  peer_listen: \"::1:7947\"\n",
       "t.yml:5:16: cluster.peer_listen: invalid address \"::1:7947\": IPv6 "
       "addresses need brackets, as in [fd00::7]:7946"},
      /* against the other listeners, explicit or derived */
      {CL "  peer_listen: 127.0.0.1:5000\n",
       "t.yml:5:16: cluster.peer_listen: address 127.0.0.1:5000 is already "
       "used by listen (default)"},
      {"listen: 0.0.0.0:7947\n" CL "  name: a\n",
       "t.yml:1:9: listen: address 0.0.0.0:7947 is already used by "
       "cluster.peer_listen (default)"},
      {"listen: 127.0.0.1:7001\n" CL "  bind: 0.0.0.0:7000\n",
       "t.yml:1:9: listen: address 127.0.0.1:7001 overlaps "
       "cluster.peer_listen (default) (0.0.0.0:7001) on port 7001"},
      {CL "  peer_listen: 0.0.0.0:7946\n",
       "t.yml:5:16: cluster.peer_listen: address 0.0.0.0:7946 is already "
       "used by cluster.bind (default)"},
      {CL "  bind: 10.0.0.7:7000\n  peer_listen: 10.0.0.7:7000\n",
       "t.yml:6:16: cluster.peer_listen: address 10.0.0.7:7000 is already "
       "used by cluster.bind"},
      {"admin_listen: 127.0.0.1:9000\n" CL "  peer_listen: 127.0.0.1:9000\n",
       "t.yml:6:16: cluster.peer_listen: address 127.0.0.1:9000 is already "
       "used by admin_listen"},
      {UP "    listen: 10.0.0.7:6000\ncluster:\n  peer_listen: "
          "\"0.0.0.0:6000\"\n",
       "t.yml:6:16: cluster.peer_listen: address 0.0.0.0:6000 overlaps "
       "upstreams[0].listen (10.0.0.7:6000) on port 6000"},
  };
  assert_int_equal(check_errors(cases, sizeof cases / sizeof cases[0]), 0);

  /* a peer_listen of port 0 (derived from bind port 0) collides with
   * nothing; without cluster: the default peer port is nobody's */
  assert_int_equal(load(&cfg, "listen: 0.0.0.0:1\n" CL "  bind: 0.0.0.0:0\n",
                        err, sizeof err),
                   0);
  config_free(&cfg);
  assert_int_equal(load(&cfg, "listen: 0.0.0.0:7947\n" UP, err, sizeof err),
                   0);
  config_free(&cfg);
}

/* ---- tls: ---- */

/* What make_pair puts in the certificate: nothing (a plain self-signed
 * leaf, as tls: takes), basicConstraints CA:TRUE (a CA, as proxy.ca
 * needs), or CA:TRUE with a keyUsage that cannot sign certificates. */
enum cert_kind { CERT_LEAF, CERT_CA, CERT_CA_NO_CERTSIGN };

/* make_pair writes a throwaway self-signed P-256 certificate and its key
 * to dir/<name>.crt and dir/<name>.key, and leaves their paths in
 * cert_path and key_path (PAIR_PATH_MAX bytes each). */
#define PAIR_PATH_MAX 128
static void make_pair(const char *dir, const char *name, const char *cn,
                      enum cert_kind kind, char *cert_path, char *key_path) {
  snprintf(cert_path, PAIR_PATH_MAX, "%s/%s.crt", dir, name);
  snprintf(key_path, PAIR_PATH_MAX, "%s/%s.key", dir, name);
  EVP_PKEY *pk = EVP_EC_gen("P-256");
  assert_non_null(pk);
  X509 *x = X509_new();
  assert_non_null(x);
  assert_int_equal(X509_set_version(x, 2), 1);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  assert_int_equal(X509_set_pubkey(x, pk), 1);
  X509_NAME *subject = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                             (const unsigned char *)cn, -1, -1, 0);
  assert_int_equal(X509_set_issuer_name(x, subject), 1);
  if (kind != CERT_LEAF) {
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    assert_non_null(bc);
    bc->ca = 1;
    assert_int_equal(
        X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT), 1);
    BASIC_CONSTRAINTS_free(bc);
  }
  if (kind == CERT_CA_NO_CERTSIGN) {
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    assert_non_null(ku);
    assert_int_equal(ASN1_BIT_STRING_set_bit(ku, 0, 1), 1); /* digitalSignature */
    assert_int_equal(X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_DEFAULT), 1);
    ASN1_BIT_STRING_free(ku);
  }
  assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
  FILE *f = fopen(cert_path, "wb");
  assert_non_null(f);
  assert_int_equal(PEM_write_X509(f, x), 1);
  fclose(f);
  f = fopen(key_path, "wb");
  assert_non_null(f);
  assert_int_equal(PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL), 1);
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(pk);
}

/* unlink_pair removes what make_pair wrote. */
static void unlink_pair(const char *cert_path, const char *key_path) {
  unlink(cert_path);
  unlink(key_path);
}

/* load_file_ok writes yaml to path and loads it: no error, no message. */
static void load_file_ok(struct config *cfg, const char *path, const char *yaml) {
  char err[1024];
  write_file(path, yaml, strlen(yaml));
  assert_int_equal(config_load_file(cfg, path, err, sizeof err), 0);
  assert_string_equal(err, "");
}

/* expect_error: yaml is refused with exactly want, as a check_errors case
 * whose strings are made at run time. */
static void expect_error(const char *yaml, const char *want) {
  const struct error_case c = {yaml, want};
  assert_int_equal(check_errors(&c, 1), 0);
}

/* expect_error_prefix: yaml is refused with a message that starts with
 * want; the rest is OpenSSL's reason, which varies between versions. */
static void expect_error_prefix(const char *yaml, const char *want) {
  struct config cfg;
  char err[1024];
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  if (strncmp(err, want, strlen(want)) != 0)
    fail_msg("got: %s\nwant: %s...", err, want);
  config_free(&cfg);
}

static void test_tls(void **state) {
  (void)state;
  struct config cfg;
  char dir[64], cfgpath[128], crt[PAIR_PATH_MAX], key[PAIR_PATH_MAX],
      crt2[PAIR_PATH_MAX], key2[PAIR_PATH_MAX], junk[128], yaml[2048], err[1024],
      want[1024];
  snprintf(dir, sizeof dir, "/tmp/test_config_tls.XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(cfgpath, sizeof cfgpath, "%s/regmesh.yml", dir);
  snprintf(junk, sizeof junk, "%s/junk.pem", dir);
  make_pair(dir, "node", "node", CERT_LEAF, crt, key);
  make_pair(dir, "other", "other", CERT_LEAF, crt2, key2);
  write_file(junk, "-----BEGIN CERTIFICATE-----\nnot base64\n", 40);

  /* every block, relative paths resolved against the config's directory */
  snprintf(yaml, sizeof yaml,
           "listen: 127.0.0.1:5000\n"
           "tls:\n"
           "  cert: node.crt\n"
           "  key: node.key\n"
           "upstreams:\n"
           "  - host: docker.io\n"
           "    url: https://registry-1.docker.io\n"
           "    listen: 127.0.0.1:5002\n"
           "    tls:\n"
           "      cert: other.crt\n"
           "      key: other.key\n"
           "      client_ca: node.crt\n"
           "      min_version: \"1.3\"\n"
           "  - host: ghcr.io\n"
           "    url: https://ghcr.io\n"
           "cluster:\n"
           "  tls:\n"
           "    cert: %s\n"
           "    key: node.key\n"
           "    ca: other.crt\n",
           crt);
  load_file_ok(&cfg, cfgpath, yaml);
  assert_non_null(cfg.tls);
  assert_string_equal(cfg.tls->cert, crt);
  assert_string_equal(cfg.tls->key, key);
  assert_null(cfg.tls->ca);
  assert_int_equal(cfg.tls->min_version, 0x0303);
  const struct config_tls *ut = cfg.upstreams[0].tls;
  assert_non_null(ut);
  assert_string_equal(ut->cert, crt2);
  assert_string_equal(ut->key, key2);
  assert_string_equal(ut->ca, crt);
  assert_int_equal(ut->min_version, 0x0304);
  assert_null(cfg.upstreams[1].tls);
  assert_non_null(cfg.cluster.tls);
  assert_string_equal(cfg.cluster.tls->cert, crt);
  assert_string_equal(cfg.cluster.tls->key, key);
  assert_string_equal(cfg.cluster.tls->ca, crt2);
  config_free(&cfg);
  assert_null(cfg.tls);

  /* absent: every block NULL */
  assert_int_equal(load(&cfg, minimal_yaml, err, sizeof err), 0);
  assert_null(cfg.tls);
  assert_null(cfg.upstreams[0].tls);
  assert_null(cfg.cluster.tls);
  config_free(&cfg);

  /* a key from another pair: at key:, naming the key file (OpenSSL
   * notices when the key is loaded next to the certificate) */
  snprintf(yaml, sizeof yaml, UP "tls:\n  cert: %s\n  key: %s\n", crt, key2);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want, "t.yml:6:8: tls.key: %s: ", key2);
  if (strncmp(err, want, strlen(want)) != 0 ||
      strstr(err, "mismatch") == NULL)
    fail_msg("got: %s\nwant: %s...mismatch...", err, want);
  assert_null(cfg.tls);
  config_free(&cfg);

  /* garbage for a certificate: at cert: */
  snprintf(yaml, sizeof yaml, UP "tls:\n  key: %s\n  cert: %s\n", key, junk);
  snprintf(want, sizeof want,
           "t.yml:6:9: tls.cert: %s: no usable PEM certificate (", junk);
  expect_error_prefix(yaml, want);

  /* a missing key file, a garbage CA: the key that names them */
  snprintf(yaml, sizeof yaml,
           UP "    listen: 127.0.0.1:5002\n    tls:\n      cert: %s\n"
              "      key: %s/none.key\n",
           crt, dir);
  snprintf(want, sizeof want,
           "t.yml:7:12: upstreams[0].tls.key: cannot read \"%s/none.key\": "
           "No such file or directory",
           dir);
  expect_error(yaml, want);
  snprintf(yaml, sizeof yaml,
           CL "  tls:\n    cert: %s\n    key: %s\n    ca: %s\n", crt, key,
           junk);
  snprintf(want, sizeof want,
           "t.yml:8:9: cluster.tls.ca: %s: no usable PEM CA certificate (",
           junk);
  expect_error_prefix(yaml, want);

  /* min_version 1.1 (and 1.0): refused before any file is read */
  snprintf(yaml, sizeof yaml,
           UP "tls:\n  cert: %s\n  key: %s\n  min_version: \"1.1\"\n", crt,
           key);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), RM_ECONFIG);
  assert_string_equal(err, "t.yml:7:16: tls.min_version: TLS 1.1 is not "
                           "offered: TLS 1.2 is the minimum");
  config_free(&cfg);

  static const struct error_case cases[] = {
      {UP "tls:\n  key: /k\n",
       "t.yml:5:3: tls.cert: required key is missing"},
      {UP "tls:\n  cert: /c\n", "t.yml:5:3: tls.key: required key is missing"},
      {UP "tls:\n",
       "t.yml:4:5: tls.cert: required key is missing\n"
       "t.yml:4:5: tls.key: required key is missing"},
      {UP "tls: on\n", "t.yml:4:6: tls: expected a mapping, got a scalar"},
      {UP "tls: {cert: /c, key: /k, min_version: 1.0}\n",
       "t.yml:4:39: tls.min_version: TLS 1.0 is not offered: TLS 1.2 is the "
       "minimum"},
      {UP "tls: {cert: /c, key: /k, min_version: 2}\n",
       "t.yml:4:39: tls.min_version: expected \"1.2\" or \"1.3\", got \"2\""},
      {UP "tls: {cert: /c, key: /k, min_version: TLSv1.3}\n",
       "t.yml:4:39: tls.min_version: expected \"1.2\" or \"1.3\", got "
       "\"TLSv1.3\""},
      {UP "tls: {cert: /c, key: /k, ca: /a}\n",
       "t.yml:4:30: tls.ca: a client listener's CA is client_ca: (clients "
       "must then present a certificate it signed); ca: is for cluster.tls"},
      {UP "tls: {cert: /c, key: /k, chain: /a}\n",
       "t.yml:4:26: tls.chain: unknown key"},
      {UP "tls: {cert: \"\", key: /k}\n", "t.yml:4:13: tls.cert: value is empty"},
      /* an upstream's tls: is for its own listener */
      {UP "    tls: {cert: /c, key: /k}\n",
       "t.yml:4:10: upstreams[0].tls: tls: is for this upstream's own "
       "listen:, and it has none (the top-level tls: covers the shared "
       "listeners)"},
      {UP "    listen: 127.0.0.1:5002\n    tls: {cert: /c}\n",
       "t.yml:5:10: upstreams[0].tls.key: required key is missing"},
      /* cluster.tls: ca required, client_ca refused */
      {CL "  tls: {cert: /c, key: /k}\n",
       "t.yml:5:8: cluster.tls.ca: required key is missing"},
      {CL "  tls: {cert: /c, key: /k, client_ca: /a}\n",
       "t.yml:5:39: cluster.tls.client_ca: cluster.tls takes ca: (it "
       "verifies peers both ways), not client_ca:\n"
       "t.yml:5:8: cluster.tls.ca: required key is missing"},
      {CL "  tls: {cert: /c, key: /k, ca: /a, min_version: 1.3}\n",
       "t.yml:5:36: cluster.tls.min_version: unknown key"},
      /* files are read last: a structural error elsewhere comes first */
      {"tls: {cert: /nonexistent/c, key: /k}\n" UP "    private: true\n",
       "t.yml:5:14: upstreams[0].private: private: true needs auth.htpasswd "
       "(nobody could pull it)"},
  };
  assert_int_equal(check_errors(cases, sizeof cases / sizeof cases[0]), 0);

  unlink_pair(crt, key);
  unlink_pair(crt2, key2);
  unlink(junk);
  unlink(cfgpath);
  rmdir(dir);
}

/* ---- proxy: and aliases: ---- */

/* A proxy section whose CA is never read: the error comes first. */
#define PX UP "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: /c, key: /k}\n"

static void test_proxy(void **state) {
  (void)state;
  struct config cfg;
  char dir[64], cfgpath[128], ca[PAIR_PATH_MAX], cakey[PAIR_PATH_MAX],
      leaf[PAIR_PATH_MAX], leafkey[PAIR_PATH_MAX], ca2[PAIR_PATH_MAX],
      ca2key[PAIR_PATH_MAX], nosign[PAIR_PATH_MAX], nosignkey[PAIR_PATH_MAX],
      yaml[2048], err[1024], want[1024];
  snprintf(dir, sizeof dir, "/tmp/test_config_proxy.XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(cfgpath, sizeof cfgpath, "%s/regmesh.yml", dir);
  make_pair(dir, "ca", "proxy CA", CERT_CA, ca, cakey);
  make_pair(dir, "ca2", "other CA", CERT_CA, ca2, ca2key);
  make_pair(dir, "leaf", "leaf", CERT_LEAF, leaf, leafkey);
  make_pair(dir, "nosign", "no certsign", CERT_CA_NO_CERTSIGN, nosign, nosignkey);

  /* every key; ca paths relative to the config's directory, like tls: */
  snprintf(yaml, sizeof yaml,
           "listen: 127.0.0.1:5000\n"
           "upstreams:\n"
           "  - host: docker.io\n"
           "    url: https://registry-1.docker.io\n"
           "    aliases: [registry-1.docker.io, auth.docker.io, "
           "\"CDN.Example.com\", \"reg.local:5000\", \"[FD00:0::1]:5000\"]\n"
           "  - host: ghcr.io\n"
           "    url: https://ghcr.io\n"
           "proxy:\n"
           "  listen: 127.0.0.1:3128\n"
           "  ca: {cert: ca.crt, key: %s}\n"
           "  tunnel_others: false\n"
           "  tunnel_allow: [127.0.0.0/8, \"::1\"]\n"
           "  hosts: {Other.Test: 127.0.0.7, v6.test: \"fd00::7\"}\n"
           "  leaf_ttl: 1h\n",
           cakey);
  load_file_ok(&cfg, cfgpath, yaml);
  const struct config_proxy *p = &cfg.proxy;
  assert_string_equal(p->listen, "127.0.0.1:3128");
  assert_string_equal(p->ca_cert, ca);
  assert_string_equal(p->ca_key, cakey);
  assert_int_equal(p->tunnel_others, 0);
  assert_int_equal(p->n_tunnel_allow, 2);
  assert_int_equal(p->tunnel_allow[0].family, AF_INET);
  assert_int_equal(p->tunnel_allow[0].prefix, 8);
  assert_int_equal(p->tunnel_allow[1].family, AF_INET6);
  assert_int_equal(p->tunnel_allow[1].prefix, 128);
  assert_int_equal(p->n_hosts, 2);
  assert_string_equal(p->hosts[0].name, "other.test");
  assert_string_equal(p->hosts[0].addr, "127.0.0.7");
  assert_string_equal(p->hosts[1].name, "v6.test");
  assert_string_equal(p->hosts[1].addr, "fd00::7");
  assert_int_equal(p->leaf_ttl_ms, 3600 * 1000);
  const struct config_upstream *hub = &cfg.upstreams[0];
  assert_int_equal(hub->n_aliases, 5);
  assert_string_equal(hub->aliases[0], "registry-1.docker.io");
  assert_string_equal(hub->aliases[1], "auth.docker.io");
  assert_string_equal(hub->aliases[2], "cdn.example.com");
  assert_string_equal(hub->aliases[3], "reg.local:5000");
  assert_string_equal(hub->aliases[4], "[fd00::1]:5000");
  assert_int_equal(cfg.upstreams[1].n_aliases, 0);
  assert_null(cfg.upstreams[1].aliases);
  config_free(&cfg);
  assert_null(cfg.proxy.listen);

  /* the defaults: with a section, and without one */
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: \"[::1]:3128\"\n"
              "  ca:\n    cert: %s\n    key: %s\n",
           ca, cakey);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_string_equal(cfg.proxy.listen, "[::1]:3128");
  assert_int_equal(cfg.proxy.tunnel_others, 1);
  assert_int_equal(cfg.proxy.leaf_ttl_ms, 24 * 3600 * 1000);
  assert_int_equal(cfg.proxy.n_tunnel_allow, 0);
  assert_null(cfg.proxy.tunnel_allow);
  assert_int_equal(cfg.proxy.n_hosts, 0);
  assert_null(cfg.proxy.hosts);
  config_free(&cfg);
  /* empty lists are the defaults too; the bounds of leaf_ttl are in */
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: %s, key: %s}\n"
              "  tunnel_allow: []\n  hosts: {}\n  leaf_ttl: 10m\n",
           ca, cakey);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_int_equal(cfg.proxy.leaf_ttl_ms, 600 * 1000);
  config_free(&cfg);
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: %s, key: %s}\n"
              "  leaf_ttl: 9528h\n",
           ca, cakey);
  assert_int_equal(load(&cfg, yaml, err, sizeof err), 0);
  assert_int_equal(cfg.proxy.leaf_ttl_ms, UINT64_C(397) * 24 * 3600 * 1000);
  config_free(&cfg);
  assert_int_equal(load(&cfg, minimal_yaml, err, sizeof err), 0);
  assert_null(cfg.proxy.listen);
  assert_null(cfg.proxy.ca_cert);
  assert_int_equal(cfg.proxy.tunnel_others, 1);
  assert_int_equal(cfg.proxy.leaf_ttl_ms, 24 * 3600 * 1000);
  config_free(&cfg);
  config_init(&cfg);
  assert_null(cfg.proxy.listen);
  assert_int_equal(cfg.proxy.tunnel_others, 1);
  assert_int_equal(cfg.proxy.leaf_ttl_ms, 24 * 3600 * 1000);
  config_free(&cfg);
  assert_int_equal(config_default_builtin(&cfg), 0);
  assert_null(cfg.proxy.listen);
  for (size_t i = 0; i < cfg.n_upstreams; i++)
    assert_int_equal(cfg.upstreams[i].n_aliases, 0);
  config_free(&cfg);

  /* the CA: a leaf, a key of another CA, a CA that may not sign
   * certificates, a missing file and garbage, each at its key */
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n"
              "  ca: {cert: %s, key: %s}\n",
           leaf, leafkey);
  snprintf(want, sizeof want,
           "t.yml:6:14: proxy.ca.cert: %s: not a CA certificate (no "
           "basicConstraints CA:TRUE); make one with: regmesh ca init DIR",
           leaf);
  expect_error(yaml, want);
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n"
              "  ca:\n    cert: %s\n    key: %s\n",
           ca, ca2key);
  snprintf(want, sizeof want,
           "t.yml:8:10: proxy.ca.key: %s: the key does not match the "
           "certificate %s",
           ca2key, ca);
  expect_error(yaml, want);
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n"
              "  ca:\n    cert: %s\n    key: %s\n",
           nosign, nosignkey);
  snprintf(want, sizeof want,
           "t.yml:7:11: proxy.ca.cert: %s: the CA certificate's keyUsage "
           "lacks keyCertSign",
           nosign);
  expect_error(yaml, want);
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n"
              "  ca:\n    cert: %s\n    key: %s/none.key\n",
           ca, dir);
  snprintf(want, sizeof want,
           "t.yml:8:10: proxy.ca.key: cannot read \"%s/none.key\": No such "
           "file or directory",
           dir);
  expect_error(yaml, want);
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n"
              "  ca:\n    cert: %s\n    key: %s\n",
           cakey, cakey);
  snprintf(want, sizeof want,
           "t.yml:7:11: proxy.ca.cert: %s: no usable PEM certificate (", cakey);
  expect_error_prefix(yaml, want);

  /* an encrypted key is refused, not prompted for */
  char enckey[128];
  snprintf(enckey, sizeof enckey, "%s/enc.key", dir);
  FILE *f = fopen(cakey, "rb");
  assert_non_null(f);
  EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  assert_non_null(pk);
  f = fopen(enckey, "wb");
  assert_non_null(f);
  assert_int_equal(PEM_write_PrivateKey(f, pk, EVP_aes_256_cbc(), (unsigned char *)"pass",
                                        4, NULL, NULL),
                   1);
  fclose(f);
  EVP_PKEY_free(pk);
  snprintf(yaml, sizeof yaml,
           UP "proxy:\n  listen: 127.0.0.1:3128\n"
              "  ca:\n    cert: %s\n    key: %s\n",
           ca, enckey);
  snprintf(want, sizeof want,
           "t.yml:8:10: proxy.ca.key: %s: the key is encrypted; give it "
           "unencrypted (the node starts unattended)",
           enckey);
  expect_error(yaml, want);
  unlink(enckey);

  static const struct error_case cases[] = {
      /* the section's own keys */
      {UP "proxy:\n  ca: {cert: /c, key: /k}\n",
       "t.yml:5:3: proxy.listen: required key is missing"},
      {UP "proxy:\n  listen: 127.0.0.1:3128\n",
       "t.yml:5:3: proxy.ca: required key is missing"},
      {UP "proxy:\n", "t.yml:4:7: proxy.listen: required key is missing\n"
                      "t.yml:4:7: proxy.ca: required key is missing"},
      {UP "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: /c}\n",
       "t.yml:6:7: proxy.ca.key: required key is missing"},
      {UP "proxy:\n  listen: 127.0.0.1:3128\n  ca: /c\n",
       "t.yml:6:7: proxy.ca: expected a mapping, got a scalar"},
      {UP "proxy:\n  listen: 3128\n  ca: {cert: /c, key: /k}\n",
       "t.yml:5:11: proxy.listen: invalid address \"3128\": expected "
       "host:port or [v6]:port"},
      {PX "  tunel_others: false\n",
       "t.yml:7:3: proxy.tunel_others: unknown key (did you mean "
       "tunnel_others?)"},
      {PX "  tunnel_others: sometimes\n",
       "t.yml:7:18: proxy.tunnel_others: expected true or false, got "
       "\"sometimes\""},
      {PX "  ca: {cert: /c, key: /k, chain: /x}\n",
       "t.yml:7:3: proxy.ca: duplicate key (first at 6:3)"},
      {UP "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: /c, key: /k, chain: /x}\n",
       "t.yml:6:27: proxy.ca.chain: unknown key"},
      /* tunnel_allow: allow:'s rules */
      {PX "  tunnel_allow: [127.0.0.0/8, 10.0.0.1/8]\n",
       "t.yml:7:31: proxy.tunnel_allow[1]: invalid network \"10.0.0.1/8\": "
       "host bits are set below the prefix; did you mean 10.0.0.0/8?"},
      {PX "  tunnel_allow: [localhost]\n",
       "t.yml:7:18: proxy.tunnel_allow[0]: invalid network \"localhost\": "
       "expected an IPv4 or IPv6 address, optionally with /prefix"},
      {PX "  tunnel_allow: 127.0.0.0/8\n",
       "t.yml:7:17: proxy.tunnel_allow: expected a sequence of networks "
       "(\"10.0.0.0/8\", \"::1\"), got a scalar"},
      /* hosts: names and numeric addresses */
      {PX "  hosts: {bad_name.test: 127.0.0.7}\n",
       "t.yml:7:11: proxy.hosts: invalid host name \"bad_name.test\" "
       "(letters, digits, dots and dashes)"},
      {PX "  hosts: {10.0.0.1: 127.0.0.7}\n",
       "t.yml:7:11: proxy.hosts: \"10.0.0.1\" is an address; hosts: maps "
       "names to addresses"},
      {PX "  hosts: {a.test: 127.0.0.256}\n",
       "t.yml:7:19: proxy.hosts.a.test: invalid address \"127.0.0.256\": "
       "expected a numeric IPv4 or IPv6 address"},
      {PX "  hosts: {a.test: example.com}\n",
       "t.yml:7:19: proxy.hosts.a.test: invalid address \"example.com\": "
       "expected a numeric IPv4 or IPv6 address"},
      {PX "  hosts: {a.test: \"[::1]\"}\n",
       "t.yml:7:19: proxy.hosts.a.test: invalid address \"[::1]\": an IPv6 "
       "address goes without brackets here"},
      {PX "  hosts: {a.test: [127.0.0.1]}\n",
       "t.yml:7:19: proxy.hosts.a.test: expected a scalar, got a sequence"},
      {PX "  hosts:\n    a.test: 127.0.0.1\n    A.Test: 127.0.0.2\n",
       "t.yml:9:5: proxy.hosts: duplicate host name a.test (first at 8:5)"},
      {PX "  hosts: [a.test]\n",
       "t.yml:7:10: proxy.hosts: expected a mapping of host name: address, "
       "got a sequence"},
      /* leaf_ttl: 10m .. 397 days */
      {PX "  leaf_ttl: 5m\n",
       "t.yml:7:13: proxy.leaf_ttl: must be from 10m to 397 days (9528h), "
       "got \"5m\""},
      {PX "  leaf_ttl: 9529h\n",
       "t.yml:7:13: proxy.leaf_ttl: must be from 10m to 397 days (9528h), "
       "got \"9529h\""},
      {PX "  leaf_ttl: 30d\n",
       "t.yml:7:13: proxy.leaf_ttl: invalid duration \"30d\" (examples: "
       "500ms, 10s, 5m, 1h)"},
      /* the proxy listener collides like any other */
      {"listen: 127.0.0.1:3128\n" PX,
       "t.yml:6:11: proxy.listen: address 127.0.0.1:3128 is already used by "
       "listen"},
      {"admin_listen: 0.0.0.0:3128\n" PX,
       "t.yml:6:11: proxy.listen: address 127.0.0.1:3128 overlaps "
       "admin_listen (0.0.0.0:3128) on port 3128"},
      {UP "    listen: 127.0.0.1:3128\n"
          "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: /c, key: /k}\n",
       "t.yml:6:11: proxy.listen: address 127.0.0.1:3128 is already used by "
       "upstreams[0].listen"},
      {PX "cluster:\n  bind: 127.0.0.1:3127\n",
       "t.yml:5:11: proxy.listen: address 127.0.0.1:3128 is already used by "
       "cluster.peer_listen (default)"},
      {"proxy:\n  listen: 127.0.0.1:7946\n  ca: {cert: /c, key: /k}\n" UP "cluster:\n",
       "t.yml:2:11: proxy.listen: address 127.0.0.1:7946 overlaps "
       "cluster.bind (default) (0.0.0.0:7946) on port 7946"},
      /* aliases: the form */
      {UP "    aliases: [\"https://cdn.example.com\"]\n",
       "t.yml:4:15: upstreams[0].aliases[0]: invalid alias "
       "\"https://cdn.example.com\": expected host or host:port, not a URL"},
      {UP "    aliases: [\"cdn.example.com:0\"]\n",
       "t.yml:4:15: upstreams[0].aliases[0]: invalid alias "
       "\"cdn.example.com:0\": port must be a number from 1 to 65535"},
      {UP "    aliases: [\"cdn.example.com:65536\"]\n",
       "t.yml:4:15: upstreams[0].aliases[0]: invalid alias "
       "\"cdn.example.com:65536\": port must be a number from 1 to 65535"},
      {UP "    aliases: [ok.test, \"fd00::1\"]\n",
       "t.yml:4:24: upstreams[0].aliases[1]: invalid alias \"fd00::1\": IPv6 "
       "addresses need brackets, as in [fd00::7]:5000"},
      {UP "    aliases: [cdn_1.example.com]\n",
       "t.yml:4:15: upstreams[0].aliases[0]: invalid alias "
       "\"cdn_1.example.com\": invalid host (letters, digits, dots and "
       "dashes, or an IP address)"},
      {UP "    aliases: [10.0.0.300]\n",
       "t.yml:4:15: upstreams[0].aliases[0]: invalid alias \"10.0.0.300\": "
       "invalid IPv4 address"},
      {UP "    aliases: cdn.example.com\n",
       "t.yml:4:14: upstreams[0].aliases: expected a sequence of host or "
       "host:port, got a scalar"},
      {UP "    aliases: [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, "
          "b3, b4, b5, b6, b7, b8, b9, c0, c1, c2, c3, c4, c5, c6, c7, c8, "
          "c9, d0, d1, d2]\n",
       "t.yml:4:14: upstreams[0].aliases: too many aliases (33, at most 32)"},
      /* aliases: one upstream per name */
      {UP "    aliases: [cdn.test, CDN.test]\n",
       "t.yml:4:25: upstreams[0].aliases[1]: alias cdn.test is already "
       "upstreams[0].aliases[0]"},
      {UP "    aliases: [cdn.test]\n"
          "  - host: ghcr.io\n    url: https://ghcr.io\n"
          "    aliases: [\"cdn.test:443\"]\n",
       "t.yml:7:15: upstreams[1].aliases[0]: alias cdn.test:443 overlaps "
       "upstreams[0].aliases[0] (cdn.test) on port 443"},
      {UP "    aliases: [GHCR.io]\n"
          "  - host: ghcr.io\n    url: https://ghcr.io\n",
       "t.yml:4:15: upstreams[0].aliases[0]: alias ghcr.io is already "
       "upstreams[1].host"},
      {UP "    aliases: [\"docker.io:80\"]\n",
       "t.yml:4:15: upstreams[0].aliases[0]: alias docker.io:80 overlaps "
       "upstreams[0].host (docker.io) on port 80"},
      {UP "  - host: reg.local:5000\n    url: https://reg.local:5000\n"
          "  - host: ghcr.io\n    url: https://ghcr.io\n"
          "    aliases: [\"reg.local:5000\"]\n",
       "t.yml:8:15: upstreams[2].aliases[0]: alias reg.local:5000 is already "
       "upstreams[1].host"},
      {UP "  - host: ghcr.io\n    url: https://ghcr.io\n"
          "    aliases: [auth.docker.io]\n",
       "t.yml:6:15: upstreams[1].aliases[0]: alias auth.docker.io is already "
       "upstreams[0] (docker.io): Docker Hub answers to it"},
      {"upstreams:\n  - host: ghcr.io\n    url: https://ghcr.io\n"
       "    aliases: [index.docker.io]\n"
       "  - host: registry-1.docker.io\n    url: https://r.io\n",
       "t.yml:4:15: upstreams[0].aliases[0]: alias index.docker.io is "
       "already upstreams[1] (registry-1.docker.io): Docker Hub answers to "
       "it"},
  };
  assert_int_equal(check_errors(cases, sizeof cases / sizeof cases[0]), 0);

  /* not a clash: another port, a Hub name on the Hub, no Hub at all */
  assert_int_equal(load(&cfg,
                        UP "    aliases: [index.docker.io, auth.docker.io, "
                           "\"cdn.test:8443\"]\n"
                           "  - host: ghcr.io\n    url: https://ghcr.io\n"
                           "    aliases: [cdn.test, \"auth.docker.io:8443\"]\n",
                        err, sizeof err),
                   0);
  config_free(&cfg);
  assert_int_equal(load(&cfg,
                        "upstreams:\n  - host: ghcr.io\n    url: https://ghcr.io\n"
                        "    aliases: [auth.docker.io]\n",
                        err, sizeof err),
                   0);
  config_free(&cfg);

  unlink_pair(ca, cakey);
  unlink_pair(ca2, ca2key);
  unlink_pair(leaf, leafkey);
  unlink_pair(nosign, nosignkey);
  unlink(cfgpath);
  rmdir(dir);
}

static void test_proxy_match(void **state) {
  (void)state;
  struct config cfg;
  char err[512];
  assert_int_equal(load(&cfg,
                        "upstreams:\n"
                        "  - host: ghcr.io\n    url: https://ghcr.io\n"
                        "    aliases: [pkg-containers.githubusercontent.com]\n"
                        "  - host: docker.io\n    url: https://registry-1.docker.io\n"
                        "    aliases: [production.cloudflare.docker.com]\n"
                        "  - host: registry.example.com:8443\n"
                        "    url: https://registry.example.com:8443\n"
                        "    aliases: [\"reg.local:5000\", 10.0.0.9, "
                        "\"[fd00::1]:5000\", \"[fd00::2]\"]\n",
                        err, sizeof err),
                   0);
#define M(h, port, plain) config_upstream_proxy_match(&cfg, h, strlen(h), port, plain)
  /* a host on 443, any case; not on other ports */
  assert_int_equal(M("ghcr.io", 443, 0), 0);
  assert_int_equal(M("GHCR.IO", 443, 0), 0);
  assert_int_equal(M("ghcr.io", 8443, 0), -1);
  assert_int_equal(M("ghcr.io", 80, 0), -1);
  assert_int_equal(M("pkg-containers.githubusercontent.com", 443, 0), 0);
  /* a plain http:// request: 80 instead of 443 */
  assert_int_equal(M("ghcr.io", 80, 1), 0);
  assert_int_equal(M("ghcr.io", 443, 1), -1);
  assert_int_equal(M("registry-1.docker.io", 80, 1), 1);
  /* Docker Hub's implied names */
  assert_int_equal(M("docker.io", 443, 0), 1);
  assert_int_equal(M("registry-1.docker.io", 443, 0), 1);
  assert_int_equal(M("Index.Docker.IO", 443, 0), 1);
  assert_int_equal(M("auth.docker.io", 443, 0), 1);
  assert_int_equal(M("auth.docker.io", 5000, 0), -1);
  assert_int_equal(M("production.cloudflare.docker.com", 443, 0), 1);
  assert_int_equal(M("hub.docker.com", 443, 0), -1);
  /* with a port: that port only, plain or not */
  assert_int_equal(M("registry.example.com", 8443, 0), 2);
  assert_int_equal(M("registry.example.com", 443, 0), -1);
  assert_int_equal(M("reg.local", 5000, 0), 2);
  assert_int_equal(M("REG.local", 5000, 1), 2);
  assert_int_equal(M("reg.local", 443, 0), -1);
  assert_int_equal(M("reg.local", 80, 1), -1);
  /* IP literals, IPv6 in any spelling, with or without brackets */
  assert_int_equal(M("10.0.0.9", 443, 0), 2);
  assert_int_equal(M("10.0.0.90", 443, 0), -1);
  assert_int_equal(M("fd00::1", 5000, 0), 2);
  assert_int_equal(M("[FD00:0:0::1]", 5000, 0), 2);
  assert_int_equal(M("[fd00::2]", 443, 0), 2);
  assert_int_equal(M("fd00::2", 5000, 0), -1);
  assert_int_equal(M("fd00::zz", 443, 0), -1);
  /* no match, and bounds */
  assert_int_equal(M("quay.io", 443, 0), -1);
  assert_int_equal(M("ghcr.io.evil", 443, 0), -1);
  assert_int_equal(M("", 443, 0), -1);
  assert_int_equal(M("[]", 443, 0), -1);
  assert_int_equal(M("ghcr.io", 0, 0), -1);
  assert_int_equal(M("ghcr.io", 65536 + 443, 0), -1);
  assert_int_equal(config_upstream_proxy_match(&cfg, NULL, 0, 443, 0), -1);
  assert_int_equal(config_upstream_proxy_match(NULL, "ghcr.io", 7, 443, 0), -1);
  /* only len bytes count */
  assert_int_equal(config_upstream_proxy_match(&cfg, "ghcr.io:443", 7, 443, 0), 0);
  assert_int_equal(config_upstream_proxy_match(&cfg, "ghcr.i", 6, 443, 0), -1);
  char nul[] = "ghcr.io\0x";
  assert_int_equal(config_upstream_proxy_match(&cfg, nul, 9, 443, 0), -1);
  char big[300];
  memset(big, 'a', sizeof big);
  assert_int_equal(config_upstream_proxy_match(&cfg, big, sizeof big, 443, 0), -1);
#undef M
  config_free(&cfg);

  /* the built-in configuration intercepts Docker Hub, ghcr.io and quay.io */
  assert_int_equal(config_default_builtin(&cfg), 0);
  assert_int_equal(config_upstream_proxy_match(&cfg, "auth.docker.io", 14, 443, 0), 0);
  assert_int_equal(config_upstream_proxy_match(&cfg, "quay.io", 7, 443, 0), 2);
  config_free(&cfg);
}

/* ---- robustness: nothing may crash, leak, or fail without a message ---- */

static int n_clean_ok, n_clean_err;

static void expect_clean(const char *yaml, size_t len) {
  struct config cfg;
  char err[512];
  err[0] = 'X';
  err[1] = '\0';
  int rc = config_load_string(&cfg, yaml, len, "f", err, sizeof err);
  if (rc == 0) {
    /* a valid config always has a default upstream */
    assert_non_null(config_upstream_default(&cfg));
    assert_true(cfg.n_upstreams >= 1);
    n_clean_ok++;
  } else {
    n_clean_err++;
    assert_int_equal(rc, RM_ECONFIG);
    /* every line names the file */
    for (const char *l = err; l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
      assert_true(strncmp(l, "f:", 2) == 0);
  }
  config_free(&cfg);
}

static void test_nasty_inputs(void **state) {
  (void)state;
  /* deeply nested sequences, flow and block */
  size_t n = 200000;
  char *deep = malloc(2 * n + 1);
  memset(deep, '[', n);
  memset(deep + n, ']', n);
  struct config cfg;
  char err[256];
  assert_int_equal(config_load_string(&cfg, deep, 2 * n, "d", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "d:1:33: nesting deeper than 32 levels");
  size_t o = 0;
  for (int i = 0; i < 100; i++)
    o += (size_t)sprintf(deep + o, "%*s- \n", i, "");
  assert_int_equal(config_load_string(&cfg, deep, o, "d", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "d:33:33: nesting deeper than 32 levels");
  /* a flat but huge sequence hits the node cap */
  o = (size_t)sprintf(deep, "upstreams: [");
  for (int i = 0; i < 120000; i++)
    o += (size_t)sprintf(deep + o, "1,");
  deep[o++] = ']';
  assert_int_equal(config_load_string(&cfg, deep, o, "d", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "d:1:200007: too many YAML nodes (over 100000)");
  free(deep);

  /* binary garbage, NUL bytes, invalid UTF-8, a BOM */
  expect_clean("\x00\x01\x02\xff\xfe", 5);
  expect_clean("listen: \xc3\x28\n", 11);
  expect_clean("\xef\xbb\xbflisten: 127.0.0.1:1\n" UP,
               strlen("\xef\xbb\xbflisten: 127.0.0.1:1\n" UP));
  expect_clean("\xff\xfe\x00\x00", 4);
  /* a sequence, a number and an alias at the top level */
  expect_clean("[1, 2, 3]", 9);
  expect_clean("42", 2);
  expect_clean("*a", 2);
  expect_clean("&a [*a]", 7);
  expect_clean("!!binary aGVsbG8=", 17);
  expect_clean("%YAML 1.1\n---\nlisten: 1\n", 24);
  expect_clean("%YAML 9.9\n---\n", 14);
  expect_clean("{? : }", 6);
  expect_clean(": :", 3);

  /* a huge number everywhere a number goes */
  expect_clean("http: {max_headers: 1e999999}\n" UP, 30 + strlen(UP));

  /* a BOM-less file is fine, and a BOM file loads */
  const char *bom = "\xef\xbb\xbflisten: 127.0.0.1:1\n" UP;
  assert_int_equal(
      config_load_string(&cfg, bom, strlen(bom), "b", err, sizeof err), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:1");
  config_free(&cfg);
}

/* Every prefix of the full example, and many random mutations of it: the
 * loader must classify each without crashing. */
static void test_mutations(void **state) {
  (void)state;
  size_t len = strlen(full_yaml);
  char *buf = malloc(len + 1);
  n_clean_ok = n_clean_err = 0;
  for (size_t i = 0; i <= len; i++)
    expect_clean(full_yaml, i);

  static const char alphabet[] = ":-[]{}&*!|>'\"#%@`,? \n\t\\0aZ9.\x00\xff\x80";
  unsigned seed = 12345;
  if (getenv("CONFIG_SEED") != NULL)
    seed = (unsigned)strtoul(getenv("CONFIG_SEED"), NULL, 10);
  print_message("mutation seed %u (CONFIG_SEED= to replay)\n", seed);
  srand(seed);
  for (int round = 0; round < 3000; round++) {
    memcpy(buf, full_yaml, len);
    int edits = 1 + rand() % 4;
    for (int e = 0; e < edits; e++) {
      size_t at = (size_t)rand() % len;
      buf[at] = alphabet[(size_t)rand() % (sizeof alphabet - 1)];
    }
    expect_clean(buf, len);
  }
  /* the proxy's keys and aliases too (its CA does not exist: a mutation
   * that still parses fails at the file, or earlier) */
  static const char proxy_yaml[] =
      "upstreams:\n  - host: docker.io\n    url: https://r.io\n"
      "    aliases: [auth.docker.io, \"cdn.test:8443\", \"[fd00::1]\"]\n"
      "proxy:\n  listen: 127.0.0.1:3128\n  ca: {cert: /nonexistent/c, key: /k}\n"
      "  tunnel_allow: [127.0.0.0/8]\n  hosts: {a.test: 10.0.0.1}\n"
      "  leaf_ttl: 1h\n";
  size_t plen = strlen(proxy_yaml);
  for (int round = 0; round < 1000; round++) {
    char pbuf[sizeof proxy_yaml];
    memcpy(pbuf, proxy_yaml, plen);
    int edits = 1 + rand() % 3;
    for (int e = 0; e < edits; e++)
      pbuf[(size_t)rand() % plen] = alphabet[(size_t)rand() % (sizeof alphabet - 1)];
    expect_clean(pbuf, plen);
  }
  for (int round = 0; round < 500; round++) {
    size_t n = (size_t)rand() % 64;
    for (size_t i = 0; i < n; i++)
      buf[i] = (char)(rand() & 0xff);
    expect_clean(buf, n);
  }
  /* both outcomes were reached, so the inputs exercised the schema */
  print_message("mutations: %d loaded, %d refused\n", n_clean_ok, n_clean_err);
  assert_true(n_clean_ok > 100);
  assert_true(n_clean_err > 100);
  free(buf);
}

int main(void) {
  /* the full example names it in password_env, which must be set */
  setenv("REGMESH_HUB_PASSWORD", "s3cret", 1);
  unsetenv("REGMESH_TEST_NEVER_SET");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_minimal),
      cmocka_unit_test(test_full),
      cmocka_unit_test(test_builtin),
      cmocka_unit_test(test_init_defaults),
      cmocka_unit_test(test_parse_size),
      cmocka_unit_test(test_parse_duration),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_error_cap),
      cmocka_unit_test(test_too_many_upstreams),
      cmocka_unit_test(test_default_rules),
      cmocka_unit_test(test_upstream_find),
      cmocka_unit_test(test_load_file),
      cmocka_unit_test(test_cluster_defaults),
      cmocka_unit_test(test_cluster_values),
      cmocka_unit_test(test_cluster_errors),
      cmocka_unit_test(test_cluster_secret_file),
      cmocka_unit_test(test_credentials_directory),
      cmocka_unit_test(test_parse_cidr),
      cmocka_unit_test(test_cidr_match),
      cmocka_unit_test(test_allow),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(test_peer_listen),
      cmocka_unit_test(test_tls),
      cmocka_unit_test(test_proxy),
      cmocka_unit_test(test_proxy_match),
      cmocka_unit_test(test_nasty_inputs),
      cmocka_unit_test(test_mutations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
