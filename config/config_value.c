/* config_value.c - the scalar grammars of the configuration.
 *
 * Pure functions from a NUL-terminated string to a value: sizes ("20GiB"),
 * durations ("500ms"), numbers, booleans, listen addresses, registry host
 * names, upstream URLs, proxy aliases, and for `cluster:` numeric gossip
 * addresses, join seeds, member names and base64 keys. Each walks the
 * string with a cursor and refuses anything it does not fully understand,
 * overflow included, and none of them knows about YAML: config.c turns a
 * refusal into a message with a file position. Sizes and durations share
 * one "number with a unit" parser that does its arithmetic in 128 bits, so
 * "1.5G" is exact and any result that does not fit 64 bits is reported
 * rather than wrapped.
 */
#include "config.h"
#include "config_internal.h"

#include "errors.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

struct unit {
  const char *name;
  uint64_t mult;
};

/* "K/M/G/T" mean the binary units: that is what people mean by "20G" of
 * disk, and what docker and Kubernetes do. */
static const struct unit size_units[] = {
    {"", 1},
    {"B", 1},
    {"KB", 1000ULL},
    {"MB", 1000ULL * 1000},
    {"GB", 1000ULL * 1000 * 1000},
    {"TB", 1000ULL * 1000 * 1000 * 1000},
    {"KiB", 1ULL << 10},
    {"MiB", 1ULL << 20},
    {"GiB", 1ULL << 30},
    {"TiB", 1ULL << 40},
    {"K", 1ULL << 10},
    {"M", 1ULL << 20},
    {"G", 1ULL << 30},
    {"T", 1ULL << 40},
};

/* In milliseconds; a bare number is seconds, like every timeout in the
 * config's examples. */
static const struct unit duration_units[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000},
};

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* digits ['.' digits] [spaces] [unit], the unit matched case-insensitively
 * against the whole rest of the string. */
static int parse_scaled(const char *s, const struct unit *units, size_t n,
                        uint64_t *out) {
  const char *p = s;
  unsigned __int128 ip = 0, frac = 0, pow10 = 1;
  int too_big = 0;

  if (s == NULL || !is_digit(*p))
    return RM_EPARSE;
  for (; is_digit(*p); p++) {
    if (!too_big) {
      ip = ip * 10 + (unsigned)(*p - '0');
      too_big = ip > UINT64_MAX;
    }
  }
  int has_frac = 0;
  if (*p == '.') {
    p++;
    if (!is_digit(*p))
      return RM_EPARSE;
    has_frac = 1;
    /* 18 digits are finer than any unit we have; the rest cannot change the
     * integer result, but must still be digits. */
    for (int digits = 0; is_digit(*p); p++, digits++) {
      if (digits < 18) {
        frac = frac * 10 + (unsigned)(*p - '0');
        pow10 *= 10;
      }
    }
  }
  while (*p == ' ')
    p++;
  const struct unit *u = NULL;
  for (size_t i = 0; i < n; i++) {
    if (strcasecmp(p, units[i].name) == 0) {
      u = &units[i];
      break;
    }
  }
  if (u == NULL)
    return RM_EPARSE;
  /* a fraction of a byte or a millisecond is a typo, not a value */
  if (has_frac && u->mult == 1)
    return RM_EPARSE;
  if (too_big)
    return RM_ETOOBIG;
  unsigned __int128 total = ip * u->mult + frac * u->mult / pow10;
  if (total > UINT64_MAX)
    return RM_ETOOBIG;
  *out = (uint64_t)total;
  return 0;
}

int config_parse_size(const char *s, uint64_t *out) {
  return parse_scaled(s, size_units, sizeof size_units / sizeof size_units[0],
                      out);
}

int config_parse_duration(const char *s, uint64_t *out_ms) {
  return parse_scaled(s, duration_units,
                      sizeof duration_units / sizeof duration_units[0], out_ms);
}

int config__parse_uint(const char *s, uint64_t *out) {
  uint64_t v = 0;
  if (s == NULL || !is_digit(*s))
    return RM_EPARSE;
  int too_big = 0;
  for (; is_digit(*s); s++) {
    unsigned d = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - d) / 10)
      too_big = 1;
    else
      v = v * 10 + d;
  }
  if (*s != '\0')
    return RM_EPARSE;
  if (too_big)
    return RM_ETOOBIG;
  *out = v;
  return 0;
}

int config__parse_bool(const char *s, int *out) {
  static const char *yes[] = {"true", "yes", "on"};
  static const char *no[] = {"false", "no", "off"};
  for (int i = 0; i < 3; i++) {
    if (strcasecmp(s, yes[i]) == 0) {
      *out = 1;
      return 0;
    }
    if (strcasecmp(s, no[i]) == 0) {
      *out = 0;
      return 0;
    }
  }
  return RM_EPARSE;
}

/* min.."65535", no sign, no leading zero tricks beyond plain digits. */
static int parse_port_min(const char *p, size_t len, unsigned min,
                          unsigned *out) {
  unsigned v = 0;
  if (len == 0 || len > 5)
    return RM_EPARSE;
  for (size_t i = 0; i < len; i++) {
    if (!is_digit(p[i]))
      return RM_EPARSE;
    v = v * 10 + (unsigned)(p[i] - '0');
  }
  if (v < min || v > 65535)
    return RM_EPARSE;
  *out = v;
  return 0;
}

static int parse_port(const char *p, size_t len, unsigned *out) {
  return parse_port_min(p, len, 1, out);
}

/* letters, digits, dots and dashes; each dot-separated label 1..63 long,
 * not starting or ending with a dash (the distribution spec's domain
 * component). */
static int check_dns_name(const char *s, size_t len) {
  if (len == 0 || len > 253)
    return RM_EPARSE;
  size_t label = 0;
  for (size_t i = 0; i <= len; i++) {
    char c = i < len ? s[i] : '.';
    if (c == '.') {
      if (label == 0 || label > 63 || s[i - 1] == '-')
        return RM_EPARSE;
      label = 0;
    } else if (isalnum((unsigned char)c) || c == '-') {
      if (label == 0 && c == '-')
        return RM_EPARSE;
      label++;
    } else {
      return RM_EPARSE;
    }
  }
  return 0;
}

int config__parse_listen(const char *s, struct config__addr *out,
                         const char **why) {
  const char *colon;
  memset(out, 0, sizeof *out);
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    char v6[64];
    unsigned char bin[16];
    if (close == NULL || close[1] != ':') {
      *why = "expected [v6]:port";
      return RM_EPARSE;
    }
    size_t hlen = (size_t)(close - s - 1);
    if (hlen == 0 || hlen >= sizeof v6) {
      *why = "invalid IPv6 address";
      return RM_EPARSE;
    }
    memcpy(v6, s + 1, hlen);
    v6[hlen] = '\0';
    if (inet_pton(AF_INET6, v6, bin) != 1) {
      *why = "invalid IPv6 address";
      return RM_EPARSE;
    }
    inet_ntop(AF_INET6, bin, out->host, sizeof out->host);
    static const unsigned char any[16];
    out->wildcard = memcmp(bin, any, 16) == 0;
    colon = close + 1;
  } else {
    colon = strchr(s, ':');
    if (colon == NULL) {
      *why = "expected host:port or [v6]:port";
      return RM_EPARSE;
    }
    if (strchr(colon + 1, ':') != NULL) {
      *why = "IPv6 addresses need brackets, as in [::1]:5000";
      return RM_EPARSE;
    }
    size_t hlen = (size_t)(colon - s);
    if (hlen == 0) {
      *why = "missing host (use 0.0.0.0 for every address)";
      return RM_EPARSE;
    }
    if (check_dns_name(s, hlen) != 0) {
      *why = "invalid host";
      return RM_EPARSE;
    }
    memcpy(out->host, s, hlen);
    out->host[hlen] = '\0';
    /* a name made of digits and dots must be a real IPv4 address */
    if (strspn(out->host, "0123456789.") == hlen) {
      unsigned char bin[4];
      if (inet_pton(AF_INET, out->host, bin) != 1) {
        *why = "invalid IPv4 address";
        return RM_EPARSE;
      }
      out->wildcard = memcmp(bin, "\0\0\0\0", 4) == 0;
    }
    for (char *h = out->host; *h; h++)
      *h = (char)tolower((unsigned char)*h);
  }
  if (parse_port(colon + 1, strlen(colon + 1), &out->port) != 0) {
    *why = "port must be a number from 1 to 65535";
    return RM_EPARSE;
  }
  return 0;
}

/* parse_v6_bracket reads "[v6]" at s (the ']' at close) into out->host in
 * inet_ntop form and sets out->wildcard. */
static int parse_v6_bracket(const char *s, const char *close,
                            struct config__addr *out) {
  char v6[64];
  unsigned char bin[16];
  static const unsigned char any[16];
  size_t hlen = (size_t)(close - s - 1);
  if (hlen == 0 || hlen >= sizeof v6)
    return RM_EPARSE;
  memcpy(v6, s + 1, hlen);
  v6[hlen] = '\0';
  if (inet_pton(AF_INET6, v6, bin) != 1)
    return RM_EPARSE;
  inet_ntop(AF_INET6, bin, out->host, sizeof out->host);
  out->wildcard = memcmp(bin, any, 16) == 0;
  return 0;
}

int config__parse_ip_port(const char *s, unsigned min_port,
                          struct config__addr *out, const char **why) {
  const char *colon;
  memset(out, 0, sizeof *out);
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':') {
      *why = "expected [v6]:port";
      return RM_EPARSE;
    }
    if (parse_v6_bracket(s, close, out) != 0) {
      *why = "invalid IPv6 address";
      return RM_EPARSE;
    }
    colon = close + 1;
  } else {
    unsigned char bin[4];
    colon = strchr(s, ':');
    if (colon == NULL) {
      *why = "expected ip:port or [v6]:port";
      return RM_EPARSE;
    }
    if (strchr(colon + 1, ':') != NULL) {
      *why = "IPv6 addresses need brackets, as in [fd00::7]:7946";
      return RM_EPARSE;
    }
    size_t hlen = (size_t)(colon - s);
    if (hlen == 0 || hlen >= 16) {
      *why = "expected an IP address, not a host name";
      return RM_EPARSE;
    }
    memcpy(out->host, s, hlen);
    out->host[hlen] = '\0';
    /* gossip binds and announces one address: a name could resolve to
     * several, or to a different one tomorrow */
    if (inet_pton(AF_INET, out->host, bin) != 1) {
      *why = strspn(out->host, "0123456789.") == hlen
                 ? "invalid IPv4 address"
                 : "expected an IP address, not a host name";
      return RM_EPARSE;
    }
    out->wildcard = memcmp(bin, "\0\0\0\0", 4) == 0;
  }
  if (parse_port_min(colon + 1, strlen(colon + 1), min_port, &out->port) !=
      0) {
    *why = min_port == 0 ? "port must be a number from 0 to 65535"
                         : "port must be a number from 1 to 65535";
    return RM_EPARSE;
  }
  return 0;
}

/* host_port: a "host", "host:port", "[v6]" or "[v6]:port" as
 * parse_host_port split it. host points into the string, brackets
 * included; port is 0 when none was given. */
struct host_port {
  const char *host;
  size_t hlen;
  struct config__addr v6; /* host in inet_ntop form, when bracketed */
  unsigned port;
};

/* parse_host_port checks the grammar join seeds and proxy aliases share:
 * host a DNS name or an IP address, IPv6 in brackets (else
 * unbracketed_why, whose example names the caller's port). */
static int parse_host_port(const char *s, const char *unbracketed_why,
                           struct host_port *out, const char **why) {
  const char *port = NULL;
  memset(out, 0, sizeof *out);
  out->host = s;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || (close[1] != '\0' && close[1] != ':')) {
      *why = "expected [v6] or [v6]:port";
      return RM_EPARSE;
    }
    if (parse_v6_bracket(s, close, &out->v6) != 0) {
      *why = "invalid IPv6 address";
      return RM_EPARSE;
    }
    out->hlen = (size_t)(close - s) + 1;
    port = close[1] == ':' ? close + 2 : NULL;
  } else {
    const char *colon = strchr(s, ':');
    if (strstr(s, "://") != NULL) {
      *why = "expected host or host:port, not a URL";
      return RM_EPARSE;
    }
    if (colon != NULL && strchr(colon + 1, ':') != NULL) {
      *why = unbracketed_why;
      return RM_EPARSE;
    }
    out->hlen = colon ? (size_t)(colon - s) : strlen(s);
    port = colon ? colon + 1 : NULL;
    if (out->hlen == 0) {
      *why = "missing host";
      return RM_EPARSE;
    }
    if (check_dns_name(s, out->hlen) != 0) {
      *why = "invalid host (letters, digits, dots and dashes, or an IP "
             "address)";
      return RM_EPARSE;
    }
    /* digits and dots pass for a name: they must be an IPv4 address */
    if (strspn(s, "0123456789.") >= out->hlen) {
      char v4[16];
      unsigned char bin[4];
      if (out->hlen >= sizeof v4) {
        *why = "invalid IPv4 address";
        return RM_EPARSE;
      }
      memcpy(v4, s, out->hlen);
      v4[out->hlen] = '\0';
      if (inet_pton(AF_INET, v4, bin) != 1) {
        *why = "invalid IPv4 address";
        return RM_EPARSE;
      }
    }
  }
  if (port != NULL && parse_port(port, strlen(port), &out->port) != 0) {
    *why = "port must be a number from 1 to 65535";
    return RM_EPARSE;
  }
  return 0;
}

int config__parse_seed(const char *s, char *out, size_t outlen,
                       const char **why) {
  struct host_port hp;
  if (parse_host_port(s, "IPv6 addresses need brackets, as in [fd00::7]:7946",
                      &hp, why) != 0)
    return RM_EPARSE;
  /* "[" + 45 + "]" or a 253-byte name, ":" and 5 digits */
  if (hp.hlen + 7 > outlen) {
    *why = "too long";
    return RM_EPARSE;
  }
  memcpy(out, hp.host, hp.hlen);
  snprintf(out + hp.hlen, outlen - hp.hlen, ":%u",
           hp.port ? hp.port : CONFIG_CLUSTER_PORT);
  for (size_t i = 0; i < hp.hlen; i++)
    out[i] = (char)tolower((unsigned char)out[i]);
  return 0;
}

int config__check_dns_name(const char *s, size_t len) {
  return check_dns_name(s, len);
}

int config__parse_alias(const char *s, char *out, size_t outlen, const char **why) {
  char host[260]; /* a 253-byte name, or "[" v6 "]" */
  struct host_port hp;
  /* before the brackets, unlike a seed: "[v6]://" is a URL here too */
  if (strstr(s, "://") != NULL) {
    *why = "expected host or host:port, not a URL";
    return RM_EPARSE;
  }
  if (parse_host_port(s, "IPv6 addresses need brackets, as in [fd00::7]:5000",
                      &hp, why) != 0)
    return RM_EPARSE;
  if (s[0] == '[') {
    /* one spelling per address, so duplicates are found and a CONNECT
     * to [FD00:0::1] matches an alias written [fd00::1] */
    snprintf(host, sizeof host, "[%s]", hp.v6.host);
  } else {
    /* check_dns_name held hlen to 253 */
    memcpy(host, s, hp.hlen);
    host[hp.hlen] = '\0';
    for (char *h = host; *h; h++)
      *h = (char)tolower((unsigned char)*h);
  }
  int n = hp.port != 0 ? snprintf(out, outlen, "%s:%u", host, hp.port)
                       : snprintf(out, outlen, "%s", host);
  if (n < 0 || (size_t)n >= outlen) {
    *why = "too long";
    return RM_EPARSE;
  }
  return 0;
}

int config__check_member_name(const char *s, size_t len, size_t max,
                              const char **why) {
  if (len == 0) {
    *why = "must not be empty";
    return RM_EPARSE;
  }
  if (len > max) {
    *why = "too long";
    return RM_EPARSE;
  }
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f) {
      *why = "printable ASCII without spaces only";
      return RM_EPARSE;
    }
  }
  return 0;
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

int config__base64_decode(const char *s, size_t len, uint8_t *out, size_t cap,
                          size_t *outlen) {
  size_t n = len, pad = 0;
  while (n > 0 && s[n - 1] == '=' && pad < 2) {
    n--;
    pad++;
  }
  /* padding is optional, but when present it must complete the last
   * quantum, as `base64` writes it */
  if ((pad > 0 && len % 4 != 0) || n % 4 == 1 || n == 0)
    return RM_EPARSE;
  for (size_t i = 0; i < n; i++)
    if (b64_value((unsigned char)s[i]) < 0)
      return RM_EPARSE;
  size_t total = n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);
  if (pad > 0 && (4 - n % 4) % 4 != pad)
    return RM_EPARSE;
  *outlen = total;
  if (total > cap)
    return RM_ETOOBIG;
  uint32_t acc = 0;
  size_t bits = 0, o = 0;
  for (size_t i = 0; i < n; i++) {
    acc = (acc << 6) | (uint32_t)b64_value((unsigned char)s[i]);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  return 0;
}

int config__check_registry_host(const char *s, const char **why) {
  const char *colon = strchr(s, ':');
  size_t hlen = colon ? (size_t)(colon - s) : strlen(s);
  unsigned port;
  if (check_dns_name(s, hlen) != 0) {
    *why = "letters, digits, dots and dashes, with an optional :port";
    return RM_EPARSE;
  }
  if (colon != NULL && parse_port(colon + 1, strlen(colon + 1), &port) != 0) {
    *why = "port must be a number from 1 to 65535";
    return RM_EPARSE;
  }
  return 0;
}

/* host[:port] or [v6][:port] of a URL's authority. */
static int check_authority(const char *a, size_t len) {
  unsigned port;
  if (len > 0 && a[0] == '[') {
    const char *close = memchr(a, ']', len);
    char v6[64];
    unsigned char bin[16];
    size_t hlen = close ? (size_t)(close - a - 1) : 0;
    if (close == NULL || hlen == 0 || hlen >= sizeof v6)
      return RM_EPARSE;
    memcpy(v6, a + 1, hlen);
    v6[hlen] = '\0';
    if (inet_pton(AF_INET6, v6, bin) != 1)
      return RM_EPARSE;
    size_t rest = len - hlen - 2;
    if (rest == 0)
      return 0;
    if (close[1] != ':')
      return RM_EPARSE;
    return parse_port(close + 2, rest - 1, &port);
  }
  const char *colon = memchr(a, ':', len);
  size_t hlen = colon ? (size_t)(colon - a) : len;
  if (check_dns_name(a, hlen) != 0)
    return RM_EPARSE;
  if (colon != NULL)
    return parse_port(colon + 1, len - hlen - 1, &port);
  return 0;
}

int config__check_url(const char *s, const char **why) {
  size_t skip;
  if (strncasecmp(s, "https://", 8) == 0) {
    skip = 8;
  } else if (strncasecmp(s, "http://", 7) == 0) {
    skip = 7;
  } else {
    *why = "must start with http:// or https://";
    return RM_EPARSE;
  }
  for (const char *p = s; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c <= 0x20 || c == 0x7f) {
      *why = "must not contain spaces or control characters";
      return RM_EPARSE;
    }
    if (c == '?' || c == '#') {
      *why = "must not have a query or a fragment";
      return RM_EPARSE;
    }
  }
  const char *auth = s + skip;
  size_t alen = strcspn(auth, "/");
  if (memchr(auth, '@', alen) != NULL) {
    *why = "must not carry credentials; use username and password";
    return RM_EPARSE;
  }
  if (alen == 0 || check_authority(auth, alen) != 0) {
    *why = "invalid host in URL";
    return RM_EPARSE;
  }
  size_t len = strlen(s);
  while (len > skip + alen && s[len - 1] == '/')
    len--;
  if (len > INT32_MAX) {
    *why = "too long";
    return RM_EPARSE;
  }
  return (int)len;
}

int config__check_env_name(const char *s) {
  if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
    return RM_EPARSE;
  for (const char *p = s; *p; p++)
    if (!(isalnum((unsigned char)*p) || *p == '_'))
      return RM_EPARSE;
  return 0;
}

int config__is_docker_hub(const char *host, size_t len) {
  static const char *names[] = {"docker.io", "index.docker.io",
                                "registry-1.docker.io"};
  for (int i = 0; i < 3; i++)
    if (len == strlen(names[i]) && strncasecmp(host, names[i], len) == 0)
      return 1;
  return 0;
}

size_t config__edit_distance(const char *a, size_t alen, const char *b,
                             size_t blen) {
  size_t d[3][65];
  if (alen > 64 || blen > 64)
    return SIZE_MAX;
  /* three rolling rows: i-2 for transpositions, i-1, and i */
  for (size_t j = 0; j <= blen; j++)
    d[0][j] = j;
  for (size_t i = 1; i <= alen; i++) {
    size_t *cur = d[i % 3], *prev = d[(i - 1) % 3], *prev2 = d[(i + 1) % 3];
    cur[0] = i;
    for (size_t j = 1; j <= blen; j++) {
      char ca = (char)tolower((unsigned char)a[i - 1]);
      char cb = (char)tolower((unsigned char)b[j - 1]);
      size_t cost = ca != cb;
      size_t v = prev[j] + 1;
      if (cur[j - 1] + 1 < v)
        v = cur[j - 1] + 1;
      if (prev[j - 1] + cost < v)
        v = prev[j - 1] + cost;
      if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
          tolower((unsigned char)a[i - 2]) == cb && prev2[j - 2] + 1 < v)
        v = prev2[j - 2] + 1;
      cur[j] = v;
    }
  }
  return d[alen % 3][blen];
}
