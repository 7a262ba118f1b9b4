/* gossip_agent.c - one regmesh gossip node as a process, for the serf tests.
 *
 *   gossip-agent --name N --bind 127.0.0.1:PORT [--join IP:PORT ...]
 *                [--key BASE64 ...] [--tag k=v ...] [--status-file F]
 *                [--advertise IP:PORT] [--log-level debug] [--leave-timeout-ms MS]
 *
 * It runs gossip/env_uv.c on a libuv loop with serf-style metadata (0xff +
 * msgpack map of tags), prints every membership event on stdout, and keeps
 * the member list in the status file (one "name addr state incarnation
 * tags" line per member, written to F.tmp and renamed over F) whenever it
 * changes and on SIGUSR1, which also prints a "stats k=v ..." line. SIGINT
 * leaves gracefully (serf then shows the node `left`), SIGTERM exits
 * without a word (the cluster sees it `failed`). A second SIGINT or
 * SIGTERM while stopping exits at once.
 *
 * The tests in tests/integration/test_serf.py drive it; it is small on
 * purpose and not part of the product.
 */
#include "env_uv.h"
#include "keyring.h"
#include "log.h"
#include "swim.h"
#include "wire.h"

#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define AGENT_MAX_LIST 32
#define AGENT_STATUS_POLL_MS 250

struct agent {
  uv_loop_t *loop;
  struct gossip_uv *g; /* NULL once stopped */
  struct keyring keyring;
  const char *status_path;
  uv_signal_t sig_int, sig_term, sig_usr1;
  uv_timer_t status_timer; /* deferred status writes (never from inside the core) */
  char *last_status;       /* what the file holds now */
  int stopping;
  int exit_code;
};

struct agent_args {
  const char *name, *bind, *advertise, *status_file, *log_level;
  const char *joins[AGENT_MAX_LIST], *keys[AGENT_MAX_LIST], *tags[AGENT_MAX_LIST];
  size_t n_joins, n_keys, n_tags;
  uint64_t leave_timeout_ms;
};

static void usage(void) {
  fprintf(stderr,
          "usage: gossip-agent --name N --bind IP:PORT [--join IP:PORT ...] [--key "
          "BASE64 ...]\n"
          "                    [--tag k=v ...] [--status-file F] [--advertise IP:PORT]\n"
          "                    [--log-level debug|info|warn|error] [--leave-timeout-ms "
          "MS]\n");
}

static int push(const char **list, size_t *n, const char *v) {
  if (*n >= AGENT_MAX_LIST)
    return -1;
  list[(*n)++] = v;
  return 0;
}

static int parse_args(int argc, char **argv, struct agent_args *a) {
  memset(a, 0, sizeof *a);
  for (int i = 1; i < argc; i += 2) { /* --key value pairs */
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (v == NULL)
      return -1;
    if (strcmp(k, "--name") == 0)
      a->name = v;
    else if (strcmp(k, "--bind") == 0)
      a->bind = v;
    else if (strcmp(k, "--advertise") == 0)
      a->advertise = v;
    else if (strcmp(k, "--status-file") == 0)
      a->status_file = v;
    else if (strcmp(k, "--log-level") == 0)
      a->log_level = v;
    else if (strcmp(k, "--leave-timeout-ms") == 0)
      a->leave_timeout_ms = strtoull(v, NULL, 10);
    else if (strcmp(k, "--join") == 0)
      rc = push(a->joins, &a->n_joins, v);
    else if (strcmp(k, "--key") == 0)
      rc = push(a->keys, &a->n_keys, v);
    else if (strcmp(k, "--tag") == 0 && strchr(v, '=') != NULL)
      rc = push(a->tags, &a->n_tags, v);
    else
      return -1;
    if (rc < 0)
      return -1;
  }
  return a->name != NULL && a->bind != NULL ? 0 : -1;
}

/* ---- status file */

/* serf tags as "k=v,k=v", or "-" without tags, or "?" if not serf's layout. */
static void tags_str(const uint8_t *meta, size_t len, char *out, size_t cap) {
  msgpack_unpacked u;
  size_t off = 0, n = 0;

  snprintf(out, cap, "-");
  if (len < 2 || meta[0] != 0xff)
    return;
  msgpack_unpacked_init(&u);
  if (msgpack_unpack_next(&u, (const char *)meta + 1, len - 1, &off) ==
          MSGPACK_UNPACK_SUCCESS &&
      u.data.type == MSGPACK_OBJECT_MAP) {
    for (uint32_t i = 0; i < u.data.via.map.size && n + 1 < cap; i++) {
      const msgpack_object *k = &u.data.via.map.ptr[i].key,
                           *v = &u.data.via.map.ptr[i].val;
      if (k->type != MSGPACK_OBJECT_STR || v->type != MSGPACK_OBJECT_STR)
        continue;
      int w =
          snprintf(out + n, cap - n, "%s%.*s=%.*s", n ? "," : "", (int)k->via.str.size,
                   k->via.str.ptr, (int)v->via.str.size, v->via.str.ptr);
      if (w < 0 || (size_t)w >= cap - n)
        break;
      n += (size_t)w;
    }
  } else {
    snprintf(out, cap, "?");
  }
  msgpack_unpacked_destroy(&u);
}

static int cmp_member(const void *a, const void *b) {
  return strcmp(((const struct swim_member *)a)->name,
                ((const struct swim_member *)b)->name);
}

/* The member list as text, sorted by name (malloc'd). */
static char *status_text(struct swim *s) {
  size_t n = swim_members(s, NULL, 0), cap = 256 + n * 1024, len = 0;
  struct swim_member *ms = calloc(n ? n : 1, sizeof *ms);
  char *txt = malloc(cap), addr[64], tags[768];

  if (ms == NULL || txt == NULL) {
    free(ms);
    free(txt);
    return NULL;
  }
  n = swim_members(s, ms, n);
  qsort(ms, n, sizeof *ms, cmp_member);
  txt[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    tags_str(ms[i].meta, ms[i].meta_len, tags, sizeof tags);
    int w = snprintf(txt + len, cap - len, "%s %s %s %u %s\n", ms[i].name,
                     gossip_uv_format_addr(&ms[i].addr, addr, sizeof addr),
                     swim_state_str(ms[i].state), (unsigned)ms[i].incarnation, tags);
    if (w > 0 && (size_t)w < cap - len)
      len += (size_t)w;
  }
  free(ms);
  return txt;
}

static void status_write(struct agent *a, int force) {
  char tmp[4096];
  char *txt;
  FILE *f;

  if (a->g == NULL || a->status_path == NULL)
    return;
  txt = status_text(gossip_uv_swim(a->g));
  if (txt == NULL)
    return;
  if (!force && a->last_status != NULL && strcmp(txt, a->last_status) == 0) {
    free(txt);
    return;
  }
  snprintf(tmp, sizeof tmp, "%s.tmp", a->status_path);
  f = fopen(tmp, "w");
  if (f == NULL || fputs(txt, f) < 0 || fclose(f) != 0 ||
      rename(tmp, a->status_path) != 0) {
    perror(tmp);
    free(txt);
    return;
  }
  free(a->last_status);
  a->last_status = txt;
}

static void on_status_timer(uv_timer_t *t) {
  struct agent *a = t->data;
  status_write(a, 0);
}

/* ---- membership events (called from inside the core: print, and defer) */

static void on_event(void *ud, enum swim_event ev, const struct swim_member *m) {
  struct agent *a = ud;
  char addr[64];

  printf("event %s %s %s %s inc=%u\n", swim_event_str(ev), m->name,
         gossip_uv_format_addr(&m->addr, addr, sizeof addr), swim_state_str(m->state),
         (unsigned)m->incarnation);
  fflush(stdout);
  if (!a->stopping)
    uv_timer_start(&a->status_timer, on_status_timer, 0, AGENT_STATUS_POLL_MS);
}

/* ---- stopping */

static void agent_close_handles(struct agent *a) {
  uv_close((uv_handle_t *)&a->sig_int, NULL);
  uv_close((uv_handle_t *)&a->sig_term, NULL);
  uv_close((uv_handle_t *)&a->sig_usr1, NULL);
  uv_close((uv_handle_t *)&a->status_timer, NULL);
}

static void on_stopped(void *ud) {
  struct agent *a = ud;
  printf("stopped\n");
  fflush(stdout);
  agent_close_handles(a);
}

/* One "stats k=v ..." line on stdout: the core's counters and the host's. */
static void stats_print(struct agent *a) {
  struct swim_stats s;
  struct gossip_uv_stats u;

  if (a->g == NULL)
    return;
  swim_get_stats(gossip_uv_swim(a->g), &s);
  gossip_uv_get_stats(a->g, &u);
  printf(
      "stats udp_sent=%llu udp_recv=%llu streams_out=%llu streams_in=%llu"
      " dropped_malformed=%llu dropped_auth=%llu dropped_oversize=%llu dropped_crc=%llu"
      " probes=%llu probe_failures=%llu suspicions=%llu refutations=%llu"
      " deaths_declared=%llu awareness=%d udp_send_errors=%llu streams_refused=%llu"
      " streams_timed_out=%llu\n",
      (unsigned long long)s.udp_sent, (unsigned long long)s.udp_recv,
      (unsigned long long)s.streams_out, (unsigned long long)s.streams_in,
      (unsigned long long)s.dropped_malformed, (unsigned long long)s.dropped_auth,
      (unsigned long long)s.dropped_oversize, (unsigned long long)s.dropped_crc,
      (unsigned long long)s.probes, (unsigned long long)s.probe_failures,
      (unsigned long long)s.suspicions, (unsigned long long)s.refutations,
      (unsigned long long)s.deaths_declared, s.awareness,
      (unsigned long long)u.udp_send_errors, (unsigned long long)u.streams_refused,
      (unsigned long long)u.streams_timed_out);
  fflush(stdout);
}

static void on_signal(uv_signal_t *h, int signum) {
  struct agent *a = h->data;

  if (signum == SIGUSR1) {
    status_write(a, 1);
    stats_print(a);
    return;
  }
  if (a->stopping)
    _exit(1); /* asked twice: do not wait for the leave */
  status_write(a, 0);
  a->stopping = 1;
  uv_timer_stop(&a->status_timer);
  printf("%s\n", signum == SIGINT ? "leaving" : "exiting without leave");
  fflush(stdout);
  struct gossip_uv *g = a->g;
  a->g = NULL;
  if (signum == SIGINT)
    gossip_uv_stop(g, 0, on_stopped, a);
  else
    gossip_uv_close(g, on_stopped, a);
}

/* ---- start */

static int agent_meta(const struct agent_args *args, uint8_t *meta, size_t cap) {
  const char *keys[AGENT_MAX_LIST], *vals[AGENT_MAX_LIST];
  char kbuf[AGENT_MAX_LIST][256];

  for (size_t i = 0; i < args->n_tags; i++) {
    const char *eq = strchr(args->tags[i], '=');
    size_t kl = (size_t)(eq - args->tags[i]);
    if (kl >= sizeof kbuf[i])
      return -1;
    memcpy(kbuf[i], args->tags[i], kl);
    kbuf[i][kl] = '\0';
    keys[i] = kbuf[i];
    vals[i] = eq + 1;
  }
  return wire_tags_encode(meta, cap, keys, vals, args->n_tags);
}

static int agent_start(struct agent *a, const struct agent_args *args) {
  struct swim_config cfg;
  struct swim_callbacks cb = {.ud = a, .on_event = on_event};
  char addr[64];
  int rc;

  swim_config_lan(&cfg);
  snprintf(cfg.name, sizeof cfg.name, "%s", args->name);
  rc = agent_meta(args, cfg.meta, sizeof cfg.meta);
  if (rc < 0) {
    fprintf(stderr, "gossip-agent: tags do not fit serf's 512-byte metadata\n");
    return rc;
  }
  cfg.meta_len = (size_t)rc;
  if (args->advertise != NULL &&
      gossip_uv_parse_addr(args->advertise, &cfg.advertise) < 0) {
    fprintf(stderr, "gossip-agent: bad --advertise %s\n", args->advertise);
    return -1;
  }
  keyring_init(&a->keyring);
  for (size_t i = 0; i < args->n_keys; i++) {
    rc = keyring_add_base64(&a->keyring, args->keys[i]);
    if (rc < 0) {
      fprintf(stderr, "gossip-agent: bad --key (want base64 of 16, 24 or 32 bytes)\n");
      return rc;
    }
  }
  cfg.keyring = args->n_keys ? &a->keyring : NULL;

  rc = gossip_uv_start(&a->g, a->loop, &cfg, args->bind, &cb);
  if (rc < 0)
    return rc;
  printf("ready %s %s encrypted=%s\n", args->name,
         gossip_uv_format_addr(gossip_uv_addr(a->g), addr, sizeof addr),
         args->n_keys ? "true" : "false");
  fflush(stdout);
  rc = gossip_uv_join(a->g, args->joins, args->n_joins);
  if (rc < 0)
    printf("join-error %s\n", uv_strerror(rc)); /* the core keeps retrying */
  status_write(a, 1);
  uv_timer_start(&a->status_timer, on_status_timer, AGENT_STATUS_POLL_MS,
                 AGENT_STATUS_POLL_MS);
  return 0;
}

int main(int argc, char **argv) {
  struct agent_args args;
  struct agent a;
  enum log_level lvl;

  if (parse_args(argc, argv, &args) < 0) {
    usage();
    return 2;
  }
  if (args.log_level != NULL) {
    if (log_level_parse(args.log_level, &lvl) < 0) {
      usage();
      return 2;
    }
    log_set_level(lvl);
  }
  signal(SIGPIPE, SIG_IGN);
  memset(&a, 0, sizeof a);
  a.loop = uv_default_loop();
  a.status_path = args.status_file;
  uv_timer_init(a.loop, &a.status_timer);
  a.status_timer.data = &a;
  uv_signal_init(a.loop, &a.sig_int);
  uv_signal_init(a.loop, &a.sig_term);
  uv_signal_init(a.loop, &a.sig_usr1);
  a.sig_int.data = a.sig_term.data = a.sig_usr1.data = &a;
  uv_signal_start(&a.sig_int, on_signal, SIGINT);
  uv_signal_start(&a.sig_term, on_signal, SIGTERM);
  uv_signal_start(&a.sig_usr1, on_signal, SIGUSR1);

  if (agent_start(&a, &args) < 0) {
    agent_close_handles(&a);
    a.exit_code = 1;
  }
  uv_run(a.loop, UV_RUN_DEFAULT);
  uv_loop_close(a.loop);
  free(a.last_status);
  return a.exit_code;
}
