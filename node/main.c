/* main.c - the regmesh command line: serve, check-config, version.
 *
 * Only this file makes the executable; everything it runs lives in the
 * libraries, so tests link the same code.
 */
#include "node.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../config/config.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: regmesh <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve [--config FILE]   run a node (without --config: the built-in default,\n"
    "                          listening on 127.0.0.1:5000 for docker.io, ghcr.io, quay.io)\n"
    "  check-config FILE       validate a configuration file and exit\n"
    "  version                 print the version\n"
    "  help                    this text\n";

static int load_config(struct config *cfg, const char *path) {
  char err[512];
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
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("regmesh %s\n", REGMESH_VERSION);
    return 0;
  }
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  fprintf(stderr, "regmesh: unknown command '%s'\n%s", cmd, usage);
  return 2;
}
