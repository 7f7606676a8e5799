/*
 * Test tool: an LD_PRELOAD shim that moves the wall clock of a process by
 * a number of seconds read from a file, so that a test can jump the clock
 * of a running daemon backwards and forwards by rewriting the file.
 *
 * FAKECLOCK_FILE names the file; it holds a decimal number of seconds,
 * negative for the past.  A missing or unreadable file means no offset.
 * FAKECLOCK_BASE, a decimal number of seconds in the environment, is added
 * on top: "make check TEST_CLOCK_OFFSET=N" preloads the shim into every
 * process of the suite with it, so that the tests themselves, the tools
 * they run and every daemon see one clock moved by N seconds, and a test
 * that moves a daemon further with FAKECLOCK_FILE moves it from there.
 * time(), gettimeofday() and clock_gettime() of CLOCK_REALTIME (and its
 * coarse variant) are moved; the monotonic clocks are left alone, as a
 * real clock step leaves them.  The file is read at every call: the tests
 * need no speed, and a jump then takes effect at once.
 *
 * Absolute deadlines on the wall clock are moved back by the same offset
 * (pthread_cond_timedwait on a condition variable of CLOCK_REALTIME, and
 * sem_timedwait): the kernel measures them on the real clock, so without
 * this a program that computes "now + 1 s" from the moved clock would
 * wait a year, or not at all (Berkeley DB's replication manager does, for
 * its acknowledgements and heartbeats).  Condition variables made on
 * another clock (pthread_condattr_setclock, as Python's and libuv's are)
 * are remembered at pthread_cond_init and left alone.
 *
 * In a ThreadSanitizer process (configure --enable-tsan) the condition
 * variable calls go on to the runtime's interceptors, not straight to
 * glibc: going round them would hide from it that a wait releases its
 * mutex, and it would then report every later lock of that mutex as a
 * double lock.
 *
 * Built as tests/tools/fakeclock.so by a rule of its own in Makefile.am.
 */
#define _GNU_SOURCE

#include <sys/time.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef int	(*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int	(*gettimeofday_fn)(struct timeval *, void *);
typedef int	(*cond_init_fn)(pthread_cond_t *, const pthread_condattr_t *);
typedef int	(*cond_destroy_fn)(pthread_cond_t *);
typedef int	(*cond_timedwait_fn)(pthread_cond_t *, pthread_mutex_t *,
		    const struct timespec *);
typedef int	(*sem_timedwait_fn)(sem_t *, const struct timespec *);

/*
 * The condition variables that do not measure on CLOCK_REALTIME: few in
 * any process the tests run, so a short list searched under a lock.
 */
#define FAKECLOCK_OTHER_CONDS	1024
static pthread_cond_t	*fakeclock_other[FAKECLOCK_OTHER_CONDS];
static pthread_mutex_t	 fakeclock_other_lock = PTHREAD_MUTEX_INITIALIZER;

static long	fakeclock_offset(void);
static long	fakeclock_number(const char *);
static int	fakeclock_real(clockid_t, struct timespec *);
static int	fakeclock_other_find(pthread_cond_t *, pthread_cond_t *);
static void	*fakeclock_next_cond(const char *);
static struct timespec fakeclock_deadline(const struct timespec *);

/* A decimal number of seconds, or 0 for anything else. */
static long
fakeclock_number(const char *s)
{
	char	*end;
	long	 v;

	v = strtol(s, &end, 10);
	if (end == s)
		return (0);
	return (v);
}

/* The offset in seconds: FAKECLOCK_BASE plus the file's number. */
static long
fakeclock_offset(void)
{
	const char	*path, *base;
	char		 buf[32];
	ssize_t		 n;
	long		 v = 0;
	int		 fd, saved = errno;

	if ((base = getenv("FAKECLOCK_BASE")) != NULL)
		v = fakeclock_number(base);
	errno = saved;
	if ((path = getenv("FAKECLOCK_FILE")) == NULL)
		return (v);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		errno = saved;
		return (v);
	}
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	errno = saved;
	if (n <= 0)
		return (v);
	buf[n] = '\0';
	v += fakeclock_number(buf);
	errno = saved;
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

/*
 * Replace the first slot that holds 'was' by 'now' (NULL empties a slot,
 * NULL as 'was' finds a free one); 0 if done, -1 if no slot held 'was'.
 */
static int
fakeclock_other_find(pthread_cond_t *was, pthread_cond_t *now)
{
	size_t	i;
	int	r = -1;

	pthread_mutex_lock(&fakeclock_other_lock);
	for (i = 0; i < FAKECLOCK_OTHER_CONDS; i++) {
		if (fakeclock_other[i] == was) {
			fakeclock_other[i] = now;
			r = 0;
			break;
		}
	}
	pthread_mutex_unlock(&fakeclock_other_lock);
	return (r);
}

/*
 * The next pthread_cond_* function called name: a ThreadSanitizer
 * runtime's interceptor if there is one, else glibc's current version
 * (dlsym could give the old one of GLIBC_2.2.5).
 */
static void *
fakeclock_next_cond(const char *name)
{
	char	 tsan[64];
	void	*fn;

	snprintf(tsan, sizeof tsan, "__interceptor_%s", name);
	if ((fn = dlsym(RTLD_NEXT, tsan)) != NULL)
		return (fn);
	return (dlvsym(RTLD_NEXT, name, "GLIBC_2.3.2"));
}

/* An absolute deadline of the moved wall clock, on the real one. */
static struct timespec
fakeclock_deadline(const struct timespec *abstime)
{
	struct timespec	ts = *abstime;

	ts.tv_sec -= fakeclock_offset();
	return (ts);
}

int
pthread_cond_init(pthread_cond_t *cond, const pthread_condattr_t *attr)
{
	static cond_init_fn	real;
	clockid_t		clock;
	int			r;

	if (real == NULL)
		real = (cond_init_fn)fakeclock_next_cond(
		    "pthread_cond_init");
	if (real == NULL)
		return (ENOSYS);
	if ((r = real(cond, attr)) != 0)
		return (r);
	/* Forget a variable made again at an address already listed. */
	while (fakeclock_other_find(cond, NULL) == 0)
		continue;
	if (attr != NULL && pthread_condattr_getclock(attr, &clock) == 0 &&
	    clock != CLOCK_REALTIME)
		(void)fakeclock_other_find(NULL, cond);
	return (0);
}

int
pthread_cond_destroy(pthread_cond_t *cond)
{
	static cond_destroy_fn	real;

	if (real == NULL)
		real = (cond_destroy_fn)fakeclock_next_cond(
		    "pthread_cond_destroy");
	if (real == NULL)
		return (ENOSYS);
	while (fakeclock_other_find(cond, NULL) == 0)
		continue;
	return (real(cond));
}

int
pthread_cond_timedwait(pthread_cond_t *restrict cond,
    pthread_mutex_t *restrict mutex, const struct timespec *restrict abstime)
{
	static cond_timedwait_fn	real;
	struct timespec			ts;
	int				saved = errno;

	if (real == NULL)
		real = (cond_timedwait_fn)fakeclock_next_cond(
		    "pthread_cond_timedwait");
	if (real == NULL)
		return (ENOSYS);
	if (fakeclock_other_find(cond, cond) == 0) {
		errno = saved;
		return (real(cond, mutex, abstime));
	}
	ts = fakeclock_deadline(abstime);
	errno = saved;
	return (real(cond, mutex, &ts));
}

int
sem_timedwait(sem_t *restrict sem, const struct timespec *restrict abstime)
{
	static sem_timedwait_fn	real;
	struct timespec		ts;

	if (real == NULL)
		real = (sem_timedwait_fn)dlsym(RTLD_NEXT, "sem_timedwait");
	if (real == NULL) {
		errno = ENOSYS;
		return (-1);
	}
	ts = fakeclock_deadline(abstime);
	return (real(sem, &ts));
}
