/* log.h - leveled logging to stderr.
 *
 * One line per event, "2026-11-27T20:58:01.123Z level msg". The access log
 * uses the same sink at level INFO so one stream tells the whole story.
 */
#ifndef REGMESH_COMMON_LOG_H
#define REGMESH_COMMON_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* log_set_level sets the lowest level printed (default LOG_INFO). */
void log_set_level(enum log_level level);
/* log_level_parse maps "debug", "info", "warn", "error"; returns 0 or RM_EPARSE. */
int log_level_parse(const char *s, enum log_level *out);
int log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define LOG_D(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define LOG_I(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOG_W(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOG_E(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
