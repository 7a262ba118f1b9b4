/* config_cidr.c - `allow:` entries: parse "net/prefix", match addresses.
 *
 * An entry is kept as network bytes with every host bit zero, so a match is
 * a compare of the first prefix bits. Host bits set in the text
 * ("10.0.0.1/8") are refused rather than masked: such an entry is almost
 * always a typo for a narrower net, and masking it would silently open the
 * wider one. IPv4 has one spelling here: an IPv4-mapped entry
 * ("::ffff:10.0.0.0/104") becomes the IPv4 net, and an IPv4-mapped peer (a
 * dual-stack listener's view of an IPv4 client) is matched as its IPv4
 * address (and only as that: "::/0" does not admit it), so neither side
 * needs to know how the socket was bound.
 */
#include "config.h"
#include "config_internal.h"

#include "errors.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0,
                                             0, 0, 0, 0, 0xff, 0xff};

/* prefix_match: the first `prefix` bits of a and net are equal. */
static int prefix_match(const uint8_t *a, const uint8_t *net,
                        unsigned prefix) {
  unsigned full = prefix / 8, rest = prefix % 8;
  if (memcmp(a, net, full) != 0)
    return 0;
  if (rest == 0)
    return 1;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[full] & mask) == (net[full] & mask);
}

/* mask_host_bits clears every bit of addr from `prefix` to `bits`. */
static void mask_host_bits(uint8_t *addr, unsigned prefix, unsigned bits) {
  for (unsigned bit = prefix; bit < bits; bit++)
    addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
}

int config__parse_cidr(const char *s, struct config_cidr *out,
                       struct config_cidr *network, const char **why) {
  char ip[INET6_ADDRSTRLEN + 1];
  struct config_cidr c;
  unsigned bits;

  *why = "expected an IPv4 or IPv6 address, optionally with /prefix";
  if (s == NULL)
    return RM_EPARSE;
  const char *slash = strchr(s, '/');
  size_t il = slash ? (size_t)(slash - s) : strlen(s);
  if (il == 0 || il >= sizeof ip)
    return RM_EPARSE;
  memcpy(ip, s, il);
  ip[il] = '\0';
  memset(&c, 0, sizeof c);
  if (inet_pton(AF_INET, ip, c.addr) == 1) {
    c.family = AF_INET;
    bits = 32;
  } else if (inet_pton(AF_INET6, ip, c.addr) == 1) {
    c.family = AF_INET6;
    bits = 128;
  } else {
    return RM_EPARSE;
  }
  c.prefix = bits;
  if (slash != NULL) {
    const char *p = slash + 1;
    unsigned v = 0;
    size_t n = strlen(p);
    if (n == 0 || n > 3 || strspn(p, "0123456789") != n) {
      *why = "the prefix after / must be a number";
      return RM_EPARSE;
    }
    for (; *p; p++)
      v = v * 10 + (unsigned)(*p - '0');
    if (v > bits) {
      *why = bits == 32 ? "an IPv4 prefix is at most /32"
                        : "an IPv6 prefix is at most /128";
      return RM_EPARSE;
    }
    c.prefix = v;
  }
  struct config_cidr net = c;
  mask_host_bits(net.addr, net.prefix, bits);
  if (memcmp(net.addr, c.addr, sizeof c.addr) != 0) {
    *why = "host bits are set below the prefix";
    if (network != NULL)
      *network = net;
    return RM_EPARSE;
  }
  /* ::ffff:a.b.c.d/96+ is an IPv4 net written the long way */
  if (c.family == AF_INET6 && c.prefix >= 96 &&
      memcmp(c.addr, v4_mapped_prefix, 12) == 0) {
    memmove(c.addr, c.addr + 12, 4);
    memset(c.addr + 4, 0, 12);
    c.family = AF_INET;
    c.prefix -= 96;
  }
  *out = c;
  return 0;
}

int config_parse_cidr(const char *s, struct config_cidr *out) {
  const char *why;
  return config__parse_cidr(s, out, NULL, &why);
}

const char *config__format_cidr(const struct config_cidr *c, char *buf,
                                size_t len) {
  char ip[INET6_ADDRSTRLEN];
  if (inet_ntop(c->family, c->addr, ip, sizeof ip) == NULL)
    snprintf(ip, sizeof ip, "?");
  snprintf(buf, len, "%s/%u", ip, c->prefix);
  return buf;
}

int config_cidr_match(const struct config_cidr *list, size_t n,
                      const struct sockaddr *sa) {
  uint8_t v4[4], v6[16];
  int have4 = 0, have6 = 0;
  if (sa == NULL)
    return 0;
  if (sa->sa_family == AF_INET) {
    memcpy(v4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    have4 = 1;
  } else if (sa->sa_family == AF_INET6) {
    memcpy(v6, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    /* a mapped peer is an IPv4 client: "::/0" must not let it in on a
     * dual-stack socket when it would not on an IPv4 one */
    if (memcmp(v6, v4_mapped_prefix, 12) == 0) {
      memcpy(v4, v6 + 12, 4);
      have4 = 1;
    } else {
      have6 = 1;
    }
  } else {
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    const struct config_cidr *c = &list[i];
    if (c->family == AF_INET && have4 && c->prefix <= 32 &&
        prefix_match(v4, c->addr, c->prefix))
      return 1;
    if (c->family == AF_INET6 && have6 && c->prefix <= 128 &&
        prefix_match(v6, c->addr, c->prefix))
      return 1;
  }
  return 0;
}
