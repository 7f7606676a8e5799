/*
 * Readiness and status messages to systemd over $NOTIFY_SOCKET, without
 * libsystemd: one datagram per message, sent to the path (or, for a name
 * starting with '@', the abstract address) that systemd gives us.  When the
 * variable is absent, every function here does nothing.  A failure is
 * logged once and never stops the daemon.
 *
 * With WatchdogSec= in the unit, systemd gives WATCHDOG_USEC (and
 * WATCHDOG_PID): main.c then sends WATCHDOG=1 from its event loop.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "phoneclaimd.h"

#define NOTIFY_MSG_MAX		4096	/* bytes in one message */
#define NOTIFY_SEND_TIMEOUT	1	/* seconds a full queue may stall us */

static int	notify_address(const char *, struct sockaddr_un *,
		    socklen_t *);
static void	notify_failed(const char *);
static uint64_t	notify_watchdog_env(void);

static int			notify_fd = -1;
static struct sockaddr_un	notify_sun;
static socklen_t		notify_sunlen;
static int			notify_warned;
static uint64_t			notify_watchdog;	/* usec, 0: none */

/*
 * Fill sun from a $NOTIFY_SOCKET value: an absolute path, or '@' and an
 * abstract name.  Return -1 with errno set if it cannot be used.
 */
static int
notify_address(const char *value, struct sockaddr_un *sun, socklen_t *len)
{
	size_t	n;

	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	n = strlen(value);
	if (n < 2 || (value[0] != '/' && value[0] != '@')) {
		errno = EAFNOSUPPORT;
		return (-1);
	}
	if (n >= sizeof sun->sun_path) {
		errno = ENAMETOOLONG;
		return (-1);
	}
	memcpy(sun->sun_path, value, n);
	if (value[0] == '@') {
		/* Abstract: a leading NUL; the length counts the name only. */
		sun->sun_path[0] = '\0';
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	} else
		*len = (socklen_t)sizeof *sun;
	return (0);
}

/* Log the first failure only: systemd may simply not be listening. */
static void
notify_failed(const char *what)
{
	if (notify_warned)
		return;
	notify_warned = 1;
	log_warnx("NOTIFY_SOCKET: %s: %s; further errors are not logged",
	    what, strerror(errno));
}

/*
 * The watchdog interval systemd asks for (WATCHDOG_USEC), if it is meant
 * for this process (WATCHDOG_PID, when given); 0 otherwise.
 */
static uint64_t
notify_watchdog_env(void)
{
	const char		*usec = getenv("WATCHDOG_USEC");
	const char		*pid = getenv("WATCHDOG_PID");
	char			*end;
	unsigned long long	 v;

	if (usec == NULL || *usec == '\0')
		return (0);
	if (pid != NULL && *pid != '\0' &&
	    strtoll(pid, &end, 10) != (long long)getpid())
		return (0);
	errno = 0;
	v = strtoull(usec, &end, 10);
	if (errno != 0 || *end != '\0' || v == 0) {
		log_warnx("WATCHDOG_USEC: not a number of microseconds: "
		    "ignored");
		return (0);
	}
	return ((uint64_t)v);
}

/* The watchdog interval in microseconds, or 0 without one. */
uint64_t
notify_watchdog_usec(void)
{
	return (notify_fd == -1 ? 0 : notify_watchdog);
}

/*
 * Open the socket named by $NOTIFY_SOCKET and remove the variables, so
 * that no program we might start talks to systemd in our name.
 */
void
notify_init(void)
{
	struct timeval	 tv = { NOTIFY_SEND_TIMEOUT, 0 };
	const char	*value;

	notify_free();
	notify_warned = 0;
	notify_watchdog = notify_watchdog_env();
	if ((value = getenv("NOTIFY_SOCKET")) == NULL || *value == '\0')
		return;
	if (notify_address(value, &notify_sun, &notify_sunlen) != 0) {
		notify_failed("unusable address");
		goto out;
	}
	notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify_fd == -1) {
		notify_failed("socket");
		goto out;
	}
	if (setsockopt(notify_fd, SOL_SOCKET, SO_SNDTIMEO, &tv,
	    sizeof tv) != 0)
		log_debug("NOTIFY_SOCKET: cannot bound the send time");
	log_debug("notifying systemd at %s", value);
out:
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

/* Send one message ("READY=1\nSTATUS=...") to systemd, if it listens. */
void
notify_send(const char *fmt, ...)
{
	char	 msg[NOTIFY_MSG_MAX];
	va_list	 ap;
	ssize_t	 n;
	int	 len;

	if (notify_fd == -1)
		return;
	va_start(ap, fmt);
	len = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (len < 0)
		return;
	if ((size_t)len >= sizeof msg)
		len = sizeof msg - 1;	/* a truncated STATUS= still helps */
	do {
		n = sendto(notify_fd, msg, (size_t)len, MSG_NOSIGNAL,
		    (struct sockaddr *)&notify_sun, notify_sunlen);
	} while (n == -1 && errno == EINTR);
	if (n == -1)
		notify_failed("send");
}

/* Close the socket. */
void
notify_free(void)
{
	if (notify_fd != -1)
		close(notify_fd);
	notify_fd = -1;
}
