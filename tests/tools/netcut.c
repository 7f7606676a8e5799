/*
 * Test tool: an LD_PRELOAD shim that cuts a process's TCP connections to
 * and from some ports, so that a test can partition a replication group
 * whose members all listen on 127.0.0.1, without root, iptables or network
 * namespaces.
 *
 * NETCUT_FILE names a file of port numbers (decimal, blank separated).  A
 * socket whose peer port or local port is listed is cut: connect() to it
 * fails with ECONNREFUSED, a connection accepted on a listed local port is
 * closed at once (accept fails with EAGAIN, as if nobody had come), and
 * every read or write on a cut connection fails with ECONNRESET, so the
 * program closes it as after a network failure.  The other end of such a
 * connection sees it closed.  A missing or empty file cuts nothing, and
 * rewriting the file heals the partition: new connections go through
 * again.  The file is read again whenever its modification time changes.
 *
 * To cut member C off from A and B (repl ports RA, RB, RC): C's file lists
 * RA, RB, RC (and A's and B's API ports, so that C cannot forward to them
 * either); A's and B's files list RC.  Connections that one side cannot
 * recognise (accepted from an ephemeral port) are cut by the other side.
 *
 * Built as tests/tools/netcut.so by a rule of its own in Makefile.am.
 */
#define _GNU_SOURCE

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <netinet/in.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NETCUT_MAX	64

static pthread_mutex_t	 netcut_mu = PTHREAD_MUTEX_INITIALIZER;
static struct timespec	 netcut_mtime;
static int		 netcut_loaded;
static unsigned short	 netcut_ports[NETCUT_MAX];
static size_t		 netcut_n;

static void	*netcut_real(const char *);
static void	 netcut_load(void);
static int	 netcut_listed(unsigned short);
static int	 netcut_port(const struct sockaddr_storage *, unsigned short *);
static int	 netcut_fd(int);

/* The next definition of name (the C library's). */
static void *
netcut_real(const char *name)
{
	void	*p = dlsym(RTLD_NEXT, name);

	if (p == NULL)
		abort();
	return (p);
}

/* Read the file again if it changed (under netcut_mu). */
static void
netcut_load(void)
{
	const char	*path = getenv("NETCUT_FILE");
	struct stat	 sb;
	char		 buf[1024], *p, *end;
	ssize_t		 n;
	long		 v;
	int		 fd;

	if (path == NULL || stat(path, &sb) != 0) {
		netcut_n = 0;
		netcut_loaded = 0;
		return;
	}
	if (netcut_loaded && sb.st_mtim.tv_sec == netcut_mtime.tv_sec &&
	    sb.st_mtim.tv_nsec == netcut_mtime.tv_nsec)
		return;
	netcut_n = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	n = pread(fd, buf, sizeof buf - 1, 0);
	close(fd);
	if (n < 0)
		return;
	buf[n] = '\0';
	for (p = buf; netcut_n < NETCUT_MAX; p = end) {
		v = strtol(p, &end, 10);
		if (end == p)
			break;
		if (v > 0 && v < 65536)
			netcut_ports[netcut_n++] = (unsigned short)v;
	}
	netcut_mtime = sb.st_mtim;
	netcut_loaded = 1;
}

/* Return 1 if port is in the file. */
static int
netcut_listed(unsigned short port)
{
	size_t	i;
	int	found = 0, saved = errno;

	pthread_mutex_lock(&netcut_mu);
	netcut_load();
	for (i = 0; i < netcut_n && !found; i++)
		found = netcut_ports[i] == port;
	pthread_mutex_unlock(&netcut_mu);
	errno = saved;
	return (found);
}

/* The port of an IPv4 or IPv6 address; -1 for anything else. */
static int
netcut_port(const struct sockaddr_storage *ss, unsigned short *port)
{
	if (ss->ss_family == AF_INET)
		*port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
	else if (ss->ss_family == AF_INET6)
		*port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	else
		return (-1);
	return (0);
}

/* Return 1 if fd is a TCP connection to or from a listed port. */
static int
netcut_fd(int fd)
{
	struct sockaddr_storage	ss;
	socklen_t		len = sizeof ss;
	unsigned short		port;
	int			saved = errno;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
		errno = saved;
		return (0);	/* not a socket */
	}
	if (netcut_port(&ss, &port) != 0)
		return (0);
	if (netcut_listed(port))
		return (1);
	len = sizeof ss;
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) {
		errno = saved;
		return (0);	/* not connected (a listener) */
	}
	return (netcut_port(&ss, &port) == 0 && netcut_listed(port));
}

int
connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	static int		(*real)(int, const struct sockaddr *, socklen_t);
	struct sockaddr_storage	ss;
	unsigned short		port;

	if (real == NULL)
		real = netcut_real("connect");
	if (len <= sizeof ss) {
		memset(&ss, 0, sizeof ss);
		memcpy(&ss, sa, len);
		if (netcut_port(&ss, &port) == 0 && netcut_listed(port)) {
			errno = ECONNREFUSED;
			return (-1);
		}
	}
	return (real(fd, sa, len));
}

int
accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	static int	(*real)(int, struct sockaddr *, socklen_t *, int);
	int		nfd;

	if (real == NULL)
		real = netcut_real("accept4");
	if ((nfd = real(fd, sa, len, flags)) == -1)
		return (-1);
	if (netcut_fd(nfd)) {
		close(nfd);
		errno = EAGAIN;
		return (-1);
	}
	return (nfd);
}

int
accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	return (accept4(fd, sa, len, 0));
}

#define NETCUT_IO(fd)	do {					\
	if (netcut_fd(fd)) {					\
		errno = ECONNRESET;				\
		return (-1);					\
	}							\
} while (0)

ssize_t
read(int fd, void *buf, size_t n)
{
	static ssize_t	(*real)(int, void *, size_t);

	if (real == NULL)
		real = netcut_real("read");
	NETCUT_IO(fd);
	return (real(fd, buf, n));
}

ssize_t
write(int fd, const void *buf, size_t n)
{
	static ssize_t	(*real)(int, const void *, size_t);

	if (real == NULL)
		real = netcut_real("write");
	NETCUT_IO(fd);
	return (real(fd, buf, n));
}

ssize_t
readv(int fd, const struct iovec *iov, int n)
{
	static ssize_t	(*real)(int, const struct iovec *, int);

	if (real == NULL)
		real = netcut_real("readv");
	NETCUT_IO(fd);
	return (real(fd, iov, n));
}

ssize_t
writev(int fd, const struct iovec *iov, int n)
{
	static ssize_t	(*real)(int, const struct iovec *, int);

	if (real == NULL)
		real = netcut_real("writev");
	NETCUT_IO(fd);
	return (real(fd, iov, n));
}

ssize_t
recv(int fd, void *buf, size_t n, int flags)
{
	static ssize_t	(*real)(int, void *, size_t, int);

	if (real == NULL)
		real = netcut_real("recv");
	NETCUT_IO(fd);
	return (real(fd, buf, n, flags));
}

ssize_t
send(int fd, const void *buf, size_t n, int flags)
{
	static ssize_t	(*real)(int, const void *, size_t, int);

	if (real == NULL)
		real = netcut_real("send");
	NETCUT_IO(fd);
	return (real(fd, buf, n, flags));
}

ssize_t
recvmsg(int fd, struct msghdr *msg, int flags)
{
	static ssize_t	(*real)(int, struct msghdr *, int);

	if (real == NULL)
		real = netcut_real("recvmsg");
	NETCUT_IO(fd);
	return (real(fd, msg, flags));
}

ssize_t
sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static ssize_t	(*real)(int, const struct msghdr *, int);

	if (real == NULL)
		real = netcut_real("sendmsg");
	NETCUT_IO(fd);
	return (real(fd, msg, flags));
}
