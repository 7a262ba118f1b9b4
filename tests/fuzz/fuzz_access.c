/* fuzz_access.c - libFuzzer target for the access-control parsers: the
 * first byte picks one, the rest is its input.
 *   0: an `allow:` entry (config_parse_cidr), matched against fixed peers
 *   1: an htpasswd file (htpasswd_parse), every user then looked up
 *   2: an Authorization header value (access_parse_basic)
 */
#include "access.h"
#include "config.h"
#include "htpasswd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 65536)
    return 0;
  char *s = malloc(size);
  if (!s)
    return 0;
  memcpy(s, data + 1, size - 1);
  s[size - 1] = '\0'; /* these parsers take C strings */
  switch (data[0] % 3) {
  case 0: {
    struct config_cidr c;
    if (config_parse_cidr(s, &c) == 0) {
      struct sockaddr_in a4 = {.sin_family = AF_INET};
      struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
      inet_pton(AF_INET, "10.1.2.3", &a4.sin_addr);
      inet_pton(AF_INET6, "::ffff:10.1.2.3", &a6.sin6_addr);
      if (config_cidr_match(&c, 1, (struct sockaddr *)&a4) !=
          config_cidr_match(&c, 1, (struct sockaddr *)&a6) && c.family == AF_INET)
        abort(); /* a mapped address must match like its IPv4 one */
    }
    break;
  }
  case 1: {
    struct htpasswd h;
    char err[256];
    if (htpasswd_parse(&h, s, size - 1, "fuzz", err, sizeof err) == 0) {
      for (size_t i = 0; i < h.n; i++)
        if (!htpasswd_lookup(&h, h.e[i].user, strlen(h.e[i].user)))
          abort();
      htpasswd_free(&h);
    }
    break;
  }
  case 2: {
    char cred[1024];
    size_t len, colon;
    if (access_parse_basic(s, cred, sizeof cred, &len, &colon) == 0 &&
        (len >= sizeof cred || colon == 0 || colon >= len || cred[colon] != ':' ||
         cred[len] != '\0'))
      abort();
    break;
  }
  }
  free(s);
  return 0;
}
