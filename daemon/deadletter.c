/*
 * The dead-letter file: log-stream items that could not be used (rejected
 * events, bodies that are not JSON), kept in state_dir for an operator.
 * Each item is one line of JSON written with a single write(2) on an
 * O_APPEND descriptor, so lines never interleave.  Raw phone numbers must
 * never reach the disk (DESIGN I5): everything written is redacted first.
 * The file is rotated to path.1 before it would pass max_size, so the two
 * files together stay under 2 * max_size.
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define DEADLETTER_ITEM_MAX	(64 * 1024)	/* bytes of an item kept */
#define DEADLETTER_REASON_MAX	64		/* bytes of a reason kept */
#define DEADLETTER_WARN_EVERY	60		/* seconds between warnings */
#define DEADLETTER_MASK_MIN	7		/* digits of a phone number */
#define DEADLETTER_MASK_MAX	15
#define DEADLETTER_KEEP		4		/* trailing digits left clear */

/* The parts of a line that do not depend on how much of the item fits. */
struct deadletter_line {
	char	 time[32];
	char	*reason;	/* redacted copies, or NULL for null */
	size_t	 reason_len;
	char	*log_id;
	size_t	 log_id_len;
};

static int	deadletter_run_start(unsigned char);
static int	deadletter_in_run(unsigned char);
static void	deadletter_mask(char *, size_t, size_t);
static size_t	deadletter_utf8_len(const unsigned char *, size_t);
static void	deadletter_sanitise(char *, size_t);
static int	deadletter_control(const unsigned char *, size_t);
static char	*deadletter_clean(const char *, size_t);
static size_t	deadletter_cut(const char *, size_t, size_t);
static void	deadletter_prepare(struct deadletter_line *, const char *,
		    const char *);
static int	deadletter_member(yajl_gen, const char *, const char *,
		    size_t);
static char	*deadletter_format(const struct deadletter_line *,
		    const char *, size_t, int, size_t *);
static char	*deadletter_line(const struct deadletter_line *, const char *,
		    size_t, size_t, size_t *);
static char	*deadletter_fit(const struct deadletter_line *, const char *,
		    size_t, size_t *);
static void	deadletter_warn(int, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static int	deadletter_private(int, const struct stat *, const char *,
		    char **);
static void	deadletter_private_old(void);
static int	deadletter_reopen(char **);
static int	deadletter_ensure(void);
static int	deadletter_rotate(void);
static void	deadletter_append(const char *, size_t);

static char		*dl_path;	/* NULL when the module is not open */
static char		*dl_old;	/* dl_path + ".1" */
static int		 dl_fd = -1;
static dev_t		 dl_dev;
static ino_t		 dl_ino;
static size_t		 dl_max;
static time_t		 dl_warn_next;
static unsigned int	 dl_warn_quiet;

/* Can c begin a run that may be a phone number? */
static int
deadletter_run_start(unsigned char c)
{
	return ((c >= '0' && c <= '9') || c == '+' || c == '(');
}

/* Can c be part of a run that may be a phone number? */
static int
deadletter_in_run(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return (1);
	switch (c) {
	case ' ':
	case '-':
	case '.':
	case '(':
	case ')':
	case '/':
	case '+':
		return (1);
	}
	return (0);
}

/* Replace the first n digits of a run with 'X', leaving separators. */
static void
deadletter_mask(char *run, size_t len, size_t n)
{
	size_t	i;

	for (i = 0; i < len && n > 0; i++) {
		if (run[i] >= '0' && run[i] <= '9') {
			run[i] = 'X';
			n--;
		}
	}
}

/*
 * Mask phone numbers in place: every maximal run of digits and the
 * separators " -.()/+" that starts with a digit, '+' or '(' and holds 7 to
 * 15 digits keeps only its last 4 digits; so does a longer run with
 * separators (numbers written one after the other).  Runs of more than 15
 * bare digits (Auth0 log ids have 56) or fewer than 7 digits stay as they
 * are.  Any other byte, NUL and non-ASCII included, ends a run.
 *
 * Known over-masking, accepted because it errs towards privacy: the date of
 * "2024-01-15T10:30:00.000Z" is a run of 8 digits and becomes "XXXX-01-15"
 * (the time after 'T' is split by ':' and stays).  Known limit of the
 * rule: a number split by other bytes (a no-break space, a tab, a JSON
 * "\u" escape) is not seen as one.
 */
size_t
deadletter_redact(char *buf, size_t len)
{
	size_t	i = 0, end, digits;

	while (i < len) {
		if (!deadletter_run_start((unsigned char)buf[i])) {
			i++;
			continue;
		}
		digits = 0;
		for (end = i; end < len &&
		    deadletter_in_run((unsigned char)buf[end]); end++) {
			if (buf[end] >= '0' && buf[end] <= '9')
				digits++;
		}
		/*
		 * A longer run is left alone only when it is bare digits
		 * (a log id); with separators it may be numbers written one
		 * after the other, so all but its last digits go.
		 */
		if (digits >= DEADLETTER_MASK_MIN &&
		    (digits <= DEADLETTER_MASK_MAX || digits != end - i))
			deadletter_mask(buf + i, end - i,
			    digits - DEADLETTER_KEEP);
		i = end;	/* > i: a start character is a run character */
	}
	return (len);
}

/* Return the length of the valid UTF-8 sequence at p, or 0. */
static size_t
deadletter_utf8_len(const unsigned char *p, size_t left)
{
	uint32_t	cp;
	size_t		need, i;

	if (p[0] < 0x80)
		return (1);
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		need = 2;
		cp = p[0] & 0x1f;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		need = 3;
		cp = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		need = 4;
		cp = p[0] & 0x07;
	} else
		return (0);
	if (left < need)
		return (0);
	for (i = 1; i < need; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return (0);
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((need == 3 && cp < 0x800) || (need == 4 && cp < 0x10000) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		return (0);
	return (need);
}

/* Replace each byte that is not part of valid UTF-8 with '?', in place. */
static void
deadletter_sanitise(char *buf, size_t len)
{
	size_t	i = 0, n;

	while (i < len) {
		n = deadletter_utf8_len((unsigned char *)buf + i, len - i);
		if (n == 0) {
			buf[i++] = '?';
			continue;
		}
		i += n;
	}
}

/* Is the character of n bytes at p a C0 or C1 control, or DEL? */
static int
deadletter_control(const unsigned char *p, size_t n)
{
	return ((n == 1 && (p[0] < 0x20 || p[0] == 0x7f)) ||
	    (n == 2 && p[0] == 0xc2 && p[1] <= 0x9f));
}

/*
 * Make a value from a request (a log id, a user id) fit for the log, in
 * buf (DEADLETTER_LOG_SIZE bytes), and return buf: phone-like digit runs
 * masked as in the dead-letter file, control characters, backslashes and
 * bytes that are not UTF-8 written as \xNN (so no value forges a line),
 * and cut, with "...", to fit.
 */
const char *
deadletter_log_value(const char *s, char *buf)
{
	char	 raw[DEADLETTER_LOG_SIZE];
	size_t	 len, i, n, o = 0, room = DEADLETTER_LOG_SIZE - 4;

	len = strnlen(s, sizeof raw);
	memcpy(raw, s, len);
	/* A run cut at the end may be a number's start: redact the cut. */
	deadletter_redact(raw, len);
	for (i = 0; i < len; i += n) {
		n = deadletter_utf8_len((unsigned char *)raw + i, len - i);
		if (n == 0 || raw[i] == '\\' ||
		    deadletter_control((unsigned char *)raw + i, n)) {
			if (o + 4 * (n == 0 ? 1 : n) > room)
				break;
			for (n = n == 0 ? 1 : n; n > 0; n--, i++)
				o += snprintf(buf + o, 5, "\\x%02x",
				    (unsigned char)raw[i]);
			continue;
		}
		if (o + n > room)
			break;
		memcpy(buf + o, raw + i, n);
		o += n;
	}
	if (i < len || s[len] != '\0') {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return (buf);
}

/* Return a NUL-terminated copy of len bytes, redacted and valid UTF-8. */
static char *
deadletter_clean(const char *s, size_t len)
{
	char	*copy;

	copy = xmalloc(len + 1);
	if (len != 0)
		memcpy(copy, s, len);
	copy[len] = '\0';
	deadletter_redact(copy, len);
	deadletter_sanitise(copy, len);
	return (copy);
}

/* Return how much of text to keep for at most max bytes. */
static size_t
deadletter_cut(const char *text, size_t len, size_t max)
{
	size_t	n, i;

	if (len <= max)
		return (len);
	/* Do not split a UTF-8 character if the cut falls inside one. */
	n = max;
	for (i = 0; i < 3 && n > 0 && ((unsigned char)text[n] & 0xc0) == 0x80;
	    i++)
		n--;
	return (n);
}

/* Fill the time and the redacted reason and log id of a line. */
static void
deadletter_prepare(struct deadletter_line *dl, const char *reason,
    const char *log_id)
{
	struct timespec	ts;
	struct tm	tm;
	size_t		n;

	memset(dl, 0, sizeof *dl);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(dl->time, sizeof dl->time, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(dl->time + n, sizeof dl->time - n, ".%03ldZ",
	    (long)(ts.tv_nsec / 1000000));
	if (reason != NULL) {
		dl->reason_len = strnlen(reason, DEADLETTER_REASON_MAX);
		dl->reason = deadletter_clean(reason, dl->reason_len);
	}
	if (log_id != NULL) {
		dl->log_id_len = strnlen(log_id, LOG_ID_MAX);
		dl->log_id = deadletter_clean(log_id, dl->log_id_len);
	}
}

/* Generate one "key": "value" member, or "key": null if value is NULL. */
static int
deadletter_member(yajl_gen g, const char *key, const char *value,
    size_t len)
{
	int	st;

	st = yajl_gen_string(g, (const unsigned char *)key, strlen(key));
	if (value == NULL)
		st |= yajl_gen_null(g);
	else
		st |= yajl_gen_string(g, (const unsigned char *)value, len);
	return (st);
}

/* Generate the JSON line for an item, newline included; NULL on error. */
static char *
deadletter_format(const struct deadletter_line *dl, const char *item,
    size_t item_len, int truncated, size_t *n)
{
	yajl_gen		 g;
	const unsigned char	*buf;
	size_t			 len;
	char			*line = NULL;
	int			 st;

	if ((g = yajl_gen_alloc(NULL)) == NULL)
		return (NULL);
	st = yajl_gen_map_open(g);
	st |= deadletter_member(g, "time", dl->time, strlen(dl->time));
	st |= deadletter_member(g, "reason", dl->reason, dl->reason_len);
	st |= deadletter_member(g, "log_id", dl->log_id, dl->log_id_len);
	st |= deadletter_member(g, "item", item, item_len);
	if (truncated) {
		st |= yajl_gen_string(g, (const unsigned char *)"truncated",
		    strlen("truncated"));
		st |= yajl_gen_bool(g, 1);
	}
	st |= yajl_gen_map_close(g);
	if (st == yajl_gen_status_ok &&
	    yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
		line = xmalloc(len + 1);
		memcpy(line, buf, len);
		line[len] = '\n';
		*n = len + 1;
	}
	yajl_gen_free(g);
	return (line);
}

/* Build the line for the first keep bytes (at most) of an item. */
static char *
deadletter_line(const struct deadletter_line *dl, const char *text,
    size_t len, size_t keep, size_t *n)
{
	char	*item, *line;
	size_t	 cut;

	/* Cut first, then redact what is kept (so a cut run is re-judged). */
	cut = deadletter_cut(text, len, keep);
	item = deadletter_clean(text, cut);
	line = deadletter_format(dl, item, cut, cut < len, n);
	free(item);
	return (line);
}

/* Build the line, cutting the item further until it fits in max_size. */
static char *
deadletter_fit(const struct deadletter_line *dl, const char *text,
    size_t len, size_t *n)
{
	char	*line;
	size_t	 keep, next;

	keep = len < DEADLETTER_ITEM_MAX ? len : DEADLETTER_ITEM_MAX;
	for (;;) {
		line = deadletter_line(dl, text, len, keep, n);
		if (line == NULL) {
			deadletter_warn(0, "%s: cannot generate a line",
			    dl_path);
			return (NULL);
		}
		if (*n <= dl_max)
			return (line);
		free(line);
		if (keep == 0) {
			deadletter_warn(0, "%s: a line does not fit in %zu "
			    "bytes, dropped", dl_path, dl_max);
			return (NULL);
		}
		next = (size_t)((uint64_t)keep * dl_max / *n);
		keep = next < keep ? next : keep - 1;
	}
}

/* Log a warning about the file, at most once a minute. */
static void
deadletter_warn(int errnum, const char *fmt, ...)
{
	struct timespec	ts;
	va_list		ap;
	char		msg[512], more[64] = "";

	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (ts.tv_sec < dl_warn_next) {
		dl_warn_quiet++;
		return;
	}
	dl_warn_next = ts.tv_sec + DEADLETTER_WARN_EVERY;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (dl_warn_quiet != 0)
		snprintf(more, sizeof more, " (%u similar not logged)",
		    dl_warn_quiet);
	dl_warn_quiet = 0;
	if (errnum != 0)
		log_warnx("dead letters: %s: %s%s", msg, strerror(errnum),
		    more);
	else
		log_warnx("dead letters: %s%s", msg, more);
}

/* Set a file that group or others can access back to 0600, saying so. */
static int
deadletter_private(int fd, const struct stat *sb, const char *path,
    char **cause)
{
	if ((sb->st_mode & 077) == 0)
		return (0);
	if (fchmod(fd, 0600) != 0) {
		xasprintf(cause, "%s: fchmod: %s", path, strerror(errno));
		return (-1);
	}
	log_warnx("%s: mode was %04o, set to 0600", path,
	    (unsigned int)(sb->st_mode & 07777));
	return (0);
}

/* Make an existing path.1 private too; only warn if that fails. */
static void
deadletter_private_old(void)
{
	struct stat	 sb;
	char		*cause;
	int		 fd;

	fd = open(dl_old, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1)
		return;
	if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
	    deadletter_private(fd, &sb, dl_old, &cause) != 0) {
		log_warnx("%s", cause);
		free(cause);
	}
	close(fd);
}

/* Open or create the file at dl_path, replacing dl_fd on success. */
static int
deadletter_reopen(char **cause)
{
	struct stat	sb;
	int		fd;

	/* O_NONBLOCK: opening a FIFO must fail, not wait for a reader. */
	fd = open(dl_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC |
	    O_NOCTTY | O_NONBLOCK, 0600);
	if (fd == -1) {
		xasprintf(cause, "%s: %s", dl_path, strerror(errno));
		return (-1);
	}
	if (fstat(fd, &sb) != 0) {
		xasprintf(cause, "%s: fstat: %s", dl_path, strerror(errno));
		close(fd);
		return (-1);
	}
	if (!S_ISREG(sb.st_mode)) {
		xasprintf(cause, "%s: not a regular file", dl_path);
		close(fd);
		return (-1);
	}
	if (deadletter_private(fd, &sb, dl_path, cause) != 0) {
		close(fd);
		return (-1);
	}
	if (dl_fd != -1)
		close(dl_fd);
	dl_fd = fd;
	dl_dev = sb.st_dev;
	dl_ino = sb.st_ino;
	return (0);
}

/* Open the dead-letter file at path; max_size 0 means the default. */
int
deadletter_open(const char *path, size_t max_size, char **cause)
{
	deadletter_close();
	dl_path = xstrdup(path);
	xasprintf(&dl_old, "%s.1", path);
	dl_max = max_size != 0 ? max_size : DEADLETTER_MAX_SIZE;
	if (deadletter_reopen(cause) != 0) {
		deadletter_close();
		return (-1);
	}
	deadletter_private_old();
	return (0);
}

/* Close the file; deadletter_add does nothing until the next open. */
void
deadletter_close(void)
{
	if (dl_fd != -1)
		close(dl_fd);
	dl_fd = -1;
	free(dl_path);
	dl_path = NULL;
	free(dl_old);
	dl_old = NULL;
}

/* Check that dl_fd is still the file at dl_path; reopen it if not. */
static int
deadletter_ensure(void)
{
	struct stat	 sb;
	char		*cause;

	/* An operator may have moved or removed the file to clear it. */
	if (dl_fd != -1 && stat(dl_path, &sb) == 0 &&
	    sb.st_dev == dl_dev && sb.st_ino == dl_ino)
		return (0);
	if (deadletter_reopen(&cause) != 0) {
		deadletter_warn(0, "%s", cause);
		free(cause);
		return (-1);
	}
	return (0);
}

/* Move the file to path.1, replacing the older one, and start anew. */
static int
deadletter_rotate(void)
{
	char	*cause;

	if (rename(dl_path, dl_old) != 0) {
		deadletter_warn(errno, "rename %s to %s", dl_path, dl_old);
		return (-1);
	}
	if (deadletter_reopen(&cause) != 0) {
		/* Never write on into path.1. */
		close(dl_fd);
		dl_fd = -1;
		deadletter_warn(0, "%s", cause);
		free(cause);
		return (-1);
	}
	return (0);
}

/* Append one line with one write(2), rotating first if it would not fit. */
static void
deadletter_append(const char *line, size_t len)
{
	struct stat	sb;
	ssize_t		n;
	int		saved;

	if (deadletter_ensure() != 0)
		return;
	if (fstat(dl_fd, &sb) != 0) {
		deadletter_warn(errno, "%s: fstat", dl_path);
		return;
	}
	if (sb.st_size > 0 && (uint64_t)sb.st_size + len > dl_max) {
		if (deadletter_rotate() != 0 || fstat(dl_fd, &sb) != 0)
			return;
	}
	if ((n = write(dl_fd, line, len)) == (ssize_t)len)
		return;
	saved = errno;
	/* Take back a partial line so that every line stays whole. */
	if (n > 0 && ftruncate(dl_fd, sb.st_size) != 0)
		deadletter_warn(errno, "%s: ftruncate", dl_path);
	if (n == -1)
		deadletter_warn(saved, "%s: write", dl_path);
	else
		deadletter_warn(0, "%s: short write (%zd of %zu bytes)",
		    dl_path, n, len);
}

/*
 * Append one line for an item that could not be used: its reason, its log
 * id (or null) and the item itself, cut to 64 KiB ("truncated": true) and
 * redacted.  Errors are logged, at most once a minute, and never fatal.
 */
void
deadletter_add(const char *reason, const char *log_id, const char *text,
    size_t len)
{
	struct deadletter_line	 dl;
	char			*line;
	size_t			 n;

	if (dl_path == NULL)
		return;
	if (text == NULL)
		len = 0;
	deadletter_prepare(&dl, reason, log_id);
	line = deadletter_fit(&dl, text, len, &n);
	if (line != NULL) {
		deadletter_append(line, n);
		free(line);
	}
	free(dl.reason);
	free(dl.log_id);
}
