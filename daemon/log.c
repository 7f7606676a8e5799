/*
 * Logging for the daemon: stderr in the foreground, syslog otherwise.
 * Callers never pass a raw phone number or a token.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "log.h"

static void	log_vwrite(int, const char *, va_list)
		    __attribute__((format(printf, 2, 0)));
static void	log_vwrite_errno(int, int, const char *, va_list)
		    __attribute__((format(printf, 3, 0)));

static int	log_foreground = 1;
static atomic_int log_level = LOG_LEVEL_INFO;	/* SIGHUP vs. worker threads */

/* Start logging to stderr (foreground) or syslog at the given level. */
void
log_init(int foreground, int level)
{
	log_foreground = foreground;
	log_level = level;
	if (!foreground)
		openlog("phoneclaimd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

/* Change the level, for -v and SIGHUP. */
void
log_set_level(int level)
{
	log_level = level;
}

/* Return the current level. */
int
log_get_level(void)
{
	return (log_level);
}

/* Write one line at level, if the level is enabled. */
static void
log_vwrite(int level, const char *fmt, va_list ap)
{
	static const int	 prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO,
				     LOG_DEBUG };
	static const char	*name[] = { "error", "warning", "info",
				     "debug" };
	char			 line[2048];
	int			 saved = errno;

	if (level > log_level)
		return;
	vsnprintf(line, sizeof line, fmt, ap);
	if (log_foreground)
		fprintf(stderr, "phoneclaimd: %s: %s\n", name[level], line);
	else
		syslog(prio[level], "%s", line);
	errno = saved;
}

/* Write one line with the text of errno e appended. */
static void
log_vwrite_errno(int level, int e, const char *fmt, va_list ap)
{
	char	line[2048];

	if (level > log_level)
		return;
	vsnprintf(line, sizeof line, fmt, ap);
	if (log_foreground)
		fprintf(stderr, "phoneclaimd: %s: %s: %s\n",
		    level == LOG_LEVEL_ERROR ? "error" : "warning", line,
		    strerror(e));
	else
		syslog(level == LOG_LEVEL_ERROR ? LOG_ERR : LOG_WARNING,
		    "%s: %s", line, strerror(e));
	errno = e;
}

/* Log a warning with errno's text. */
void
log_warn(const char *fmt, ...)
{
	va_list	ap;
	int	e = errno;

	va_start(ap, fmt);
	log_vwrite_errno(LOG_LEVEL_WARNING, e, fmt, ap);
	va_end(ap);
}

/* Log a warning. */
void
log_warnx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_WARNING, fmt, ap);
	va_end(ap);
}

/* Log an informational message. */
void
log_info(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_INFO, fmt, ap);
	va_end(ap);
}

/* Log a debugging message. */
void
log_debug(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_DEBUG, fmt, ap);
	va_end(ap);
}

/* Log an error with errno's text and exit. */
void
fatal(const char *fmt, ...)
{
	va_list	ap;
	int	e = errno;

	va_start(ap, fmt);
	log_vwrite_errno(LOG_LEVEL_ERROR, e, fmt, ap);
	va_end(ap);
	exit(1);
}

/* Log an error and exit. */
void
fatalx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, fmt, ap);
	va_end(ap);
	exit(1);
}
