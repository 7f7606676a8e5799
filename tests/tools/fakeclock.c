/*
 * Test tool: an LD_PRELOAD shim that moves the wall clock of a process by
 * a number of seconds read from a file, so that a test can jump the clock
 * of a running daemon backwards and forwards by rewriting the file.
 *
 * FAKECLOCK_FILE names the file; it holds a decimal number of seconds,
 * negative for the past.  A missing or unreadable file means no offset.
 * time(), gettimeofday() and clock_gettime() of CLOCK_REALTIME (and its
 * coarse variant) are moved; the monotonic clocks are left alone, as a
 * real clock step leaves them.  The file is read at every call: the tests
 * need no speed, and a jump then takes effect at once.
 *
 * Built as tests/tools/fakeclock.so by a rule of its own in Makefile.am.
 */
#define _GNU_SOURCE

#include <sys/time.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef int	(*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int	(*gettimeofday_fn)(struct timeval *, void *);

static long	fakeclock_offset(void);
static int	fakeclock_real(clockid_t, struct timespec *);

/* The offset in seconds: the file's number, or 0. */
static long
fakeclock_offset(void)
{
	const char	*path;
	char		 buf[32], *end;
	ssize_t		 n;
	long		 v;
	int		 fd, saved = errno;

	if ((path = getenv("FAKECLOCK_FILE")) == NULL)
		return (0);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		errno = saved;
		return (0);
	}
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	errno = saved;
	if (n <= 0)
		return (0);
	buf[n] = '\0';
	v = strtol(buf, &end, 10);
	if (end == buf)
		return (0);
	return (v);
}

/* The real clock_gettime, found once. */
static int
fakeclock_real(clockid_t id, struct timespec *ts)
{
	static clock_gettime_fn	real;

	if (real == NULL)
		real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
	if (real == NULL) {
		errno = ENOSYS;
		return (-1);
	}
	return (real(id, ts));
}

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	int	r;

	if ((r = fakeclock_real(id, ts)) != 0)
		return (r);
	if (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)
		ts->tv_sec += fakeclock_offset();
	return (0);
}

time_t
time(time_t *tp)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return ((time_t)-1);
	if (tp != NULL)
		*tp = ts.tv_sec;
	return (ts.tv_sec);
}

int
gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	static gettimeofday_fn	real;
	int			r;

	if (real == NULL)
		real = (gettimeofday_fn)dlsym(RTLD_NEXT, "gettimeofday");
	if (real == NULL) {
		errno = ENOSYS;
		return (-1);
	}
	/* glibc declares tv non-null. */
	if ((r = real(tv, tz)) == 0)
		tv->tv_sec += fakeclock_offset();
	return (r);
}
