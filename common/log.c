/* log.c - leveled logging to stderr with UTC timestamps, as text or JSON.
 *
 * Each line is formatted into one buffer and written with a single write(2)
 * so lines from the loop and the thread pool never interleave. JSON lines
 * escape every byte outside printable ASCII as \u00XX, so a line is valid
 * JSON whatever a message carries (a path, an upstream's error text).
 */
#include "log.h"
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level g_level = LOG_INFO;
static enum log_format g_format = LOG_FORMAT_TEXT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_format(enum log_format f) { g_format = f; }
enum log_format log_get_format(void) { return g_format; }

int log_format_parse(const char *s, enum log_format *out) {
  if (strcasecmp(s, "text") == 0)
    *out = LOG_FORMAT_TEXT;
  else if (strcasecmp(s, "json") == 0)
    *out = LOG_FORMAT_JSON;
  else
    return RM_EPARSE;
  return 0;
}

#define LINE_MAX_BYTES 4096

struct line {
  char b[LINE_MAX_BYTES];
  size_t n;
};

static void put(struct line *l, const char *s, size_t len) {
  if (len > sizeof l->b - 2 - l->n)
    len = sizeof l->b - 2 - l->n; /* room for '\n' (and a closing brace) */
  memcpy(l->b + l->n, s, len);
  l->n += len;
}

static void put_json_str(struct line *l, const char *s) {
  static const char hex[] = "0123456789abcdef";
  put(l, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      put(l, e, 2);
    } else if (c < 0x20 || c >= 0x7f) {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      put(l, e, 6);
    } else {
      put(l, (const char *)&c, 1);
    }
  }
  put(l, "\"", 1);
}

static void put_time(struct line *l) {
  struct timeval tv;
  struct tm tm;
  char t[40];
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(t, sizeof t, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   (int)(tv.tv_usec / 1000));
  put(l, t, n > 0 ? (size_t)n : 0);
}

static void line_write(struct line *l) {
  l->b[l->n++] = '\n';
  ssize_t w = write(STDERR_FILENO, l->b, l->n);
  (void)w;
}

/* the opening of a JSON line, through "msg": */
static void json_open(struct line *l, enum log_level level, const char *msg) {
  put(l, "{\"ts\":\"", 7);
  put_time(l);
  put(l, "\",\"level\":\"", 11);
  put(l, level_names[level], strlen(level_names[level]));
  put(l, "\",\"msg\":", 8);
  put_json_str(l, msg);
}

/* the opening of a text line: "<time> <level> <msg>" */
static void text_open(struct line *l, enum log_level level, const char *msg) {
  put_time(l);
  put(l, " ", 1);
  put(l, level_names[level], strlen(level_names[level]));
  put(l, " ", 1);
  put(l, msg, strlen(msg));
}

void log_event(enum log_level level, const char *msg, const struct log_field *f, size_t n) {
  if (level < g_level)
    return;
  struct line l = {.n = 0};
  char num[32];
  if (g_format == LOG_FORMAT_JSON) {
    json_open(&l, level, msg);
    for (size_t i = 0; i < n; i++) {
      put(&l, ",", 1);
      put_json_str(&l, f[i].key);
      put(&l, ":", 1);
      if (f[i].str) {
        put_json_str(&l, f[i].str);
      } else {
        int k = snprintf(num, sizeof num, "%lld", (long long)f[i].num);
        put(&l, num, (size_t)k);
      }
    }
    l.b[l.n++] = '}';
  } else {
    text_open(&l, level, msg);
    for (size_t i = 0; i < n; i++) {
      put(&l, " ", 1);
      put(&l, f[i].key, strlen(f[i].key));
      put(&l, "=", 1);
      if (f[i].str) {
        put(&l, f[i].str, strlen(f[i].str));
      } else {
        int k = snprintf(num, sizeof num, "%lld", (long long)f[i].num);
        put(&l, num, (size_t)k);
      }
    }
  }
  line_write(&l);
}

void log_set_level(enum log_level level) { g_level = level; }

int log_enabled(enum log_level level) { return level >= g_level; }

int log_level_parse(const char *s, enum log_level *out) {
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0) {
      *out = (enum log_level)i;
      return 0;
    }
  }
  return RM_EPARSE;
}

void log_msg(enum log_level level, const char *fmt, ...) {
  if (level < g_level)
    return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (m < 0)
    msg[0] = '\0';
  struct line l = {.n = 0};
  if (g_format == LOG_FORMAT_JSON) {
    json_open(&l, level, msg);
    l.b[l.n++] = '}';
  } else {
    text_open(&l, level, msg);
  }
  line_write(&l);
}
