/* fuzz_access.c - libFuzzer target for the access-control parsers: the
 * first byte picks one, the rest is its input.
 *   0: an `allow:` entry (config_parse_cidr), matched against fixed peers
 *   1: an htpasswd file (htpasswd_parse), every user then looked up
 *   2: an Authorization header value (access_parse_basic)
 *   3: a node token (access_token_verify), and one issued for the bytes as
 *      a user name, which must verify back to it
 */
#include "access.h"
#include "config.h"
#include "htpasswd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 65536)
    return 0;
  char *s = malloc(size);
  if (!s)
    return 0;
  memcpy(s, data + 1, size - 1);
  s[size - 1] = '\0'; /* these parsers take C strings */
  switch (data[0] % 4) {
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
  case 3: {
    static uv_loop_t loop;
    static struct config cfg;
    static struct access *a;
    if (!a) {
      uv_loop_init(&loop);
      /* zeroed: no htpasswd, loopback only; config.c is not linked in here */
      if (access_new(&a, &loop, &cfg) != 0)
        abort();
    }
    char user[64], tok[ACCESS_TOKEN_MAX];
    int rc = access_token_verify(a, s, 1000, user, sizeof user);
    if (rc == 0 && strlen(user) > 63)
      abort();
    if (access_token_issue(a, s, 1000, 60, tok, sizeof tok) == 0 &&
        (access_token_verify(a, tok, 1000, user, sizeof user) != 0 || strcmp(user, s) != 0 ||
         access_token_verify(a, tok, 1061, user, sizeof user) != UV_EACCES))
      abort();
    break;
  }
  }
  free(s);
  return 0;
}
