/*
 * Replication: a group of phoneclaimd nodes on Berkeley DB's replication
 * manager (repmgr), configured by repl_local and repl_peer.
 *
 * repmgr elects one master; only the master writes.  The group is static:
 * every site, this one included, is configured as a "legacy" site, so that
 * each node knows the whole group from its configuration and an election
 * needs a majority of it (a lone node never makes itself master, and the
 * 2SITE_STRICT setting keeps that true for a group of two).
 *
 * Durability: a commit sends the transaction's log records to the
 * replicas in one message (bulk transfer) and waits, inside txn->commit,
 * for the replicas that the acknowledgement policy asks for (quorum by default: one of two
 * peers).  If they do not answer within repl_ack_timeout, or too few are
 * connected, repmgr raises DB_EVENT_REP_PERM_FAILED in the committing
 * thread before commit returns: repl_perm_failures() counts those per
 * thread, and store_txn_commit turns such a commit into STORE_ERROR, so the
 * request is answered 503, never 2xx.  The master then flushes its own log
 * before any reply goes out, as without replication.  So a 2xx means: on
 * the master's disk and received by a quorum, and an election always picks
 * a site holding every such commit.  (With repl_ack_durability memory a
 * replica acknowledges once the record is in its log buffer: losing the
 * master's disk and the memory of the acknowledging replicas at once loses
 * the newest commits.  With disk, the default, the acknowledgements that
 * count are those of a flushed marker after the commit: see
 * repl_sync_commits.)
 *
 * A replica forwards writes (POST /v1/claims, /v1/log-stream) to the
 * master's API address, given by the master's repl_peer line, and relays
 * its answer; with no master known it answers 503 at once.  The forwarding
 * uses libcurl's multi interface on the event loop, like mgmt.c.  It
 * waits repl_forward_timeout at most (and never beyond request_timeout).
 * If another master is elected meanwhile (the old one paused, cut off or
 * stepped down), or the old one's answer is a failure and another master
 * is known, the request is sent once more, to the new master, and the old
 * transfer is dropped with whatever it would have answered: the client
 * gets one answer, the new master's.  That is safe because a request
 * applied twice answers the same (a claim already made is "owned", a
 * batch already applied counts as duplicates).
 *
 * repmgr calls the event callback on its own threads.  The callback only
 * updates the shared state under a mutex and writes the event's number to
 * a pipe; the loop reads the pipe, logs, and lets main reopen the store's
 * handles for the new role (repl_set_hook).
 *
 * Once the environment has panicked (repl_store_failed), nothing here
 * calls into Berkeley DB again, and status and /metrics answer from what
 * the last good repl_info saw, while main exits.  repmgr_site_list takes
 * one of repmgr's mutexes before it checks for a panic and returns with it
 * held, on any thread: so the loop never calls it.  A thread of ours (the
 * peers thread) does, after every event and every REPL_PEERS_MS, and
 * leaves which sites are connected under the mutex; if it hangs after a
 * panic, the loop does not.
 *
 * The clock thread (repl_clock.c) compares this member's clock with its
 * peers' and, while it is off, keeps this member out of the master role
 * through repl_electable.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>

#include <db.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define REPL_THREADS		3	/* repmgr message threads */
#define REPL_FORWARD_HEADER	"X-Phoneclaimd-Forwarded"
#define REPL_RETRY_MS		500	/* reopen the store after a failure */
#define REPL_BODY_MAX		(1024 * 1024)	/* of a master's answer */
#define REPL_PEERS_MS		250	/* between two looks at the sites */
#define REPL_NUDGE_MS		200	/* a commit's wait before a nudge */
#define REPL_AGAIN_MS		250	/* a forward the master answered 503 */
#define REPL_AGAIN_MAX		20	/* tries of one forward, at most */
/*
 * Mutexes beyond Berkeley DB's estimate.  A demoted master's rollback
 * (replication undoing its unacknowledged commits) took some 40,000 of
 * the ~57,000 the environment has with our lock table, and the reopening
 * of the databases then failed for want of one ("resize mutex region").
 */
#define REPL_MUTEXES		200000

/* A site as the peers thread last saw it. */
struct repl_site {
	int			 eid;
	int			 connected;
	char			 addr[300];	/* host:port */
};

/* One forwarded request. */
struct repl_xfer {
	CURL			*easy;
	struct http		*http;
	struct http_ctx		 ctx;
	struct curl_slist	*headers;
	char			*body;		/* the request's */
	size_t			 len;
	char			*path;		/* and its URI */
	char			*auth;		/* its Authorization, or NULL */
	char			*req_ctype;	/* its Content-Type, or NULL */
	struct repl_xfer	**items;	/* a batch's requests */
	size_t			 nitems;
	int			 eid;		/* the master it went to */
	int			 resent;	/* sent to a second master */
	int			 tries;		/* sent again after a 503 */
	int64_t			 deadline;	/* ms, the last answer's */
	long			 timeout_ms;	/* a master's time to answer */
	struct event		*again_ev;	/* the next try's */
	struct evbuffer		*answer;
	char			 ctype[128];
	char			 retry_after[32];
	char			 error[CURL_ERROR_SIZE];
	TAILQ_ENTRY(repl_xfer)	 entry;
};
TAILQ_HEAD(repl_xfers, repl_xfer);

struct repl {
	const struct conf	*conf;
	int			 sync_commits;	/* repl_ack_durability disk */
	struct event_base	*base;
	DB_ENV			*env;
	int			 started;
	pthread_mutex_t		 mu;
	/* Under mu: written by repmgr's threads. */
	int			 role;		/* enum repl_role */
	uint64_t		 perm_failed;
	int			 failed;	/* no Berkeley DB calls */
	/* Under mu: the peers thread's. */
	struct repl_site	 sites[CONF_PEERS_MAX];
	u_int			 nsites;
	int			 peers_wake;
	int			 peers_stop;
	int			 peers_running;
	int			 commits_waiting;
	int64_t			 commit_since;	/* ms, the first waiting */
	int64_t			 nudged;	/* ms, the last nudge */
	pthread_cond_t		 peers_cond;
	pthread_t		 peers_thread;
	/* The loop's. */
	int			 fds[2];
	struct event		*pipe_ev;
	struct event		*retry_ev;
	int			 loop_role;	/* what the hook was told */
	int			 loop_ready;
	void			(*hook)(void *, int, int);
	void			*hook_arg;
	int			 dead;		/* handles to reopen */
	CURLM			*multi;
	struct event		*curl_ev;
	struct repl_xfers	 xfers;		/* sent */
	struct repl_xfers	 queued;	/* claims for the next batch */
	struct event		*batch_ev;
	uint64_t		 forwarded;
	uint64_t		 forward_failed;
	uint64_t		 unavailable;
	uint64_t		 resent;
	uint64_t		 batches;
	uint64_t		 batched;
	struct repl_info	 known;		/* the last repl_info */
	int			 electable;	/* the clock thread's */
};

static struct repl	*repl;
static _Thread_local unsigned long repl_thread_perm_failed;

static int	repl_role_now(void);
static int	repl_usable(void);
static void	repl_cond_init(pthread_cond_t *);
static void	*repl_peers_main(void *);
static void	repl_peers_look(void);
static void	repl_nudge(void);
static int64_t	repl_now_ms(void);
static int	repl_site_connected(int, const char *);
static void	repl_info_db(struct repl_info *, int);
static int	repl_split(const char *, char *, size_t, u_int *);
static void	repl_pipe_cb(evutil_socket_t, short, void *);
static void	repl_retry_cb(evutil_socket_t, short, void *);
static void	repl_update(void);
static const char *repl_event_name(u_int32_t);
static int	repl_site_address(int, char *, size_t);
static int	repl_master_eid(void);
static int	repl_caught_up(void);
static const struct conf_peer *repl_peer_by_repl(const char *);
static int	repl_socket_cb(CURL *, curl_socket_t, int, void *, void *);
static int	repl_timer_cb(CURLM *, long, void *);
static void	repl_sock_event_cb(evutil_socket_t, short, void *);
static void	repl_curl_timeout_cb(evutil_socket_t, short, void *);
static void	repl_check(void);
static size_t	repl_write_cb(char *, size_t, size_t, void *);
static size_t	repl_header_cb(char *, size_t, size_t, void *);
static void	repl_done(struct repl_xfer *, CURLcode);
static void	repl_xfer_target(struct repl_xfer *, const struct conf_peer *);
static int	repl_xfer_later(struct repl_xfer *);
static const struct conf_peer *repl_master_peer(int *, char *, size_t);
static void	repl_xfer_again_cb(evutil_socket_t, short, void *);
static void	repl_xfer_send(struct repl_xfer *, const struct conf_peer *,
		    int);
static int	repl_xfer_resend(struct repl_xfer *);
static void	repl_xfers_follow(void);
static void	repl_xfer_free(struct repl_xfer *);
static void	repl_xfer_start(struct repl_xfer *, const struct conf_peer *,
		    int);
static void	repl_xfer_alone(struct repl_xfer *);
static void	repl_batch_cb(evutil_socket_t, short, void *);
static void	repl_batch_done(struct repl_xfer *, CURLcode, long);
static void	repl_relay(struct repl_xfer *, long, const char *,
		    const char *, const char *, size_t);
static int	repl_same(const char *, const char *);

/* Return 1 if the configuration makes this node a member of a group. */
int
repl_enabled(void)
{
	return (repl != NULL);
}

/*
 * Set up replication for conf (nothing without repl_local): the pipe from
 * repmgr's threads to the loop and the forwarding client.
 */
int
repl_init(struct event_base *base, const struct conf *conf, char **cause)
{
	struct repl	*r;

	if (conf->repl_local == NULL)
		return (0);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
		xasprintf(cause, "curl_global_init failed");
		return (-1);
	}
	r = xcalloc(1, sizeof *r);
	r->conf = conf;
	r->sync_commits = strcmp(conf->repl_ack_durability, "disk") == 0;
	r->base = base;
	r->role = r->loop_role = REPL_ROLE_NONE;
	r->electable = 1;
	TAILQ_INIT(&r->xfers);
	TAILQ_INIT(&r->queued);
	pthread_mutex_init(&r->mu, NULL);
	repl_cond_init(&r->peers_cond);
	if (pipe2(r->fds, O_CLOEXEC | O_NONBLOCK) != 0) {
		xasprintf(cause, "replication: pipe: %s", strerror(errno));
		free(r);
		return (-1);
	}
	r->pipe_ev = event_new(base, r->fds[0], EV_READ | EV_PERSIST,
	    repl_pipe_cb, r);
	r->retry_ev = evtimer_new(base, repl_retry_cb, r);
	r->curl_ev = evtimer_new(base, repl_curl_timeout_cb, r);
	r->batch_ev = event_new(base, -1, 0, repl_batch_cb, r);
	if (r->pipe_ev == NULL || r->retry_ev == NULL || r->curl_ev == NULL ||
	    r->batch_ev == NULL || event_add(r->pipe_ev, NULL) != 0)
		fatalx("replication: event_new");
	if ((r->multi = curl_multi_init()) == NULL)
		fatalx("curl_multi_init");
	curl_multi_setopt(r->multi, CURLMOPT_SOCKETFUNCTION, repl_socket_cb);
	curl_multi_setopt(r->multi, CURLMOPT_TIMERFUNCTION, repl_timer_cb);
	/*
	 * Keep the connections to the master open between forwards.  By
	 * default the cache holds four per transfer in flight, and a forward
	 * ends with its transfer: when few are in flight the cache shrinks
	 * and closes the rest, so under a steady load most forwards opened a
	 * new connection (thousands in TIME-WAIT).  One per connection the
	 * clients may hold here is enough.
	 */
	curl_multi_setopt(r->multi, CURLMOPT_MAXCONNECTS,
	    (long)conf->max_connections);
	repl = r;
	repl_clock_init(conf);
	return (0);
}

/* Stop forwarding and free everything (after the store is closed). */
void
repl_free(void)
{
	struct repl		*r = repl;
	struct repl_xfer	*x;

	if (r == NULL)
		return;
	repl_clock_free();
	repl_ack_free();
	while ((x = TAILQ_FIRST(&r->queued)) != NULL) {
		TAILQ_REMOVE(&r->queued, x, entry);
		repl_xfer_free(x);
	}
	while ((x = TAILQ_FIRST(&r->xfers)) != NULL)
		repl_xfer_free(x);
	curl_multi_cleanup(r->multi);
	event_free(r->batch_ev);
	event_free(r->pipe_ev);
	event_free(r->retry_ev);
	event_free(r->curl_ev);
	close(r->fds[0]);
	close(r->fds[1]);
	pthread_cond_destroy(&r->peers_cond);
	pthread_mutex_destroy(&r->mu);
	free(r);
	repl = NULL;
	curl_global_cleanup();
}

/* Call hook(arg, role, ready) on the loop whenever the role changes. */
void
repl_set_hook(void (*hook)(void *, int, int), void *arg)
{
	if (repl == NULL)
		return;
	repl->hook = hook;
	repl->hook_arg = arg;
	/* Events may have come before the hook. */
	repl_update();
}

/* Split host:port or [v6]:port into host and port. */
static int
repl_split(const char *addr, char *host, size_t size, u_int *port)
{
	const char	*colon = strrchr(addr, ':');
	size_t		 len;

	if (colon == NULL)
		return (-1);
	len = (size_t)(colon - addr);
	if (addr[0] == '[' && len >= 2) {
		addr++;
		len -= 2;
	}
	if (len >= size)
		return (-1);
	memcpy(host, addr, len);
	host[len] = '\0';
	*port = (u_int)strtoul(colon + 1, NULL, 10);
	return (0);
}

/*
 * Before the environment opens: the flags replication needs, priority,
 * acknowledgements and timeouts (repmgr's are in microseconds).  The
 * checkpoint delay (30 s by default: the master sleeps that long in every
 * checkpoint, to let the replicas flush their caches first) would stop
 * the event loop for as long: without it a replica flushes when the
 * checkpoint record arrives.  Bulk transfer sends a transaction's log
 * records as one message when it commits (without it, Nagle held the
 * commit record back for the replica's delayed ACK: 40 ms a commit).
 * (DB_REP_CONF_NOWAIT, to fail reads at once while a replica
 * synchronises, also failed the new master's first operations: a replica
 * closes its store while it synchronises instead.)  DB_TXN_NOSYNC on the
 * environment: a replica no longer flushes its log at each commit it
 * applies (one fdatasync a commit, on the thread that applies them, and
 * the round's question waited behind them); the ack thread's flush covers
 * every commit before the question (repl_ack.c).  A master's commits name
 * their flags themselves.
 */
int
repl_env_prepare(DB_ENV *env, u_int32_t *flags)
{
	const struct conf	*c;
	u_int32_t		 hb;
	int			 ret;

	if (repl == NULL)
		return (0);
	c = repl->conf;
	*flags |= DB_INIT_REP | DB_THREAD;
	hb = (u_int32_t)c->repl_heartbeat * 1000;
	if ((ret = env->rep_set_priority(env,
	    (u_int32_t)c->repl_priority)) != 0 ||
	    (ret = repl_ack_prepare(env, c)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_ACK_TIMEOUT,
	    (db_timeout_t)c->repl_ack_timeout * 1000)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_ELECTION_TIMEOUT,
	    (db_timeout_t)c->repl_election_timeout * 1000)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_ELECTION_RETRY,
	    (db_timeout_t)c->repl_election_timeout * 1000)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_HEARTBEAT_SEND, hb)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_HEARTBEAT_MONITOR,
	    3 * hb)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_CONNECTION_RETRY,
	    2 * hb)) != 0 ||
	    (ret = env->rep_set_timeout(env, DB_REP_CHECKPOINT_DELAY, 0)) != 0 ||
	    (ret = env->rep_set_config(env, DB_REPMGR_CONF_2SITE_STRICT,
	    1)) != 0 ||
	    (ret = env->rep_set_config(env, DB_REP_CONF_BULK, 1)) != 0 ||
	    (ret = env->set_flags(env, DB_TXN_NOSYNC, 1)) != 0 ||
	    (ret = env->mutex_set_increment(env, REPL_MUTEXES)) != 0)
		return (ret);
	return (0);
}

/*
 * After the environment opened: name the sites and start repmgr, which
 * holds an election or finds the master.  The store's databases are
 * opened later, by the hook, once the role is known.
 */
int
repl_start(DB_ENV *env, char **cause)
{
	const struct conf	*c = repl->conf;
	DB_SITE			*site;
	char			 host[256];
	u_int			 port;
	size_t			 i;
	int			 ret;

	repl->env = env;
	if (repl_split(c->repl_local, host, sizeof host, &port) != 0 ||
	    (ret = env->repmgr_site(env, host, port, &site, 0)) != 0) {
		xasprintf(cause, "replication: bad repl_local %s",
		    c->repl_local);
		return (-1);
	}
	if ((ret = site->set_config(site, DB_LOCAL_SITE, 1)) != 0 ||
	    (ret = site->set_config(site, DB_LEGACY, 1)) != 0) {
		(void)site->close(site);
		goto fail;
	}
	if ((ret = site->close(site)) != 0)
		goto fail;
	for (i = 0; i < c->repl_npeers; i++) {
		if (repl_split(c->repl_peers[i].repl, host, sizeof host,
		    &port) != 0 ||
		    (ret = env->repmgr_site(env, host, port, &site, 0)) != 0) {
			xasprintf(cause, "replication: bad repl_peer %s",
			    c->repl_peers[i].repl);
			return (-1);
		}
		if ((ret = site->set_config(site, DB_LEGACY, 1)) != 0) {
			(void)site->close(site);
			goto fail;
		}
		if ((ret = site->close(site)) != 0)
			goto fail;
	}
	ret = env->repmgr_start(env, REPL_THREADS, DB_REP_ELECTION);
	if (ret != 0 && ret != DB_REP_IGNORE)
		goto fail;
	repl->started = 1;
	if (repl_ack_start(cause) != 0)
		return (-1);
	if ((ret = pthread_create(&repl->peers_thread, NULL, repl_peers_main,
	    repl)) != 0) {
		xasprintf(cause, "replication: pthread_create: %s",
		    strerror(ret));
		return (-1);
	}
	repl->peers_running = 1;
	if (repl_clock_start(cause) != 0)
		return (-1);
	log_info("replication: %s in a group of %zu, priority %lld, "
	    "acknowledgements %s", c->repl_local, c->repl_npeers + 1,
	    c->repl_priority, c->repl_ack_policy);
	return (0);
fail:
	xasprintf(cause, "replication: cannot start on %s: %s", c->repl_local,
	    db_strerror(ret));
	return (-1);
}

/*
 * The environment's event callback passes replication events here.  It
 * runs on repmgr's threads or, for a failed acknowledgement, on the
 * committing thread: no logging here, only state and the pipe.
 */
void
repl_event(DB_ENV *env, u_int32_t event, void *info)
{
	struct repl	*r = repl;
	ssize_t		 n;

	(void)env;
	(void)info;
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	switch (event) {
	case DB_EVENT_REP_MASTER:
		r->role = REPL_ROLE_MASTER;
		break;
	case DB_EVENT_REP_CLIENT:
		r->role = REPL_ROLE_REPLICA;
		break;
	case DB_EVENT_REP_PERM_FAILED:
		r->perm_failed++;
		repl_thread_perm_failed++;
		break;
	default:
		break;
	}
	r->peers_wake = 1;
	pthread_cond_signal(&r->peers_cond);
	pthread_mutex_unlock(&r->mu);
	do
		n = write(r->fds[1], &event, sizeof event);
	while (n == -1 && errno == EINTR);
	/* A full pipe already holds a wake-up: the event is only logged. */
}

/* Failed acknowledgements on this thread so far (see store_txn_commit). */
unsigned long
repl_perm_failures(void)
{
	return (repl_thread_perm_failed);
}

/* The role now (repmgr's threads change it); repl must be set. */
static int
repl_role_now(void)
{
	int	role;

	pthread_mutex_lock(&repl->mu);
	role = repl->role;
	pthread_mutex_unlock(&repl->mu);
	return (role);
}

/* A condition variable on the monotonic clock. */
static void
repl_cond_init(pthread_cond_t *cond)
{
	pthread_condattr_t	attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

/*
 * The peers thread: look at repmgr's sites after every event and every
 * REPL_PEERS_MS, until told to stop or the environment fails.
 */
static void *
repl_peers_main(void *arg)
{
	struct repl	*r = arg;
	struct timespec	 ts;

	pthread_mutex_lock(&r->mu);
	while (!r->peers_stop && !r->failed) {
		pthread_mutex_unlock(&r->mu);
		repl_peers_look();
		repl_ack_nodelay();
		repl_nudge();
		pthread_mutex_lock(&r->mu);
		if (r->peers_wake || r->peers_stop)
			goto next;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += REPL_PEERS_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		(void)pthread_cond_timedwait(&r->peers_cond, &r->mu, &ts);
next:
		r->peers_wake = 0;
	}
	pthread_mutex_unlock(&r->mu);
	return (NULL);
}

/* The monotonic clock in milliseconds. */
static int64_t
repl_now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/*
 * A commit begins (waiting 1) or ends (0) its wait for acknowledgements,
 * on any thread (store_txn_commit).
 */
void
repl_commit_waits(int waiting)
{
	struct repl	*r = repl;

	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	if (waiting && r->commits_waiting++ == 0)
		r->commit_since = repl_now_ms();
	else if (!waiting && r->commits_waiting > 0)
		r->commits_waiting--;
	pthread_mutex_unlock(&r->mu);
}

/*
 * On the peers thread: if a commit has waited REPL_NUDGE_MS for its
 * acknowledgements, send the last log record again (rep_flush), once per
 * REPL_NUDGE_MS.  A replica that misses records (a record can overtake
 * the bulk message of the records before it) asks for them only when a
 * message from the master arrives, and the master sends nothing while it
 * waits: without the nudge the next heartbeat, a second later, let the
 * replica catch up, and the commit missed repl_ack_timeout.
 */
static void
repl_nudge(void)
{
	struct repl	*r = repl;
	int64_t		 now = repl_now_ms();
	int		 due;

	pthread_mutex_lock(&r->mu);
	due = r->role == REPL_ROLE_MASTER && r->commits_waiting > 0 &&
	    now - r->commit_since >= REPL_NUDGE_MS &&
	    now - r->nudged >= REPL_NUDGE_MS;
	if (due)
		r->nudged = now;
	pthread_mutex_unlock(&r->mu);
	if (due && repl_usable())
		(void)r->env->rep_flush(r->env);
}

/* Ask repmgr which sites are connected; keep the answer under the mutex. */
static void
repl_peers_look(void)
{
	struct repl	*r = repl;
	DB_REPMGR_SITE	*list = NULL;
	u_int32_t	 none = DB_EVENT_NO_SUCH_EVENT;
	u_int		 n = 0, i;
	ssize_t		 w;
	int		 changed, connected;

	if (!repl_usable() || r->env->repmgr_site_list(r->env, &n,
	    &list) != 0)
		return;
	pthread_mutex_lock(&r->mu);
	changed = n != r->nsites;
	for (i = 0; i < n && i < CONF_PEERS_MAX; i++) {
		connected = list[i].status == DB_REPMGR_CONNECTED;
		changed |= r->sites[i].eid != list[i].eid ||
		    r->sites[i].connected != connected;
		r->sites[i].eid = list[i].eid;
		r->sites[i].connected = connected;
		snprintf(r->sites[i].addr, sizeof r->sites[i].addr,
		    strchr(list[i].host, ':') != NULL ? "[%s]:%u" : "%s:%u",
		    list[i].host, list[i].port);
	}
	r->nsites = i;
	pthread_mutex_unlock(&r->mu);
	free(list);
	/* Let the loop look again (forwarded requests follow the master). */
	if (changed) {
		do
			w = write(r->fds[1], &none, sizeof none);
		while (w == -1 && errno == EINTR);
	}
}

/*
 * Return 1 if the peers thread last saw the site with this eid (or, with
 * DB_EID_INVALID, this host:port) connected.
 */
static int
repl_site_connected(int eid, const char *addr)
{
	struct repl	*r = repl;
	u_int		 i;
	int		 connected = 0;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->nsites; i++) {
		if (eid != DB_EID_INVALID ? r->sites[i].eid == eid :
		    strcmp(r->sites[i].addr, addr) == 0)
			connected = r->sites[i].connected;
	}
	pthread_mutex_unlock(&r->mu);
	return (connected);
}

/*
 * Stop the peers thread before the environment closes (not after a
 * failure: it may be stuck in Berkeley DB, and the process leaves without
 * closing anything).
 */
void
repl_stop(void)
{
	struct repl	*r = repl;

	repl_clock_stop();
	if (r != NULL)
		repl_ack_stop(repl_usable());
	if (r == NULL || !r->peers_running)
		return;
	pthread_mutex_lock(&r->mu);
	r->peers_stop = 1;
	pthread_cond_signal(&r->peers_cond);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->peers_thread, NULL);
	r->peers_running = 0;
}

/*
 * Return 1 if Berkeley DB may be called: repmgr has started and the
 * environment has not failed.
 */
static int
repl_usable(void)
{
	int	failed;

	if (repl->env == NULL || !repl->started)
		return (0);
	pthread_mutex_lock(&repl->mu);
	failed = repl->failed;
	pthread_mutex_unlock(&repl->mu);
	return (!failed);
}

/*
 * The environment has failed (the store saw a panic, on any thread): from
 * now on nothing here calls into Berkeley DB.
 */
void
repl_store_failed(void)
{
	if (repl == NULL)
		return;
	pthread_mutex_lock(&repl->mu);
	repl->failed = 1;
	pthread_mutex_unlock(&repl->mu);
}

/* A wait for acknowledgements failed (repl_ack.c). */
void
repl_perm_failed(void)
{
	pthread_mutex_lock(&repl->mu);
	repl->perm_failed++;
	pthread_mutex_unlock(&repl->mu);
}

/* A condition variable on the monotonic clock (repl_ack.c). */
void
repl_cond_monotonic(pthread_cond_t *cond)
{
	repl_cond_init(cond);
}

/* Return 1 if Berkeley DB may be called (for repl_ack.c's threads). */
int
repl_env_usable(void)
{
	return (repl != NULL && repl_usable());
}

/*
 * Fill eids with the sites the peers thread last saw connected; return
 * how many.
 */
size_t
repl_connected_eids(int *eids, size_t max)
{
	struct repl	*r = repl;
	size_t		 n = 0;
	u_int		 i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->nsites && n < max; i++)
		if (r->sites[i].connected)
			eids[n++] = r->sites[i].eid;
	pthread_mutex_unlock(&r->mu);
	return (n);
}

/* Return 1 if this node may write: no replication, or the master. */
int
repl_writable(void)
{
	return (repl == NULL || repl_role_now() == REPL_ROLE_MASTER);
}

/*
 * Return 1 if this replica has synchronised with its master and applies
 * live records (it may serve reads).  repmgr clears that whenever the
 * replica must synchronise again (a new master) and raises STARTUPDONE
 * when it is done, which wakes repl_update.
 */
static int
repl_caught_up(void)
{
	DB_REP_STAT	*sp;
	int		 done;

	if (!repl_usable() || repl->env->rep_stat(repl->env, &sp, 0) != 0)
		return (0);
	done = sp->st_startup_complete != 0;
	free(sp);
	return (done);
}

/*
 * The master this replica can forward to: the one repmgr names, if this
 * site is connected to it.  repmgr keeps naming a master it has lost
 * until an election settles, and does not announce the same master again
 * when a connection to it comes back: so the connection is what counts.
 */
static int
repl_master_eid(void)
{
	struct repl	*r = repl;
	DB_REP_STAT	*sp;
	int		 eid;

	if (!repl_usable() || r->env->rep_stat(r->env, &sp, 0) != 0)
		return (DB_EID_INVALID);
	eid = (int)sp->st_master;
	free(sp);
	if (eid == DB_EID_INVALID || !repl_site_connected(eid, ""))
		return (DB_EID_INVALID);
	return (eid);
}

/*
 * Return 1 if this node serves: no replication, the master, or a replica
 * connected to the master.
 */
int
repl_serving(void)
{
	int	role;

	if (repl == NULL)
		return (1);
	role = repl_role_now();
	return (role == REPL_ROLE_MASTER || (role == REPL_ROLE_REPLICA &&
	    repl_master_eid() != DB_EID_INVALID));
}

/* The store met a dead handle (a rollback): reopen them from the loop. */
void
repl_handles_dead(void)
{
	if (repl == NULL)
		return;
	repl->dead = 1;
	event_active(repl->pipe_ev, EV_TIMEOUT, 0);
}

/* Name an event for the log. */
static const char *
repl_event_name(u_int32_t event)
{
	switch (event) {
	case DB_EVENT_REP_MASTER:
		return ("this site is now the master");
	case DB_EVENT_REP_CLIENT:
		return ("this site is now a replica");
	case DB_EVENT_REP_NEWMASTER:
		return ("a new master was elected");
	case DB_EVENT_REP_MASTER_FAILURE:
		return ("the master is lost");
	case DB_EVENT_REP_STARTUPDONE:
		return ("this replica has caught up with the master");
	case DB_EVENT_REP_DUPMASTER:
		return ("two masters met: this one steps down");
	case DB_EVENT_REP_ELECTION_FAILED:
		return ("an election failed");
	case DB_EVENT_REP_CONNECT_ESTD:
		return ("connected to a peer");
	case DB_EVENT_REP_CONNECT_BROKEN:
		return ("lost the connection to a peer");
	case DB_EVENT_REP_PERM_FAILED:
		return ("a commit was not acknowledged by enough replicas");
	case DB_EVENT_REP_INIT_DONE:
		return ("this replica was copied from the master");
	case DB_EVENT_REP_JOIN_FAILURE:
		return ("this site could not join the group");
	default:
		return (NULL);
	}
}

/* repmgr said something: log it and bring the loop's view up to date. */
static void
repl_pipe_cb(evutil_socket_t fd, short events, void *arg)
{
	u_int32_t	 ev[64];
	const char	*name;
	ssize_t		 n;
	size_t		 i;

	(void)arg;
	if (events & EV_READ) {
		while ((n = read(fd, ev, sizeof ev)) > 0) {
			for (i = 0; i < (size_t)n / sizeof ev[0]; i++) {
				if ((name = repl_event_name(ev[i])) == NULL)
					continue;
				if (ev[i] == DB_EVENT_REP_CONNECT_ESTD ||
				    ev[i] == DB_EVENT_REP_CONNECT_BROKEN)
					log_debug("replication: %s", name);
				else
					log_info("replication: %s", name);
			}
		}
	}
	repl_update();
	repl_xfers_follow();
}

/* A failed reopen: try again. */
static void
repl_retry_cb(evutil_socket_t fd, short events, void *arg)
{
	(void)fd;
	(void)events;
	(void)arg;
	repl_update();
}

/*
 * Tell the hook about the role: a master, or a replica that has caught up
 * (ready), may open the store; anything else closes it.  A hook that fails
 * (the files are not replicated yet) is asked again shortly.
 */
static void
repl_update(void)
{
	struct repl	*r = repl;
	int		 role, ready;

	if (r == NULL || r->hook == NULL)
		return;
	/* A failed store is neither opened nor closed again: main exits. */
	if (r->started && !repl_usable())
		return;
	pthread_mutex_lock(&r->mu);
	role = r->role;
	pthread_mutex_unlock(&r->mu);
	ready = role == REPL_ROLE_MASTER ||
	    (role == REPL_ROLE_REPLICA && repl_caught_up());
	if (role == r->loop_role && ready == r->loop_ready && !r->dead)
		return;
	r->dead = 0;
	r->loop_role = role;
	r->loop_ready = ready;
	r->hook(r->hook_arg, role, ready);
}

/* The hook could not open the store: call it again in a moment. */
void
repl_retry(void)
{
	struct timeval	tv = { 0, REPL_RETRY_MS * 1000 };

	if (repl == NULL)
		return;
	repl->loop_ready = -1;
	evtimer_add(repl->retry_ev, &tv);
}

/* The repl address of site eid, host:port. */
static int
repl_site_address(int eid, char *buf, size_t size)
{
	DB_SITE		*site;
	const char	*host;
	u_int		 port;
	int		 ok;

	if (!repl_usable() || eid == DB_EID_INVALID ||
	    repl->env->repmgr_site_by_eid(repl->env, eid, &site) != 0)
		return (-1);
	ok = site->get_address(site, &host, &port) == 0;
	if (ok)
		snprintf(buf, size, strchr(host, ':') != NULL ? "[%s]:%u" :
		    "%s:%u", host, port);
	(void)site->close(site);
	return (ok ? 0 : -1);
}

/* The configured peer with this repl address, or NULL. */
static const struct conf_peer *
repl_peer_by_repl(const char *addr)
{
	size_t	i;

	for (i = 0; i < repl->conf->repl_npeers; i++) {
		if (strcmp(repl->conf->repl_peers[i].repl, addr) == 0)
			return (&repl->conf->repl_peers[i]);
	}
	return (NULL);
}

/*
 * What Berkeley DB knows for status and /metrics: whether this node
 * serves in role, its master if a replica, the lag, the LSN, and which
 * peers are connected (the peers thread's view).  Each call is made only
 * while the environment has not failed.
 */
static void
repl_info_db(struct repl_info *ri, int role)
{
	struct repl		*r = repl;
	DB_REP_STAT		*sp;
	size_t			 i;
	int			 eid;

	ri->ready = role == REPL_ROLE_MASTER ||
	    (role == REPL_ROLE_REPLICA && repl_caught_up());
	if (role != REPL_ROLE_MASTER &&
	    ((eid = repl_master_eid()) == DB_EID_INVALID ||
	    repl_site_address(eid, ri->master, sizeof ri->master) != 0))
		ri->master[0] = '\0';
	if (repl_usable() && r->env->rep_stat(r->env, &sp, 0) == 0) {
		ri->lag = (uint64_t)sp->st_log_queued;
		ri->lsn_file = sp->st_next_lsn.file;
		ri->lsn_offset = sp->st_next_lsn.offset;
		free(sp);
	}
	for (i = 0; i < r->conf->repl_npeers && i < CONF_PEERS_MAX; i++)
		ri->peers[i].connected = repl_site_connected(DB_EID_INVALID,
		    r->conf->repl_peers[i].repl);
}

/*
 * What status and /metrics show.  Once the store has failed, what the
 * last call saw, not ready: Berkeley DB is not asked again.
 */
void
repl_info(struct repl_info *ri)
{
	struct repl		*r = repl;
	const struct conf_peer	*p;
	size_t			 i;
	int			 role;

	memset(ri, 0, sizeof *ri);
	if (r == NULL)
		return;
	role = repl_role_now();
	if (repl_usable())
		repl_info_db(ri, role);
	if (repl_usable())
		r->known = *ri;
	else {
		*ri = r->known;
		ri->ready = 0;
	}
	ri->enabled = 1;
	ri->role = role;
	pthread_mutex_lock(&r->mu);
	ri->perm_failed = r->perm_failed;
	pthread_mutex_unlock(&r->mu);
	ri->ack_waits = repl_ack_waits();
	ri->forwarded = r->forwarded;
	ri->forward_failed = r->forward_failed;
	ri->resent = r->resent;
	ri->batches = r->batches;
	ri->batched = r->batched;
	ri->unavailable = r->unavailable;
	if (role == REPL_ROLE_MASTER)
		snprintf(ri->master, sizeof ri->master, "%s",
		    r->conf->repl_local);
	for (i = 0; i < r->conf->repl_npeers && i < CONF_PEERS_MAX; i++) {
		p = &r->conf->repl_peers[i];
		snprintf(ri->peers[i].repl, sizeof ri->peers[i].repl, "%s",
		    p->repl);
		snprintf(ri->peers[i].api, sizeof ri->peers[i].api, "%s",
		    p->api);
	}
	ri->npeers = i;
	repl_clock_info(ri);
}

/*
 * The clock thread's verdict (repl_clock.c), after each of its rounds: a
 * member whose clock is off is not to be master.  Priority 0 keeps it out
 * of elections (repmgr tells the peers, which then no longer count it
 * among the electable sites that acknowledge a commit); a master steps
 * down.  repmgr lets an application change the role of a started site
 * only while elections are off: they are turned off for the change and on
 * again, and the others elect a master.
 */
void
repl_electable(int yes)
{
	struct repl	*r = repl;
	DB_ENV		*env;
	int		 ret;

	if (r == NULL || !repl_usable())
		return;
	env = r->env;
	if (yes != r->electable) {
		if ((ret = env->rep_set_priority(env, yes ?
		    (u_int32_t)r->conf->repl_priority : 0)) != 0) {
			log_warnx("replication: cannot set the priority: %s",
			    db_strerror(ret));
			return;
		}
		r->electable = yes;
	}
	if (yes || repl_role_now() != REPL_ROLE_MASTER)
		return;
	log_warnx("replication: stepping down: this member's clock is off");
	if ((ret = env->rep_set_config(env, DB_REPMGR_CONF_ELECTIONS,
	    0)) == 0)
		ret = env->repmgr_start(env, 0, DB_REP_CLIENT);
	if (ret != 0)
		log_warnx("replication: cannot step down: %s",
		    db_strerror(ret));
	if ((ret = env->rep_set_config(env, DB_REPMGR_CONF_ELECTIONS,
	    1)) != 0)
		log_warnx("replication: cannot turn elections on again: %s",
		    db_strerror(ret));
}

/* The name of a role. */
const char *
repl_role_name(int role)
{
	switch (role) {
	case REPL_ROLE_MASTER:
		return ("master");
	case REPL_ROLE_REPLICA:
		return ("replica");
	default:
		return ("starting");
	}
}

/*
 * A write arrived (POST /v1/claims or /v1/log-stream, its method checked).
 * On the master, or without replication, return 0: handle it here.  On a
 * replica answer it (return 1): 401 for a wrong token, 503 while no
 * master is known or for a request another node already forwarded, else
 * forward it to the master and relay the answer.
 */
int
repl_forward(struct http *h, struct evhttp_request *req, int token)
{
	struct repl		*r = repl;
	struct repl_xfer	*x;
	const struct conf_peer	*p;
	struct evkeyvalq	*in;
	struct evbuffer		*buf;
	const char		*v;
	char			 master[300];
	long			 ms;
	int			 role, eid;

	if (r == NULL)
		return (0);
	pthread_mutex_lock(&r->mu);
	role = r->role;
	pthread_mutex_unlock(&r->mu);
	if (role == REPL_ROLE_MASTER)
		return (0);
	if (!http_authorised(h, req, token)) {
		http_error(h, req, 401, "unauthorized");
		return (1);
	}
	in = evhttp_request_get_input_headers(req);
	if (evhttp_find_header(in, REPL_FORWARD_HEADER) != NULL ||
	    (p = repl_master_peer(&eid, master, sizeof master)) == NULL) {
		r->unavailable++;
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Retry-After", "1");
		http_error(h, req, 503, "unavailable");
		return (1);
	}
	x = xcalloc(1, sizeof *x);
	x->http = h;
	buf = evhttp_request_get_input_buffer(req);
	x->len = evbuffer_get_length(buf);
	x->body = xmalloc(x->len + 1);
	evbuffer_copyout(buf, x->body, x->len);
	x->body[x->len] = '\0';
	x->path = xstrdup(evhttp_request_get_uri(req));
	if ((v = evhttp_find_header(in, "Authorization")) != NULL)
		x->auth = xstrdup(v);
	if ((v = evhttp_find_header(in, "Content-Type")) != NULL)
		x->req_ctype = xstrdup(v);
	ms = (long)r->conf->repl_forward_timeout;
	if (ms > (long)r->conf->request_timeout * 1000)
		ms = (long)r->conf->request_timeout * 1000;
	x->timeout_ms = ms;
	x->deadline = repl_now_ms() + ms;
	http_suspend(h, req, &x->ctx);
	/* A claim waits for the others of this turn (repl_batch_cb). */
	if (strcmp(x->path, "/v1/claims") == 0 && (x->req_ctype == NULL ||
	    strcasecmp(x->req_ctype, BATCH_TYPE) != 0)) {
		if (TAILQ_EMPTY(&r->queued))
			event_active(r->batch_ev, EV_TIMEOUT, 0);
		TAILQ_INSERT_TAIL(&r->queued, x, entry);
		return (1);
	}
	repl_xfer_start(x, p, eid);
	return (1);
}

/*
 * Send x to peer p (eid), the master, for the time x has left: its own
 * request, or a batch's.
 */
static void
repl_xfer_start(struct repl_xfer *x, const struct conf_peer *p, int eid)
{
	struct repl	*r = repl;
	char		*hdr;
	int64_t		 left = x->deadline - repl_now_ms();

	x->eid = eid;
	if ((x->easy = curl_easy_init()) == NULL ||
	    (x->answer = evbuffer_new()) == NULL)
		fatalx("replication: cannot make a transfer");
	repl_xfer_target(x, p);
	if (x->auth != NULL) {
		xasprintf(&hdr, "Authorization: %s", x->auth);
		x->headers = curl_slist_append(x->headers, hdr);
		explicit_bzero(hdr, strlen(hdr));
		free(hdr);
	}
	xasprintf(&hdr, "Content-Type: %s", x->req_ctype != NULL ?
	    x->req_ctype : "application/json");
	x->headers = curl_slist_append(x->headers, hdr);
	free(hdr);
	xasprintf(&hdr, "%s: %s", REPL_FORWARD_HEADER, r->conf->repl_local);
	x->headers = curl_slist_append(x->headers, hdr);
	free(hdr);
	/* No "Expect: 100-continue": the master answers at once. */
	x->headers = curl_slist_append(x->headers, "Expect:");
	curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS,
	    (long)(left < 100 ? 100 : left));
	curl_easy_setopt(x->easy, CURLOPT_POST, 1L);
	curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->body);
	curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE,
	    (curl_off_t)x->len);
	curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
	curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (r->conf->repl_ca_file != NULL)
		curl_easy_setopt(x->easy, CURLOPT_CAINFO,
		    r->conf->repl_ca_file);
	curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->error);
	curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, repl_write_cb);
	curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, repl_header_cb);
	curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
	TAILQ_INSERT_TAIL(&r->xfers, x, entry);
	if (curl_multi_add_handle(r->multi, x->easy) != CURLM_OK)
		fatalx("curl_multi_add_handle");
}

/* Two Authorization headers alike (either may be absent). */
static int
repl_same(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return (a == b);
	return (strcmp(a, b) == 0);
}

/*
 * The claims a replica forwarded in one turn of its loop go to the master
 * in one request (batch.c), instead of one transfer each: its parsing,
 * connection and libcurl's work are shared, and the master claims them in
 * one transaction (api.c).  Claims with different Authorization headers
 * go in different batches (the master checks the one it gets); a claim
 * alone goes as it came.  libevent runs this once the callbacks already
 * active have run, so the batch is every claim of the turn.
 */
static void
repl_batch_cb(evutil_socket_t fd, short events, void *arg)
{
	struct repl		*r = arg;
	struct repl_xfer	*x, *next, *b, *first;
	struct batch_item	 items[BATCH_MAX];
	const struct conf_peer	*p;
	char			 master[300];
	size_t			 n, i;
	int			 eid;

	(void)fd;
	(void)events;
	while ((first = TAILQ_FIRST(&r->queued)) != NULL) {
		if (repl_role_now() == REPL_ROLE_MASTER ||
		    (p = repl_master_peer(&eid, master, sizeof master)) ==
		    NULL) {
			TAILQ_REMOVE(&r->queued, first, entry);
			repl_xfer_alone(first);
			continue;
		}
		b = xcalloc(1, sizeof *b);
		b->items = xcalloc(BATCH_MAX, sizeof *b->items);
		for (x = first, n = 0; x != NULL && n < BATCH_MAX; x = next) {
			next = TAILQ_NEXT(x, entry);
			if (!repl_same(x->auth, first->auth))
				continue;
			TAILQ_REMOVE(&r->queued, x, entry);
			b->items[n++] = x;
		}
		if (n == 1) {
			free(b->items);
			free(b);
			repl_xfer_start(first, p, eid);
			continue;
		}
		for (i = 0; i < n; i++) {
			memset(&items[i], 0, sizeof items[i]);
			items[i].p = b->items[i]->body;
			items[i].len = b->items[i]->len;
		}
		b->nitems = n;
		r->batches++;
		r->batched += n;
		b->http = first->http;
		b->body = batch_encode(items, n, 0, &b->len);
		b->path = xstrdup(first->path);
		if (first->auth != NULL)
			b->auth = xstrdup(first->auth);
		b->req_ctype = xstrdup(BATCH_TYPE);
		b->timeout_ms = first->timeout_ms;
		b->deadline = first->deadline;
		repl_xfer_start(b, p, eid);
	}
}

/* Keep the master's answer, up to a bound. */
static size_t
repl_write_cb(char *p, size_t size, size_t n, void *arg)
{
	struct repl_xfer	*x = arg;

	if (evbuffer_get_length(x->answer) + size * n > REPL_BODY_MAX)
		return (0);
	evbuffer_add(x->answer, p, size * n);
	return (size * n);
}

/* Keep the headers worth relaying: Content-Type and Retry-After. */
static size_t
repl_header_cb(char *p, size_t size, size_t n, void *arg)
{
	struct repl_xfer	*x = arg;
	size_t			 len = size * n, vlen;
	const char		*v;
	char			*dst;
	size_t			 dsize;

	if (len > 13 && strncasecmp(p, "Content-Type:", 13) == 0) {
		v = p + 13;
		dst = x->ctype;
		dsize = sizeof x->ctype;
	} else if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
		v = p + 12;
		dst = x->retry_after;
		dsize = sizeof x->retry_after;
	} else
		return (len);
	while (v < p + len && (*v == ' ' || *v == '\t'))
		v++;
	vlen = (size_t)(p + len - v);
	while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' ||
	    v[vlen - 1] == ' '))
		vlen--;
	if (vlen < dsize) {
		memcpy(dst, v, vlen);
		dst[vlen] = '\0';
	}
	return (len);
}

/* The master answered, or could not be reached: answer the client. */
static void
repl_done(struct repl_xfer *x, CURLcode rc)
{
	long	 code = 0;
	char	*body;
	size_t	 len;

	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
	if ((rc != CURLE_OK || code == 503) && repl_role_now() !=
	    REPL_ROLE_MASTER && repl_xfer_resend(x))
		return;
	if (rc == CURLE_OK && code == 503 && repl_xfer_later(x))
		return;
	if (x->nitems > 0) {
		repl_batch_done(x, rc, code);
		return;
	}
	if (rc != CURLE_OK || code < 200 || code > 599) {
		repl->forward_failed++;
		log_warnx("replication: forwarding to the master failed: %s",
		    rc == CURLE_ABORTED_BY_CALLBACK ? "this node is the "
		    "master now" : rc != CURLE_OK ? (x->error[0] != '\0' ?
		    x->error : curl_easy_strerror(rc)) : "no HTTP answer");
		repl_relay(x, 0, NULL, NULL, NULL, 0);
		return;
	}
	len = evbuffer_get_length(x->answer);
	body = (char *)evbuffer_pullup(x->answer, -1);
	repl_relay(x, code, x->ctype[0] != '\0' ? x->ctype : NULL,
	    x->retry_after, body, len);
}

/*
 * Answer x's client with code (0: 503 "unavailable", counted by the
 * caller), the body of len bytes, its Content-Type (NULL: JSON) and
 * Retry-After (NULL or empty: none), and forget x.
 */
static void
repl_relay(struct repl_xfer *x, long code, const char *ctype,
    const char *retry_after, const char *body, size_t len)
{
	struct repl		*r = repl;
	struct evhttp_request	*req = x->ctx.req;
	struct evkeyvalq	*out = evhttp_request_get_output_headers(req);
	char			*text;

	http_resume(x->http, &x->ctx);
	if (code == 0) {
		evhttp_add_header(out, "Retry-After", "1");
		http_error(x->http, req, 503, "unavailable");
	} else {
		r->forwarded++;
		if (retry_after != NULL && retry_after[0] != '\0')
			evhttp_add_header(out, "Retry-After", retry_after);
		if (code == 401)
			evhttp_add_header(out, "WWW-Authenticate", "Bearer");
		text = xmalloc(len + 1);
		memcpy(text, body, len);
		text[len] = '\0';
		http_reply_now(x->http, req, (int)code, ctype != NULL ?
		    ctype : "application/json", text);
		free(text);
	}
	http_resumed(x->http);
	repl_xfer_free(x);
}

/*
 * A batch's answer came (or none could): relay each claim's.  A claim the
 * master answered 503, and every claim of a batch that failed as a whole
 * (no answer, a master that does not take batches, a token it refused),
 * goes again alone, as it came, and gets that request's answer.
 */
static void
repl_batch_done(struct repl_xfer *b, CURLcode rc, long code)
{
	struct batch_item	 ans[BATCH_MAX];
	struct repl_xfer	*x;
	char			 retry[24];
	size_t			 i, n = b->nitems;
	int			 ok;

	ok = rc == CURLE_OK && code == 200 &&
	    strcasecmp(b->ctype, BATCH_TYPE) == 0 &&
	    batch_answers((const char *)evbuffer_pullup(b->answer, -1),
	    evbuffer_get_length(b->answer), ans, n) == 0;
	if (!ok && rc != CURLE_OK)
		log_info("replication: a batch of %zu claims failed (%s): "
		    "each goes again alone", n, curl_easy_strerror(rc));
	else if (!ok)
		log_info("replication: a batch of %zu claims failed (HTTP %ld, "
		    "no batch answer): each goes again alone", n, code);
	/* The batch's answer stays readable until it is freed, below. */
	b->nitems = 0;
	for (i = 0; i < n; i++) {
		x = b->items[i];
		if (!ok || ans[i].code == 503) {
			repl_xfer_alone(x);
			continue;
		}
		retry[0] = '\0';
		if (ans[i].retry > 0)
			snprintf(retry, sizeof retry, "%lld", ans[i].retry);
		repl_relay(x, ans[i].code, NULL, retry, ans[i].p, ans[i].len);
	}
	repl_xfer_free(b);
}

/*
 * Send x on its own to the master known now, for the time it has left;
 * with none, or none left, or this node the master, answer 503.
 */
static void
repl_xfer_alone(struct repl_xfer *x)
{
	const struct conf_peer	*p;
	char			 master[300];
	int			 eid;

	if (repl_role_now() == REPL_ROLE_MASTER ||
	    (p = repl_master_peer(&eid, master, sizeof master)) == NULL) {
		repl->unavailable++;
		repl_relay(x, 0, NULL, NULL, NULL, 0);
	} else if (x->deadline - repl_now_ms() < 100) {
		/* Its batch took the forwarding's time. */
		repl->forward_failed++;
		repl_relay(x, 0, NULL, NULL, NULL, 0);
	} else
		repl_xfer_start(x, p, eid);
}

/*
 * The peer that is master now, its eid and its replication address (in
 * addr); NULL if no master is known or it is not a configured peer.
 */
static const struct conf_peer *
repl_master_peer(int *eid, char *addr, size_t size)
{
	if ((*eid = repl_master_eid()) == DB_EID_INVALID ||
	    repl_site_address(*eid, addr, size) != 0)
		return (NULL);
	return (repl_peer_by_repl(addr));
}

/* Point a transfer at peer p's API. */
static void
repl_xfer_target(struct repl_xfer *x, const struct conf_peer *p)
{
	char	*url;

	xasprintf(&url, "%s://%s%s", repl->conf->tls_cert_file != NULL ?
	    "https" : "http", p->api, x->path);
	curl_easy_setopt(x->easy, CURLOPT_URL, url);
	free(url);
}

/*
 * If the master this replica knows is not the one x went to, send x once
 * more, to it, dropping the first transfer (its answer, if it ever comes,
 * goes nowhere): return 1.  Return 0 if x stays as it is.
 */
static int
repl_xfer_resend(struct repl_xfer *x)
{
	const struct conf_peer	*p;
	char			 master[300];
	int			 eid;

	if (x->resent ||
	    (p = repl_master_peer(&eid, master, sizeof master)) == NULL ||
	    eid == x->eid)
		return (0);
	x->resent = 1;
	/* The new master has the whole time to answer. */
	x->deadline = repl_now_ms() + x->timeout_ms;
	repl->resent++;
	log_info("replication: the master changed while a request waited: "
	    "sent again, to %s", master);
	repl_xfer_send(x, p, eid);
	return (1);
}

/*
 * The master answered x 503: its store not open yet (a new master opens
 * it off its loop), or its role changing again, or a commit it could not
 * have acknowledged.  Send x again, to the master known then, in
 * REPL_AGAIN_MS, while the forwarding's time lasts (return 1); a
 * request's effect is the same when applied twice (a claim by the same
 * user, a log event whose id is seen), and the client gets one answer,
 * the last.  Return 0 to relay this answer.
 */
static int
repl_xfer_later(struct repl_xfer *x)
{
	struct timeval	tv;

	if (repl_role_now() == REPL_ROLE_MASTER ||
	    x->tries >= REPL_AGAIN_MAX ||
	    repl_now_ms() + REPL_AGAIN_MS >= x->deadline)
		return (0);
	if (x->again_ev == NULL &&
	    (x->again_ev = evtimer_new(repl->base, repl_xfer_again_cb,
	    x)) == NULL)
		return (0);
	curl_multi_remove_handle(repl->multi, x->easy);
	x->tries++;
	tv.tv_sec = 0;
	tv.tv_usec = REPL_AGAIN_MS * 1000;
	evtimer_add(x->again_ev, &tv);
	log_debug("replication: the master answered 503: a forwarded request "
	    "goes again in %d ms (try %d)", REPL_AGAIN_MS, x->tries + 1);
	return (1);
}

/* The time to send x again: to the master known now, if there is one. */
static void
repl_xfer_again_cb(evutil_socket_t fd, short events, void *arg)
{
	struct repl_xfer	*x = arg;
	const struct conf_peer	*p;
	char			 master[300];
	int			 eid;

	(void)fd;
	(void)events;
	if (repl_role_now() == REPL_ROLE_MASTER ||
	    (p = repl_master_peer(&eid, master, sizeof master)) == NULL) {
		/* Relay the 503 kept. */
		x->tries = REPL_AGAIN_MAX;
		repl_done(x, CURLE_OK);
		return;
	}
	repl_xfer_send(x, p, eid);
}

/*
 * Send x to peer p (eid), for the time the forwarding has left, with the
 * previous answer forgotten.
 */
static void
repl_xfer_send(struct repl_xfer *x, const struct conf_peer *p, int eid)
{
	int64_t	left = x->deadline - repl_now_ms();

	if (x->again_ev != NULL)
		evtimer_del(x->again_ev);
	curl_multi_remove_handle(repl->multi, x->easy);
	x->eid = eid;
	evbuffer_drain(x->answer, evbuffer_get_length(x->answer));
	x->ctype[0] = x->retry_after[0] = x->error[0] = '\0';
	repl_xfer_target(x, p);
	curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS,
	    (long)(left < 100 ? 100 : left));
	if (curl_multi_add_handle(repl->multi, x->easy) != CURLM_OK)
		fatalx("curl_multi_add_handle");
}

/*
 * Send the requests waiting for a master that no longer is to the new one.
 * If this node is the new master, answer them 503 at once (the client's
 * retry comes here).
 */
static void
repl_xfers_follow(void)
{
	struct repl_xfer	*x, *next;

	if (repl_role_now() != REPL_ROLE_MASTER) {
		/*
		 * Not before this replica has caught up with the new master:
		 * in a group of three whose old master is gone, its
		 * acknowledgement is the new master's quorum, and it gives
		 * none before (the commit would be answered 503).  Its
		 * STARTUPDONE event brings the loop back here.  A transfer
		 * whose wait ended goes again at once (repl_done).
		 */
		if (!repl_caught_up())
			return;
		TAILQ_FOREACH(x, &repl->xfers, entry) {
			if (!x->resent)
				(void)repl_xfer_resend(x);
		}
		return;
	}
	for (x = TAILQ_FIRST(&repl->xfers); x != NULL; x = next) {
		next = TAILQ_NEXT(x, entry);
		repl_done(x, CURLE_ABORTED_BY_CALLBACK);
	}
}

/*
 * Forget a transfer (with the requests of a batch not yet answered); one
 * never sent is in no list.
 */
static void
repl_xfer_free(struct repl_xfer *x)
{
	size_t	i;

	if (x->easy != NULL) {
		TAILQ_REMOVE(&repl->xfers, x, entry);
		curl_multi_remove_handle(repl->multi, x->easy);
		curl_easy_cleanup(x->easy);
	}
	for (i = 0; i < x->nitems; i++)
		repl_xfer_free(x->items[i]);
	free(x->items);
	curl_slist_free_all(x->headers);
	if (x->answer != NULL)
		evbuffer_free(x->answer);
	if (x->again_ev != NULL)
		event_free(x->again_ev);
	free(x->body);
	free(x->path);
	if (x->auth != NULL)
		explicit_bzero(x->auth, strlen(x->auth));
	free(x->auth);
	free(x->req_ctype);
	free(x);
}

/* libcurl wants a socket watched (or no longer). */
static int
repl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
	struct event	*ev = socketp;
	short		 flags = EV_PERSIST;

	(void)easy;
	(void)userp;
	if (what == CURL_POLL_REMOVE) {
		if (ev != NULL)
			event_free(ev);
		curl_multi_assign(repl->multi, s, NULL);
		return (0);
	}
	if (what & CURL_POLL_IN)
		flags |= EV_READ;
	if (what & CURL_POLL_OUT)
		flags |= EV_WRITE;
	if (ev != NULL)
		event_free(ev);
	if ((ev = event_new(repl->base, s, flags, repl_sock_event_cb,
	    NULL)) == NULL || event_add(ev, NULL) != 0)
		fatalx("replication: event_new");
	curl_multi_assign(repl->multi, s, ev);
	return (0);
}

/* libcurl wants to be called back after timeout_ms (-1: never). */
static int
repl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct timeval	tv;

	(void)multi;
	(void)userp;
	if (timeout_ms < 0) {
		evtimer_del(repl->curl_ev);
		return (0);
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(repl->curl_ev, &tv);
	return (0);
}

/* A socket of a transfer is ready. */
static void
repl_sock_event_cb(evutil_socket_t fd, short events, void *arg)
{
	int	running, flags = 0;

	(void)arg;
	if (events & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (events & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(repl->multi, fd, flags, &running);
	repl_check();
}

/* libcurl's timer went off. */
static void
repl_curl_timeout_cb(evutil_socket_t fd, short events, void *arg)
{
	int	running;

	(void)fd;
	(void)events;
	(void)arg;
	curl_multi_socket_action(repl->multi, CURL_SOCKET_TIMEOUT, 0,
	    &running);
	repl_check();
}

/* Answer the transfers that have ended. */
static void
repl_check(void)
{
	CURLMsg			*msg;
	struct repl_xfer	*x;
	int			 left;

	while ((msg = curl_multi_info_read(repl->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&x);
		repl_done(x, msg->data.result);
	}
}
