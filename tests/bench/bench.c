/*
 * The benchmark of issue 7: claim API throughput and latency at 1, 8, 32
 * and 128 keep-alive connections and with a new connection per request,
 * the same load against a trivial evhttp handler (--baseline) and the log
 * stream's events per second.
 *
 * This file holds main and the options, the daemon's and the baseline's
 * processes, the HTTP client, the load levels and the output; logs.c
 * makes the log stream's batches and runs that phase; scale.c holds the
 * --scale measurements.
 *
 * The client is our own: evhttp's client costs more than the servers we
 * measure.  Each connection is a non-blocking socket with one event; it
 * keeps exactly one request outstanding (no pipelining), writes the whole
 * request at once and parses the status line, the headers and a
 * Content-Length body.  Latency runs from the request's first byte (for a
 * new connection per request, from connect()) to the last byte of the
 * answer, on CLOCK_MONOTONIC.
 *
 * Every level runs a warm-up, then a timed window: throughput counts the
 * answers completed inside the window, and the percentiles come from
 * their latencies.  Every answer of every phase is checked against what
 * the request mix expects; a mismatch makes the exit status 1.
 *
 * The baseline server runs in a child forked before any event_base exists
 * and levels alternate daemon, baseline, so that a noisy machine affects
 * both sides of each ratio alike.
 */

#include "config.h"

#include <sys/types.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>

#include "bench.h"

#define BENCH_REQUEST_TIMEOUT	10	/* s without a byte of an answer */
#define BENCH_START_TIMEOUT	15000	/* ms to wait for "listening on" */
#define BENCH_SCALE_START_TIMEOUT 3600000 /* the same, with --scale */
#define BENCH_STOP_TIMEOUT	60000	/* ms to wait for a stopped child */
#define BENCH_START_POLL	5	/* ms between looks at daemon.log */
#define BENCH_IN_MAX		(1024 * 1024)	/* largest answer we take */
#define BENCH_MAX_REPORTS	10	/* mismatches shown in detail */
#define BENCH_LISTEN_LINE	"phoneclaimd: info: listening on 127.0.0.1:"
#define BENCH_BASELINE_BODY	"{\"result\":\"reserved\",\"expires_in\":600}"

struct conn {
	struct run	*run;
	int		 fd;
	struct event	*rev;		/* EV_READ | EV_PERSIST, timeout */
	struct event	*wev;		/* EV_WRITE: connect, short write */
	int		 connecting;
	int		 busy;		/* a request is outstanding */
	int		 must_close;	/* close once the answer is in */
	char		*out;
	size_t		 outlen;
	size_t		 outoff;
	size_t		 outcap;
	char		*in;
	size_t		 inlen;
	size_t		 incap;
	uint64_t	 start;		/* ns */
	int		 want_status;
	const char	*want_result;	/* "reserved", "owned", "taken" */
	struct claim	 claim;		/* what the request asks for */
};

/* The load levels, in the order they run. */
const struct level levels[] = {
	{ "keepalive_1", 1, 0 },
	{ "keepalive_8", 8, 0 },
	{ "keepalive_32", 32, 0 },
	{ "keepalive_128", 128, 0 },
	{ "new_conn_32", 32, 1 },
};
_Static_assert(sizeof levels / sizeof levels[0] == NLEVELS,
    "NLEVELS is not the number of levels");

/* US area codes for the generated numbers: 20 x 800 exchanges x 10,000. */
static const int area_codes[] = { 202, 212, 213, 305, 312, 404, 415, 503,
    512, 602, 617, 646, 702, 713, 718, 786, 801, 808, 860, 917 };
#define NAREAS (sizeof area_codes / sizeof area_codes[0])

static void	 usage(void) __attribute__((noreturn));
static void	*xrealloc(void *, size_t);
static uint64_t	 cpu_us(void);
static void	 random_hex(char *, size_t);
static void	 make_claim(struct bench *, struct claim *);
static int	 write_private(const char *, const char *);
static char	*read_token(const char *);
static int	 parse_target(struct bench *, const char *);
static void	 target_heads(struct bench *, struct target *, const char *);
static void	 wait_ms(struct bench *, int);
static int	 daemon_start(struct bench *);
static void	 daemon_log_tail(struct bench *);
static void	 baseline_claims_cb(struct evhttp_request *, void *);
static void	 baseline_other_cb(struct evhttp_request *, void *);
static void	 baseline_stop_cb(evutil_socket_t, short, void *);
static void	 baseline_child(int, int) __attribute__((noreturn));
static int	 baseline_start(struct bench *);
static void	 baseline_stop(struct bench *);
static void	 signal_cb(evutil_socket_t, short, void *);
static void	 lat_add(struct lat *, uint64_t);
static int	 lat_cmp(const void *, const void *);
static double	 lat_pct(struct lat *, double);
static void	 run_result(struct run *, struct result *);
static void	 run_abort(struct run *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static void	 run_timer_cb(evutil_socket_t, short, void *);
static void	 run_next(struct run *, struct conn *);
static void	 run_check(struct run *, struct conn *, int, const char *,
		    size_t);
static void	 run_check_log(struct run *, int, const char *, size_t);
static int	 conn_open(struct conn *);
static void	 conn_close(struct conn *);
static int	 conn_send(struct conn *);
static int	 conn_flush(struct conn *);
static void	 conn_cb(evutil_socket_t, short, void *);
static void	 conn_read(struct conn *);
static int	 conn_parse(struct conn *, int *, const char **, size_t *);
static void	 conn_done(struct conn *, int, const char *, size_t);
static int	 bench_claims(struct bench *);
static void	 bench_json(struct bench *, int);

static const struct timeval	*request_timeout;

/* Say how to run us and exit 1. */
static void
usage(void)
{
	fprintf(stderr, "usage: bench [--baseline] [--quick] [--keep] "
	    "[--duration s] [--batches n] [--pool n]\n"
	    "             [--record file] [--threads n]\n"
	    "             [--daemon path | --target host:port "
	    "--token-file file --log-token-file file]\n"
	    "       bench --daemon path --scale n[,n...] [--loader path] "
	    "[--quick] [--keep]\n"
	    "             [--duration s] [--pool n]\n"
	    "--scale loads n claims with bench-load (--loader, by default "
	    "next to bench)\n"
	    "and measures disk, start-up, memory, keepalive_1 and "
	    "keepalive_32 at each n;\n"
	    "it skips the other levels, the baseline and the log stream.\n"
	    "--record writes number,user_id of every reservation the daemon "
	    "acknowledged.\n"
	    "--threads sets the daemon's threads key (default: its own, the "
	    "cores online).\n");
	exit(1);
}

/* Allocate or exit. */
void *
xmalloc(size_t size)
{
	void	*p;

	if ((p = malloc(size == 0 ? 1 : size)) == NULL) {
		perror("bench: malloc");
		exit(1);
	}
	return (p);
}

/* Resize or exit. */
static void *
xrealloc(void *p, size_t size)
{
	if ((p = realloc(p, size == 0 ? 1 : size)) == NULL) {
		perror("bench: realloc");
		exit(1);
	}
	return (p);
}

/* Copy a string or exit. */
char *
xstrdup(const char *s)
{
	char	*p;

	if ((p = strdup(s)) == NULL) {
		perror("bench: strdup");
		exit(1);
	}
	return (p);
}

/* Format into a new string or exit. */
int
xasprintf(char **ret, const char *fmt, ...)
{
	va_list	 ap;
	int	 n;

	va_start(ap, fmt);
	n = vasprintf(ret, fmt, ap);
	va_end(ap);
	if (n < 0) {
		perror("bench: vasprintf");
		exit(1);
	}
	return (n);
}

/* Append formatted text to a growing buffer of *len bytes in *cap. */
void
buf_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list	 ap;
	int	 n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			perror("bench: vsnprintf");
			exit(1);
		}
		if ((size_t)n < *cap - *len)
			break;
		*cap = (*cap + n + 1) * 2;
		*buf = xrealloc(*buf, *cap);
	}
	*len += n;
}

/* Return CLOCK_MONOTONIC in nanoseconds. */
uint64_t
now_ns(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
}

/* Return the CPU time (user and system) of this process in microseconds. */
static uint64_t
cpu_us(void)
{
	struct rusage	 ru;

	getrusage(RUSAGE_SELF, &ru);
	return ((uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
	    ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* Return the next number of a xorshift64* sequence. */
uint64_t
rng_next(struct bench *b)
{
	b->rng ^= b->rng >> 12;
	b->rng ^= b->rng << 25;
	b->rng ^= b->rng >> 27;
	return (b->rng * 0x2545f4914f6cdd1dULL);
}

/* Fill buf with size - 1 random hex digits from the kernel. */
static void
random_hex(char *buf, size_t size)
{
	unsigned char	 raw[64];
	size_t		 i, n = (size - 1) / 2 + 1;

	if (n > sizeof raw || getentropy(raw, n) != 0) {
		perror("bench: getentropy");
		exit(1);
	}
	for (i = 0; i + 1 < size; i++)
		buf[i] = "0123456789abcdef"[(raw[i / 2] >> (i % 2 * 4)) & 0xf];
	buf[size - 1] = '\0';
}

/* Make a user id that no earlier request used: auth0| and 24 hex digits. */
void
make_user(struct bench *b, char *buf, size_t size)
{
	snprintf(buf, size, "auth0|%s%016" PRIx64, b->runid, b->next_user++);
}

/*
 * Make a never used claim.  +1 AAA EEE LLLL with a real area code and an
 * exchange from 200: libphonenumber takes these as possible numbers.
 */
static void
make_claim(struct bench *b, struct claim *c)
{
	uint64_t	 i = b->next_number++;

	snprintf(c->number, sizeof c->number, "+1%d%03d%04d",
	    area_codes[(i / 8000000) % NAREAS], (int)(200 + (i / 10000) % 800),
	    (int)(i % 10000));
	make_user(b, c->user, sizeof c->user);
	snprintf(c->device, sizeof c->device, "dev_%s%08" PRIx64, b->runid,
	    i & 0xffffffff);
}

/* Write text to a new file with mode 0600. */
static int
write_private(const char *path, const char *text)
{
	size_t	 len = strlen(text);
	int	 fd;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600)) == -1) {
		fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
		return (-1);
	}
	if (write(fd, text, len) != (ssize_t)len || close(fd) != 0) {
		fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
		return (-1);
	}
	return (0);
}

/*
 * Read a token file as the daemon does: the content, less one trailing
 * newline (LF or CRLF).
 */
static char *
read_token(const char *path)
{
	char	 buf[4096];
	size_t	 len;
	FILE	*f;

	if ((f = fopen(path, "r")) == NULL) {
		fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
		return (NULL);
	}
	len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[len] = '\0';
	if (len > 0 && buf[len - 1] == '\n')
		buf[--len] = '\0';
	if (len > 0 && buf[len - 1] == '\r')
		buf[--len] = '\0';
	if (len == 0 || strlen(buf) != len) {
		fprintf(stderr, "bench: %s: empty or binary token\n", path);
		return (NULL);
	}
	return (xstrdup(buf));
}

/*
 * Parse --target HOST:PORT into the daemon's address.  Only loopback: a
 * benchmark must never load a daemon on another machine by mistake.
 */
static int
parse_target(struct bench *b, const char *arg)
{
	struct sockaddr_in	*sin = (struct sockaddr_in *)&b->daemon.ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)&b->daemon.ss;
	char			*host, *colon, *end;
	long			 port;
	int			 rv = -1;

	host = xstrdup(arg);
	if ((colon = strrchr(host, ':')) == NULL)
		goto bad;
	*colon = '\0';
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || port < 1 || port > 65535)
		goto bad;
	memset(&b->daemon.ss, 0, sizeof b->daemon.ss);
	if (strcmp(host, "127.0.0.1") == 0 || strcmp(host, "localhost") == 0) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		b->daemon.sslen = sizeof *sin;
	} else if (strcmp(host, "::1") == 0 || strcmp(host, "[::1]") == 0) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		sin6->sin6_addr = in6addr_loopback;
		b->daemon.sslen = sizeof *sin6;
	} else {
		fprintf(stderr, "bench: %s: only 127.0.0.1, ::1 and localhost "
		    "may be benchmarked\n", arg);
		goto out;
	}
	rv = 0;
	goto out;
bad:
	fprintf(stderr, "bench: %s: expected host:port\n", arg);
out:
	free(host);
	return (rv);
}

/* Build the fixed part of the target's requests. */
static void
target_heads(struct bench *b, struct target *t, const char *hostport)
{
	xasprintf(&t->claim_head, "POST /v1/claims HTTP/1.1\r\n"
	    "Host: %s\r\nAuthorization: Bearer %s\r\n"
	    "Content-Type: application/json\r\n", hostport, b->token);
	if (b->log_token != NULL)
		xasprintf(&t->log_head, "POST /v1/log-stream HTTP/1.1\r\n"
		    "Host: %s\r\nAuthorization: %s\r\n"
		    "Content-Type: application/json\r\n", hostport,
		    b->log_token);
}

/* Run the event loop for ms milliseconds (signals still arrive). */
static void
wait_ms(struct bench *b, int ms)
{
	struct timeval	 tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(b->base, &tv);
	event_base_dispatch(b->base);
}

/* Remove one entry of the temporary directory, deepest first. */
int
remove_cb(const char *path, const struct stat *sb, int flag,
    struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	if (remove(path) != 0)
		fprintf(stderr, "bench: remove %s: %s\n", path,
		    strerror(errno));
	return (0);
}

/* Make the daemon's directory, config and tokens, and start it. */
static int
daemon_start(struct bench *b)
{
	if (daemon_setup(b) != 0)
		return (-1);
	return (daemon_spawn(b));
}

/*
 * Make a temporary directory with a state directory, the tokens and the
 * daemon's config.  The hash key file is state/hash.key: bench-load
 * creates it there.
 */
int
daemon_setup(struct bench *b)
{
	const char		*tmp;
	char			*path, *conf, *text, *threads = NULL;
	char			 tok[33];
	int			 fd;

	if ((tmp = getenv("TMPDIR")) == NULL || *tmp == '\0')
		tmp = "/tmp";
	xasprintf(&b->dir, "%s/phoneclaimd-bench.XXXXXX", tmp);
	if (mkdtemp(b->dir) == NULL) {
		fprintf(stderr, "bench: mkdtemp %s: %s\n", b->dir,
		    strerror(errno));
		free(b->dir);
		b->dir = NULL;
		return (-1);
	}
	xasprintf(&path, "%s/state", b->dir);
	if (mkdir(path, 0700) != 0) {
		fprintf(stderr, "bench: mkdir %s: %s\n", path, strerror(errno));
		free(path);
		return (-1);
	}
	free(path);

	random_hex(tok, sizeof tok);
	xasprintf(&b->token, "bench-%s", tok);
	random_hex(tok, sizeof tok);
	xasprintf(&b->log_token, "Bearer ls-bench-%s", tok);
	xasprintf(&path, "%s/api.token", b->dir);
	xasprintf(&text, "%s\n", b->token);
	fd = write_private(path, text);
	free(path);
	free(text);
	if (fd != 0)
		return (-1);
	xasprintf(&path, "%s/logstream.token", b->dir);
	xasprintf(&text, "%s\n", b->log_token);
	fd = write_private(path, text);
	free(path);
	free(text);
	if (fd != 0)
		return (-1);

	xasprintf(&conf, "%s/phoneclaimd.conf", b->dir);
	xasprintf(&text, "# phoneclaimd benchmark\n"
	    "listen = 127.0.0.1:0\n"
	    "state_dir = %s/state\n"
	    "status_socket = %s/status.sock\n"
	    "api_token_file = %s/api.token\n"
	    "log_stream_token_file = %s/logstream.token\n"
	    "hash_key_file = %s/state/hash.key\n"
	    "pending_ttl = 3600\n"
	    "log_level = info\n", b->dir, b->dir, b->dir, b->dir, b->dir);
	if (b->threads > 0) {
		xasprintf(&threads, "%sthreads = %lld\n", text, b->threads);
		free(text);
		text = threads;
	}
	fd = write_private(conf, text);
	free(conf);
	free(text);
	return (fd);
}

/*
 * Start the daemon of b->dir in the foreground with its stderr in
 * daemon.log and wait for the line that gives its port; b->start_s is the
 * time from fork to that line.
 */
int
daemon_spawn(struct bench *b)
{
	struct sockaddr_in	*sin = (struct sockaddr_in *)&b->daemon.ss;
	char			*path, *conf, *hostport, *p;
	char			 buf[65536];
	uint64_t		 t0, deadline;
	ssize_t			 n;
	long			 port;
	int			 fd, rv = -1;

	xasprintf(&conf, "%s/phoneclaimd.conf", b->dir);
	xasprintf(&path, "%s/daemon.log", b->dir);
	/*
	 * Empty the log before the fork, not in the child: a child slow to
	 * run (a sanitizer build) left the last start's log in place, whose
	 * "listening on" line, with the last start's port, the loop below
	 * read (a restart "in 8 ms", then the connection refused).
	 */
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) == -1) {
		fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
		free(path);
		free(conf);
		return (-1);
	}
	close(fd);
	fflush(stdout);
	fflush(stderr);
	t0 = now_ns();
	switch (b->daemon_pid = fork()) {
	case -1:
		fprintf(stderr, "bench: fork: %s\n", strerror(errno));
		free(path);
		free(conf);
		return (-1);
	case 0:
		fd = open(path, O_WRONLY | O_APPEND);
		if (fd == -1 || dup2(fd, STDOUT_FILENO) == -1 ||
		    dup2(fd, STDERR_FILENO) == -1)
			_exit(127);
		if ((fd = open("/dev/null", O_RDONLY)) == -1 ||
		    dup2(fd, STDIN_FILENO) == -1 || chdir(b->dir) != 0)
			_exit(127);
		signal(SIGPIPE, SIG_DFL);
		execl(b->daemon_path, b->daemon_path, "-f", "-c", conf,
		    (char *)NULL);
		fprintf(stderr, "bench: exec %s: %s\n", b->daemon_path,
		    strerror(errno));
		_exit(127);
	}
	free(conf);

	deadline = t0 + (uint64_t)b->start_timeout * 1000000;
	for (;;) {
		wait_ms(b, BENCH_START_POLL);
		if (b->interrupted)
			break;
		if ((fd = open(path, O_RDONLY)) != -1) {
			n = read(fd, buf, sizeof buf - 1);
			close(fd);
			buf[n > 0 ? n : 0] = '\0';
			if ((p = strstr(buf, BENCH_LISTEN_LINE)) != NULL &&
			    strchr(p, '\n') != NULL) {
				b->start_s = (now_ns() - t0) / 1e9;
				port = strtol(p + strlen(BENCH_LISTEN_LINE),
				    NULL, 10);
				if (port < 1 || port > 65535)
					break;
				memset(sin, 0, sizeof *sin);
				sin->sin_family = AF_INET;
				sin->sin_port = htons((uint16_t)port);
				sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
				b->daemon.sslen = sizeof *sin;
				xasprintf(&hostport, "127.0.0.1:%ld", port);
				free(b->daemon.claim_head);
				free(b->daemon.log_head);
				target_heads(b, &b->daemon, hostport);
				free(hostport);
				rv = 0;
				break;
			}
		}
		if (!daemon_alive(b)) {
			fprintf(stderr, "bench: the daemon exited before "
			    "listening\n");
			break;
		}
		if (now_ns() > deadline) {
			fprintf(stderr, "bench: no \"listening on\" line "
			    "within %d s\n", b->start_timeout / 1000);
			break;
		}
	}
	free(path);
	if (rv != 0)
		daemon_log_tail(b);
	return (rv);
}

/* Return 1 if the daemon we started is still running. */
int
daemon_alive(struct bench *b)
{
	int	 status;

	if (b->daemon_pid <= 0)
		return (1);
	if (waitpid(b->daemon_pid, &status, WNOHANG) != b->daemon_pid)
		return (1);
	if (WIFEXITED(status))
		fprintf(stderr, "bench: the daemon exited with status %d\n",
		    WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		fprintf(stderr, "bench: the daemon died of signal %d\n",
		    WTERMSIG(status));
	b->daemon_pid = 0;
	return (0);
}

/* Print the end of the daemon's log to stderr. */
static void
daemon_log_tail(struct bench *b)
{
	char	*path, buf[4096];
	off_t	 size;
	ssize_t	 n;
	int	 fd;

	if (b->dir == NULL)
		return;
	xasprintf(&path, "%s/daemon.log", b->dir);
	fd = open(path, O_RDONLY);
	free(path);
	if (fd == -1)
		return;
	size = lseek(fd, 0, SEEK_END);
	if (size > (off_t)sizeof buf - 1)
		lseek(fd, size - (off_t)sizeof buf + 1, SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	if ((n = read(fd, buf, sizeof buf - 1)) > 0) {
		buf[n] = '\0';
		fprintf(stderr, "bench: daemon log tail:\n%s\n", buf);
	}
	close(fd);
}

/*
 * Stop the daemon with SIGTERM (SIGKILL after BENCH_STOP_TIMEOUT) and
 * return 0 if it exited with status 0.
 */
int
daemon_stop(struct bench *b)
{
	struct timespec	 ts = { 0, 20000000 };
	int		 i, status;

	if (b->daemon_pid <= 0)
		return (b->daemon_pid == 0 && b->dir != NULL ? -1 : 0);
	kill(b->daemon_pid, SIGTERM);
	for (i = 0; i < BENCH_STOP_TIMEOUT / 20; i++) {
		if (waitpid(b->daemon_pid, &status, WNOHANG) == b->daemon_pid)
			break;
		nanosleep(&ts, NULL);
	}
	if (i == BENCH_STOP_TIMEOUT / 20) {
		fprintf(stderr, "bench: the daemon ignored SIGTERM\n");
		kill(b->daemon_pid, SIGKILL);
		waitpid(b->daemon_pid, &status, 0);
		b->daemon_pid = -1;
		return (-1);
	}
	b->daemon_pid = -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench: the daemon stopped with status "
		    "0x%x\n", status);
		return (-1);
	}
	return (0);
}

/* Baseline: answer a claim as the daemon answers a fresh reservation. */
static void
baseline_claims_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer	*out = arg;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		evhttp_send_error(req, 405, NULL);
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "application/json");
	evbuffer_add(out, BENCH_BASELINE_BODY, strlen(BENCH_BASELINE_BODY));
	evhttp_send_reply(req, 200, "OK", out);
}

/* Baseline: anything else is not found. */
static void
baseline_other_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	evhttp_send_error(req, 404, NULL);
}

/* Baseline: SIGTERM, or the parent gone (EOF on the lifeline). */
static void
baseline_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

/*
 * The baseline server's process: a trivial evhttp handler on 127.0.0.1:0.
 * Its port goes to the parent through portfd; it stops on SIGTERM or when
 * the parent goes away and lifefd reads EOF.
 */
static void
baseline_child(int portfd, int lifefd)
{
	struct event_base		*base;
	struct evhttp			*http;
	struct evhttp_bound_socket	*bound;
	struct evbuffer			*out;
	struct event			*sig_ev, *life_ev;
	struct sockaddr_in		 sin;
	socklen_t			 len = sizeof sin;
	int				 port = 0;

	signal(SIGINT, SIG_IGN);
	if ((base = event_base_new()) == NULL ||
	    (http = evhttp_new(base)) == NULL ||
	    (out = evbuffer_new()) == NULL)
		_exit(1);
	evhttp_set_cb(http, "/v1/claims", baseline_claims_cb, out);
	evhttp_set_gencb(http, baseline_other_cb, NULL);
	if ((bound = evhttp_bind_socket_with_handle(http, "127.0.0.1",
	    0)) == NULL ||
	    getsockname(evhttp_bound_socket_get_fd(bound),
	    (struct sockaddr *)&sin, &len) != 0)
		_exit(1);
	port = ntohs(sin.sin_port);
	if (write(portfd, &port, sizeof port) != sizeof port)
		_exit(1);
	close(portfd);
	sig_ev = evsignal_new(base, SIGTERM, baseline_stop_cb, base);
	life_ev = event_new(base, lifefd, EV_READ, baseline_stop_cb, base);
	if (sig_ev == NULL || life_ev == NULL || event_add(sig_ev, NULL) ||
	    event_add(life_ev, NULL))
		_exit(1);
	event_base_dispatch(base);
	event_free(life_ev);
	event_free(sig_ev);
	evhttp_free(http);
	evbuffer_free(out);
	event_base_free(base);
	_exit(0);
}

/* Fork the baseline server and learn its port.  Before any event_base. */
static int
baseline_start(struct bench *b)
{
	struct sockaddr_in	*sin = (struct sockaddr_in *)&b->base_srv.ss;
	char			*hostport;
	int			 portp[2], lifep[2], port;

	if (pipe(portp) != 0 || pipe(lifep) != 0) {
		fprintf(stderr, "bench: pipe: %s\n", strerror(errno));
		return (-1);
	}
	fflush(stdout);
	fflush(stderr);
	switch (b->baseline_pid = fork()) {
	case -1:
		fprintf(stderr, "bench: fork: %s\n", strerror(errno));
		return (-1);
	case 0:
		close(portp[0]);
		close(lifep[1]);
		baseline_child(portp[1], lifep[0]);
	}
	close(portp[1]);
	close(lifep[0]);
	b->lifeline = lifep[1];
	if (read(portp[0], &port, sizeof port) != sizeof port ||
	    port < 1 || port > 65535) {
		fprintf(stderr, "bench: the baseline server did not start\n");
		close(portp[0]);
		return (-1);
	}
	close(portp[0]);
	memset(sin, 0, sizeof *sin);
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	b->base_srv.sslen = sizeof *sin;
	xasprintf(&hostport, "127.0.0.1:%d", port);
	target_heads(b, &b->base_srv, hostport);
	free(hostport);
	return (0);
}

/* Stop the baseline server and reap it. */
static void
baseline_stop(struct bench *b)
{
	if (b->baseline_pid <= 0)
		return;
	kill(b->baseline_pid, SIGTERM);
	close(b->lifeline);
	waitpid(b->baseline_pid, NULL, 0);
	b->baseline_pid = 0;
}

/* SIGINT or SIGTERM: stop the current phase; main cleans up. */
static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct bench	*b = arg;

	(void)what;
	fprintf(stderr, "bench: signal %d: stopping\n", (int)sig);
	b->interrupted = 1;
	b->failed = 1;
	event_base_loopbreak(b->base);
}

/* Record one latency. */
static void
lat_add(struct lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		l->cap = l->cap == 0 ? 65536 : l->cap * 2;
		l->v = xrealloc(l->v, l->cap * sizeof *l->v);
	}
	l->v[l->n++] = ns;
}

/* Order latencies. */
static int
lat_cmp(const void *a, const void *b)
{
	uint64_t	 x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x < y ? -1 : x > y);
}

/* Return the q quantile (nearest rank) of sorted latencies, in ms. */
static double
lat_pct(struct lat *l, double q)
{
	size_t	 i;

	if (l->n == 0)
		return (0);
	i = (size_t)ceil(q * l->n);
	if (i > 0)
		i--;
	if (i >= l->n)
		i = l->n - 1;
	return (l->v[i] / 1e6);
}

/* Sum up a finished run. */
static void
run_result(struct run *r, struct result *res)
{
	memset(res, 0, sizeof *res);
	res->valid = 1;
	res->requests = r->done;
	res->seconds = (r->t1 - r->t0) / 1e9;
	res->rps = res->seconds > 0 ? r->done / res->seconds : 0;
	qsort(r->lat.v, r->lat.n, sizeof *r->lat.v, lat_cmp);
	res->p50 = lat_pct(&r->lat, 0.50);
	res->p99 = lat_pct(&r->lat, 0.99);
	res->p999 = lat_pct(&r->lat, 0.999);
	res->cpu = r->t1 > r->t0 ? (r->cpu1 - r->cpu0) * 1e5 / (r->t1 - r->t0) :
	    0;
}

/* A connection failed: report it and end the run as a failure. */
static void
run_abort(struct run *r, const char *fmt, ...)
{
	va_list	 ap;

	if (r->failed)
		return;
	fprintf(stderr, "bench: %s against the %s: ", r->name, r->t->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	r->failed = 1;
	r->b->failed = 1;
	event_base_loopbreak(r->b->base);
}

/* The warm-up is over: open the window; the window is over: drain. */
static void
run_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct run	*r = arg;
	struct timeval	 tv;

	(void)fd;
	(void)what;
	if (r->phase == PHASE_WARMUP) {
		r->phase = PHASE_MEASURE;
		r->t0 = now_ns();
		r->cpu0 = cpu_us();
		tv.tv_sec = (time_t)r->b->duration;
		tv.tv_usec = (suseconds_t)((r->b->duration - tv.tv_sec) * 1e6);
		evtimer_add(r->timer, &tv);
		return;
	}
	r->phase = PHASE_DRAIN;
	r->t1 = now_ns();
	r->cpu1 = cpu_us();
	if (r->busy == 0)
		event_base_loopbreak(r->b->base);
}

/*
 * Run r to its end: timed runs (RUN_MIX) for the warm-up and the window,
 * counted runs until r->limit answers are in.  Return 0 and the figures,
 * or -1 if a connection failed.
 */
int
run_go(struct run *r, struct result *res)
{
	struct timeval	 tv;
	size_t		 i;
	int		 rv = 0;

	r->conns = xmalloc(r->nconns * sizeof *r->conns);
	memset(r->conns, 0, r->nconns * sizeof *r->conns);
	r->timer = evtimer_new(r->b->base, run_timer_cb, r);
	if (r->mode == RUN_MIX) {
		r->phase = PHASE_WARMUP;
		tv.tv_sec = (time_t)r->b->warmup;
		tv.tv_usec = (suseconds_t)((r->b->warmup - tv.tv_sec) * 1e6);
		evtimer_add(r->timer, &tv);
	} else {
		r->phase = PHASE_MEASURE;
		r->t0 = now_ns();
		r->cpu0 = cpu_us();
	}
	for (i = 0; i < r->nconns; i++) {
		r->conns[i].run = r;
		r->conns[i].fd = -1;
	}
	for (i = 0; i < r->nconns && !r->failed; i++) {
		if (r->limit != 0 && r->issued >= r->limit)
			break;
		if (conn_open(&r->conns[i]) != 0)
			break;
	}
	if (!r->failed && r->busy > 0)
		event_base_dispatch(r->b->base);
	if (r->failed || r->b->interrupted)
		rv = -1;
	if (r->mode != RUN_MIX) {
		r->t1 = now_ns();
		r->cpu1 = cpu_us();
	}
	for (i = 0; i < r->nconns; i++)
		conn_close(&r->conns[i]);
	for (i = 0; i < r->nconns; i++) {
		free(r->conns[i].out);
		free(r->conns[i].in);
	}
	free(r->conns);
	event_free(r->timer);
	if (rv == 0 && res != NULL)
		run_result(r, res);
	free(r->lat.v);
	return (rv);
}

/*
 * Put the connection's next request in its output buffer, with what its
 * answer must be.
 */
static void
run_next(struct run *r, struct conn *c)
{
	struct bench	*b = r->b;
	struct claim	 fresh, *cl = &fresh;
	char		 user[32];
	const char	*head, *body, *who = NULL;
	size_t		 bodylen = 0;
	char		 json[160];
	unsigned int	 dice;

	c->want_status = 200;
	c->want_result = "reserved";
	if (r->mode == RUN_LOG) {
		body = b->bodies[r->issued];
		bodylen = b->bodylens[r->issued];
		head = r->t->log_head;
		goto write;
	}
	if (r->mode == RUN_FILL) {
		cl = &r->sink[r->issued];
		make_claim(b, cl);
	} else if ((dice = rng_next(b) % 100) < 80 || b->npool == 0) {
		make_claim(b, cl);
	} else {
		cl = &b->pool[rng_next(b) % b->npool];
		if (dice < 90) {
			make_user(b, user, sizeof user);
			who = user;
			c->want_status = 409;
			c->want_result = "taken";
		} else
			c->want_result = "owned";
	}
	if (r->baseline) {
		c->want_status = 200;
		c->want_result = "reserved";
	}
	c->claim = *cl;
	if (who != NULL)
		snprintf(c->claim.user, sizeof c->claim.user, "%s", who);
	bodylen = snprintf(json, sizeof json, "{\"phone_number\":\"%s\","
	    "\"user_id\":\"%s\",\"action\":\"enrollment\"}", cl->number,
	    who != NULL ? who : cl->user);
	body = json;
	head = r->t->claim_head;
write:
	r->issued++;
	c->outlen = c->outoff = 0;
	buf_printf(&c->out, &c->outlen, &c->outcap, "%sContent-Length: %zu\r\n"
	    "%s\r\n", head, bodylen, r->newconn ? "Connection: close\r\n" :
	    "");
	if (c->outcap - c->outlen < bodylen) {
		c->outcap = c->outlen + bodylen;
		c->out = xrealloc(c->out, c->outcap);
	}
	memcpy(c->out + c->outlen, body, bodylen);
	c->outlen += bodylen;
}

/* Check a claim answer against what the mix expects. */
static void
run_check(struct run *r, struct conn *c, int status, const char *body,
    size_t len)
{
	char	 want[32];

	snprintf(want, sizeof want, "\"result\":\"%s\"", c->want_result);
	if (status == c->want_status && memmem(body, len, want,
	    strlen(want)) != NULL) {
		/* --record: every reservation the daemon acknowledged. */
		if (r->b->record != NULL && !r->baseline && status == 200 &&
		    strcmp(c->want_result, "reserved") == 0)
			fprintf(r->b->record, "%s,%s\n", c->claim.number,
			    c->claim.user);
		return;
	}
	if (r->b->mismatches++ < BENCH_MAX_REPORTS)
		fprintf(stderr, "bench: %s against the %s: expected %d %s, "
		    "got %d %.*s\n", r->name, r->t->name, c->want_status,
		    c->want_result, status, (int)(len > 200 ? 200 : len),
		    body);
}

/*
 * Check a log-stream answer: 200 with every event received and none
 * rejected; add up its counts.
 */
static void
run_check_log(struct run *r, int status, const char *body, size_t len)
{
	static const char	*names[] = { "\"received\":", "\"applied\":",
	    "\"duplicates\":", "\"ignored\":", "\"rejected\":" };
	struct bench		*b = r->b;
	uint64_t		 v[5] = { 0, 0, 0, 0, 0 };
	char			 text[512];
	const char		*p;
	size_t			 i;

	snprintf(text, sizeof text, "%.*s", (int)(len < 511 ? len : 511),
	    body);
	for (i = 0; i < 5; i++) {
		if ((p = strstr(text, names[i])) == NULL)
			break;
		v[i] = strtoull(p + strlen(names[i]), NULL, 10);
	}
	if (status != 200 || i < 5 || v[0] != BENCH_BATCH || v[4] != 0) {
		if (b->mismatches++ < BENCH_MAX_REPORTS)
			fprintf(stderr, "bench: log stream: expected 200 "
			    "with %d received and none rejected, got %d "
			    "%s\n", BENCH_BATCH, status, text);
		return;
	}
	b->ls_received += v[0];
	b->ls_applied += v[1];
	b->ls_duplicates += v[2];
	b->ls_ignored += v[3];
	b->ls_rejected += v[4];
}

/* Connect a new socket and send the next request when it is up. */
static int
conn_open(struct conn *c)
{
	struct run	*r = c->run;
	struct target	*t = r->t;
	int		 one = 1;

	run_next(r, c);
	c->busy = 1;
	r->busy++;
	c->must_close = r->newconn;
	c->inlen = 0;
	c->start = now_ns();
	if ((c->fd = socket(t->ss.ss_family, SOCK_STREAM, 0)) == -1 ||
	    evutil_make_socket_nonblocking(c->fd) != 0 ||
	    evutil_make_socket_closeonexec(c->fd) != 0) {
		run_abort(r, "socket: %s", strerror(errno));
		return (-1);
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->rev = event_new(r->b->base, c->fd, EV_READ | EV_PERSIST, conn_cb,
	    c);
	c->wev = event_new(r->b->base, c->fd, EV_WRITE, conn_cb, c);
	if (c->rev == NULL || c->wev == NULL) {
		run_abort(r, "event_new failed");
		return (-1);
	}
	if (connect(c->fd, (struct sockaddr *)&t->ss, t->sslen) != 0) {
		if (errno != EINPROGRESS) {
			run_abort(r, "connect: %s", strerror(errno));
			return (-1);
		}
		c->connecting = 1;
		event_add(c->wev, request_timeout);
		return (0);
	}
	event_add(c->rev, request_timeout);
	return (conn_flush(c));
}

/*
 * Close the connection.  With SO_LINGER 0 the close resets it, so that
 * neither side keeps a TIME_WAIT socket: a new connection per request
 * would otherwise run out of loopback ports within seconds.
 */
static void
conn_close(struct conn *c)
{
	struct linger	 lg = { 1, 0 };

	if (c->rev != NULL)
		event_free(c->rev);
	if (c->wev != NULL)
		event_free(c->wev);
	c->rev = c->wev = NULL;
	if (c->fd != -1) {
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		close(c->fd);
	}
	c->fd = -1;
	c->connecting = 0;
	if (c->busy) {
		c->busy = 0;
		c->run->busy--;
	}
}

/* Send the next request on an open keep-alive connection. */
static int
conn_send(struct conn *c)
{
	struct run	*r = c->run;

	run_next(r, c);
	c->busy = 1;
	r->busy++;
	c->inlen = 0;
	c->start = now_ns();
	return (conn_flush(c));
}

/* Write what is left of the request; wait for writability if need be. */
static int
conn_flush(struct conn *c)
{
	ssize_t	 n;

	while (c->outoff < c->outlen) {
		n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
		    MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			event_add(c->wev, request_timeout);
			return (0);
		}
		if (n == -1) {
			run_abort(c->run, "send: %s", strerror(errno));
			return (-1);
		}
		c->outoff += n;
	}
	return (0);
}

/* Socket events: connected, writable again, answer bytes or a timeout. */
static void
conn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn	*c = arg;
	socklen_t	 len = sizeof(int);
	int		 error = 0;

	if (what & EV_TIMEOUT) {
		run_abort(c->run, "no answer within %d s",
		    BENCH_REQUEST_TIMEOUT);
		return;
	}
	if ((what & EV_WRITE) && c->connecting) {
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
			error = errno;
		if (error != 0) {
			run_abort(c->run, "connect: %s", strerror(error));
			return;
		}
		c->connecting = 0;
		event_add(c->rev, request_timeout);
	}
	if (what & EV_WRITE) {
		conn_flush(c);
		return;
	}
	conn_read(c);
}

/* Read what the socket has and finish the request if the answer is in. */
static void
conn_read(struct conn *c)
{
	const char	*body;
	size_t		 bodylen, avail;
	ssize_t		 n;
	int		 status, done;

	for (;;) {
		if (c->incap - c->inlen < 4096) {
			if (c->incap >= BENCH_IN_MAX) {
				run_abort(c->run, "answer too long");
				return;
			}
			c->incap = c->incap == 0 ? 8192 : c->incap * 2;
			c->in = xrealloc(c->in, c->incap);
		}
		avail = c->incap - c->inlen - 1;
		n = recv(c->fd, c->in + c->inlen, avail, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n == -1) {
			run_abort(c->run, "recv: %s", strerror(errno));
			return;
		}
		if (n == 0) {
			run_abort(c->run, "connection closed %s",
			    c->busy ? "before the answer" : "while idle");
			return;
		}
		c->inlen += n;
		if ((size_t)n < avail)
			break;
	}
	if (!c->busy) {
		run_abort(c->run, "bytes without a request");
		return;
	}
	if ((done = conn_parse(c, &status, &body, &bodylen)) == -1)
		return;
	if (done)
		conn_done(c, status, body, bodylen);
}

/*
 * Parse the answer so far.  Return 1 with the status and body when it is
 * complete, 0 while it is not, -1 (run aborted) if it is not HTTP we
 * understand.
 */
static int
conn_parse(struct conn *c, int *status, const char **body, size_t *bodylen)
{
	const char	*end, *line, *eol, *colon, *v;
	long long	 clen = -1;

	c->in[c->inlen] = '\0';
	if ((end = memmem(c->in, c->inlen, "\r\n\r\n", 4)) == NULL)
		return (0);
	if (c->inlen < 12 || strncmp(c->in, "HTTP/1.", 7) != 0 ||
	    c->in[8] != ' ') {
		run_abort(c->run, "not an HTTP answer");
		return (-1);
	}
	*status = atoi(c->in + 9);
	line = strstr(c->in, "\r\n") + 2;
	while (line < end + 2) {
		eol = strstr(line, "\r\n");
		if ((colon = memchr(line, ':', eol - line)) != NULL) {
			for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
				;
			if (colon - line == 14 &&
			    strncasecmp(line, "Content-Length", 14) == 0)
				clen = strtoll(v, NULL, 10);
			else if (colon - line == 10 &&
			    strncasecmp(line, "Connection", 10) == 0 &&
			    strncasecmp(v, "close", 5) == 0)
				c->must_close = 1;
			else if (colon - line == 17 &&
			    strncasecmp(line, "Transfer-Encoding", 17) == 0) {
				run_abort(c->run, "chunked answers are not "
				    "supported");
				return (-1);
			}
		}
		line = eol + 2;
	}
	if (clen < 0) {
		run_abort(c->run, "answer %d without Content-Length", *status);
		return (-1);
	}
	*body = end + 4;
	if ((size_t)(c->inlen - (*body - c->in)) < (size_t)clen)
		return (0);
	if ((size_t)(c->inlen - (*body - c->in)) > (size_t)clen) {
		run_abort(c->run, "more bytes than one answer");
		return (-1);
	}
	*bodylen = clen;
	return (1);
}

/*
 * One answer is complete: check it, count it if it falls in the window and
 * start the next request, unless the run is over.
 */
static void
conn_done(struct conn *c, int status, const char *body, size_t bodylen)
{
	struct run	*r = c->run;
	uint64_t	 t = now_ns();

	if (r->mode == RUN_LOG)
		run_check_log(r, status, body, bodylen);
	else
		run_check(r, c, status, body, bodylen);
	if (r->phase == PHASE_MEASURE) {
		r->done++;
		lat_add(&r->lat, t - c->start);
	}
	c->busy = 0;
	r->busy--;
	if (c->must_close)
		conn_close(c);
	if (r->phase == PHASE_DRAIN || r->b->interrupted ||
	    (r->limit != 0 && r->issued >= r->limit)) {
		if (r->busy == 0)
			event_base_loopbreak(r->b->base);
		return;
	}
	if (c->fd == -1)
		conn_open(c);
	else
		conn_send(c);
}

/* Print one line of the table. */
void
print_result(const char *level, const char *who, struct result *res)
{
	printf("%-15s %-9s %9" PRIu64 " %10.1f %9.3f %9.3f %9.3f %9.0f\n",
	    level, who, res->requests, res->rps, res->p50, res->p99, res->p999,
	    res->cpu);
}

/* Print one level's figures as a JSON member. */
void
json_result(const char *level, struct result *res, int first)
{
	printf("%s\"%s\":{\"requests\":%" PRIu64 ",\"seconds\":%.3f,"
	    "\"rps\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,"
	    "\"client_cpu_pct\":%.0f}", first ? "" : ",", level,
	    res->requests, res->seconds, res->rps, res->p50, res->p99,
	    res->p999, res->cpu);
}

/* Fill the pool that the taken and owned requests draw from. */
int
bench_pool(struct bench *b)
{
	struct result	 pool;
	struct run	 run;

	free(b->pool);
	b->npool = 0;
	b->pool = xmalloc(b->pool_size * sizeof *b->pool);
	memset(&run, 0, sizeof run);
	run.b = b;
	run.t = &b->daemon;
	run.name = "pool";
	run.mode = RUN_FILL;
	run.nconns = 8;
	run.limit = b->pool_size;
	run.sink = b->pool;
	if (run_go(&run, &pool) != 0 || !daemon_alive(b))
		return (-1);
	b->npool = b->pool_size;
	printf("bench: %zu claims in the pool (%.0f/s)\n", b->npool,
	    pool.rps);
	return (0);
}

/*
 * Run level i of the claim mix against the daemon into *res and print it;
 * *run is left set up, for the same level against the baseline.
 */
int
level_run(struct bench *b, size_t i, struct run *run, struct result *res)
{
	memset(run, 0, sizeof *run);
	run->b = b;
	run->t = &b->daemon;
	run->name = levels[i].name;
	run->mode = RUN_MIX;
	run->nconns = levels[i].conns;
	run->newconn = levels[i].newconn;
	if (run_go(run, res) != 0 || !daemon_alive(b))
		return (-1);
	print_result(levels[i].name, "daemon", res);
	return (0);
}

/*
 * The claim API: fill the pool, then run each level against the daemon
 * and the baseline.
 */
static int
bench_claims(struct bench *b)
{
	struct run	 run;
	size_t		 i;

	if (bench_pool(b) != 0)
		return (-1);
	printf("\n%-15s %-9s %9s %10s %9s %9s %9s %9s\n", "level", "server",
	    "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "client %");
	for (i = 0; i < NLEVELS; i++) {
		if (level_run(b, i, &run, &b->dres[i]) != 0)
			return (-1);
		if (!b->baseline)
			continue;
		run.t = &b->base_srv;
		run.baseline = 1;
		run.failed = 0;
		run.done = 0;
		run.busy = 0;
		run.issued = 0;
		memset(&run.lat, 0, sizeof run.lat);
		if (run_go(&run, &b->bres[i]) != 0)
			return (-1);
		print_result(levels[i].name, "baseline", &b->bres[i]);
	}
	if (b->baseline) {
		printf("\nratio daemon/baseline:");
		for (i = 0; i < NLEVELS; i++)
			printf(" %s %.3f", levels[i].name, b->bres[i].rps > 0 ?
			    b->dres[i].rps / b->bres[i].rps : 0);
		printf("\n");
	}
	return (0);
}

/* Print every figure as one line of JSON, the last of the output. */
static void
bench_json(struct bench *b, int ok)
{
	size_t	 i;

	printf("{\"ok\":%s,\"quick\":%s,\"duration_s\":%.3f,"
	    "\"mismatches\":%" PRIu64, ok ? "true" : "false", b->quick ?
	    "true" : "false", b->duration, b->mismatches);
	if (b->nscale > 0) {
		scale_json(b);
		printf("}\n");
		return;
	}
	printf(",\"claims\":{");
	for (i = 0; i < NLEVELS; i++)
		json_result(levels[i].name, &b->dres[i], i == 0);
	printf("}");
	if (b->baseline) {
		printf(",\"baseline\":{");
		for (i = 0; i < NLEVELS; i++)
			json_result(levels[i].name, &b->bres[i], i == 0);
		printf("},\"ratio\":{");
		for (i = 0; i < NLEVELS; i++)
			printf("%s\"%s\":%.3f", i == 0 ? "" : ",",
			    levels[i].name, b->bres[i].rps > 0 ?
			    b->dres[i].rps / b->bres[i].rps : 0);
		printf("}");
	}
	printf(",\"log_stream\":{\"batches\":%zu,\"batch_size\":%d,"
	    "\"seconds\":%.3f,\"events_per_s\":%.0f,\"p50_batch_ms\":%.3f,"
	    "\"p99_batch_ms\":%.3f,\"received\":%" PRIu64 ",\"applied\":%"
	    PRIu64 ",\"duplicates\":%" PRIu64 ",\"ignored\":%" PRIu64
	    ",\"rejected\":%" PRIu64 "}}\n", b->batches, BENCH_BATCH,
	    b->ls.seconds, b->ls.seconds > 0 ? b->ls.requests * BENCH_BATCH /
	    b->ls.seconds : 0, b->ls.p50, b->ls.p99, b->ls_received,
	    b->ls_applied, b->ls_duplicates, b->ls_ignored, b->ls_rejected);
}

int
main(int argc, char *argv[])
{
	static char			 daemon_abs[PATH_MAX];
	static char			 loader_abs[PATH_MAX];
	static const struct option	 longopts[] = {
		{ "baseline", no_argument, NULL, 'b' },
		{ "batches", required_argument, NULL, 'n' },
		{ "daemon", required_argument, NULL, 'd' },
		{ "duration", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "keep", no_argument, NULL, 'k' },
		{ "loader", required_argument, NULL, 'l' },
		{ "log-token-file", required_argument, NULL, 'L' },
		{ "pool", required_argument, NULL, 'p' },
		{ "quick", no_argument, NULL, 'q' },
		{ "record", required_argument, NULL, 'r' },
		{ "scale", required_argument, NULL, 's' },
		{ "target", required_argument, NULL, 'T' },
		{ "threads", required_argument, NULL, 'j' },
		{ "token-file", required_argument, NULL, 'A' },
		{ NULL, 0, NULL, 0 }
	};
	struct bench		 bench, *b = &bench;
	struct timeval		 tv = { BENCH_REQUEST_TIMEOUT, 0 };
	size_t			 i;
	double			 duration = -1;
	long long		 batches = -1, pool = -1;
	char			*end, *loader = NULL, seed[17];
	int			 ch, rv = 1;

	memset(b, 0, sizeof *b);
	b->lifeline = -1;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'b':
			b->baseline = 1;
			break;
		case 'n':
			batches = strtoll(optarg, &end, 10);
			if (*end != '\0' || batches < 1 || batches > 100000)
				usage();
			break;
		case 'd':
			b->daemon_path = optarg;
			break;
		case 't':
			duration = strtod(optarg, &end);
			if (*end != '\0' || !(duration > 0 && duration < 3600))
				usage();
			break;
		case 'k':
			b->keep = 1;
			break;
		case 'L':
			b->log_token_file = optarg;
			break;
		case 'l':
			b->loader_path = optarg;
			break;
		case 's':
			if (scale_parse(b, optarg) != 0)
				usage();
			break;
		case 'p':
			pool = strtoll(optarg, &end, 10);
			if (*end != '\0' || pool < 1 || pool > 10000000)
				usage();
			break;
		case 'q':
			b->quick = 1;
			break;
		case 'r':
			if ((b->record = fopen(optarg, "w")) == NULL)
				err(1, "%s", optarg);
			break;
		case 'T':
			b->target_arg = optarg;
			break;
		case 'j':
			b->threads = strtoll(optarg, &end, 10);
			if (*end != '\0' || b->threads < 1 || b->threads > 256)
				usage();
			break;
		case 'A':
			b->token_file = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (b->target_arg != NULL && (b->daemon_path != NULL ||
	    b->token_file == NULL || b->log_token_file == NULL))
		usage();
	if (b->target_arg == NULL && (b->daemon_path == NULL ||
	    b->token_file != NULL || b->log_token_file != NULL))
		usage();
	if ((b->nscale > 0 && (b->target_arg != NULL || b->baseline)) ||
	    (b->nscale == 0 && b->loader_path != NULL))
		usage();
	/*
	 * The daemon runs in its state directory: a relative path would not
	 * be found there, after what may be an hour of loading.  Check both
	 * programs now.
	 */
	if (b->daemon_path != NULL &&
	    (b->daemon_path = realpath(b->daemon_path, daemon_abs)) == NULL)
		err(1, "--daemon");
	if (b->loader_path != NULL &&
	    (b->loader_path = realpath(b->loader_path, loader_abs)) == NULL)
		err(1, "--loader");
	b->start_timeout = b->nscale > 0 ? BENCH_SCALE_START_TIMEOUT :
	    BENCH_START_TIMEOUT;
	b->duration = duration > 0 ? duration : b->quick ? 0.3 : 5;
	b->warmup = b->quick ? 0.1 : 0.5;
	b->batches = batches > 0 ? (size_t)batches : b->quick ? 2 : 50;
	b->pool_size = pool > 0 ? (size_t)pool : b->quick ? 200 : 3000;

	random_hex(b->runid, sizeof b->runid);
	b->rundigits = strtoul(b->runid, NULL, 16) % 100000000;
	random_hex(seed, sizeof seed);
	b->rng = strtoull(seed, NULL, 16) | 1;
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (b->target_arg != NULL) {
		if (parse_target(b, b->target_arg) != 0 ||
		    (b->token = read_token(b->token_file)) == NULL ||
		    (b->log_token = read_token(b->log_token_file)) == NULL)
			return (1);
		/* Numbers of an earlier run may still be held. */
		b->next_number = rng_next(b) % 100000000;
		target_heads(b, &b->daemon, b->target_arg);
	}
	b->daemon.name = "daemon";
	b->base_srv.name = "baseline";
	/* The baseline's process must not inherit an event_base. */
	if (b->baseline && baseline_start(b) != 0)
		goto out;
	if ((b->base = event_base_new()) == NULL) {
		fprintf(stderr, "bench: event_base_new failed\n");
		goto out;
	}
	request_timeout = event_base_init_common_timeout(b->base, &tv);
	b->sigint_ev = evsignal_new(b->base, SIGINT, signal_cb, b);
	b->sigterm_ev = evsignal_new(b->base, SIGTERM, signal_cb, b);
	if (b->sigint_ev == NULL || b->sigterm_ev == NULL ||
	    event_add(b->sigint_ev, NULL) != 0 ||
	    event_add(b->sigterm_ev, NULL) != 0) {
		fprintf(stderr, "bench: cannot handle signals\n");
		goto out;
	}
	if (b->nscale > 0) {
		if (b->loader_path == NULL)
			b->loader_path = loader = scale_loader(argv[0]);
		if (bench_scale(b) == 0)
			rv = 0;
		goto out;
	}
	if (b->target_arg == NULL && daemon_start(b) != 0)
		goto out;
	if (b->dir != NULL)
		printf("bench: daemon %s (pid %ld) in %s\n", b->daemon_path,
		    (long)b->daemon_pid, b->dir);
	if (b->baseline)
		printf("bench: baseline evhttp server (pid %ld)\n",
		    (long)b->baseline_pid);
	printf("bench: %.1f s per level after a %.1f s warm-up; "
	    "mix 80%% new, 10%% taken, 10%% owned\n", b->duration, b->warmup);

	if (bench_claims(b) != 0 || bench_log_stream(b) != 0)
		goto out;
	rv = 0;
out:
	if (b->daemon_pid > 0 && !daemon_alive(b))
		rv = 1;
	if (b->dir != NULL && daemon_stop(b) != 0)
		rv = 1;
	if (rv != 0 && b->dir != NULL)
		daemon_log_tail(b);
	baseline_stop(b);
	if (b->mismatches > 0) {
		fprintf(stderr, "bench: %" PRIu64 " answers did not match the "
		    "mix\n", b->mismatches);
		rv = 1;
	}
	if (b->record != NULL && fclose(b->record) != 0) {
		warn("--record");
		rv = 1;
	}
	/* The JSON line must come last: say what became of the directory. */
	if (b->dir != NULL && !b->keep)
		nftw(b->dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
	else if (b->dir != NULL)
		printf("bench: kept %s\n", b->dir);
	printf("\nbench: %" PRIu64 " mismatched answers; %s\n",
	    b->mismatches, rv == 0 ? "ok" : "FAILED");
	bench_json(b, rv == 0);
	if (b->bodies != NULL)
		for (i = 0; i < b->batches; i++)
			free(b->bodies[i]);
	free(b->bodies);
	free(b->bodylens);
	free(b->reserved);
	free(b->pool);
	if (b->sigint_ev != NULL)
		event_free(b->sigint_ev);
	if (b->sigterm_ev != NULL)
		event_free(b->sigterm_ev);
	if (b->base != NULL)
		event_base_free(b->base);
	free(b->daemon.claim_head);
	free(b->daemon.log_head);
	free(b->base_srv.claim_head);
	free(b->base_srv.log_head);
	free(b->token);
	free(b->log_token);
	free(b->dir);
	free(loader);
	return (rv);
}
