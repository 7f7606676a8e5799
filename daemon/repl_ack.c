/*
 * Replication: the group's acknowledgements, off the event loop and
 * shared by many commits (group commit).
 *
 * Berkeley DB 5.3 makes every commit on a repmgr master wait, inside
 * txn->commit, for the acknowledgements its policy asks for, whatever
 * the commit's flags: a DB_TXN_NOSYNC commit waited 0.25 ms with a
 * replica running and the whole repl_ack_timeout with the replica
 * stopped (measured; the policy and the timeout are the environment's,
 * not a thread's or a handle's).  So the event loop, which commits, would
 * wait for them, one commit at a time.  Instead repmgr's policy is
 * DB_REPMGR_ACKS_NONE on every member (a commit returns in microseconds)
 * and the acknowledgements that count are our own, over repmgr's message
 * channels:
 *
 *   master   repl_ack_wait, on the thread that flushes a batch's answers
 *            (the store's flusher): it reads the last commit record sent
 *            (rep_stat's st_max_perm_lsn, which covers every commit so
 *            far), sends it to each connected replica (REPL_ACK_ASK) and
 *            waits, up to repl_ack_timeout, until the policy's number of
 *            replicas has answered that their log holds it (REPL_ACK_HAVE),
 *            flushed if repl_ack_durability is disk.  Every commit before
 *            that record is covered by the same answers: one round trip
 *            for all the batches committed since the last one.  Rounds
 *            may overlap (repl_ack_begin on the flusher, repl_ack_end on
 *            its acker, store.c): a round covers the commits counted
 *            (committed) when it began.
 *   replica  the dispatch callback (a repmgr thread) passes the question
 *            to the ack thread, which waits until its log reaches the
 *            record (replication applies it meanwhile), flushes the log
 *            once for every question so far, and answers with the end of
 *            its log and its priority.  Applying a commit does not flush
 *            the log (DB_TXN_NOSYNC, repl.c): this flush is the only one.
 *
 * The log sequence numbers of a replica's log are those of its master's.
 * An answer counts only in the election generation it was given in: a
 * member that held a record under another master may have rolled it back.
 * The policy is counted as repmgr counts it: "all" every other member,
 * "one" one electable member (priority above 0), "quorum" half of the
 * other members, rounded down, electable (with 2SITE_STRICT, as here: so
 * none in a group of two).  A wait that fails counts as a failed
 * acknowledgement (perm_failed), and its answers are 503.
 *
 * repmgr leaves Nagle's algorithm on its connections: a question sent
 * right after a commit's records waited for the replica's delayed TCP
 * acknowledgement of them, 40 ms (repmgr's own acknowledgements used to
 * carry it back at once).  So the peers thread sets TCP_NODELAY on every
 * TCP socket of this process whose own or remote port is a repl port of
 * the group (repl_ack_nodelay): those are repmgr's connections.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define REPL_ACK_ASK		'A'	/* master: have you this record? */
#define REPL_ACK_HAVE		'H'	/* replica: my log ends here */
#define REPL_ACK_MSG_LEN	19
#define REPL_ACK_POLL_US	200	/* a replica's look at its log */
#define REPL_ACK_EIDS		(CONF_PEERS_MAX + 8)
#define REPL_ACK_JOIN_S		1	/* a stop's wait for a channel opener */

/* A channel opener's state, by eid (under send_mu). */
enum repl_ack_opener {
	REPL_ACK_OPENER_NONE,
	REPL_ACK_OPENER_RUNNING,
	REPL_ACK_OPENER_DONE		/* to be joined */
};

/* What a replica last answered this master. */
/* A message, decoded (repl_ack_pack says how it is laid out). */
struct repl_ack_msg {
	int		type;		/* REPL_ACK_ASK or REPL_ACK_HAVE */
	int		flag;
	uint32_t	gen;
	int		eid;
	uint64_t	lsn;
};

struct repl_ack_site {
	int		 eid;
	uint32_t	 gen;
	uint64_t	 end;		/* its log's end (file << 32 | offset) */
	int		 peer;		/* electable */
};

struct repl_ack {
	DB_ENV			*env;
	int			 flush;		/* repl_ack_durability disk */
	int			 peer;		/* this member is electable */
	int			 policy;	/* 'a'll, 'o'ne, 'q'uorum */
	size_t			 others;	/* members besides this one */
	db_timeout_t		 timeout_ms;
	u_int			 ports[CONF_PEERS_MAX + 1];	/* repl ports */
	size_t			 nports;
	DIR			*fds;		/* /proc/self/fd, or NULL */
	pthread_mutex_t		 mu;
	pthread_cond_t		 cond;
	/* Under mu, the master's. */
	struct repl_ack_site	 sites[REPL_ACK_EIDS];
	size_t			 nsites;
	uint64_t		 waits;		/* rounds that asked */
	uint64_t		 committed;	/* commits so far */
	uint64_t		 covered;	/* of them, acknowledged */
	/* Under mu, the replica's question to answer. */
	int			 asked;
	uint32_t		 ask_gen;
	int			 ask_eid;
	int			 ask_flush;
	uint64_t		 ask_lsn;
	int			 quit;
	pthread_t		 thread;
	int			 running;
	/* Under send_mu: channels to the replicas, by eid, and openers. */
	pthread_mutex_t		 send_mu;
	pthread_cond_t		 send_cond;	/* an opener is done */
	DB_CHANNEL		*chans[REPL_ACK_EIDS];
	pthread_t		 openers[REPL_ACK_EIDS];
	enum repl_ack_opener	 opener[REPL_ACK_EIDS];
	int			 open_quit;
	int			 left_behind;	/* an opener: keep ra */
	DB_CHANNEL		*to_master;	/* the ack thread's */
};

static struct repl_ack	*ra;

static void	 repl_ack_cb(DB_ENV *, DB_CHANNEL *, DBT *, u_int32_t,
		    u_int32_t);
static void	 repl_ack_pack(u_char *, int, int, uint32_t, int, uint64_t);
static void	 repl_ack_have(uint32_t, int, uint64_t, int);
static void	 repl_ack_ask(uint32_t, int, int, uint64_t);
static void	*repl_ack_main(void *);
static void	 repl_ack_answer(uint32_t, int, int, uint64_t);
static int	 repl_ack_state(uint32_t *, uint64_t *);
static uint64_t	 repl_ack_log_end(void);
static size_t	 repl_ack_send_all(uint32_t, uint64_t, size_t *);
static int	 repl_ack_send(int, const u_char *);
static void	 repl_ack_chans_wait(const int *, size_t, int);
static void	 repl_ack_chan_want(int);
static void	*repl_ack_opener_main(void *);
static void	 repl_ack_openers_stop(void);
static int	 repl_ack_needed(int *);
static size_t	 repl_ack_count(uint32_t, uint64_t, int);
static void	 repl_ack_deadline(struct timespec *, db_timeout_t);
static uint64_t	 repl_ack_get64(const u_char *);
static void	 repl_ack_port(const char *);
static int	 repl_ack_is_port(const struct sockaddr_storage *);
static uint32_t	 repl_ack_get32(const u_char *);
static int	 repl_ack_decode(const DBT *, struct repl_ack_msg *);

/*
 * Before repmgr starts: no acknowledgements of repmgr's, ours through
 * the message channels.
 */
int
repl_ack_prepare(DB_ENV *env, const struct conf *c)
{
	size_t	i;
	int	ret;

	ra = xcalloc(1, sizeof *ra);
	ra->env = env;
	ra->flush = strcmp(c->repl_ack_durability, "disk") == 0;
	ra->policy = c->repl_ack_policy[0];
	ra->others = c->repl_npeers;
	ra->peer = c->repl_priority > 0;
	repl_ack_port(c->repl_local);
	for (i = 0; i < c->repl_npeers && i < CONF_PEERS_MAX; i++)
		repl_ack_port(c->repl_peers[i].repl);
	/*
	 * Opened once, before the peers thread that reads it: a descriptor
	 * that thread opened and closed at each look could take the number
	 * of a socket the loop had just closed while libevent still held
	 * it (ThreadSanitizer reported that race).
	 */
	ra->fds = opendir("/proc/self/fd");
	ra->timeout_ms = (db_timeout_t)c->repl_ack_timeout;
	pthread_mutex_init(&ra->mu, NULL);
	pthread_mutex_init(&ra->send_mu, NULL);
	repl_cond_monotonic(&ra->cond);
	repl_cond_monotonic(&ra->send_cond);
	if ((ret = env->repmgr_set_ack_policy(env,
	    DB_REPMGR_ACKS_NONE)) != 0 ||
	    (ret = env->repmgr_msg_dispatch(env, repl_ack_cb, 0)) != 0)
		return (ret);
	return (0);
}

/* After repmgr started: the replica's ack thread. */
int
repl_ack_start(char **cause)
{
	int	ret;

	if ((ret = worker_thread(&ra->thread, repl_ack_main, ra)) != 0) {
		xasprintf(cause, "replication: pthread_create: %s",
		    strerror(ret));
		return (-1);
	}
	ra->running = 1;
	return (0);
}

/* Stop the ack thread and close the channels (before the environment). */
void
repl_ack_stop(int usable)
{
	size_t	i;

	if (ra == NULL)
		return;
	if (ra->running) {
		pthread_mutex_lock(&ra->mu);
		ra->quit = 1;
		pthread_cond_broadcast(&ra->cond);
		pthread_mutex_unlock(&ra->mu);
		pthread_join(ra->thread, NULL);
		ra->running = 0;
	}
	repl_ack_openers_stop();
	for (i = 0; usable && i < REPL_ACK_EIDS; i++)
		if (ra->chans[i] != NULL)
			(void)ra->chans[i]->close(ra->chans[i], 0);
	if (usable && ra->to_master != NULL)
		(void)ra->to_master->close(ra->to_master, 0);
}

/* Free what repl_ack_prepare made (after the environment closed). */
void
repl_ack_free(void)
{
	if (ra == NULL)
		return;
	/* An opener left behind may still end, and write here: kept. */
	if (ra->left_behind)
		return;
	if (ra->fds != NULL)
		closedir(ra->fds);
	pthread_cond_destroy(&ra->cond);
	pthread_cond_destroy(&ra->send_cond);
	pthread_mutex_destroy(&ra->send_mu);
	pthread_mutex_destroy(&ra->mu);
	free(ra);
	ra = NULL;
}

/* Note the port of a repl address (host:port, [v6]:port). */
static void
repl_ack_port(const char *addr)
{
	const char	*colon = strrchr(addr, ':');

	if (colon != NULL && ra->nports < CONF_PEERS_MAX + 1)
		ra->ports[ra->nports++] = (u_int)strtoul(colon + 1, NULL, 10);
}

/*
 * On the peers thread: TCP_NODELAY on repmgr's connections (setting it
 * again on a socket that has it costs a system call).
 */
void
repl_ack_nodelay(void)
{
	struct sockaddr_storage	 me, peer;
	socklen_t		 len;
	struct dirent		*e;
	int			 fd, type, one = 1;

	if (ra == NULL || ra->fds == NULL)
		return;
	rewinddir(ra->fds);
	while ((e = readdir(ra->fds)) != NULL) {
		fd = atoi(e->d_name);
		len = sizeof type;
		if (e->d_name[0] == '.' || getsockopt(fd, SOL_SOCKET, SO_TYPE,
		    &type, &len) != 0 || type != SOCK_STREAM)
			continue;
		len = sizeof me;
		if (getsockname(fd, (struct sockaddr *)&me, &len) != 0)
			continue;
		len = sizeof peer;
		if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0)
			continue;
		if (repl_ack_is_port(&me) || repl_ack_is_port(&peer))
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
			    sizeof one);
	}
}

/* Return 1 if a TCP address has one of the group's repl ports. */
static int
repl_ack_is_port(const struct sockaddr_storage *ss)
{
	u_int	port;
	size_t	i;

	if (ss->ss_family == AF_INET)
		port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
	else if (ss->ss_family == AF_INET6)
		port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	else
		return (0);
	for (i = 0; i < ra->nports; i++)
		if (ra->ports[i] == port)
			return (1);
	return (0);
}

/* Rounds of acknowledgements the master asked for (status, /metrics). */
uint64_t
repl_ack_waits(void)
{
	uint64_t	n;

	if (ra == NULL)
		return (0);
	pthread_mutex_lock(&ra->mu);
	n = ra->waits;
	pthread_mutex_unlock(&ra->mu);
	return (n);
}

/* The master committed a transaction: the next wait must cover it. */
void
repl_ack_committed(void)
{
	if (ra == NULL)
		return;
	pthread_mutex_lock(&ra->mu);
	ra->committed++;
	pthread_mutex_unlock(&ra->mu);
}

/*
 * On any thread but the loop's: wait until enough replicas hold every
 * commit of this member so far (flushed, with disk).  Return 0 if they
 * do (or none is needed, or there is none), -1 if not within
 * repl_ack_timeout, or if this member is no longer the master (its
 * commits may be rolled back: they are answered 503 once, and what
 * comes after has nothing of its own to wait for).  Commits that missed
 * their acknowledgements stay to be covered by the next wait.
 */
int
repl_ack_wait(void)
{
	struct repl_ack_round	rd;

	repl_ack_begin(&rd);
	return (repl_ack_end(&rd));
}

/*
 * The first half of repl_ack_wait: ask the replicas, so that the caller
 * can flush its own log while they flush theirs.  Rounds may overlap (the
 * flusher asks again while the acknowledgements of the previous round are
 * on their way): each covers the commits counted before it began.
 */
void
repl_ack_begin(struct repl_ack_round *rd)
{
	size_t	sent, peers;
	int	dirty;

	memset(rd, 0, sizeof *rd);
	if (ra == NULL)
		return;
	pthread_mutex_lock(&ra->mu);
	rd->upto = ra->committed;
	dirty = ra->covered < rd->upto;
	if (dirty && !repl_writable())
		ra->covered = rd->upto;
	pthread_mutex_unlock(&ra->mu);
	if (!dirty)
		return;
	rd->state = -1;
	if (!repl_writable() || repl_ack_state(&rd->gen, &rd->lsn) != 0)
		return;
	rd->state = 1;
	if ((rd->needed = repl_ack_needed(&rd->only_peers)) == 0)
		return;
	sent = repl_ack_send_all(rd->gen, rd->lsn, &peers);
	if ((rd->only_peers ? peers : sent) < (size_t)rd->needed) {
		repl_perm_failed();
		rd->state = -1;
	}
}

/* The second half: wait for the answers; 0 if enough came in time. */
int
repl_ack_end(struct repl_ack_round *rd)
{
	struct timespec	 until;
	size_t		 n;
	int		 ret = 0;

	if (rd->state <= 0)
		return (rd->state);
	repl_commit_waits(1);
	repl_ack_deadline(&until, ra->timeout_ms);
	pthread_mutex_lock(&ra->mu);
	if (rd->needed > 0)
		ra->waits++;
	while ((n = repl_ack_count(rd->gen, rd->lsn, rd->only_peers)) <
	    (size_t)rd->needed && ret == 0)
		ret = pthread_cond_timedwait(&ra->cond, &ra->mu, &until);
	if (n >= (size_t)rd->needed && ra->covered < rd->upto)
		ra->covered = rd->upto;
	pthread_mutex_unlock(&ra->mu);
	repl_commit_waits(0);
	if (n < (size_t)rd->needed) {
		repl_perm_failed();
		return (-1);
	}
	return (0);
}

/* The election generation and the last commit record sent, or -1. */
static int
repl_ack_state(uint32_t *gen, uint64_t *lsn)
{
	DB_REP_STAT	*sp;

	if (!repl_env_usable() || ra->env->rep_stat(ra->env, &sp, 0) != 0)
		return (-1);
	*gen = sp->st_gen;
	*lsn = (uint64_t)sp->st_max_perm_lsn.file << 32 |
	    sp->st_max_perm_lsn.offset;
	free(sp);
	return (0);
}

/* How many answers the policy needs; *only_peers: electable ones only. */
static int
repl_ack_needed(int *only_peers)
{
	*only_peers = ra->policy != 'a';
	switch (ra->policy) {
	case 'a':
		return ((int)ra->others);
	case 'o':
		return (1);
	default:
		/* repmgr's quorum with DB_REPMGR_CONF_2SITE_STRICT. */
		return ((int)ra->others / 2);
	}
}

/* Answers of this generation that hold lsn (under mu). */
static size_t
repl_ack_count(uint32_t gen, uint64_t lsn, int only_peers)
{
	size_t	i, n = 0;

	for (i = 0; i < ra->nsites; i++)
		if (ra->sites[i].gen == gen && ra->sites[i].end > lsn &&
		    (ra->sites[i].peer || !only_peers))
			n++;
	return (n);
}

/*
 * Ask every connected member; return how many were asked, and in *peers
 * how many of them are electable as far as their last answer tells (an
 * unknown one counts as electable: only its answer decides).
 */
static size_t
repl_ack_send_all(uint32_t gen, uint64_t lsn, size_t *peers)
{
	u_char	msg[REPL_ACK_MSG_LEN];
	int	eids[REPL_ACK_EIDS];
	size_t	n, i, j, sent = 0;
	int	peer, only;

	*peers = 0;
	n = repl_connected_eids(eids, REPL_ACK_EIDS);
	repl_ack_chans_wait(eids, n, repl_ack_needed(&only));
	for (i = 0; i < n; i++) {
		repl_ack_pack(msg, REPL_ACK_ASK, ra->flush, gen, eids[i], lsn);
		if (repl_ack_send(eids[i], msg) != 0)
			continue;
		sent++;
		peer = 1;
		pthread_mutex_lock(&ra->mu);
		for (j = 0; j < ra->nsites; j++)
			if (ra->sites[j].eid == eids[i])
				peer = ra->sites[j].peer;
		pthread_mutex_unlock(&ra->mu);
		*peers += (size_t)peer;
	}
	return (sent);
}

/* Send one message to the member eid (a channel kept for each). */
static int
repl_ack_send(int eid, const u_char *msg)
{
	DBT		 dbt;
	DB_CHANNEL	**ch;
	int		 ret;

	if (eid < 0 || eid >= REPL_ACK_EIDS)
		return (-1);
	memset(&dbt, 0, sizeof dbt);
	dbt.data = (void *)(uintptr_t)msg;
	dbt.size = REPL_ACK_MSG_LEN;
	pthread_mutex_lock(&ra->send_mu);
	ch = &ra->chans[eid];
	ret = *ch == NULL ? -1 : (*ch)->send_msg(*ch, &dbt, 1, 0);
	pthread_mutex_unlock(&ra->send_mu);
	return (ret == 0 ? 0 : -1);
}

/*
 * Make sure a channel is being opened to each of the n members eids
 * lacks one, and wait until `needed' of them have one, or no opening is
 * left, or repl_ack_timeout has passed.  Opening a channel connects to
 * the member and waits for its handshake, with no time limit: a member
 * that is paused (SIGSTOP) accepts the connection and never answers.  On
 * the flusher, that stopped a new master's every answer until the old
 * master, paused, was resumed (issue 22, point 6); so each channel is
 * opened on a thread of its own, and a round goes on without it.
 */
static void
repl_ack_chans_wait(const int *eids, size_t n, int needed)
{
	struct timespec	until;
	size_t		i, open, opening;

	repl_ack_deadline(&until, ra->timeout_ms);
	pthread_mutex_lock(&ra->send_mu);
	for (i = 0; i < n; i++)
		repl_ack_chan_want(eids[i]);
	for (;;) {
		open = opening = 0;
		for (i = 0; i < n; i++) {
			if (eids[i] < 0 || eids[i] >= REPL_ACK_EIDS)
				continue;
			open += ra->chans[eids[i]] != NULL;
			opening += ra->opener[eids[i]] ==
			    REPL_ACK_OPENER_RUNNING;
		}
		if (open >= (size_t)needed || opening == 0 ||
		    pthread_cond_timedwait(&ra->send_cond, &ra->send_mu,
		    &until) != 0)
			break;
	}
	pthread_mutex_unlock(&ra->send_mu);
}

/* Under send_mu: start opening a channel to eid if it has none. */
static void
repl_ack_chan_want(int eid)
{
	if (eid < 0 || eid >= REPL_ACK_EIDS || ra->open_quit)
		return;
	if (ra->opener[eid] == REPL_ACK_OPENER_DONE) {
		pthread_join(ra->openers[eid], NULL);
		ra->opener[eid] = REPL_ACK_OPENER_NONE;
	}
	if (ra->chans[eid] != NULL ||
	    ra->opener[eid] != REPL_ACK_OPENER_NONE)
		return;
	if (worker_thread(&ra->openers[eid], repl_ack_opener_main,
	    (void *)(intptr_t)eid) == 0)
		ra->opener[eid] = REPL_ACK_OPENER_RUNNING;
}

/* A channel opener: open one channel, hand it over, and end. */
static void *
repl_ack_opener_main(void *arg)
{
	DB_CHANNEL	*ch = NULL;
	int		 eid = (int)(intptr_t)arg;

	if (!repl_env_usable() ||
	    ra->env->repmgr_channel(ra->env, eid, &ch, 0) != 0)
		ch = NULL;
	pthread_mutex_lock(&ra->send_mu);
	if (ch != NULL && ra->chans[eid] == NULL && !ra->open_quit) {
		ra->chans[eid] = ch;
		ch = NULL;
	}
	ra->opener[eid] = REPL_ACK_OPENER_DONE;
	pthread_cond_broadcast(&ra->send_cond);
	pthread_mutex_unlock(&ra->send_mu);
	if (ch != NULL && repl_env_usable())
		(void)ch->close(ch, 0);
	return (NULL);
}

/*
 * Before the channels close: no new opener, and wait for those running.
 * One still connecting to a paused member after REPL_ACK_JOIN_S is left
 * behind (detached): the process is stopping, and it would wait for as
 * long as the member stays paused.
 */
static void
repl_ack_openers_stop(void)
{
	struct timespec	until;
	int		started[REPL_ACK_EIDS];
	size_t		i;

	pthread_mutex_lock(&ra->send_mu);
	ra->open_quit = 1;
	for (i = 0; i < REPL_ACK_EIDS; i++)
		started[i] = ra->opener[i] != REPL_ACK_OPENER_NONE;
	pthread_mutex_unlock(&ra->send_mu);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += REPL_ACK_JOIN_S;
	for (i = 0; i < REPL_ACK_EIDS; i++) {
		if (!started[i])
			continue;
		if (pthread_timedjoin_np(ra->openers[i], NULL, &until) == 0) {
			ra->opener[i] = REPL_ACK_OPENER_NONE;
			continue;
		}
		log_warnx("replication: a channel to a member is still "
		    "connecting: not waited for");
		(void)pthread_detach(ra->openers[i]);
		ra->left_behind = 1;
	}
}

/*
 * A message from another member, on a repmgr thread: note an answer, or
 * pass a question to the ack thread.  Nothing here waits.
 */
static void
repl_ack_cb(DB_ENV *env, DB_CHANNEL *ch, DBT *msgs, u_int32_t n,
    u_int32_t flags)
{
	struct repl_ack_msg	m;

	(void)env;
	(void)ch;
	(void)flags;
	if (ra == NULL || n != 1 || repl_ack_decode(&msgs[0], &m) != 0)
		return;
	if (m.type == REPL_ACK_HAVE)
		repl_ack_have(m.gen, m.eid, m.lsn, m.flag);
	else if (m.type == REPL_ACK_ASK)
		repl_ack_ask(m.gen, m.eid, m.flag, m.lsn);
}

/*
 * Read a message that repmgr hands to the callback: its bytes are
 * repmgr's, read only here (tests/tsan.supp names this function: a
 * message a member sends itself, as a replica that has just become the
 * master may, is passed between repmgr's threads in a way the
 * ThreadSanitizer runtime does not see).  -1 if it is not one of ours.
 */
static int
repl_ack_decode(const DBT *dbt, struct repl_ack_msg *m)
{
	const u_char	*p = dbt->data;

	if (dbt->size != REPL_ACK_MSG_LEN)
		return (-1);
	m->type = p[0];
	m->flag = p[1];
	m->gen = repl_ack_get32(p + 2);
	m->eid = (int)repl_ack_get32(p + 6);
	m->lsn = repl_ack_get64(p + 10);
	return (0);
}

/* The master: a replica's log ends at end in generation gen. */
static void
repl_ack_have(uint32_t gen, int eid, uint64_t end, int peer)
{
	size_t	i;

	pthread_mutex_lock(&ra->mu);
	for (i = 0; i < ra->nsites && ra->sites[i].eid != eid; i++)
		continue;
	if (i == ra->nsites && ra->nsites < REPL_ACK_EIDS)
		ra->sites[ra->nsites++].eid = eid;
	if (i < ra->nsites) {
		if (ra->sites[i].gen != gen || ra->sites[i].end < end)
			ra->sites[i].end = end;
		ra->sites[i].gen = gen;
		ra->sites[i].peer = peer;
		pthread_cond_broadcast(&ra->cond);
	}
	pthread_mutex_unlock(&ra->mu);
}

/* A replica: the master asks for the record at lsn; the thread answers. */
static void
repl_ack_ask(uint32_t gen, int eid, int flush, uint64_t lsn)
{
	pthread_mutex_lock(&ra->mu);
	if (!ra->asked || ra->ask_gen != gen || ra->ask_lsn < lsn)
		ra->ask_lsn = lsn;
	ra->ask_gen = gen;
	ra->ask_eid = eid;
	ra->ask_flush |= flush;
	ra->asked = 1;
	pthread_cond_broadcast(&ra->cond);
	pthread_mutex_unlock(&ra->mu);
}

/* The ack thread: answer each question once its record is here. */
static void *
repl_ack_main(void *arg)
{
	struct repl_ack	*a = arg;
	uint32_t	 gen;
	uint64_t	 lsn;
	int		 eid, flush;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (!a->asked && !a->quit)
			pthread_cond_wait(&a->cond, &a->mu);
		if (a->quit)
			break;
		gen = a->ask_gen;
		eid = a->ask_eid;
		flush = a->ask_flush;
		lsn = a->ask_lsn;
		a->asked = a->ask_flush = 0;
		pthread_mutex_unlock(&a->mu);
		repl_ack_answer(gen, eid, flush, lsn);
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	return (NULL);
}

/*
 * Wait (repl_ack_timeout at most) until this replica's log holds the
 * record at lsn, flush it, and tell the master where the log ends.
 */
static void
repl_ack_answer(uint32_t gen, int eid, int flush, uint64_t lsn)
{
	struct timespec	 pause = { 0, REPL_ACK_POLL_US * 1000 }, until, now;
	u_char		 msg[REPL_ACK_MSG_LEN];
	uint64_t	 end;
	DBT		 dbt;

	repl_ack_deadline(&until, ra->timeout_ms);
	while ((end = repl_ack_log_end()) <= lsn && end != 0) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > until.tv_sec || (now.tv_sec == until.tv_sec &&
		    now.tv_nsec >= until.tv_nsec))
			return;
		nanosleep(&pause, NULL);
	}
	if (end == 0 || (flush && ra->env->log_flush(ra->env, NULL) != 0))
		return;
	repl_ack_pack(msg, REPL_ACK_HAVE, ra->peer, gen, eid,
	    end);
	memset(&dbt, 0, sizeof dbt);
	dbt.data = msg;
	dbt.size = sizeof msg;
	/* Become the master meanwhile: the answer would come back here. */
	if (repl_writable())
		return;
	if (ra->to_master == NULL && ra->env->repmgr_channel(ra->env,
	    DB_EID_MASTER, &ra->to_master, 0) != 0)
		ra->to_master = NULL;
	if (ra->to_master != NULL)
		(void)ra->to_master->send_msg(ra->to_master, &dbt, 1, 0);
}

/* The end of this member's log, or 0 if it cannot be read. */
static uint64_t
repl_ack_log_end(void)
{
	DB_LOG_STAT	*sp;
	uint64_t	 end;

	if (!repl_env_usable() || ra->env->log_stat(ra->env, &sp, 0) != 0)
		return (0);
	end = (uint64_t)sp->st_cur_file << 32 | sp->st_cur_offset;
	free(sp);
	return (end);
}

/* A message: type(1) flag(1) gen(4) eid(4) lsn(8) pad(1), big-endian. */
static void
repl_ack_pack(u_char *p, int type, int flag, uint32_t gen, int eid,
    uint64_t lsn)
{
	int	i;

	memset(p, 0, REPL_ACK_MSG_LEN);
	p[0] = (u_char)type;
	p[1] = flag != 0;
	for (i = 0; i < 4; i++) {
		p[2 + i] = (u_char)(gen >> (24 - 8 * i));
		p[6 + i] = (u_char)((uint32_t)eid >> (24 - 8 * i));
	}
	for (i = 0; i < 8; i++)
		p[10 + i] = (u_char)(lsn >> (56 - 8 * i));
}

/* A big-endian 32-bit number. */
static uint32_t
repl_ack_get32(const u_char *p)
{
	return ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3]);
}

/* A big-endian 64-bit number. */
static uint64_t
repl_ack_get64(const u_char *p)
{
	return ((uint64_t)repl_ack_get32(p) << 32 | repl_ack_get32(p + 4));
}

/* The monotonic clock ms from now, for pthread_cond_timedwait. */
static void
repl_ack_deadline(struct timespec *ts, db_timeout_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}
