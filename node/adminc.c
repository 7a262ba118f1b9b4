/* adminc.c - the client side of a node's admin API, for the commands that
 * ask a running node (members, cache): where the node listens, one blocking
 * libcurl request with a bounded answer, and printing its errors. Answers
 * come from the network: what reaches the terminal is stripped of control
 * characters.
 */
#include "adminc.h"

#include "../common/errors.h"
#include "../config/config.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* dial_address turns a listen address into one to connect to: a wildcard
 * host means "every address of this machine", so loopback answers. Only
 * host:port or [v6]:port with plain host characters pass, so the result is
 * safe to paste into a URL. Returns 0 or RM_EPARSE. */
int adminc_dial_address(const char *in, char *out, size_t outlen) {
  char host[256];
  const char *port;
  size_t hlen;
  int v6 = in[0] == '[';
  if (v6) {
    const char *close = strchr(in, ']');
    if (close == NULL || close[1] != ':')
      return RM_EPARSE;
    hlen = (size_t)(close - in - 1);
    port = close + 2;
    in++;
  } else {
    const char *colon = strrchr(in, ':');
    if (colon == NULL)
      return RM_EPARSE;
    hlen = (size_t)(colon - in);
    port = colon + 1;
  }
  if (hlen == 0 || hlen >= sizeof host)
    return RM_EPARSE;
  memcpy(host, in, hlen);
  host[hlen] = '\0';
  const char *allowed = v6 ? "0123456789abcdefABCDEF:." : NULL;
  for (size_t i = 0; i < hlen; i++) {
    char c = host[i];
    int ok = allowed ? strchr(allowed, c) != NULL
                     : (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '.' || c == '-';
    if (!ok)
      return RM_EPARSE;
  }
  size_t plen = strlen(port);
  unsigned long p = 0;
  if (plen == 0 || plen > 5 || strspn(port, "0123456789") != plen ||
      (p = strtoul(port, NULL, 10)) < 1 || p > 65535)
    return RM_EPARSE;
  unsigned char bin[16];
  static const unsigned char any[16];
  if (v6) {
    if (inet_pton(AF_INET6, host, bin) != 1)
      return RM_EPARSE;
    if (memcmp(bin, any, 16) == 0)
      snprintf(host, sizeof host, "::1");
  } else if (strcmp(host, "0.0.0.0") == 0) {
    snprintf(host, sizeof host, "127.0.0.1");
  }
  int n = snprintf(out, outlen, v6 ? "[%s]:%lu" : "%s:%lu", host, p);
  return n < 0 || (size_t)n >= outlen ? RM_EPARSE : 0;
}

int adminc_target(const char *prog, const char *admin, const char *config, char *out,
                  size_t outlen) {
  const char *addr = "127.0.0.1:5000";
  struct config cfg;
  int loaded = 0;
  if (admin != NULL) {
    addr = admin;
  } else if (config != NULL) {
    char err[CONFIG_ERR_LEN];
    if (config_load_file(&cfg, config, err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    loaded = 1;
    addr = cfg.admin_listen ? cfg.admin_listen : cfg.listen;
  }
  int r = adminc_dial_address(addr, out, outlen);
  if (r != 0)
    fprintf(stderr, "%s: invalid address '%s': expected HOST:PORT or [V6]:PORT\n", prog,
            addr);
  if (loaded)
    config_free(&cfg);
  return r ? 2 : 0;
}

size_t adminc_body_write(char *p, size_t size, size_t n, void *arg) {
  struct adminc_body *b = arg;
  size_t add = size * n;
  if (add > ADMINC_MAX_BODY - b->len) {
    b->too_big = 1;
    return 0; /* curl stops with CURLE_WRITE_ERROR */
  }
  char *nd = realloc(b->data, b->len + add + 1);
  if (nd == NULL)
    return 0;
  memcpy(nd + b->len, p, add);
  b->data = nd;
  b->len += add;
  b->data[b->len] = '\0';
  return add;
}

int adminc_request(const char *prog, const char *method, const char *url, long timeout_ms,
                   struct adminc_body *b, long *status) {
  char errbuf[CURL_ERROR_SIZE] = "";
  CURL *h = curl_easy_init();
  if (h == NULL) {
    fprintf(stderr, "%s: libcurl initialisation failed\n", prog);
    return 1;
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  if (strcmp(method, "POST") == 0)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  /* the node is dialled directly: an http_proxy meant for the internet
   * must not carry an admin request */
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(h, CURLOPT_USERAGENT, "regmesh/" REGMESH_VERSION);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, adminc_body_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(h);
  if (b->too_big) {
    fprintf(stderr, "%s: the answer of %s is larger than %d bytes\n", prog, url,
            ADMINC_MAX_BODY);
    return 1;
  }
  if (rc != CURLE_OK) {
    fprintf(stderr, "%s: cannot reach %s: %s\n", prog, url,
            errbuf[0] ? errbuf : curl_easy_strerror(rc));
    return 1;
  }
  return 0;
}

/* term_copy copies at most cap-1 bytes of s, each byte outside printable
 * ASCII replaced by '?': names come from the network and must not drive
 * the terminal. NULL (a missing field) prints as "-". */
void adminc_term_copy(char *dst, size_t cap, const char *s) {
  size_t o = 0;
  if (s == NULL || s[0] == '\0')
    s = "-";
  for (; *s && o + 1 < cap; s++, o++)
    dst[o] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
  dst[o] = '\0';
}

int adminc_fail(const char *prog, const char *url, long status, const struct adminc_body *b) {
  char msg[512];
  json_t *root = b->data ? json_loadb(b->data, b->len, 0, NULL) : NULL;
  const char *text = json_string_value(
      json_object_get(json_array_get(json_object_get(root, "errors"), 0), "message"));
  if (text != NULL) {
    adminc_term_copy(msg, sizeof msg, text);
    fprintf(stderr, "%s: %s\n", prog, msg);
  } else {
    fprintf(stderr, "%s: %s answered HTTP %ld\n", prog, url, status);
  }
  json_decref(root);
  return 1;
}
