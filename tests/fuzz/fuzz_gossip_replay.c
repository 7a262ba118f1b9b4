/* fuzz_gossip_replay.c - runs LLVMFuzzerTestOneInput without libFuzzer, so
 * every compiler (and CI, as a ctest "unit" test) exercises the gossip
 * decoders on junk.
 *
 *   fuzz_gossip_replay [FILE|DIR]...       replay files, then generated cases
 *   fuzz_gossip_replay --write-corpus DIR  write the seed messages as files
 *
 * Generated cases come from a fixed seed (FUZZ_SEED= to change it): random
 * buffers, and mutations (bit flips, byte overwrites, cuts, insertions,
 * length-field edits) of valid messages of every type built with our
 * encoders, plain and inside CRC, compress, compound and encryption.
 */
#include "errors.h"
#include "keyring.h"
#include "wire.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SEEDS 32
#define SEED_CAP 4096

struct seed {
  const char *name;
  uint8_t buf[SEED_CAP];
  size_t len;
};

static struct seed seeds[MAX_SEEDS];
static size_t nseeds;

static void add_seed(const char *name, const uint8_t *p, int len) {
  if (len <= 0 || nseeds == MAX_SEEDS || (size_t)len > SEED_CAP) {
    fprintf(stderr, "seed %s: %d\n", name, len);
    exit(1);
  }
  seeds[nseeds].name = name;
  memcpy(seeds[nseeds].buf, p, (size_t)len);
  seeds[nseeds].len = (size_t)len;
  nseeds++;
}

static void build_seeds(void) {
  static const uint8_t lo[4] = {127, 0, 0, 1};
  static const uint8_t vsn[6] = {1, 5, 2, 2, 5, 5};
  uint8_t a[SEED_CAP], b[SEED_CAP], c[SEED_CAP];
  int na, nb, nc;
  struct keyring kr;

  struct wire_ping ping = {0};
  ping.seq_no = 1;
  strcpy(ping.node, "b");
  ping.has_source = 1;
  memcpy(ping.source.ip, lo, 4);
  ping.source.ip_len = 4;
  ping.source.port = 7946;
  strcpy(ping.source_node, "a");
  na = wire_encode_ping(a, sizeof a, &ping);
  add_seed("ping", a, na);

  struct wire_indirect_ping ind = {0};
  ind.seq_no = 8;
  ind.nack = 1;
  strcpy(ind.node, "c");
  memcpy(ind.target.ip, lo, 4);
  ind.target.ip_len = 4;
  ind.target.port = 7948;
  ind.has_source = 1;
  ind.source = ping.source;
  strcpy(ind.source_node, "a");
  add_seed("indirect_ping", b, wire_encode_indirect_ping(b, sizeof b, &ind));

  struct wire_ack ack = {0};
  ack.seq_no = 1;
  ack.payload_len = 16;
  memset(ack.payload, 0x01, 16);
  add_seed("ack", b, wire_encode_ack(b, sizeof b, &ack));
  struct wire_nack nack = {8};
  add_seed("nack", b, wire_encode_nack(b, sizeof b, &nack));

  struct wire_suspect sus = {0};
  sus.incarnation = 1;
  strcpy(sus.node, "c");
  strcpy(sus.from, "a");
  add_seed("suspect", b, wire_encode_suspect(b, sizeof b, &sus));
  nb = wire_encode_dead(b, sizeof b, &sus);
  add_seed("dead", b, nb);

  struct wire_alive alive = {0};
  const char *tk[] = {"url", "zone"};
  const char *tv[] = {"http://127.0.0.1:5000", "z1"};
  alive.incarnation = 2;
  strcpy(alive.node, "regmesh-1");
  memcpy(alive.addr.ip, lo, 4);
  alive.addr.ip_len = 4;
  alive.addr.port = 7946;
  alive.meta_len = (size_t)wire_tags_encode(alive.meta, sizeof alive.meta, tk, tv, 2);
  memcpy(alive.vsn, vsn, 6);
  alive.vsn_len = 6;
  nc = wire_encode_alive(c, sizeof c, &alive);
  add_seed("alive", c, nc);
  add_seed("user", b, wire_encode_user(b, sizeof b, (const uint8_t *)"\x00\x82", 2));
  add_seed("err", b, wire_encode_err(b, sizeof b, "bad"));

  /* UDP layers: compound, CRC around it, compress around that */
  const uint8_t *parts[3] = {a, b, c};
  size_t lens[3] = {(size_t)na, 0, (size_t)nc};
  nb = wire_encode_dead(b, sizeof b, &sus);
  lens[1] = (size_t)nb;
  uint8_t comp[SEED_CAP], wrapped[SEED_CAP];
  int ncomp = wire_compound_encode(comp, sizeof comp, parts, lens, 3);
  add_seed("compound", comp, ncomp);
  add_seed("crc_compound", wrapped,
           wire_crc_wrap(wrapped, sizeof wrapped, comp, (size_t)ncomp));
  int nz = wire_compress(wrapped, sizeof wrapped, comp, (size_t)ncomp);
  add_seed("compress_compound", wrapped, nz);
  uint8_t crcz[SEED_CAP];
  add_seed("crc_compress_compound", crcz,
           wire_crc_wrap(crcz, sizeof crcz, wrapped, (size_t)nz));

  keyring_init(&kr);
  keyring_add_base64(&kr, "AAECAwQFBgcICQoLDA0ODw==");
  add_seed("encrypted_udp", b,
           keyring_encrypt(&kr, crcz, (size_t)nz + 5, NULL, 0, b, sizeof b));

  /* TCP: push/pull with two entries and some user state */
  struct wire_push_pull_header h = {1, 2, 3};
  struct wire_push_node pn = {0};
  int off = wire_encode_push_pull_header(a, sizeof a, &h);
  strcpy(pn.name, "regmesh-1");
  pn.addr = alive.addr;
  pn.incarnation = 2;
  memcpy(pn.meta, alive.meta, alive.meta_len);
  pn.meta_len = alive.meta_len;
  memcpy(pn.vsn, vsn, 6);
  pn.vsn_len = 6;
  off += wire_encode_push_node(a + off, sizeof a - (size_t)off, &pn);
  strcpy(pn.name, "gone");
  pn.state = WIRE_STATE_LEFT;
  pn.meta_len = 0;
  off += wire_encode_push_node(a + off, sizeof a - (size_t)off, &pn);
  memcpy(a + off, "\x02\x80\xc0", 3);
  off += 3;
  add_seed("push_pull", a, off);
  nz = wire_compress(c, sizeof c, a, (size_t)off);
  add_seed("push_pull_compressed", c, nz);
  /* [10][len] header, then the sealed compressed stream with it as AD */
  uint32_t sealed = (uint32_t)nz + KEYRING_OVERHEAD;
  b[0] = WIRE_ENCRYPT;
  b[1] = (uint8_t)(sealed >> 24);
  b[2] = (uint8_t)(sealed >> 16);
  b[3] = (uint8_t)(sealed >> 8);
  b[4] = (uint8_t)sealed;
  nb = keyring_encrypt(&kr, c, (size_t)nz, b, 5, b + 5, sizeof b - 5);
  add_seed("push_pull_encrypted", b, nb + 5);
}

static int write_corpus(const char *dir) {
  char path[4096];
  for (size_t i = 0; i < nseeds; i++) {
    snprintf(path, sizeof path, "%s/%s.bin", dir, seeds[i].name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(seeds[i].buf, 1, seeds[i].len, f) != seeds[i].len) {
      perror(path);
      return 1;
    }
    fclose(f);
  }
  printf("wrote %zu seeds to %s\n", nseeds, dir);
  return 0;
}

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf;
  long len;
  if (!f)
    return -1;
  if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return -1;
  }
  buf = malloc(len ? (size_t)len : 1);
  if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
    free(buf);
    fclose(f);
    return -1;
  }
  fclose(f);
  LLVMFuzzerTestOneInput(buf, (size_t)len);
  free(buf);
  return 0;
}

static int run_path(const char *path, size_t *count) {
  struct stat st;
  if (stat(path, &st) != 0) {
    perror(path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    (*count)++;
    return run_file(path);
  }
  DIR *d = opendir(path);
  struct dirent *e;
  char sub[4096];
  if (!d)
    return -1;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
    if (stat(sub, &st) == 0 && S_ISREG(st.st_mode)) {
      (*count)++;
      if (run_file(sub) != 0)
        fprintf(stderr, "cannot read %s\n", sub);
    }
  }
  closedir(d);
  return 0;
}

static uint64_t rng_state;

static uint32_t rnd(void) {
  /* splitmix64: deterministic, no libc rand() state */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* A few random edits of a seed, into out; returns the new length. */
static size_t mutate(const struct seed *s, uint8_t *out, size_t cap) {
  static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xc0, 0xc1, 0xc4, 0xd9,
                                        0xda, 0xdb, 0xdc, 0xde, 0xdf, 0xff, 0x0c, 0x09};
  size_t len = s->len;
  memcpy(out, s->buf, len);
  int edits = 1 + (int)(rnd() % 4);
  for (int e = 0; e < edits && len > 0; e++) {
    size_t at = rnd() % len;
    switch (rnd() % 6) {
    case 0: out[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
    case 1: out[at] = interesting[rnd() % sizeof interesting]; break;
    case 2: out[at] = (uint8_t)rnd(); break;
    case 3: len = at + 1; break; /* cut */
    case 4:                      /* insert */
      if (len < cap) {
        memmove(out + at + 1, out + at, len - at);
        out[at] = (uint8_t)rnd();
        len++;
      }
      break;
    default: /* a big-endian length somewhere set to something large */
      if (at + 2 <= len) {
        out[at] = 0xff;
        out[at + 1] = (uint8_t)rnd();
      }
      break;
    }
  }
  return len;
}

int main(int argc, char **argv) {
  size_t files = 0, generated = 0;
  const char *seed_env = getenv("FUZZ_SEED");
  uint8_t buf[SEED_CAP + 64];

  build_seeds();
  if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
    return write_corpus(argv[2]);
  for (int i = 1; i < argc; i++)
    if (run_path(argv[i], &files) != 0)
      return 1;

  rng_state = seed_env ? strtoull(seed_env, NULL, 0) : 20261127u;
  for (size_t i = 0; i < nseeds; i++, generated++)
    LLVMFuzzerTestOneInput(seeds[i].buf, seeds[i].len);
  for (int round = 0; round < 400; round++, generated++) {
    size_t len = rnd() % sizeof buf;
    for (size_t i = 0; i < len; i++)
      buf[i] = (uint8_t)rnd();
    if (len && round % 4 == 0) /* a plausible type byte helps */
      buf[0] = (uint8_t)(rnd() % 14);
    LLVMFuzzerTestOneInput(buf, len);
  }
  for (int round = 0; round < 4000; round++, generated++) {
    size_t len = mutate(&seeds[rnd() % nseeds], buf, sizeof buf);
    LLVMFuzzerTestOneInput(buf, len);
  }
  printf("fuzz_gossip_replay: %zu files, %zu generated inputs, seed %llu: ok\n", files,
         generated,
         (unsigned long long)(seed_env ? strtoull(seed_env, NULL, 0) : 20261127u));
  return 0;
}
