/* fuzz_replay.c - runs a libFuzzer target without libFuzzer, so every
 * compiler (and CI, as a ctest "unit" test) feeds it junk: the files named
 * (or every file of the directories named), then generated cases from a
 * fixed seed (FUZZ_SEED= to change it): random buffers and mutations of
 * the files (bit flips, byte overwrites, cuts).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CASES 20000
#define REPLAY_MAX_INPUT 8192

static uint8_t *inputs[256];
static size_t lens[256], n_inputs;

static void load(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0)
    return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.')
        continue;
      char p[4096];
      snprintf(p, sizeof p, "%s/%s", path, e->d_name);
      load(p);
    }
    if (d)
      closedir(d);
    return;
  }
  FILE *f = fopen(path, "rb");
  if (!f || n_inputs == 256) {
    if (f)
      fclose(f);
    return;
  }
  uint8_t *b = malloc(REPLAY_MAX_INPUT);
  size_t n = b ? fread(b, 1, REPLAY_MAX_INPUT, f) : 0;
  fclose(f);
  if (!b)
    return;
  LLVMFuzzerTestOneInput(b, n);
  inputs[n_inputs] = b;
  lens[n_inputs++] = n;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    load(argv[i]);
  const char *nc = getenv("FUZZ_CASES"); /* fewer for slow targets */
  int cases = nc ? atoi(nc) : CASES;
  const char *s = getenv("FUZZ_SEED");
  srand(s ? (unsigned)strtoul(s, NULL, 10) : 1);
  uint8_t buf[REPLAY_MAX_INPUT];
  for (int c = 0; c < cases; c++) {
    size_t n;
    if (n_inputs && c % 4 != 0) {
      size_t k = (size_t)rand() % n_inputs;
      n = lens[k];
      memcpy(buf, inputs[k], n);
      for (int m = rand() % 4 + 1; m > 0 && n > 0; m--) {
        size_t at = (size_t)rand() % n;
        switch (rand() % 3) {
        case 0: buf[at] ^= (uint8_t)(1u << (rand() % 8)); break;
        case 1: buf[at] = (uint8_t)rand(); break;
        default: n = at + 1; break;
        }
      }
    } else {
      n = (size_t)rand() % 512;
      for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)rand();
    }
    LLVMFuzzerTestOneInput(buf, n);
  }
  for (size_t i = 0; i < n_inputs; i++)
    free(inputs[i]);
  printf("replayed %zu files and %d generated cases\n", n_inputs, cases);
  return 0;
}
