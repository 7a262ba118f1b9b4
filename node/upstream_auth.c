/* upstream_auth.c - parsers for WWW-Authenticate, ratelimit-* headers and
 * the token endpoint's JSON answer.
 *
 * Both values come straight from the network, so both are read with a
 * (pos, end) cursor, never past `len`, and every stored value is checked
 * against its field. WWW-Authenticate follows RFC 7235: a list of challenges,
 * each a scheme followed by comma-separated `name=value` params, where a
 * value is a token or a quoted string with backslash escapes. The only
 * ambiguity of that grammar (is the token after a comma a param name or the
 * next scheme?) is settled by looking for the `=` after it. Registries are
 * lenient in what they send (gcr.io's unquoted service, realms as bare URLs),
 * so an unquoted value runs to the next comma or blank rather than to the
 * end of a strict token.
 */
#include "upstream_auth.h"

#include "../common/errors.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

/* No registry sends a challenge anywhere near this; past it we stop reading
 * rather than scan attacker-sized input. */
#define WWW_AUTH_MAX_INPUT 16384

struct cursor {
  const char *pos;
  const char *end;
};

static int is_tchar(unsigned char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
    return 1;
  return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int is_ows(char ch) {
  return ch == ' ' || ch == '\t';
}

static void skip_ows(struct cursor *c) {
  while (c->pos < c->end && is_ows(*c->pos))
    c->pos++;
}

/* A stored value: copied into dst (cap bytes with the NUL) or, when dst is
 * NULL, only consumed. */
struct value_sink {
  char *dst;
  size_t cap;
  size_t len;
  int overflow;
};

static void sink_put(struct value_sink *s, char ch) {
  if (!s->dst)
    return;
  if (s->len + 1 >= s->cap) {
    s->overflow = 1;
    return;
  }
  s->dst[s->len++] = ch;
  s->dst[s->len] = '\0';
}

static int read_quoted(struct cursor *c, struct value_sink *s) {
  c->pos++; /* opening quote */
  while (c->pos < c->end) {
    unsigned char ch = (unsigned char)*c->pos++;
    if (ch == '"')
      return 0;
    if (ch == '\\') {
      if (c->pos == c->end)
        return RM_EPARSE;
      ch = (unsigned char)*c->pos++;
    }
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return RM_EPARSE;
    sink_put(s, (char)ch);
  }
  return RM_EPARSE; /* unterminated */
}

static int read_bare(struct cursor *c, struct value_sink *s) {
  const char *start = c->pos;
  while (c->pos < c->end && *c->pos != ',' && !is_ows(*c->pos)) {
    unsigned char ch = (unsigned char)*c->pos;
    if (ch < 0x21 || ch == 0x7f || ch == '"')
      return RM_EPARSE;
    sink_put(s, (char)ch);
    c->pos++;
  }
  /* "name=" followed by nothing is allowed only for token68 padding, which
   * read_param already consumed; an empty bare value is malformed. */
  return c->pos == start ? RM_EPARSE : 0;
}

static enum www_auth_scheme scheme_of(const char *p, size_t n) {
  if (n == 6 && strncasecmp(p, "bearer", 6) == 0)
    return WWW_AUTH_BEARER;
  if (n == 5 && strncasecmp(p, "basic", 5) == 0)
    return WWW_AUTH_BASIC;
  return WWW_AUTH_NONE;
}

static char *field_of(struct www_auth *a, const char *name, size_t n, size_t *cap) {
#define FIELD(f)                                                                         \
  if (n == sizeof(#f) - 1 && strncasecmp(name, #f, n) == 0) {                            \
    *cap = sizeof a->f;                                                                  \
    return a->f;                                                                         \
  }
  FIELD(realm)
  FIELD(service)
  FIELD(scope)
  FIELD(error)
#undef FIELD
  return NULL;
}

/* One `name=value` param; c->pos is just past the '='. `cur` is the
 * challenge it belongs to, or NULL for a scheme we do not keep. */
static int read_param(struct cursor *c, struct www_auth *cur, const char *name,
                      size_t name_len) {
  struct value_sink s = {0};
  if (cur) {
    s.dst = field_of(cur, name, name_len, &s.cap);
    if (s.dst) {
      /* A repeated param: the last one wins, whole. */
      s.dst[0] = '\0';
    }
  }
  skip_ows(c);
  int r;
  if (c->pos < c->end && *c->pos == '"') {
    r = read_quoted(c, &s);
  } else if (c->pos == c->end || *c->pos == ',' || *c->pos == '=') {
    /* token68 padding ("Negotiate abc==") is fine where we store nothing;
     * an empty realm, service, scope or error is not. */
    if (s.dst)
      return RM_EPARSE;
    while (c->pos < c->end && *c->pos == '=')
      c->pos++;
    r = 0;
  } else {
    r = read_bare(c, &s);
  }
  if (r)
    return r;
  if (s.overflow)
    return RM_EPARSE;
  skip_ows(c);
  if (c->pos < c->end && *c->pos != ',')
    return RM_EPARSE;
  return 0;
}

int www_auth_parse(const char *s, size_t len, struct www_auth *out) {
  struct www_auth bearer, basic;
  int seen_bearer = 0, seen_basic = 0;
  struct www_auth *cur = NULL;
  int in_challenge = 0;

  memset(out, 0, sizeof *out);
  memset(&bearer, 0, sizeof bearer);
  memset(&basic, 0, sizeof basic);
  bearer.scheme = WWW_AUTH_BEARER;
  basic.scheme = WWW_AUTH_BASIC;
  if (!s || len == 0 || len > WWW_AUTH_MAX_INPUT)
    return RM_EPARSE;

  struct cursor c = {s, s + len};
  for (;;) {
    while (c.pos < c.end && (is_ows(*c.pos) || *c.pos == ','))
      c.pos++;
    if (c.pos == c.end)
      break;
    const char *name = c.pos;
    while (c.pos < c.end && is_tchar((unsigned char)*c.pos))
      c.pos++;
    size_t name_len = (size_t)(c.pos - name);
    if (name_len == 0)
      return RM_EPARSE;
    skip_ows(&c);
    if (c.pos < c.end && *c.pos == '=') {
      if (!in_challenge)
        return RM_EPARSE; /* a param before any scheme */
      c.pos++;
      int r = read_param(&c, cur, name, name_len);
      if (r)
        return r;
      continue;
    }
    /* A new challenge. Only the first of each scheme we know is kept. */
    in_challenge = 1;
    cur = NULL;
    switch (scheme_of(name, name_len)) {
    case WWW_AUTH_BEARER:
      if (!seen_bearer)
        cur = &bearer;
      seen_bearer = 1;
      break;
    case WWW_AUTH_BASIC:
      if (!seen_basic)
        cur = &basic;
      seen_basic = 1;
      break;
    default: break;
    }
  }
  if (!in_challenge)
    return RM_EPARSE;
  if (seen_bearer)
    *out = bearer;
  else if (seen_basic)
    *out = basic;
  return 0;
}

/* A decimal number of at most 18 digits, so it always fits int64_t. */
static int read_number(struct cursor *c, int64_t *out) {
  int64_t v = 0;
  int digits = 0;
  while (c->pos < c->end && *c->pos >= '0' && *c->pos <= '9') {
    if (++digits > 18)
      return RM_EPARSE;
    v = v * 10 + (*c->pos - '0');
    c->pos++;
  }
  if (!digits)
    return RM_EPARSE;
  *out = v;
  return 0;
}

/* An unknown ratelimit param's bare value ("comment=x"): up to ';' or ','. */
static int read_bare_param(struct cursor *c) {
  const char *start = c->pos;
  while (c->pos < c->end && *c->pos != ';' && *c->pos != ',' && !is_ows(*c->pos)) {
    unsigned char ch = (unsigned char)*c->pos;
    if (ch < 0x21 || ch == 0x7f)
      return RM_EPARSE;
    c->pos++;
  }
  return c->pos == start ? RM_EPARSE : 0;
}

int ratelimit_parse(const char *s, size_t len, int64_t *n, int64_t *window_s) {
  int64_t value, window = -1;
  if (!s)
    return RM_EPARSE;
  struct cursor c = {s, s + len};
  skip_ows(&c);
  if (read_number(&c, &value))
    return RM_EPARSE;
  skip_ows(&c);
  /* Params of the first element; a later element ("100, 100;w=21600")
   * repeats the policy, so only the first one is read. */
  while (c.pos < c.end && *c.pos == ';') {
    c.pos++;
    skip_ows(&c);
    const char *name = c.pos;
    while (c.pos < c.end && is_tchar((unsigned char)*c.pos))
      c.pos++;
    size_t name_len = (size_t)(c.pos - name);
    skip_ows(&c);
    if (name_len == 0 || c.pos == c.end || *c.pos != '=')
      return RM_EPARSE;
    c.pos++;
    skip_ows(&c);
    if (name_len == 1 && (*name == 'w' || *name == 'W')) {
      if (read_number(&c, &window))
        return RM_EPARSE;
    } else {
      struct value_sink sink = {0};
      int r =
          (c.pos < c.end && *c.pos == '"') ? read_quoted(&c, &sink) : read_bare_param(&c);
      if (r)
        return r;
    }
    skip_ows(&c);
  }
  if (c.pos < c.end && *c.pos != ',')
    return RM_EPARSE;
  *n = value;
  *window_s = window;
  return 0;
}

/* RFC 3339 "2024-05-01T10:00:00[.frac](Z|+hh:mm)" -> Unix seconds. */
static int parse_rfc3339(const char *s, int64_t *out) {
  struct tm tm;
  int n = 0;
  memset(&tm, 0, sizeof tm);
  if (sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
             &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
      n == 0)
    return RM_EPARSE;
  s += n;
  if (*s == '.')
    for (s++; *s >= '0' && *s <= '9'; s++)
      ;
  int64_t off = 0;
  if (*s == 'Z' || *s == 'z') {
    s++;
  } else if (*s == '+' || *s == '-') {
    int hh, mm;
    if (sscanf(s + 1, "%2d:%2d", &hh, &mm) != 2)
      return RM_EPARSE;
    off = (int64_t)(hh * 3600 + mm * 60) * (*s == '-' ? -1 : 1);
    s += 6;
  } else {
    return RM_EPARSE;
  }
  if (*s)
    return RM_EPARSE;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  time_t t = timegm(&tm);
  if (t == (time_t)-1)
    return RM_EPARSE;
  *out = (int64_t)t - off;
  return 0;
}

int token_response_parse(const char *body, size_t len, int64_t now_s, char **token,
                         int64_t *lifetime_s) {
  json_error_t jerr;
  json_t *root = json_loadb(body, len, 0, &jerr);
  if (!json_is_object(root)) {
    json_decref(root);
    return RM_EPARSE;
  }
  json_t *jt = json_object_get(root, "token");
  if (!json_is_string(jt) || json_string_length(jt) == 0)
    jt = json_object_get(root, "access_token");
  const char *tok = json_string_value(jt);
  size_t toklen = tok ? json_string_length(jt) : 0;
  int ok = tok && toklen > 0 && toklen <= TOKEN_LEN_MAX && strlen(tok) == toklen;
  /* It goes verbatim into a header line: visible ASCII only. */
  for (size_t i = 0; ok && i < toklen; i++)
    ok = tok[i] > 0x20 && tok[i] < 0x7f;
  if (!ok) {
    json_decref(root);
    return RM_EPARSE;
  }
  int64_t expires = TOKEN_MIN_S;
  json_t *je = json_object_get(root, "expires_in");
  if (json_is_integer(je))
    expires = json_integer_value(je);
  else if (json_is_real(je) && json_real_value(je) < (double)TOKEN_MAX_S)
    expires = (int64_t)json_real_value(je);
  else if (json_is_real(je))
    expires = TOKEN_MAX_S;
  if (expires < TOKEN_MIN_S)
    expires = TOKEN_MIN_S;
  if (expires > TOKEN_MAX_S)
    expires = TOKEN_MAX_S;
  int64_t left = expires, issued;
  const char *ia = json_string_value(json_object_get(root, "issued_at"));
  if (ia && parse_rfc3339(ia, &issued) == 0 && issued > INT64_MIN / 2 && issued < INT64_MAX / 2) {
    int64_t l = issued + expires - now_s;
    /* An issuer clock ahead of ours never extends the lifetime; one so far
     * behind that the fresh token looks expired is not believed (else every
     * request would fetch a token); the registry still has the last word
     * with a 401 invalid_token. */
    if (l >= 0 && l < expires)
      left = l;
  }
  char *copy = strdup(tok);
  json_decref(root);
  if (!copy)
    return UV_ENOMEM;
  *token = copy;
  *lifetime_s = left;
  return 0;
}
