/* log.h - leveled logging to stderr.
 *
 * One line per event, "2026-11-27T20:58:01.123Z level msg", or with
 * LOG_FORMAT_JSON one object per line: {"ts":..,"level":..,"msg":..} plus
 * the fields of a structured event (log_event). The access log uses the
 * same sink at level INFO so one stream tells the whole story.
 */
#ifndef REGMESH_COMMON_LOG_H
#define REGMESH_COMMON_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* log_set_level sets the lowest level printed (default LOG_INFO). */
void log_set_level(enum log_level level);
/* log_level_parse maps "debug", "info", "warn", "error"; returns 0 or RM_EPARSE. */
int log_level_parse(const char *s, enum log_level *out);
int log_enabled(enum log_level level);

enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };
void log_set_format(enum log_format f);
enum log_format log_get_format(void);
/* log_format_parse maps "text", "json"; returns 0 or RM_EPARSE. */
int log_format_parse(const char *s, enum log_format *out);

/* A field of a structured event: a string (str != NULL) or a number. */
struct log_field {
  const char *key;
  const char *str;
  int64_t num;
};
/* log_event writes msg and its fields: in JSON as keys of the line's object,
 * in text as msg followed by key=value pairs. */
void log_event(enum log_level level, const char *msg, const struct log_field *f, size_t n);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define LOG_D(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define LOG_I(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOG_W(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOG_E(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
