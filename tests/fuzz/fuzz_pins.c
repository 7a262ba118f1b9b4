/* fuzz_pins.c - libFuzzer target for the pin file parser (storage/pins.c):
 * pin files live on disk under the cache root, where anyone with write
 * access to it may leave anything. A parse that succeeds must give a
 * printable name and valid digests.
 */
#include "digest.h"
#include "storage.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct blobstore_pin p;
  if (storage_pin_parse((const char *)data, size, &p) == 0) {
    size_t n = strlen(p.name);
    assert(n > 0 && n <= STORAGE_PIN_NAME_MAX);
    for (size_t i = 0; i < n; i++)
      assert(p.name[i] >= 0x20 && p.name[i] < 0x7f);
    for (size_t i = 0; i < p.n; i++)
      assert(digest_hex_valid(p.hex[i]));
  }
  free(p.hex);
  return 0;
}
