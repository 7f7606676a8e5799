/*
 * phoneclaimd: options, configuration, module start and stop, the event
 * loop and its signals.  Everything else lives in the modules.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define EXPIRE_INTERVAL		5	/* seconds between expiry runs */
#define EXPIRE_BATCH		1000	/* reservations per transaction */
#define EXPIRE_BATCHES		20	/* transactions per run at most */
#define LIMITS_BATCH		1000	/* reservation windows per transaction */
#define STOP_GRACE_MS		250	/* to finish answers in flight */
#define FAIL_EXIT_S		10	/* a failed store's last resort */

/*
 * A group's reopening of the store for a role, on the store's opener
 * (store_open_async): one at a time; a role change that comes meanwhile
 * waits in next_role and next_ready until it is done.
 */
struct main_reopen {
	int			 busy;		/* an opening in flight */
	int			 role;		/* it opens for */
	int			 r;		/* its result, */
	char			*cause;		/* and why */
	int			 again;		/* the role changed since */
	int			 next_role;
	int			 next_ready;
};

struct main_state {
	struct event_base	*base;
	struct conf		*conf;
	struct store		*store;
	struct http		*http;
	struct control		*control;
	struct tls		*tls;		/* NULL: plain HTTP */
	struct main_reopen	 reopen;	/* in a group */
	int			 exit_status;
};

static void	main_usage(FILE *);
static void	main_signal_cb(evutil_socket_t, short, void *);
static void	main_expire_cb(evutil_socket_t, short, void *);
static void	main_checkpoint_cb(evutil_socket_t, short, void *);
static void	main_prune(struct main_state *);
static void	main_watchdog_cb(evutil_socket_t, short, void *);
static struct event *main_watchdog_start(struct main_state *);
static void	main_store_failed_cb(evutil_socket_t, short, void *);
static void	main_store_failed(void *);
static int	main_load_tokens(struct main_state *, char **);
static int	main_reload(struct main_state *);
static int	main_check(struct conf *);
static int	main_hash_load(struct main_state *, char **);
static void	main_store_keys(const char *);
static int	main_hash_init(struct main_state *, char **);
static void	main_start(struct main_state *);
static void	main_die(int, char *) __attribute__((noreturn));
static void	main_detach(void);
static void	main_ready(struct main_state *);
static void	main_notify_ready(struct main_state *, const char *);
static void	main_notify_reloading(void);
static void	main_run(struct main_state *);
static void	main_stop(struct main_state *);
static void	main_repl_cb(void *, int, int);
static void	main_repl_work(void *);
static void	main_repl_done(void *);
static int	main_repl_open(struct main_state *, int, char **);

static const struct option main_longopts[] = {
	{ "check", no_argument, NULL, 'n' },
	{ "config", required_argument, NULL, 'c' },
	{ "foreground", no_argument, NULL, 'f' },
	{ "help", no_argument, NULL, 'h' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 }
};

static struct event	*main_fail_ev;
static int		 main_fail_fds[2] = { -1, -1 };	/* any thread to loop */
static int		 main_ready_fd = -1;	/* to the waiting parent */

/* Print usage to f. */
static void
main_usage(FILE *f)
{
	fprintf(f, "usage: phoneclaimd [-fhnvV] [-c file]\n"
	    "  -c, --config=FILE  configuration file (default %s)\n"
	    "  -f, --foreground   stay in the foreground and log to stderr\n"
	    "  -n, --check        check the configuration and exit\n"
	    "  -v, --verbose      more verbose logging (debug)\n"
	    "  -h, --help         this help\n"
	    "  -V, --version      print the version and exit\n",
	    PHONECLAIMD_CONF);
}

/* Read both token files and hand their digests to the HTTP server. */
static int
main_load_tokens(struct main_state *m, char **cause)
{
	char	*api, *stream;
	size_t	 apilen, streamlen;

	if (conf_read_secret(m->conf->api_token_file, &api, &apilen,
	    cause) != 0)
		return (-1);
	if (conf_read_secret(m->conf->log_stream_token_file, &stream,
	    &streamlen, cause) != 0) {
		explicit_bzero(api, apilen);
		free(api);
		return (-1);
	}
	http_set_tokens(m->http, api, apilen, stream, streamlen);
	explicit_bzero(api, apilen);
	explicit_bzero(stream, streamlen);
	free(api);
	free(stream);
	return (0);
}

/*
 * SIGHUP: reload the tokens, the exempt list, the TLS certificate and the
 * Management API client secret, keeping the old on error.
 */
static int
main_reload(struct main_state *m)
{
	char	*cause;
	int	 rv = 0;

	if (main_load_tokens(m, &cause) != 0) {
		log_warnx("reload: %s; keeping the old tokens", cause);
		free(cause);
		rv = -1;
	}
	if (claims_exempt_load(m->conf->exempt_numbers_file,
	    m->conf->default_region, 0, &cause) != 0) {
		log_warnx("reload: %s; keeping the old exempt list", cause);
		free(cause);
		rv = -1;
	}
	if (m->tls != NULL) {
		if (tls_reload(m->tls, m->conf, &cause) != 0) {
			log_warnx("reload: %s; keeping the old certificate",
			    cause);
			free(cause);
			rv = -1;
		} else
			log_info("reloaded the TLS certificate: %s",
			    tls_summary(m->tls));
	}
	if (mgmt_reload(&cause) != 0) {
		log_warnx("reload: %s; keeping the old client secret", cause);
		free(cause);
		rv = -1;
	}
	if (rv == 0)
		log_info("reloaded the tokens and the exempt list");
	return (rv);
}

/* All signals arrive here through the event loop. */
static void
main_signal_cb(evutil_socket_t sig, short events, void *arg)
{
	struct main_state	*m = arg;
	struct timeval		 tv = { 0, STOP_GRACE_MS * 1000 };

	(void)events;
	switch (sig) {
	case SIGTERM:
	case SIGINT:
		log_info("received %s: stopping", strsignal(sig));
		notify_send("STOPPING=1\nSTATUS=stopping on %s",
		    strsignal(sig));
		http_stop_accepting(m->http);
		event_base_loopexit(m->base, &tv);
		break;
	case SIGHUP:
		main_notify_reloading();
		if (main_reload(m) == 0)
			main_notify_ready(m, "reloaded");
		else
			main_notify_ready(m, "reload failed (see the log)");
		break;
	}
}

/*
 * Release reservations that have lapsed, a bounded number per run; then
 * let the Management API client ask about those that lapse soon.
 */
static void
main_expire_cb(evutil_socket_t fd, short events, void *arg)
{
	struct main_state	*m = arg;
	size_t			 released, total = 0;
	int			 i;

	(void)fd;
	(void)events;
	/*
	 * Only the master writes; a replica gets the result.  In a group,
	 * only by a clock that a majority of the members agrees with.
	 */
	if (!repl_writable() || !repl_clock_trusted())
		return;
	for (i = 0; i < EXPIRE_BATCHES; i++) {
		if (claims_expire((int64_t)time(NULL), EXPIRE_BATCH,
		    &released) != STORE_OK)
			break;
		total += released;
		if (released < EXPIRE_BATCH)
			break;
	}
	if (total > 0) {
		store_flush_local(m->store);
		log_debug("released %zu lapsed reservation(s)", total);
	}
	mgmt_tick((int64_t)time(NULL));
}

/*
 * Every checkpoint_interval (a minute by default): forget log ids older
 * than dedup_retention and reservation windows that have closed (a stretch
 * of them each time), and checkpoint the store so that recovery after a
 * crash stays short and the log files it no longer needs are removed.
 */
static void
main_checkpoint_cb(evutil_socket_t fd, short events, void *arg)
{
	struct main_state	*m = arg;

	(void)fd;
	(void)events;
	if (!repl_writable()) {
		/* A replica: its counts follow what replication applied. */
		(void)store_recount(m->store);
		store_checkpoint(m->store);
		return;
	}
	/* Ages are the clock's: in a group, one the majority agrees with. */
	if (repl_clock_trusted())
		main_prune(m);
	store_checkpoint(m->store);
}

/* Forget old log ids and closed reservation windows (the master's). */
static void
main_prune(struct main_state *m)
{
	size_t	pruned, total = 0;
	int	i, wrapped;

	for (i = 0; i < EXPIRE_BATCHES; i++) {
		if (logstream_prune((int64_t)time(NULL),
		    m->conf->dedup_retention, &pruned) != STORE_OK)
			break;
		total += pruned;
		if (pruned == 0)
			break;
	}
	if (total > 0)
		log_debug("forgot %zu log id(s) seen more than %llds ago",
		    total, m->conf->dedup_retention);
	total = 0;
	for (i = 0; i < EXPIRE_BATCHES; i++) {
		if (claims_limits_prune((int64_t)time(NULL), LIMITS_BATCH,
		    &pruned, &wrapped) != STORE_OK)
			break;
		total += pruned;
		if (wrapped)
			break;
	}
	if (total > 0)
		log_debug("forgot %zu closed reservation window(s)", total);
}

/*
 * systemd's watchdog (WatchdogSec=): WATCHDOG=1, from the loop, each half
 * interval, once the store has answered a read.  A loop that stalls, or a
 * store that stops answering and holds the loop, sends nothing, and
 * systemd kills and restarts the daemon; so does a failed store.
 */
static void
main_watchdog_cb(evutil_socket_t fd, short events, void *arg)
{
	struct main_state	*m = arg;

	(void)fd;
	(void)events;
	if (store_probe(m->store) == STORE_OK)
		notify_send("WATCHDOG=1");
}

/* Start the watchdog's timer if systemd asked for one; NULL if not. */
static struct event *
main_watchdog_start(struct main_state *m)
{
	struct event	*ev;
	struct timeval	 tv;
	uint64_t	 usec = notify_watchdog_usec() / 2;

	if (usec == 0)
		return (NULL);
	tv.tv_sec = (time_t)(usec / 1000000);
	tv.tv_usec = (suseconds_t)(usec % 1000000);
	if ((ev = event_new(m->base, -1, EV_PERSIST, main_watchdog_cb,
	    m)) == NULL || evtimer_add(ev, &tv) != 0)
		fatalx("watchdog: event_new");
	log_info("systemd watchdog: WATCHDOG=1 every %llu ms while the store "
	    "answers", (unsigned long long)usec / 1000);
	return (ev);
}

/*
 * Called by the store when the environment fails, on whatever thread saw
 * it (repmgr's, the flusher's or the loop): wake the loop through a pipe,
 * the only way in from another thread.  And if the loop should never get
 * there, SIGALRM ends the process a little later (killed by a signal, a
 * failure to systemd as well).
 */
static void
main_store_failed(void *arg)
{
	ssize_t	n;

	(void)arg;
	alarm(FAIL_EXIT_S);
	do
		n = write(main_fail_fds[1], "f", 1);
	while (n == -1 && errno == EINTR);
}

/* The store failed: exit non-zero so that the supervisor restarts us. */
static void
main_store_failed_cb(evutil_socket_t fd, short events, void *arg)
{
	struct main_state	*m = arg;
	struct timeval		 tv = { 0, STOP_GRACE_MS * 1000 };
	char			 buf[16];

	(void)events;
	while (read(fd, buf, sizeof buf) > 0)
		;
	event_del(main_fail_ev);
	log_warnx("the store failed: exiting so that recovery runs on "
	    "restart");
	notify_send("STOPPING=1\nSTATUS=the store failed; exiting so that "
	    "recovery runs on restart");
	m->exit_status = EXIT_RUNTIME;
	/* Every answer from now on is 503; let those already sent leave. */
	http_stop_accepting(m->http);
	event_base_loopexit(m->base, &tv);
}

/* -n: check the configuration, the secret files and the exempt list. */
static int
main_check(struct conf *conf)
{
	struct tls	*tls;
	char		*cause, *secret;
	size_t		 len;

	if (conf_read_secret(conf->api_token_file, &secret, &len,
	    &cause) != 0)
		goto fail;
	explicit_bzero(secret, len);
	free(secret);
	if (conf_read_secret(conf->log_stream_token_file, &secret, &len,
	    &cause) != 0)
		goto fail;
	explicit_bzero(secret, len);
	free(secret);
	if (claims_exempt_load(conf->exempt_numbers_file,
	    conf->default_region, 1, &cause) != 0)
		goto fail;
	if (conf->tls_cert_file != NULL) {
		if ((tls = tls_init(conf, &cause)) == NULL)
			goto fail;
		tls_free(tls);
	}
	printf("%s: configuration OK\n", conf->path);
	return (EXIT_OK);
fail:
	fprintf(stderr, "phoneclaimd: %s\n", cause);
	free(cause);
	return (EXIT_CONFIG);
}

/*
 * Start-up failed: log why and exit with status.  When detached, the
 * parent is still waiting: tell it, so that it prints the reason on the
 * terminal and exits with the same status.
 */
static void
main_die(int status, char *cause)
{
	char	msg[1024];
	int	n;

	log_warnx("%s", cause);
	notify_send("STATUS=start-up failed: %s", cause);
	if (main_ready_fd != -1) {
		n = snprintf(msg, sizeof msg, "%d %s", status, cause);
		if (n > 0 && write(main_ready_fd, msg, strlen(msg)) < 0)
			log_warn("start-up pipe");
	}
	free(cause);
	exit(status);
}

/*
 * Go to the background: the parent waits until the child says it is ready
 * (or why it failed) and exits with the child's start-up status, so that
 * errors still reach the terminal and the exit status.
 */
static void
main_detach(void)
{
	char	msg[1024];
	ssize_t	n;
	int	fds[2], status;
	pid_t	pid;

	if (pipe2(fds, O_CLOEXEC) != 0 || (pid = fork()) == -1) {
		fprintf(stderr, "phoneclaimd: cannot detach: %s\n",
		    strerror(errno));
		exit(EXIT_RUNTIME);
	}
	if (pid != 0) {
		close(fds[1]);
		while ((n = read(fds[0], msg, sizeof msg - 1)) == -1 &&
		    errno == EINTR)
			;
		if (n <= 0) {
			fprintf(stderr, "phoneclaimd: exited during start-up; "
			    "see the system log\n");
			_exit(EXIT_RUNTIME);
		}
		msg[n] = '\0';
		status = atoi(msg);
		if (status != 0 && strchr(msg, ' ') != NULL)
			fprintf(stderr, "phoneclaimd: %s\n",
			    strchr(msg, ' ') + 1);
		_exit(status);
	}
	close(fds[0]);
	main_ready_fd = fds[1];
	if (setsid() == -1)
		fatal("setsid");
}

/* Tell systemd that we serve, and what. */
static void
main_notify_ready(struct main_state *m, const char *what)
{
	notify_send("READY=1\nSTATUS=%s%slistening on %s (%s)", what,
	    *what != '\0' ? "; " : "", http_bound_address(m->http),
	    m->tls != NULL ? "https" : "http");
}

/* Tell systemd that a reload started (MONOTONIC_USEC for notify-reload). */
static void
main_notify_reloading(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		ts.tv_sec = ts.tv_nsec = 0;
	notify_send("RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
	    (unsigned long long)ts.tv_nsec / 1000ULL);
}

/* Start-up is complete: release the waiting parent and close stdio. */
static void
main_ready(struct main_state *m)
{
	int	fd;

	main_notify_ready(m, "");
	if (main_ready_fd == -1)
		return;
	if (write(main_ready_fd, "0", 1) != 1)
		log_warn("start-up pipe");
	close(main_ready_fd);
	main_ready_fd = -1;
	if ((fd = open("/dev/null", O_RDWR)) != -1) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	if (chdir("/") != 0)
		log_warn("chdir /");
}

/*
 * Load the hash key if it exists, before the store opens: the store derives
 * the key of its indexes from it, and checks it against its own record of
 * the key before it migrates or builds an index.  0, or -1 and *cause (a
 * key file that is not private or not 32 bytes).
 */
static int
main_hash_load(struct main_state *m, char **cause)
{
	const char	*path = m->conf->hash_key_file;

	if (access(path, F_OK) != 0 && errno == ENOENT) {
		store_set_keys(NULL, NULL, path);
		return (0);
	}
	if (hash_load(path, cause) != 0)
		return (-1);
	main_store_keys(path);
	return (0);
}

/* Give the store the keys that come from the loaded hash key. */
static void
main_store_keys(const char *path)
{
	unsigned char	ikey[STORE_INDEX_KEY_LEN];
	char		check[HASH_CHECK_LEN + 1];

	hash_index_key(ikey);
	hash_check(check);
	store_set_keys(ikey, check, path);
	explicit_bzero(ikey, sizeof ikey);
}

/*
 * Create the hash key if it is missing, only for a store that holds
 * nothing keyed by it, and check it against the store.  A new key over existing claims
 * would silently orphan every one of them (each number would hash to a key
 * no claim has): so a missing key, or one that is not the key the store was
 * made with, is fatal and names the file.  The store keeps a check value of
 * its key in meta.db from the first start of this release on; a store from
 * before has none, and counts as holding data if it has claims or
 * conflicts.  Returns 0 or the exit status: a key file that is not private
 * or not 32 bytes is a configuration error, the rest a runtime failure.
 */
static int
main_hash_init(struct main_state *m, char **cause)
{
	const char		*path = m->conf->hash_key_file;
	struct store_txn	*txn;
	struct store_counts	 counts;
	char			*stored = NULL, check[HASH_CHECK_LEN + 1];
	int			 r, missing, status = EXIT_RUNTIME;

	if (store_txn_begin(m->store, &txn) != STORE_OK)
		goto store;
	r = store_meta_get(txn, STORE_META_HASH_CHECK, &stored);
	if (r != STORE_OK && r != STORE_NOTFOUND) {
		store_txn_abort(txn);
		goto store;
	}
	missing = access(path, F_OK) != 0 && errno == ENOENT;
	/*
	 * A group's key is copied, never made here (main_start): and this
	 * runs on the store's opener, beside the loop's hashing.
	 */
	if (missing && repl_enabled()) {
		xasprintf(cause, "hash key %s is missing (in a replication "
		    "group, copy the group's key to every member)", path);
		goto fail;
	}
	if (missing && (stored != NULL ||
	    (store_count(m->store, &counts) == STORE_OK &&
	    counts.claims + counts.conflicts > 0))) {
		xasprintf(cause, "hash key %s is missing, but the store in %s "
		    "holds data keyed by it: restore the key (a new key would "
		    "orphan every claim)", path, m->conf->state_dir);
		goto fail;
	}
	if (missing) {
		if (hash_init(path, cause) != 0) {
			status = EXIT_CONFIG;
			goto fail;
		}
		main_store_keys(path);
	}
	hash_check(check);
	if (stored != NULL && strcmp(stored, check) != 0) {
		xasprintf(cause, "hash key %s is not the key the store in %s "
		    "was made with: restore the right key", path,
		    m->conf->state_dir);
		goto fail;
	}
	/*
	 * A replica gets the check value from the master.  The store's own
	 * bookkeeping: a commit no replica acknowledged in time (the first
	 * master of a group, its replicas still being copied) is enough.
	 */
	if (stored == NULL && repl_writable()) {
		if (store_meta_put(txn, STORE_META_HASH_CHECK, check) !=
		    STORE_OK) {
			store_txn_abort(txn);
			goto store;
		}
		if (store_txn_commit_local(txn) != STORE_OK ||
		    store_flush_local(m->store) != STORE_OK)
			goto store;
	} else
		store_txn_abort(txn);
	free(stored);
	return (0);

fail:
	store_txn_abort(txn);
	free(stored);
	return (status);
store:
	free(stored);
	xasprintf(cause, "cannot read or write the hash key check in %s",
	    m->conf->state_dir);
	return (EXIT_RUNTIME);
}

/*
 * Open the store, load the secrets and start listening.  A bad secret
 * file or exempt list is a configuration error (2); the rest is a
 * runtime failure (1).
 */
static void
main_start(struct main_state *m)
{
	char	*cause, *path;
	int	 status;

	store_set_cache_size((uint64_t)m->conf->cache_size);
	store_set_log_file_size((uint32_t)m->conf->log_file_size);
	store_set_threads((int)m->conf->threads);
	if (repl_init(m->base, m->conf, &cause) != 0)
		main_die(EXIT_RUNTIME, cause);
	/*
	 * Every member of a group must hash numbers with the same key: it is
	 * made once and copied, never created here.  Checked against the
	 * store when the role is known (main_repl_cb).
	 */
	if (repl_enabled() && access(m->conf->hash_key_file, F_OK) != 0) {
		xasprintf(&cause, "%s: %s (in a replication group, create the "
		    "hash key once and copy it to every member)",
		    m->conf->hash_key_file, strerror(errno));
		main_die(EXIT_CONFIG, cause);
	}
	if (main_hash_load(m, &cause) != 0)
		main_die(EXIT_CONFIG, cause);
	if ((m->store = store_open(m->conf->state_dir, &cause)) == NULL)
		main_die(EXIT_RUNTIME, cause);
	if (pipe2(main_fail_fds, O_CLOEXEC | O_NONBLOCK) != 0)
		fatal("pipe");
	store_set_fail_cb(m->store, main_store_failed, m);
	xasprintf(&path, "%s/deadletter.jsonl", m->conf->state_dir);
	if (deadletter_open(path, 0, &cause) != 0)
		main_die(EXIT_RUNTIME, cause);
	free(path);
	if (!repl_enabled() && (status = main_hash_init(m, &cause)) != 0)
		main_die(status, cause);
	claims_init(m->store, m->conf);
	if (claims_exempt_load(m->conf->exempt_numbers_file,
	    m->conf->default_region, 0, &cause) != 0)
		main_die(EXIT_CONFIG, cause);
	metrics_init(m->store);
	if (m->conf->tls_cert_file != NULL) {
		if ((m->tls = tls_init(m->conf, &cause)) == NULL)
			main_die(EXIT_CONFIG, cause);
		log_info("TLS certificate: %s", tls_summary(m->tls));
	}
	if ((m->http = http_init(m->base, m->conf, m->store, &cause)) == NULL)
		main_die(EXIT_RUNTIME, cause);
	http_set_tls(m->http, m->tls);
	logstream_init(m->base);
	if (main_load_tokens(m, &cause) != 0)
		main_die(EXIT_CONFIG, cause);
	if (mgmt_init(m->base, m->conf, &cause) != 0)
		main_die(EXIT_CONFIG, cause);
	reconcile_init(m->store, m->conf, m->conf->auth0_domain != NULL);
	bootstrap_init(m->conf, m->conf->auth0_domain != NULL);
	/* A group's role changes close and open the store off the loop. */
	if (repl_enabled() && store_role_start(m->store, m->base,
	    &cause) != 0)
		main_die(EXIT_RUNTIME, cause);
	/* Last: a failed start must not leave a socket behind. */
	if ((m->control = control_init(m->base, m->conf, m->store,
	    &cause)) == NULL)
		main_die(EXIT_RUNTIME, cause);
	repl_set_hook(main_repl_cb, m);
}

/*
 * The replication role changed (repl.c): open the store's databases for
 * it once this node is the master or a replica that has caught up, else
 * close them (requests get 503 meanwhile).  The hash key must be the one
 * the group's store was made with.  The opening runs on the store's
 * opener, off the loop (Berkeley DB may sleep 5 s in it, see
 * store_role.c), and ends in main_repl_done; a role change that comes
 * meanwhile is taken once it is done, never alongside.
 */
static void
main_repl_cb(void *arg, int role, int ready)
{
	struct main_state	*m = arg;
	struct main_reopen	*o = &m->reopen;

	if (o->busy) {
		log_debug("replication: %s: after the opening in flight",
		    repl_role_name(role));
		o->again = 1;
		o->next_role = role;
		o->next_ready = ready;
		return;
	}
	if (!ready) {
		store_repl_close(m->store);
		log_info("replication: %s; the store is closed until a master "
		    "is known", repl_role_name(role));
		return;
	}
	o->role = role;
	o->cause = NULL;
	if (store_open_async(m->store, main_repl_work, main_repl_done,
	    m) == 0) {
		o->busy = 1;
		return;
	}
	main_repl_work(m);
	main_repl_done(m);
}

/* On the opener: open the store for the role asked. */
static void
main_repl_work(void *arg)
{
	struct main_state	*m = arg;
	struct main_reopen	*o = &m->reopen;

	o->r = main_repl_open(m, o->role == REPL_ROLE_MASTER, &o->cause);
}

/*
 * On the loop, once the opening is done: take a role change that came
 * meanwhile, or try again shortly (the files are not replicated yet, or
 * the opening met repmgr's lockout), or give up (the store failed, or the
 * hash key is not the group's).
 */
static void
main_repl_done(void *arg)
{
	struct main_state	*m = arg;
	struct main_reopen	*o = &m->reopen;
	char			*cause = o->cause;

	o->busy = 0;
	o->cause = NULL;
	if (o->again) {
		/* The result no longer counts: the role it was for is gone. */
		o->again = 0;
		free(cause);
		main_repl_cb(m, o->next_role, o->next_ready);
		return;
	}
	if (o->r == STORE_NOTFOUND) {
		log_debug("replication: store not ready yet: %s",
		    cause != NULL ? cause : "try again");
		free(cause);
		repl_retry();
		return;
	}
	if (o->r != STORE_OK) {
		log_warnx("replication: %s", cause != NULL ? cause :
		    "cannot open the store");
		free(cause);
		m->exit_status = EXIT_RUNTIME;
		event_base_loopexit(m->base, NULL);
		return;
	}
	free(cause);
	log_info("replication: %s, the store is open",
	    repl_role_name(o->role));
}

/*
 * Open the store for role and check the hash key.  A reopening that meets
 * repmgr's lockout of the API, or a deadlock with repmgr's own work
 * (store_lockout_begin), is STORE_NOTFOUND: try again shortly, the store
 * has not failed.
 */
static int
main_repl_open(struct main_state *m, int master, char **cause)
{
	int	r;

	store_lockout_begin(m->store);
	r = store_repl_open(m->store, master, cause);
	if (r == STORE_OK && main_hash_init(m, cause) != 0)
		r = STORE_ERROR;
	if (store_lockout_end(m->store)) {
		free(*cause);
		xasprintf(cause, "replication is changing roles");
		return (STORE_NOTFOUND);
	}
	return (r);
}

/* Run the loop with its signals and timers until told to stop. */
static void
main_run(struct main_state *m)
{
	static const int	 sigs[] = { SIGTERM, SIGINT, SIGHUP };
	struct event		*ev[3], *expire_ev, *ckp_ev, *wd_ev;
	struct timeval		 tv_expire = { EXPIRE_INTERVAL, 0 };
	struct timeval		 tv_ckp = { m->conf->checkpoint_interval, 0 };
	size_t			 i;

	for (i = 0; i < 3; i++) {
		ev[i] = evsignal_new(m->base, sigs[i], main_signal_cb, m);
		if (ev[i] == NULL || evsignal_add(ev[i], NULL) != 0)
			fatalx("cannot handle signal %d", sigs[i]);
	}
	expire_ev = event_new(m->base, -1, EV_PERSIST, main_expire_cb, m);
	ckp_ev = event_new(m->base, -1, EV_PERSIST, main_checkpoint_cb, m);
	main_fail_ev = event_new(m->base, main_fail_fds[0],
	    EV_READ | EV_PERSIST, main_store_failed_cb, m);
	if (expire_ev == NULL || ckp_ev == NULL || main_fail_ev == NULL)
		fatalx("event_new");
	evtimer_add(expire_ev, &tv_expire);
	if (event_add(main_fail_ev, NULL) != 0)
		fatalx("event_add");
	evtimer_add(ckp_ev, &tv_ckp);
	log_info("phoneclaimd %s in %s mode, state in %s", PACKAGE_VERSION,
	    conf_mode_name(m->conf->mode), m->conf->state_dir);
	log_info("listening on %s (%s)", http_bound_address(m->http),
	    m->tls != NULL ? "https" : "http");
	main_ready(m);
	wd_ev = main_watchdog_start(m);
	event_base_dispatch(m->base);
	if (wd_ev != NULL)
		event_free(wd_ev);
	for (i = 0; i < 3; i++)
		event_free(ev[i]);
	event_free(expire_ev);
	event_free(ckp_ev);
	event_free(main_fail_ev);
	main_fail_ev = NULL;
	close(main_fail_fds[0]);
	close(main_fail_fds[1]);
	main_fail_fds[0] = main_fail_fds[1] = -1;
}

/* Free every module, in the reverse order of their start. */
static void
main_stop(struct main_state *m)
{
	log_info("stopping");
	control_free(m->control);
	mgmt_free();
	reconcile_free();
	bootstrap_free();
	logstream_free();
	http_free(m->http);
	tls_free(m->tls);
	metrics_free();
	deadletter_close();
	events_free();
	claims_free();
	store_close(m->store);
	/* An opening the stop ended before it was done. */
	free(m->reopen.cause);
	repl_free();
	hash_free();
	phone_cache_free();
	event_base_free(m->base);
	libevent_global_shutdown();
	conf_free(m->conf);
	notify_free();
}

/* Start, run, and stop the daemon. */
int
main(int argc, char **argv)
{
	struct main_state	 m;
	const char		*path = PHONECLAIMD_CONF;
	char			*cause;
	int			 ch, foreground = 0, check = 0, verbose = 0;

	memset(&m, 0, sizeof m);
	while ((ch = getopt_long(argc, argv, "c:fhnvV", main_longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 'f':
			foreground = 1;
			break;
		case 'h':
			main_usage(stdout);
			return (EXIT_OK);
		case 'n':
			check = 1;
			break;
		case 'v':
			verbose++;
			break;
		case 'V':
			printf("phoneclaimd %s\n", PACKAGE_VERSION);
			return (EXIT_OK);
		default:
			main_usage(stderr);
			return (EXIT_CONFIG);
		}
	}
	if (optind != argc) {
		main_usage(stderr);
		return (EXIT_CONFIG);
	}
	if ((m.conf = conf_load(path, &cause)) == NULL) {
		fprintf(stderr, "phoneclaimd: %s\n", cause);
		free(cause);
		return (EXIT_CONFIG);
	}
	if (check) {
		m.exit_status = main_check(m.conf);
		conf_free(m.conf);
		return (m.exit_status);
	}
	m.conf->log_level += verbose;
	if (m.conf->log_level > LOG_LEVEL_DEBUG)
		m.conf->log_level = LOG_LEVEL_DEBUG;
	umask(077);
	if (!foreground)
		main_detach();
	log_init(foreground, m.conf->log_level);
	notify_init();
	signal(SIGPIPE, SIG_IGN);
	if ((m.base = event_base_new()) == NULL)
		fatalx("event_base_new");
	main_start(&m);
	main_run(&m);
	if (store_failed(m.store)) {
		/*
		 * A panicked Berkeley DB environment cannot be closed (it
		 * frees nothing once panicked); recovery at the next start
		 * repairs it.  Leave without touching it.
		 */
		log_warnx("exiting without closing the failed store");
		notify_free();
		_exit(EXIT_RUNTIME);
	}
	main_stop(&m);
	return (m.exit_status);
}
