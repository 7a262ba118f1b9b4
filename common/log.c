/* log.c - leveled logging to stderr with UTC timestamps.
 *
 * Each line is formatted into one buffer and written with a single write(2)
 * so lines from the loop and the thread pool never interleave.
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

void log_set_level(enum log_level level) { g_level = level; }

int log_enabled(enum log_level level) { return level >= g_level; }

int log_level_parse(const char *s, enum log_level *out) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, names[i]) == 0) {
      *out = (enum log_level)i;
      return 0;
    }
  }
  return RM_EPARSE;
}

void log_msg(enum log_level level, const char *fmt, ...) {
  static const char *tags[] = {"debug", "info", "warn", "error"};
  if (level < g_level)
    return;
  char line[2048];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000), tags[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof line - 2)
    len = sizeof line - 2;
  line[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}
