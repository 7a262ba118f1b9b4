/* main.c - the regmesh command line: serve, check-config, members, version.
 *
 * Only this file makes the executable; everything it runs lives in the
 * libraries, so tests link the same code. `members` is a client, not part
 * of a node: it asks a running node's GET /cluster/members (docs/cluster.md)
 * with one blocking libcurl request and prints the answer as a table. The
 * answer comes from the network, so every field is type-checked, bounded
 * and stripped of control characters before it reaches the terminal.
 */
#include "adminc.h"
#include "ca.h"
#include "cachecli.h"
#include "clientcfg.h"
#include "node.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../config/config.h"
#include "regmesh_commit.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: regmesh <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve [--config FILE]   run a node (without --config: the built-in default,\n"
    "                          listening on 127.0.0.1:5000 for docker.io, ghcr.io, "
    "quay.io)\n"
    "  check-config FILE       validate a configuration file and exit\n"
    "  members [--config FILE] [--admin HOST:PORT] [--json]\n"
    "                          list the cluster members a running node sees\n"
    "  client-config docker|containerd|buildkit|podman|all [--config FILE] [--node URL]\n"
    "                [--ca FILE] [--no-fallback] [--write ROOT | --check ROOT]\n"
    "                [--proxy [--proxy-url URL]]\n"
    "                          the files each client needs to pull through the node\n"
    "                          (--proxy: as HTTPS_PROXY, docs/proxy.md)\n"
    "  cache ls|stat|rm|pin|unpin|verify|warm [--config FILE] [--admin HOST:PORT]\n"
    "                          see and steer a running node's cache (regmesh cache --help)\n"
    "  keygen                  print a new cluster.secret (base64 of 32 random bytes)\n"
    "  ca init DIR             create a cluster CA in DIR (ca.key, ca.crt)\n"
    "  ca issue DIR NAME [--ip IP]... [--dns NAME]... [--days N] [--force]\n"
    "                          write DIR/NAME.key and DIR/NAME.crt, signed by DIR's CA\n"
    "  version                 print the version\n"
    "  help                    this text\n";

static int load_config(struct config *cfg, const char *path) {
  char err[CONFIG_ERR_LEN];
  int r = path ? config_load_file(cfg, path, err, sizeof err) : config_default_builtin(cfg);
  if (r) {
    if (path)
      fprintf(stderr, "%s\n", err);
    else
      fprintf(stderr, "regmesh: built-in config: %s\n", rm_strerror(r));
  }
  return r;
}

static int cmd_serve(int argc, char **argv) {
  const char *path = NULL;
  for (int i = 0; i < argc; i++) {
    if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) && i + 1 < argc) {
      path = argv[++i];
    } else if (strncmp(argv[i], "--config=", 9) == 0) {
      path = argv[i] + 9;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    } else {
      fprintf(stderr, "regmesh serve: unknown argument '%s'\n%s", argv[i], usage);
      return 2;
    }
  }
  struct config *cfg = calloc(1, sizeof *cfg);
  if (!cfg || load_config(cfg, path) != 0) {
    free(cfg);
    return 1;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "regmesh: libcurl initialisation failed\n");
    return 1;
  }
  uv_loop_t *loop = uv_default_loop();
  struct node n;
  int r = node_start(&n, loop, cfg);
  if (r) {
    node_stop(&n);
    uv_run(loop, UV_RUN_DEFAULT);
    node_free(&n);
    curl_global_cleanup();
    return 1;
  }
  uv_run(loop, UV_RUN_DEFAULT);
  node_free(&n);
  uv_loop_close(loop);
  curl_global_cleanup();
  LOG_I("stopped");
  return 0;
}

static int cmd_check_config(int argc, char **argv) {
  if (argc == 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
    printf("usage: regmesh check-config FILE\n");
    return 0;
  }
  if (argc != 1) {
    fprintf(stderr, "usage: regmesh check-config FILE\n");
    return 2;
  }
  struct config cfg;
  int r = load_config(&cfg, argv[0]);
  if (r == 0) {
    printf("%s: ok (%zu upstreams)\n", argv[0], cfg.n_upstreams);
    config_free(&cfg);
  }
  return r ? 1 : 0;
}

/* ---- members ---- */

static const char members_usage[] =
    "usage: regmesh members [--config FILE] [--admin HOST:PORT] [--json]\n"
    "\n"
    "Asks a running node for GET /cluster/members and prints its members:\n"
    "NAME STATE ADDRESS ZONE WEIGHT SHARE URL, sorted by name.\n"
    "\n"
    "  --admin HOST:PORT  the node to ask\n"
    "  --config FILE      else ask the admin_listen (or listen) of this config\n"
    "                     (default without either: 127.0.0.1:5000)\n"
    "  --json             print the node's JSON answer as it came\n"
    "\n"
    "A wildcard host (0.0.0.0, [::]) is asked on 127.0.0.1 / [::1].\n";

#define MEMBERS_TIMEOUT_MS 5000L

struct members_opts {
  const char *config;
  const char *admin;
  int json;
};

/* members_args parses argv; returns 0, 1 for --help (printed), or 2 for a
 * usage error (printed). */
static int members_args(int argc, char **argv, struct members_opts *o) {
  memset(o, 0, sizeof *o);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if ((strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0) && i + 1 < argc)
      o->config = argv[++i];
    else if (strncmp(a, "--config=", 9) == 0)
      o->config = a + 9;
    else if (strcmp(a, "--admin") == 0 && i + 1 < argc)
      o->admin = argv[++i];
    else if (strncmp(a, "--admin=", 8) == 0)
      o->admin = a + 8;
    else if (strcmp(a, "--json") == 0)
      o->json = 1;
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(members_usage, stdout);
      return 1;
    } else {
      fprintf(stderr, "regmesh members: unknown argument '%s'\n%s", a, members_usage);
      return 2;
    }
  }
  return 0;
}

/* members_target picks the node's address: --admin, else the config's
 * admin listener (where /cluster/members lives when there is one), else its
 * main listener, else the default one. Returns 0 or an exit code. */
static int members_target(const struct members_opts *o, char *out, size_t outlen) {
  return adminc_target("regmesh members", o->admin, o->config, out, outlen);
}

enum { COL_NAME, COL_STATE, COL_ADDR, COL_ZONE, COL_WEIGHT, COL_SHARE, COL_URL, N_COLS };

static const char *const col_titles[N_COLS] = {"NAME",   "STATE", "ADDRESS", "ZONE",
                                               "WEIGHT", "SHARE", "URL"};

struct member_row {
  char col[N_COLS][260];
};

static int row_cmp(const void *a, const void *b) {
  const struct member_row *x = a, *y = b;
  return strcmp(x->col[COL_NAME], y->col[COL_NAME]);
}

static void row_fill(struct member_row *r, const json_t *m) {
  static const char *const keys[N_COLS] = {"name", "state", "addr", "zone",
                                           NULL,   NULL,    "url"};
  for (int c = 0; c < N_COLS; c++)
    if (keys[c] != NULL)
      adminc_term_copy(r->col[c], sizeof r->col[c],
                json_string_value(json_object_get(m, keys[c])));
  const json_t *w = json_object_get(m, "weight");
  const json_t *s = json_object_get(m, "share");
  if (json_is_integer(w))
    snprintf(r->col[COL_WEIGHT], sizeof r->col[COL_WEIGHT], "%lld",
             (long long)json_integer_value(w));
  else
    adminc_term_copy(r->col[COL_WEIGHT], sizeof r->col[COL_WEIGHT], NULL);
  if (json_is_number(s))
    snprintf(r->col[COL_SHARE], sizeof r->col[COL_SHARE], "%.1f%%",
             json_number_value(s) * 100.0);
  else
    adminc_term_copy(r->col[COL_SHARE], sizeof r->col[COL_SHARE], NULL);
}

static void print_rows(const struct member_row *rows, size_t n) {
  int width[N_COLS];
  for (int c = 0; c < N_COLS; c++) {
    width[c] = (int)strlen(col_titles[c]);
    for (size_t i = 0; i < n; i++)
      if ((int)strlen(rows[i].col[c]) > width[c])
        width[c] = (int)strlen(rows[i].col[c]);
  }
  for (size_t i = 0; i <= n; i++) {
    for (int c = 0; c < N_COLS; c++) {
      const char *v = i == 0 ? col_titles[c] : rows[i - 1].col[c];
      if (c == N_COLS - 1)
        printf("%s\n", v);
      else
        printf("%-*s  ", width[c], v);
    }
  }
}

/* print_summary: "3 members: 2 alive, 1 suspect", states in SWIM order. */
static void print_summary(const struct member_row *rows, size_t n) {
  static const char *const states[] = {"alive", "suspect", "dead", "left"};
  size_t count[5] = {0};
  for (size_t i = 0; i < n; i++) {
    size_t s = 0;
    while (s < 4 && strcmp(rows[i].col[COL_STATE], states[s]) != 0)
      s++;
    count[s]++;
  }
  printf("%zu member%s", n, n == 1 ? "" : "s");
  const char *sep = ": ";
  for (size_t s = 0; s < 5; s++) {
    if (count[s] == 0)
      continue;
    printf("%s%zu %s", sep, count[s], s < 4 ? states[s] : "other");
    sep = ", ";
  }
  printf("\n");
}

static int members_print(const char *url, const struct adminc_body *b) {
  json_error_t jerr;
  json_t *root = json_loadb(b->data ? b->data : "", b->len, 0, &jerr);
  json_t *list = json_object_get(root, "members");
  if (root == NULL || !json_is_array(list)) {
    fprintf(stderr, "regmesh members: unexpected answer from %s: %s\n", url,
            root == NULL ? jerr.text : "no \"members\" list");
    json_decref(root);
    return 1;
  }
  size_t n = json_array_size(list);
  struct member_row *rows = calloc(n ? n : 1, sizeof *rows);
  if (rows == NULL) {
    fprintf(stderr, "regmesh members: out of memory\n");
    json_decref(root);
    return 1;
  }
  for (size_t i = 0; i < n; i++)
    row_fill(&rows[i], json_array_get(list, i));
  qsort(rows, n, sizeof *rows, row_cmp);
  print_rows(rows, n);
  print_summary(rows, n);
  json_t *nc = json_object_get(root, "name_conflicts");
  if (json_is_integer(nc) && json_integer_value(nc) > 0) {
    char what[200];
    adminc_term_copy(what, sizeof what, json_string_value(json_object_get(root, "last_conflict")));
    printf("warning: %lld member name conflict(s), last: %s; every node needs its own "
           "cluster.name\n",
           (long long)json_integer_value(nc), what);
  }
  free(rows);
  json_decref(root);
  return 0;
}

/* members_print_json: the body unchanged, plus a final newline when it has
 * none, so a shell prompt does not follow it on the same line (JSON
 * readers ignore it). */
static void members_print_json(const struct adminc_body *b) {
  fwrite(b->data ? b->data : "", 1, b->len, stdout);
  if (b->len == 0 || b->data[b->len - 1] != '\n')
    putchar('\n');
}

static int cmd_members(int argc, char **argv) {
  struct members_opts o;
  char addr[300], url[340];
  int r = members_args(argc, argv, &o);
  if (r != 0)
    return r == 1 ? 0 : 2;
  if ((r = members_target(&o, addr, sizeof addr)) != 0)
    return r;
  snprintf(url, sizeof url, "http://%s/cluster/members", addr);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "regmesh: libcurl initialisation failed\n");
    return 1;
  }
  struct adminc_body b = {0};
  long status = 0;
  r = adminc_request("regmesh members", "GET", url, MEMBERS_TIMEOUT_MS, &b, &status);
  if (r == 0 && status != 200)
    r = adminc_fail("regmesh members", url, status, &b);
  else if (r == 0 && o.json)
    members_print_json(&b);
  else if (r == 0)
    r = members_print(url, &b);
  free(b.data);
  curl_global_cleanup();
  return r;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "serve") == 0)
    return cmd_serve(argc - 2, argv + 2);
  if (strcmp(cmd, "check-config") == 0)
    return cmd_check_config(argc - 2, argv + 2);
  if (strcmp(cmd, "members") == 0)
    return cmd_members(argc - 2, argv + 2);
  if (strcmp(cmd, "cache") == 0)
    return cachecli(argc - 2, argv + 2);
  if (strcmp(cmd, "client-config") == 0)
    return clientcfg_cli(argc - 2, argv + 2);
  if (strcmp(cmd, "keygen") == 0)
    return ca_cli_keygen(argc - 2, argv + 2);
  if (strcmp(cmd, "ca") == 0)
    return ca_cli(argc - 2, argv + 2);
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("regmesh %s (commit %s)\n", REGMESH_VERSION, REGMESH_COMMIT);
    return 0;
  }
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  fprintf(stderr, "regmesh: unknown command '%s'\n%s", cmd, usage);
  return 2;
}
