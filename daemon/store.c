/*
 * The store: every Berkeley DB call of phoneclaimd.
 *
 * One transactional environment in the state directory, one btree file per
 * database:
 *
 *   numbers.db        numkey[16]  ->  number record (every claim on it)
 *   numbers_user.db   uhash[8]  ->  numkey               (secondary, dupsort)
 *   numbers_expiry.db expires[8]  ->  numkey             (secondary, dupsort,
 *                     pending claims only)
 *   numbers_enrol.db  ehash[8]  ->  numkey               (secondary, dupsort,
 *                     claims with an enrolment id only)
 *   conflicts.db      numkey[16] user_id  ->  conflict record
 *   seen.db           log_id  ->  seen[8]                (seconds)
 *   seen_date.db      seen[8]  ->  seen.db key           (secondary, dupsort)
 *   watermarks.db     user_id [ 0x00 numkey[16] ]  ->  date[8]
 *                     (milliseconds; user-wide, or for one number)
 *   verify.db         user_id  ->  verification request
 *   limits.db         user_id  ->  reservation window (start, count)
 *   meta.db           name  ->  value                    (no NULs stored)
 *
 * A number key is the first 16 bytes of the number's HMAC-SHA256.  All the
 * claims on a number share one record, so that the check-and-reserve reads
 * one record and the key is stored once however many users hold it; the
 * claims in it are in user id order.  The user and enrolment indexes are
 * keyed by uhash and ehash, the SipHash-2-4 of the id under a key derived
 * from the hash key (so every member of a replication group, which shares
 * the hash key, has the same): 8 bytes instead of the id, and an index
 * entry points at a 16-byte number key rather than a whole claim key.
 * Ids that share a hash share an index key: a lookup reads the records it
 * points at and keeps the claims whose id matches.  A record with several
 * claims has several keys in an index (DB_DBT_MULTIPLE), each value once.
 * This layout is schema 4 (issue 7): about half the disk of schema 3, which
 * kept one record per claim under numkey[32] user_id and indexes that held
 * that whole key; schema 5 (issue 21) keeps each claim's date to the
 * millisecond.  store_migrate.c converts an older store at open.
 *
 * A conflict key is the number key, then the user id as raw bytes with no
 * separator or NUL: it may contain any byte but NUL, and its length is the
 * key's length minus 16.  A watermark key needs the NUL separator: without
 * it, user "a" with a number key K would be the user-wide key of the user
 * "a" K.  With it, the first NUL ends the user id, so no user's per-number
 * key is another user's user-wide key.  Every index of numbers.db is
 * maintained by BDB itself (DB->associate), from the record alone, so they
 * can never disagree with their primary.  seen_date.db, the date index of
 * seen.db, is written by hand beside it in the same transaction: a seen id
 * is only ever added or pruned, and an associated index cost each add a
 * third search (store_events.c).  An index missing at open is created and
 * filled from its primary in the opening transaction.  A secondary that
 * exists is trusted: a release that does not know an index must never
 * write to a store that has it, which is what the schema version in
 * meta.db is for.
 *
 * Records are packed by hand, never struct images.  Integers are big-endian
 * so the files are portable between machines and so that the 8-byte expiry
 * and seen times sort in time order under BDB's default byte comparison
 * (times are non-negative: a negative expiry would sort last, and a negative
 * seen time is refused).  The first byte is a record format so that a later
 * release can read old records without a dump and reload.  Disk per claim
 * matters at scale: a claim in a number record is 10 bytes plus its ids,
 * with 'since' in 48 bits (milliseconds: the claim rules compare it with
 * event dates to the millisecond, see claims.c) and an expiry only while
 * pending.  Seen and watermark records are a bare 8-byte integer: there is
 * nothing else they could hold.
 *
 *   number, format 3:    format(1) last4(4, NUL padded), then per claim:
 *                        state(1) source(1) since(6, ms) [expires(8) if
 *                        pending] user_len(1, or 2 with the top bit set)
 *                        user_id enrol_len(1) enrol_id
 *                        (format 2, of schema 4, has since(4) in seconds;
 *                        it is still read, and schema 5 rewrites it)
 *   conflict, format 2:  format(1) since(8) last4(4) log_id_len(2) log_id
 *                        nholders(2) { holder_len(2) holder }...
 *                        removal(1) removal_at(8) removal_code(2)
 *                        method_len(2) method
 *                        (format 1, of schema 2, ends after the holders)
 *   verification:        format(1) reasons(1) queued(8)
 *   reservation window:  format(1) start(8) count(4)
 *
 * The numbers of claims (active, pending) and conflicts are counted once at
 * open and then kept in memory: each transaction notes how its puts and
 * deletes change them (the old record tells the old state), and commit
 * applies that, abort forgets it.  So store_count costs nothing and can
 * serve status requests and metrics scrapes as often as they come.
 *
 * Commits leave their log records in the log buffer (DB_TXN_NOSYNC: no
 * write, no fsync); store_flush makes a whole batch durable with one
 * log_flush, one write and one fsync, before its replies go out.  A commit
 * that no answer waited for may be lost in a crash, which is allowed: only
 * what was acknowledged must survive (I2).  Every caller that reports
 * success (HTTP, the status socket, the expiry timer, verifications) flushes
 * first.
 * The flusher does the same on a thread of its own, with its own handle on
 * the environment (as another process would have), so that the event loop
 * goes on handling the next batch during the fsync: see store_flush_async.
 * A log-stream request applies up to ~10,000 events in one transaction, tens
 * of thousands of page locks: the lock table is sized for that.
 *
 * The code is in four files that share store_int.h: this one (the
 * environment, transactions, the flusher, counts and meta.db),
 * store_claims.c (claims, their indexes, conflicts), store_events.c (what
 * the log stream and the Management API keep: seen log ids, watermarks,
 * verifications, reservation windows) and store_backup.c (hot backups).
 */
#include "config.h"

#include <sys/types.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "phoneclaimd.h"
#include "store_int.h"
#include "xmalloc.h"

#define STORE_CACHE_SIZE	(128 * 1024 * 1024)	/* cache_size default */
#define STORE_LOG_BUFSIZE	(1024 * 1024)
#define STORE_LOG_FILE_SIZE	(10 * 1024 * 1024)	/* log_file_size default */
#define STORE_GIB		(1024ULL * 1024 * 1024)

/*
 * Lock table: one log-stream request is one transaction of up to ~10,000
 * events, each a few puts on several btrees.  Page locks are counted once per
 * page and transaction, but a large request still touches tens of thousands
 * of pages; BDB's defaults (1,000 locks) would fail it with ENOMEM.
 */
#define STORE_LK_MAX_LOCKS	200000
#define STORE_LK_MAX_OBJECTS	200000
#define STORE_LK_MAX_LOCKERS	2000
/* And per claim thread: its handles (one locker each), its transactions. */
#define STORE_LK_THREAD_LOCKERS	64

#define STORE_META_SCHEMA	"schema_version"
#define STORE_META_COUNTS	"counts"

/* Opened in this order, closed in reverse: a secondary before its primary. */
static const struct {
	const char	*file;
	int		 dupsort;
} store_dbs[STORE_DB_COUNT] = {
	{ "numbers.db", 0 },
	{ "numbers_user.db", 1 },
	{ "numbers_expiry.db", 1 },
	{ "numbers_enrol.db", 1 },
	{ "conflicts.db", 0 },
	{ "seen.db", 0 },
	{ "seen_date.db", 1 },
	{ "watermarks.db", 0 },
	{ "verify.db", 0 },
	{ "limits.db", 0 },
	{ "meta.db", 0 }
};

/*
 * The flusher thread.  The loop asks (asks, under mu) and goes on; the
 * thread runs log_flush on its own environment handle, on a group's
 * master asks the replicas for every commit so far first (repl_ack_begin:
 * one round trip for all the batches committed since the last), and
 * writes the result to a pipe the loop watches, one result for each ask,
 * in order.  Alone, one flush at a time.  In a group the answers of the
 * replicas are waited for by a second thread, the acker (repl_ack_end,
 * the rounds in the order they began), while the flusher begins the next
 * round: up to STORE_FLUSH_DEPTH rounds are in flight at once, so that a
 * batch committed while a round waits does not wait for its end before
 * its own round begins.
 */
#define STORE_FLUSH_DEPTH	4

struct store_flushed {
	int		 ret;		/* of log_flush */
	int		 acked;		/* the replicas acknowledged */
};

struct store_round {
	struct repl_ack_round	 rd;
	int			 ret;	/* of log_flush */
};

struct store_flusher {
	DB_ENV		*env;
	pthread_t	 thread;
	pthread_t	 acker;
	int		 group;		/* the acker runs */
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	pthread_cond_t	 ack_cv;
	int		 asks;		/* asked, not yet begun */
	int		 quit;
	/* Under mu: rounds begun, waiting for the acker, oldest first. */
	struct store_round rounds[STORE_FLUSH_DEPTH];
	int		 first;
	int		 nrounds;
	/* The loop's. */
	int		 depth;		/* rounds in flight at most */
	int		 inflight;	/* asked and not yet answered */
	int		 fds[2];
	struct event	*ev;
	void		(*done)(int, void *);
	void		*arg;
};

static int	store_mkdir(const char *, char **);
static int	store_lock(struct store *, char **);
static int	store_open_env(struct store *, char **);
static int	store_reserve_regions(struct store *, char **);
static int	store_reserve_region(const char *, unsigned long long, char **);
static int	store_open_dbs(struct store *, char **);
static int	store_open_db(struct store *, DB_TXN *, enum store_db);
static int	store_check_keys(struct store *, DB_TXN *, char **, int *);
static int	store_check_schema(struct store *, char **);
static int	store_schema_get(struct store_txn *, long long *, char **);
static int	store_schema_ok(struct store *, const char *, long long *,
		    char **);
static int	store_schema_write(struct store_txn *);
static void	store_close_handles(struct store *);
static void	store_close_dbs(struct store *);
static void	store_lockout_met(struct store *);
static void	*store_flusher_main(void *);
static void	*store_flusher_acker(void *);
static void	store_flusher_answer(struct store_flusher *,
		    const struct store_flushed *);
static int	store_flusher_threads(struct store_flusher *);
static void	store_flusher_cb(evutil_socket_t, short, void *);
static void	store_errcall_cb(const DB_ENV *, const char *, const char *);
static void	store_event_cb(DB_ENV *, u_int32_t, void *);
static void	store_fail(struct store *, const char *);
static int	store_count_db(DB *, DB_TXN *, uint64_t *);
static int	store_count_init(struct store *, char **);
static int	store_flush_log(struct store *);
static int	store_txn_commit_to(struct store_txn *, int);
static int	store_count_all(struct store *, struct store_txn *,
		    struct store_counts *);
static void	store_count_set(struct store *, const struct store_counts *);
static void	store_count_save(struct store *);
static void	store_count_apply(struct store *, const struct store_txn *);

/* The secondaries, associated with their primary in this order. */
static const struct {
	enum store_db	 primary;
	enum store_db	 secondary;
	int		(*key_cb)(DB *, const DBT *, const DBT *, DBT *);
} store_indexes[] = {
	{ STORE_DB_NUMBERS, STORE_DB_NUMBERS_USER, store_user_key_cb },
	{ STORE_DB_NUMBERS, STORE_DB_NUMBERS_EXPIRY, store_expiry_key_cb },
	{ STORE_DB_NUMBERS, STORE_DB_NUMBERS_ENROL, store_enrol_key_cb }
};

/* The keys of the stores opened from now on: see store_set_keys. */
enum store_keys {
	STORE_KEYS_DEFAULT,	/* never set: a zero index key, no checks */
	STORE_KEYS_LOADED,	/* the hash key is loaded */
	STORE_KEYS_MISSING	/* there is no hash key yet */
};
static enum store_keys	store_keys = STORE_KEYS_DEFAULT;
static char		store_hash_check[HASH_CHECK_LEN + 1];
static const char	*store_key_file = "hash.key";
unsigned char		store_index_key[STORE_INDEX_KEY_LEN];

static uint64_t	store_cache_size = STORE_CACHE_SIZE;
static uint32_t	store_log_file_size = STORE_LOG_FILE_SIZE;
static int	store_threads = 1;

/*
 * The size of the cache of the stores opened from now on (cache_size): the
 * pages of every database share it, and with the log buffer and the lock
 * table it bounds the daemon's memory, whatever the number of claims.
 */
void
store_set_cache_size(uint64_t bytes)
{
	store_cache_size = bytes;
}

/*
 * How many threads run transactions in the stores opened from now on
 * (threads): with more than one, the environment is free-threaded
 * (DB_THREAD) and each thread but the loop has database handles of its
 * own, opened with the store (store_thread.c): as many sets as threads.
 */
void
store_set_threads(int n)
{
	store_threads = n;
}

/*
 * The size of each log file of the stores opened from now on
 * (log_file_size).  Checkpoints remove the log files that recovery no
 * longer needs, a whole file at a time: so the smaller the files, the less
 * log stays on disk between two checkpoints.
 */
void
store_set_log_file_size(uint32_t bytes)
{
	store_log_file_size = bytes;
}

/*
 * Say what the hash key is for the stores opened from now on.  index_key
 * (STORE_INDEX_KEY_LEN bytes, derived from the hash key by hash_index_key)
 * keys the user and enrolment indexes; check is hash_check's string, which
 * the store keeps in meta.db; key_file names the key in messages.  With
 * index_key NULL there is no key yet: a store that holds data is refused
 * at open.  Either way the open refuses a key that is not the store's
 * before it migrates or builds an index, which would key them wrongly.
 * The daemon calls this before store_open and again once it has created a
 * key; a program that never calls it gets a zero index key and no checks
 * (the store's own unit tests).
 */
void
store_set_keys(const unsigned char *index_key, const char *check,
    const char *key_file)
{
	store_key_file = key_file;
	if (index_key == NULL) {
		store_keys = STORE_KEYS_MISSING;
		explicit_bzero(store_index_key, sizeof store_index_key);
		store_hash_check[0] = '\0';
		return;
	}
	store_keys = STORE_KEYS_LOADED;
	memcpy(store_index_key, index_key, STORE_INDEX_KEY_LEN);
	snprintf(store_hash_check, sizeof store_hash_check, "%s", check);
}

/* Open (creating if needed) the store in dir; NULL and *cause on failure. */
struct store *
store_open(const char *dir, char **cause)
{
	struct store	*st;

	*cause = NULL;
	if (store_mkdir(dir, cause) != 0)
		return (NULL);
	st = xcalloc(1, sizeof *st);
	st->dir = xstrdup(dir);
	st->lock_fd = -1;
	st->loop = pthread_self();
	pthread_mutex_init(&st->counts_mu, NULL);
	st->db_create = DB_CREATE;
	/* In a replication group the databases open once the role is known. */
	if (store_lock(st, cause) != 0 ||
	    store_open_env(st, cause) != 0 ||
	    (repl_enabled() ? repl_start(st->env, cause) != 0 :
	    store_open_dbs(st, cause) != 0 ||
	    store_check_schema(st, cause) != 0 ||
	    store_count_init(st, cause) != 0 ||
	    (store_threads > 1 &&
	    store_threads_prepare(st, store_threads, cause) != 0))) {
		store_threads_close(st);
		store_close_handles(st);
		if (st->lock_fd != -1)
			close(st->lock_fd);
		pthread_mutex_destroy(&st->counts_mu);
		free(st->dir);
		free(st);
		return (NULL);
	}
	log_debug("store: opened %s", dir);
	return (st);
}

/*
 * Replication (repl.c): open the databases for a role.  The master may
 * create and upgrade them and keeps the counts as a single store does; a
 * replica only reads what replication brought (the files may not be there
 * yet: STORE_NOTFOUND, try again) and counts its records afresh, here and
 * at each store_recount, since replication changes them underneath.
 */
int
store_repl_open(struct store *st, int master, char **cause)
{
	struct store_txn	*txn;
	long long		 v;
	int			 r;

	*cause = NULL;
	st->db_create = master ? DB_CREATE : 0;
	/*
	 * A replica that becomes the master keeps its handles: only a
	 * rollback on a replica kills them, and closing them while repmgr
	 * settles the new role fails (its lockout kills their lockers).  If
	 * they turn out dead, reopen them.
	 */
	if (master && st->dbs_open && !st->failed) {
		if (store_check_schema(st, cause) == 0 &&
		    store_count_init(st, cause) == 0)
			return (STORE_OK);
		log_debug("store: reopening the databases for the master: %s",
		    *cause != NULL ? *cause : "dead handles");
		free(*cause);
		*cause = NULL;
	}
	store_repl_close(st);
	if (store_open_dbs(st, cause) != 0) {
		store_close_dbs(st);
		/* A wrong or missing hash key is fatal; missing files are not. */
		if (*cause != NULL && strstr(*cause, "hash key") != NULL)
			return (STORE_ERROR);
		return (STORE_NOTFOUND);
	}
	if (master) {
		if (store_check_schema(st, cause) != 0 ||
		    store_count_init(st, cause) != 0) {
			store_close_dbs(st);
			return (STORE_ERROR);
		}
		return (STORE_OK);
	}
	if (store_txn_begin(st, &txn) != STORE_OK)
		goto fail;
	if ((r = store_schema_get(txn, &v, cause)) == STORE_ERROR &&
	    *cause != NULL) {
		store_txn_abort(txn);
		store_close_dbs(st);
		return (STORE_ERROR);
	}
	store_txn_abort(txn);
	/* An older layout is the master's to upgrade: wait for it. */
	if (r != STORE_OK || v < STORE_SCHEMA_VERSION) {
		store_close_dbs(st);
		xasprintf(cause, "the replicated store in %s has no schema or "
		    "an older one: waiting for the master to upgrade it",
		    st->dir);
		return (STORE_NOTFOUND);
	}
	if (store_recount(st) != STORE_OK)
		goto fail;
	return (STORE_OK);
fail:
	store_close_dbs(st);
	xasprintf(cause, "cannot read the replicated store in %s", st->dir);
	return (STORE_NOTFOUND);
}

/* Close the databases (the role changed, or none is known). */
void
store_repl_close(struct store *st)
{
	if (st->dbs_open && st->counted && repl_writable() && !st->failed)
		store_count_save(st);
	st->counted = 0;
	store_close_dbs(st);
}

/* Count the records again (a replica's counts follow replication). */
int
store_recount(struct store *st)
{
	struct store_txn	*txn;
	struct store_counts	 c;
	int			 r;

	if ((r = store_txn_begin(st, &txn)) != STORE_OK)
		return (r);
	memset(&c, 0, sizeof c);
	r = store_count_all(st, txn, &c);
	store_txn_abort(txn);
	if (r == STORE_OK) {
		c.active = c.claims - c.pending;
		store_count_set(st, &c);
	}
	return (r);
}

/*
 * Take an exclusive lock on the state directory.  Recovery at open rebuilds
 * the shared regions, which would corrupt an environment that another
 * process (a second daemon on the same state_dir) is using.
 */
static int
store_lock(struct store *st, char **cause)
{
	char	*path;

	xasprintf(&path, "%s/phoneclaimd.lock", st->dir);
	st->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, STORE_FILE_MODE);
	if (st->lock_fd == -1) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		free(path);
		return (-1);
	}
	if (flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK)
			xasprintf(cause, "%s is in use by another process "
			    "(is phoneclaimd already running?)", st->dir);
		else
			xasprintf(cause, "%s: %s", path, strerror(errno));
		free(path);
		return (-1);
	}
	free(path);
	return (0);
}

/* Create the state directory if it is missing. */
static int
store_mkdir(const char *dir, char **cause)
{
	struct stat	sb;

	if (mkdir(dir, STORE_DIR_MODE) == 0)
		return (0);
	if (errno != EEXIST) {
		xasprintf(cause, "cannot create %s: %s", dir, strerror(errno));
		return (-1);
	}
	if (stat(dir, &sb) != 0) {
		xasprintf(cause, "%s: %s", dir, strerror(errno));
		return (-1);
	}
	if (!S_ISDIR(sb.st_mode)) {
		xasprintf(cause, "%s: not a directory", dir);
		return (-1);
	}
	return (0);
}

/* Configure and open the environment, running recovery. */
static int
store_open_env(struct store *st, char **cause)
{
	DB_ENV		*env;
	u_int32_t	 flags;
	int		 ret;

	if ((ret = db_env_create(&env, 0)) != 0) {
		xasprintf(cause, "cannot create a Berkeley DB environment: %s",
		    db_strerror(ret));
		return (-1);
	}
	st->env = env;
	env->app_private = st;
	env->set_errcall(env, store_errcall_cb);
	flags = DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG |
	    DB_INIT_MPOOL | DB_RECOVER;
	/* Transactions on several threads (store_thread.c). */
	if (store_threads > 1)
		flags |= DB_THREAD;
	if ((ret = env->set_event_notify(env, store_event_cb)) != 0 ||
	    (ret = repl_env_prepare(env, &flags)) != 0 ||
	    (ret = store_env_config(env, store_cache_size)) != 0 ||
	    (ret = env->set_lk_max_lockers(env, STORE_LK_MAX_LOCKERS +
	    STORE_LK_THREAD_LOCKERS * store_threads)) != 0 ||
	    (ret = env->open(env, st->dir, flags, STORE_FILE_MODE)) != 0) {
		if (ret == DB_RUNRECOVERY)
			xasprintf(cause, "recovery of the store in %s failed "
			    "(the messages above name the damaged file): "
			    "restore the state directory from a backup", st->dir);
		else
			xasprintf(cause, "cannot open Berkeley DB environment "
			    "in %s: %s", st->dir, db_strerror(ret));
		return (-1);
	}
	st->env_open = 1;
	return (store_reserve_regions(st, cause));
}

/*
 * Give the region files (__db.NNN) their disk blocks now, up to the size
 * each one may grow to.  Berkeley DB maps them at that size but extends a
 * file by writing its last byte: the rest is a hole, and the first touch of
 * a page in a hole on a full file system is SIGBUS, not ENOSPC (found by
 * tests/integration/test_faults.py: a full state directory killed the
 * daemon as soon as the cache grew).  With the blocks reserved, a full disk
 * only fails log and page writes, which return an error.  The size a region
 * may grow to is the length of its mapping, which only /proc/self/maps
 * tells; the blocks are reserved past the end of the file (KEEP_SIZE), so
 * Berkeley DB sees the sizes it expects.
 */
static int
store_reserve_regions(struct store *st, char **cause)
{
	FILE			*f;
	char			*real, *line = NULL, *path;
	size_t			 linesize = 0, dlen;
	unsigned long long	 start, end;
	int			 n, rv = 0;

	if ((real = realpath(st->dir, NULL)) == NULL) {
		xasprintf(cause, "%s: %s", st->dir, strerror(errno));
		return (-1);
	}
	dlen = strlen(real);
	if ((f = fopen("/proc/self/maps", "re")) == NULL) {
		log_warn("store: /proc/self/maps: cannot reserve disk space "
		    "for the regions");
		free(real);
		return (0);
	}
	while (rv == 0 && getline(&line, &linesize, f) != -1) {
		line[strcspn(line, "\n")] = '\0';
		/* start-end perms offset dev inode path */
		if (sscanf(line, "%llx-%llx %*s %*s %*s %*s %n", &start, &end,
		    &n) != 2 || end <= start)
			continue;
		path = line + n;
		if (strncmp(path, real, dlen) != 0 ||
		    strncmp(path + dlen, "/__db.", 6) != 0)
			continue;
		rv = store_reserve_region(path, end - start, cause);
	}
	free(line);
	fclose(f);
	free(real);
	return (rv);
}

/* Reserve len bytes of disk for one region file (both handles map it). */
static int
store_reserve_region(const char *path, unsigned long long len, char **cause)
{
	int	fd, r;

	if ((fd = open(path, O_RDWR | O_CLOEXEC)) == -1) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	r = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)len);
	if (r != 0 && (errno == EOPNOTSUPP || errno == ENOSYS)) {
		/* Nothing better to do on such a file system. */
		log_debug("store: %s: cannot reserve disk space: %s", path,
		    strerror(errno));
		r = 0;
	} else if (r != 0)
		xasprintf(cause, "cannot reserve %llu bytes of disk for %s: %s",
		    len, path, strerror(errno));
	close(fd);
	return (r == 0 ? 0 : -1);
}

/*
 * Size an environment's cache, log and lock table before it is opened.  A
 * log file must hold at least four log buffers: a small log_file_size
 * takes a smaller buffer.
 */
int
store_env_config(DB_ENV *env, uint64_t cache)
{
	uint32_t	bsize = STORE_LOG_BUFSIZE;
	int		ret;

	if (bsize > store_log_file_size / 4)
		bsize = store_log_file_size / 4;
	if ((ret = env->set_cachesize(env, (u_int32_t)(cache / STORE_GIB),
	    (u_int32_t)(cache % STORE_GIB), 1)) != 0 ||
	    (ret = env->set_lg_bsize(env, bsize)) != 0 ||
	    (ret = env->set_lg_max(env, store_log_file_size)) != 0 ||
	    (ret = env->set_lk_detect(env, DB_LOCK_DEFAULT)) != 0 ||
	    (ret = env->set_lk_max_locks(env, STORE_LK_MAX_LOCKS)) != 0 ||
	    (ret = env->set_lk_max_objects(env, STORE_LK_MAX_OBJECTS)) != 0)
		return (ret);
	return (env->set_lk_max_lockers(env, STORE_LK_MAX_LOCKERS));
}

/*
 * Open every database and associate the secondaries, in one transaction.
 * DB_CREATE on associate fills an empty secondary from its primary (and
 * store_seen_index_build the seen index): that is how an index added by a
 * later release, or lost, is built on an older store.
 */
static int
store_open_dbs(struct store *st, char **cause)
{
	DB		*pdb, *sdb;
	DB_TXN		*tid;
	const char	*what = "databases";
	size_t		 i;
	int		 ret, each = repl_enabled();

	/*
	 * Alone, one transaction opens (or creates) every database.  In a
	 * group, repmgr's threads work in the environment meanwhile (a new
	 * master walks every file to copy it to a new member): each open
	 * commits on its own, and the keys and indexes follow in a
	 * transaction that never waits for a lock.  (With every open in one
	 * transaction, a new master's open could be chosen to break a lock
	 * deadlock with that walk; closing the handles of the aborted
	 * transaction then failed the same way, and the next open hung.)
	 */
	if (each) {
		for (i = 0; i < STORE_DB_COUNT; i++) {
			what = store_dbs[i].file;
			if ((ret = store_open_db(st, NULL, i)) != 0)
				goto failed;
		}
	}
	if ((ret = st->env->txn_begin(st->env, NULL, &tid,
	    each ? DB_TXN_NOWAIT : 0)) != 0) {
		xasprintf(cause, "cannot begin a transaction in %s: %s",
		    st->dir, db_strerror(ret));
		return (-1);
	}
	for (i = 0; !each && i < STORE_DB_COUNT; i++) {
		what = store_dbs[i].file;
		if ((ret = store_open_db(st, tid, i)) != 0)
			goto fail;
	}
	what = "meta.db";
	if (store_check_keys(st, tid, cause, &ret) != 0) {
		if (ret != 0)
			goto fail;
		tid->abort(tid);
		return (-1);
	}
	for (i = 0; i < sizeof store_indexes / sizeof store_indexes[0]; i++) {
		pdb = st->db[store_indexes[i].primary];
		sdb = st->db[store_indexes[i].secondary];
		what = store_dbs[store_indexes[i].secondary].file;
		ret = pdb->associate(pdb, tid, sdb, store_indexes[i].key_cb,
		    st->db_create);
		if (ret != 0)
			goto fail;
	}
	what = store_dbs[STORE_DB_SEEN_DATE].file;
	if (st->db_create && (ret = store_seen_index_build(st, tid)) != 0)
		goto fail;
	what = "databases";
	if ((ret = tid->commit(tid, DB_TXN_SYNC)) != 0)
		goto failed;
	st->dbs_open = 1;
	return (0);

fail:
	tid->abort(tid);
failed:
	xasprintf(cause, "cannot open %s in %s: %s", what, st->dir,
	    db_strerror(ret));
	return (-1);
}

/*
 * Open a set of handles on the open databases for a thread other than
 * the loop (store_thread.c): every database, each secondary associated
 * with its primary, nothing created.  0 or a Berkeley DB error; on error
 * the caller closes what was opened.
 */
int
store_handles_open(struct store *st, DB **db, db_mutex_t *mu)
{
	size_t	i;
	int	ret;

	for (i = 0; i < STORE_DB_COUNT; i++) {
		if ((ret = db_create(&db[i], st->env, 0)) != 0)
			return (ret);
		if (store_dbs[i].dupsort &&
		    (ret = db[i]->set_flags(db[i], DB_DUPSORT)) != 0)
			return (ret);
		if ((ret = db[i]->open(db[i], NULL, store_dbs[i].file, NULL,
		    DB_BTREE, DB_AUTO_COMMIT, STORE_FILE_MODE)) != 0)
			return (ret);
		mu[i] = store_unthread(db[i]);
	}
	for (i = 0; i < sizeof store_indexes / sizeof store_indexes[0]; i++) {
		ret = db[store_indexes[i].primary]->associate(
		    db[store_indexes[i].primary], NULL,
		    db[store_indexes[i].secondary], store_indexes[i].key_cb, 0);
		if (ret != 0)
			return (ret);
	}
	return (0);
}

/* Close a set of handles of store_handles_open, secondaries first. */
void
store_handles_close(DB **db, db_mutex_t *mu)
{
	int	i;

	for (i = STORE_DB_COUNT - 1; i >= 0; i--) {
		if (db[i] == NULL)
			continue;
		store_rethread(db[i], mu[i]);
		(void)db[i]->close(db[i], 0);
		db[i] = NULL;
	}
}

/* Create and open one database of the table. */
static int
store_open_db(struct store *st, DB_TXN *tid, enum store_db which)
{
	DB	*db;
	int	 ret;

	if ((ret = db_create(&db, st->env, 0)) != 0)
		return (ret);
	st->db[which] = db;
	if (store_dbs[which].dupsort &&
	    (ret = db->set_flags(db, DB_DUPSORT)) != 0)
		return (ret);
	ret = db->open(db, tid, store_dbs[which].file, NULL, DB_BTREE,
	    st->db_create | (tid == NULL ? DB_AUTO_COMMIT : 0),
	    STORE_FILE_MODE);
	if (ret == 0)
		st->db_mutex[which] = store_unthread(db);
	return (ret);
}

/*
 * repmgr (and threads > 1) needs DB_THREAD on the environment, and
 * Berkeley DB then opens every database free-threaded, which demands
 * allocated DBTs on every read.  Each handle stays on one thread (the
 * loop's, or a claim thread's set, store_thread.c):
 * their handle mutex is what makes them "threaded" (DB_IS_THREADED), so
 * keep it aside while they are open; store_rethread gives it back for
 * close to free.  Returns the mutex kept aside (0: none).
 */
db_mutex_t
store_unthread(DB *db)
{
	db_mutex_t	m;
	u_int32_t	flags = 0;

	if (db->dbenv->get_open_flags(db->dbenv, &flags) != 0 ||
	    (flags & DB_THREAD) == 0)
		return (0);
	m = db->mutex;
	db->mutex = 0;
	return (m);
}

/* Give a handle back the mutex that store_unthread kept aside. */
void
store_rethread(DB *db, db_mutex_t m)
{
	if (m != 0)
		db->mutex = m;
}

/*
 * Check the keys the store is opened with against what it holds, before
 * anything reads or builds an index or migrates: the hash key check in
 * meta.db must be the loaded key's, and a store with data needs a key.
 * 0, or -1 and *cause (naming the key file), or a Berkeley DB error.
 */
static int
store_check_keys(struct store *st, DB_TXN *tid, char **cause, int *dberr)
{
	DB		*meta = st->db[STORE_DB_META];
	DB		*num = st->db[STORE_DB_NUMBERS];
	unsigned char	 k[NUMKEY_LEN];
	DBT		 key, data;
	size_t		 len;
	int		 ret, stored, data_held;

	*dberr = 0;
	if (store_keys == STORE_KEYS_DEFAULT)
		return (0);
	store_dbt(&key, STORE_META_HASH_CHECK, strlen(STORE_META_HASH_CHECK));
	memset(&data, 0, sizeof data);
	ret = meta->get(meta, tid, &key, &data, 0);
	if (ret != 0 && ret != DB_NOTFOUND)
		return (*dberr = ret);
	stored = ret == 0;
	if (store_keys == STORE_KEYS_LOADED) {
		if (stored && (data.size != strlen(store_hash_check) ||
		    memcmp(data.data, store_hash_check, data.size) != 0)) {
			xasprintf(cause, "hash key %s is not the key the store "
			    "in %s was made with: restore the right key",
			    store_key_file, st->dir);
			return (-1);
		}
		return (0);
	}
	ret = store_end_key(num, tid, DB_FIRST, k, sizeof k, &len);
	if (ret != 0 && ret != DB_NOTFOUND && ret != DB_BUFFER_SMALL)
		return (*dberr = ret);
	data_held = ret != DB_NOTFOUND || store_file_exists(st, "claims.db");
	if (stored || data_held) {
		xasprintf(cause, "hash key %s is missing, but the store in %s "
		    "holds data keyed by it: restore the key (a new key would "
		    "orphan every claim)", store_key_file, st->dir);
		return (-1);
	}
	return (0);
}

/*
 * Read the first or the last key of db (op DB_FIRST or DB_LAST) into buf,
 * of size bytes, and its length into *len: 0, DB_NOTFOUND if db is empty,
 * DB_BUFFER_SMALL if the key is longer than size, or another error.
 */
int
store_end_key(DB *db, DB_TXN *tid, u_int32_t op, void *buf, size_t size,
    size_t *len)
{
	DBC	*dbc;
	DBT	 key, data;
	int	 ret, r;

	if ((ret = db->cursor(db, tid, &dbc, 0)) != 0)
		return (ret);
	memset(&key, 0, sizeof key);
	key.data = buf;
	key.ulen = (u_int32_t)size;
	key.flags = DB_DBT_USERMEM;
	memset(&data, 0, sizeof data);
	data.flags = DB_DBT_PARTIAL;
	if ((ret = dbc->get(dbc, &key, &data, op)) == 0)
		*len = key.size;
	if ((r = dbc->close(dbc)) != 0 && (ret == 0 || ret == DB_NOTFOUND))
		ret = r;
	return (ret);
}

/*
 * Write the schema version into a new store, raise an older one to ours
 * (the open has just built any index it lacked), refuse a newer one.
 */
static int
store_check_schema(struct store *st, char **cause)
{
	struct store_txn	*txn;
	long long		 v;
	int			 r;

	if (store_txn_begin(st, &txn) != STORE_OK)
		goto fail;
	if ((r = store_schema_get(txn, &v, cause)) == STORE_ERROR &&
	    *cause != NULL) {
		store_txn_abort(txn);
		return (-1);
	}
	if ((r == STORE_OK && v < STORE_SCHEMA_VERSION) ||
	    (r == STORE_NOTFOUND && store_file_exists(st, "claims.db"))) {
		/* An older layout: migrate, in transactions of its own. */
		store_txn_abort(txn);
		return (store_migrate(st, v, cause));
	}
	if (r == STORE_NOTFOUND)
		r = store_schema_write(txn);
	if (r != STORE_OK) {
		store_txn_abort(txn);
		goto fail;
	}
	if (store_txn_commit_local(txn) != STORE_OK ||
	    store_flush_log(st) != STORE_OK)
		goto fail;
	return (0);

fail:
	xasprintf(cause, "cannot read or write the metadata in %s", st->dir);
	return (-1);
}

/*
 * Read the schema version in a transaction: STORE_OK and *vp, or
 * STORE_NOTFOUND (none yet, *vp 0), or STORE_ERROR with *cause set if it
 * is newer than ours or not a version, or another failure (no cause).
 */
static int
store_schema_get(struct store_txn *txn, long long *vp, char **cause)
{
	char	*value = NULL;
	int	 r;

	*vp = 0;
	r = store_meta_get(txn, STORE_META_SCHEMA, &value);
	if (r == STORE_OK && store_schema_ok(txn->st, value, vp, cause) != 0)
		r = STORE_ERROR;
	free(value);
	return (r);
}

/* Check a stored schema version against ours. */
static int
store_schema_ok(struct store *st, const char *value, long long *vp,
    char **cause)
{
	char		*end;
	long long	 v;

	errno = 0;
	v = strtoll(value, &end, 10);
	if (*value == '\0' || *end != '\0' || errno != 0 || v < 1) {
		xasprintf(cause, "%s: unreadable %s in meta.db", st->dir,
		    STORE_META_SCHEMA);
		return (-1);
	}
	if (v > STORE_SCHEMA_VERSION) {
		xasprintf(cause, "%s: store schema version %lld is newer than "
		    "this phoneclaimd supports (%d)", st->dir, v,
		    STORE_SCHEMA_VERSION);
		return (-1);
	}
	*vp = v;
	return (0);
}

/* Write our schema version into a new store. */
static int
store_schema_write(struct store_txn *txn)
{
	char	version[32];
	int	r;

	snprintf(version, sizeof version, "%d", STORE_SCHEMA_VERSION);
	if ((r = store_meta_put(txn, STORE_META_SCHEMA, version)) != STORE_OK)
		return (r);
	log_info("store: created in %s, schema version %s", txn->st->dir,
	    version);
	return (STORE_OK);
}

/* 1 if a file of that name is in the state directory. */
int
store_file_exists(struct store *st, const char *file)
{
	struct stat	 sb;
	char		*path;
	int		 r;

	xasprintf(&path, "%s/%s", st->dir, file);
	r = stat(path, &sb) == 0;
	free(path);
	return (r);
}

/* Close the store: databases, a final checkpoint, the environment. */
void
store_close(struct store *st)
{
	if (st == NULL)
		return;
	store_backup_stop(st);
	store_flusher_stop(st);
	store_threads_close(st);
	store_close_handles(st);
	if (st->lock_fd != -1)
		close(st->lock_fd);
	pthread_mutex_destroy(&st->counts_mu);
	free(st->dir);
	free(st);
}

/*
 * Close the databases in reverse order, then checkpoint so that the next
 * start's recovery has almost nothing to replay, then close the environment.
 * Only close is allowed to touch BDB after a failure.
 */
static void
store_close_handles(struct store *st)
{
	int	ret;

	/* An opening in flight ends first: then the handles are ours. */
	store_opener_stop(st);
	if (st->env_open && !st->failed && st->counted && st->dbs_open &&
	    repl_writable())
		store_count_save(st);
	store_close_dbs(st);
	store_closer_stop(st);
	if (st->env == NULL)
		return;
	if (st->env_open && !st->failed && repl_writable()) {
		ret = st->env->txn_checkpoint(st->env, 0, 0, DB_FORCE);
		if (ret != 0)
			log_warnx("store: final checkpoint: %s",
			    db_strerror(ret));
	}
	repl_stop();
	if ((ret = st->env->close(st->env, 0)) != 0 && !st->failed)
		log_warnx("store: closing the environment: %s",
		    db_strerror(ret));
	st->env = NULL;
}

/* Close the databases, in reverse order (in a group, on the closer). */
static void
store_close_dbs(struct store *st)
{
	int	i, ret;

	st->dbs_open = 0;
	if (repl_enabled() && store_closer_hand(st) == 0)
		return;
	for (i = STORE_DB_COUNT - 1; i >= 0; i--) {
		if (st->db[i] == NULL)
			continue;
		/* A panicked environment frees nothing: forget the handle. */
		if (st->failed) {
			st->db[i] = NULL;
			continue;
		}
		store_rethread(st->db[i], st->db_mutex[i]);
		st->db_mutex[i] = 0;
		ret = st->db[i]->close(st->db[i], 0);
		if (ret != 0 && !st->failed)
			log_warnx("store: closing %s: %s", store_dbs[i].file,
			    db_strerror(ret));
		st->db[i] = NULL;
	}
}

/*
 * A group's role change reopens the store on the opener (store_role.c).
 * An open, or a read in a transaction, that meets repmgr's lockout of the
 * API fails with DB_LOCK_DEADLOCK (and a lock deadlock with repmgr's own
 * work the same way; a dead handle too): between store_lockout_begin and
 * store_lockout_end such a failure is no fault of the store, and the
 * caller tries again later instead of giving the store up.
 */
void
store_lockout_begin(struct store *st)
{
	st->lockout = 1;
}

/*
 * The reopening is over: return 1 if it met the lockout (or a deadlock),
 * after closing the databases again (the caller tries later), else 0.
 */
int
store_lockout_end(struct store *st)
{
	int	met = st->lockout == 2;

	if (met) {
		st->counted = 0;
		store_close_dbs(st);
	}
	st->lockout = 0;
	return (met);
}

/* Register the function called once when the environment fails. */
void
store_set_fail_cb(struct store *st, void (*cb)(void *), void *arg)
{
	st->fail_cb = cb;
	st->fail_arg = arg;
}

/*
 * Return 1 while the databases are open (always, without replication)
 * and not being opened on the opener (store_role.c).
 */
int
store_ready(struct store *st)
{
	return (store_dbs_mine(st) && st->dbs_open);
}

/* Return 1 once the environment has failed and needs recovery. */
int
store_failed(struct store *st)
{
	return (st->failed);
}

/*
 * Pass Berkeley DB's error messages to the log (they hold no numbers).  After
 * a failure every call repeats the panic message: the failure is logged once.
 */
static void
store_errcall_cb(const DB_ENV *env, const char *prefix, const char *msg)
{
	const struct store	*st = env->app_private;

	(void)prefix;
	if (st != NULL && st->failed)
		return;
	/*
	 * A master copying its store to a new member reads every file of the
	 * state directory: that the lock file or the dead-letter file is no
	 * database is no news.
	 */
	if (repl_enabled() && strstr(msg, "fop_read_meta") != NULL &&
	    strstr(msg, "unexpected file type or format") != NULL) {
		log_debug("store: Berkeley DB: %s", msg);
		return;
	}
	log_warnx("store: Berkeley DB: %s", msg);
}

/* Catch a panic of the environment. */
static void
store_event_cb(DB_ENV *env, u_int32_t event, void *info)
{
	struct store	*st = env->app_private;

	if (event != DB_EVENT_PANIC && event != DB_EVENT_WRITE_FAILED) {
		repl_event(env, event, info);
		return;
	}
	if (event == DB_EVENT_PANIC && st != NULL)
		store_fail(st, "panic");
	else if (event == DB_EVENT_WRITE_FAILED)
		log_warnx("store: a write to stable storage failed");
}

/*
 * Mark the store failed: log, stop replication's calls into Berkeley DB
 * and call the callback, once.  It may run on any thread (a panic seen by
 * repmgr's or the flusher's).
 */
static void
store_fail(struct store *st, const char *what)
{
	if (atomic_exchange(&st->failed, 1) != 0)
		return;
	repl_store_failed();
	/* During the opening recovery, a restart would fail the same way. */
	if (!st->env_open)
		log_warnx("store: %s while opening %s", what, st->dir);
	else
		log_warnx("store: %s: the Berkeley DB environment has failed; "
		    "a restart will run recovery", what);
	if (st->fail_cb != NULL)
		st->fail_cb(st->fail_arg);
}

/* A reopening (store_lockout_begin) met repmgr's lockout, or a deadlock. */
static void
store_lockout_met(struct store *st)
{
	int	reopening = 1;

	(void)atomic_compare_exchange_strong(&st->lockout, &reopening, 2);
}

/* Turn a Berkeley DB return value into a STORE_* code. */
int
store_result(struct store *st, int ret, const char *what)
{
	switch (ret) {
	case 0:
		return (STORE_OK);
	case DB_NOTFOUND:
	case DB_KEYEMPTY:
		return (STORE_NOTFOUND);
	case DB_LOCK_DEADLOCK:
	case DB_LOCK_NOTGRANTED:
		store_lockout_met(st);
		log_debug("store: %s: %s", what, db_strerror(ret));
		return (STORE_RETRY);
	case DB_RUNRECOVERY:
		store_fail(st, what);
		return (STORE_ERROR);
	case DB_REP_LOCKOUT:
		/* A role change or a replica synchronising (repl.c). */
		store_lockout_met(st);
		log_debug("store: %s: %s", what, db_strerror(ret));
		return (STORE_ERROR);
	case DB_REP_HANDLE_DEAD:
		/* Replication rolled back under the handles: reopen them. */
		log_info("store: %s: %s", what, db_strerror(ret));
		/* The opener's opening is tried again (store_lockout_end). */
		if (store_on_opener())
			store_lockout_met(st);
		else
			repl_handles_dead();
		return (STORE_ERROR);
	default:
		log_warnx("store: %s: %s", what, db_strerror(ret));
		return (STORE_ERROR);
	}
}

/* Close a cursor after a scan that ended with ret; NOTFOUND is the end. */
int
store_cursor_done(struct store *st, DBC *dbc, int ret, const char *what)
{
	int	cret, r;

	if (ret == DB_NOTFOUND)
		ret = 0;
	cret = dbc->close(dbc);
	if (ret == 0)
		ret = cret;
	r = store_result(st, ret, what);
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Begin a transaction. */
int
store_txn_begin(struct store *st, struct store_txn **txnp)
{
	DB_TXN	*tid;
	int	 r;

	*txnp = NULL;
	if (st->failed || !store_ready(st))
		return (STORE_ERROR);
	if (store_thread_enter(st) != 0)
		return (STORE_ERROR);
	r = store_result(st, st->env->txn_begin(st->env, NULL, &tid, 0),
	    "begin transaction");
	if (r != STORE_OK)
		return (r == STORE_NOTFOUND ? STORE_ERROR : r);
	*txnp = xcalloc(1, sizeof **txnp);
	(*txnp)->st = st;
	(*txnp)->tid = tid;
	return (STORE_OK);
}

/*
 * Begin a child of parent, on the parent's thread.  Its changes become
 * the parent's when it commits, and nobody else's until the parent does:
 * the counts take them, and the group is asked to acknowledge them, at
 * the parent's commit only.  Aborted, it takes back its own changes and
 * leaves the parent's.  Children see the changes of the children
 * committed before them, and never wait for the parent's locks.
 */
int
store_txn_begin_child(struct store_txn *parent, struct store_txn **txnp)
{
	struct store	*st = parent->st;
	DB_TXN		*tid;
	int		 r;

	*txnp = NULL;
	if (st->failed)
		return (STORE_ERROR);
	r = store_result(st, st->env->txn_begin(st->env, parent->tid, &tid,
	    0), "begin a child transaction");
	if (r != STORE_OK)
		return (r == STORE_NOTFOUND ? STORE_ERROR : r);
	*txnp = xcalloc(1, sizeof **txnp);
	(*txnp)->st = st;
	(*txnp)->tid = tid;
	(*txnp)->parent = parent;
	return (STORE_OK);
}

/*
 * Commit: the log records stay in the buffer, store_flush writes and syncs
 * them for the whole batch.  The handle is gone afterwards whatever the
 * result, so a failed commit is STORE_ERROR, never STORE_RETRY.  The
 * counts take the transaction's changes only once it has committed.
 * In a replication group the commit waits for no acknowledgement (repmgr
 * has none to wait for): the flush of the batch does (repl_ack.c).
 */
int
store_txn_commit(struct store_txn *txn)
{
	return (store_txn_commit_to(txn, 1));
}

/* Commit; with answered, a group's acknowledgements must cover it. */
static int
store_txn_commit_to(struct store_txn *txn, int answered)
{
	struct store	*st = txn->st;
	DB_TXN		*tid = txn->tid;
	int		 r;

	if (st->failed) {
		free(txn);
		(void)tid->abort(tid);
		return (STORE_ERROR);
	}
	if (txn->parent != NULL) {
		r = store_result(st, tid->commit(tid, 0), "commit a child");
		if (r == STORE_OK) {
			txn->parent->d_claims += txn->d_claims;
			txn->parent->d_active += txn->d_active;
			txn->parent->d_pending += txn->d_pending;
			txn->parent->d_conflicts += txn->d_conflicts;
			txn->parent->d_verify += txn->d_verify;
		}
		free(txn);
		return (r == STORE_OK ? STORE_OK : STORE_ERROR);
	}
	r = store_result(st, tid->commit(tid, DB_TXN_NOSYNC), "commit");
	if (r == STORE_OK) {
		if (answered && repl_enabled() && repl_writable())
			repl_ack_committed();
		store_count_apply(st, txn);
	}
	free(txn);
	return (r == STORE_OK ? STORE_OK : STORE_ERROR);
}

/*
 * Commit the store's own bookkeeping (the schema and the counts at open,
 * the hash key's check value of a new store), which answers no request:
 * committed here is enough, and store_flush_local makes it durable.  A
 * new master must not give up its store because a replica left as it
 * took over, or is still being copied: the acknowledgements of the
 * replicas do not need to cover it.
 */
int
store_txn_commit_local(struct store_txn *txn)
{
	return (store_txn_commit_to(txn, 0));
}

/* A transaction committed: its changes to the counts hold. */
static void
store_count_apply(struct store *st, const struct store_txn *txn)
{
	pthread_mutex_lock(&st->counts_mu);
	st->counts.claims += (uint64_t)txn->d_claims;
	st->counts.active += (uint64_t)txn->d_active;
	st->counts.pending += (uint64_t)txn->d_pending;
	st->counts.conflicts += (uint64_t)txn->d_conflicts;
	st->counts.verify += (uint64_t)txn->d_verify;
	pthread_mutex_unlock(&st->counts_mu);
}

/*
 * Abort a transaction, and with it its changes to the counts; releasing
 * the handle is allowed after a failure.
 */
void
store_txn_abort(struct store_txn *txn)
{
	struct store	*st = txn->st;
	DB_TXN		*tid = txn->tid;
	int		 ret;

	free(txn);
	ret = tid->abort(tid);
	if (!st->failed)
		(void)store_result(st, ret, "abort");
}

/*
 * Make every commit so far durable: write and sync the log and, on a
 * group's master, wait for the replicas' acknowledgements (on the
 * caller's thread: the loop's callers are rare ones, the requests' answers
 * wait on the flusher's thread, see store_flush_async).
 */
int
store_flush(struct store *st)
{
	if (store_flush_log(st) != STORE_OK)
		return (STORE_ERROR);
	if (repl_ack_wait() != 0) {
		log_warnx("store: commit not acknowledged by enough replicas");
		return (STORE_ERROR);
	}
	return (STORE_OK);
}

/* Write and sync the log, without waiting for any acknowledgement. */
int
store_flush_local(struct store *st)
{
	return (store_flush_log(st));
}

/* Write and sync the log. */
static int
store_flush_log(struct store *st)
{
	int	r;

	if (st->failed)
		return (STORE_ERROR);
	r = store_result(st, st->env->log_flush(st->env, NULL), "log flush");
	return (r == STORE_OK ? STORE_OK : STORE_ERROR);
}

/*
 * Start the flusher thread: its own handle joins the environment, and its
 * answers arrive on base, where done(ok, arg) is called for each.
 */
int
store_flusher_start(struct store *st, struct event_base *base,
    void (*done)(int, void *), void *arg, char **cause)
{
	struct store_flusher	*f;
	int			 ret;

	f = xcalloc(1, sizeof *f);
	f->fds[0] = f->fds[1] = -1;
	f->done = done;
	f->arg = arg;
	if ((ret = db_env_create(&f->env, 0)) == 0) {
		/* Its messages go to the log, like the main handle's. */
		f->env->app_private = st;
		f->env->set_errcall(f->env, store_errcall_cb);
	}
	if (ret != 0 ||
	    (ret = f->env->open(f->env, st->dir, DB_JOINENV, 0)) != 0) {
		xasprintf(cause, "flusher: cannot join the environment: %s",
		    db_strerror(ret));
		goto fail;
	}
	if (pipe2(f->fds, O_CLOEXEC) == -1) {
		xasprintf(cause, "flusher: pipe: %s", strerror(errno));
		goto fail;
	}
	if ((f->ev = event_new(base, f->fds[0], EV_READ | EV_PERSIST,
	    store_flusher_cb, st)) == NULL || event_add(f->ev, NULL) != 0) {
		xasprintf(cause, "flusher: cannot watch its pipe");
		goto fail;
	}
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->cv, NULL);
	pthread_cond_init(&f->ack_cv, NULL);
	if ((ret = store_flusher_threads(f)) != 0) {
		pthread_cond_destroy(&f->ack_cv);
		pthread_cond_destroy(&f->cv);
		pthread_mutex_destroy(&f->mu);
		xasprintf(cause, "flusher: pthread_create: %s", strerror(ret));
		goto fail;
	}
	st->flusher = f;
	return (0);

fail:
	if (f->ev != NULL)
		event_free(f->ev);
	if (f->fds[0] != -1)
		close(f->fds[0]);
	if (f->fds[1] != -1)
		close(f->fds[1]);
	if (f->env != NULL)
		(void)f->env->close(f->env, 0);
	free(f);
	return (-1);
}

/*
 * The flusher thread, and in a group the acker (the rounds overlap); an
 * error of pthread_create, with no thread left running.
 */
static int
store_flusher_threads(struct store_flusher *f)
{
	int	ret;

	f->group = repl_enabled();
	f->depth = f->group ? STORE_FLUSH_DEPTH : 1;
	if ((ret = worker_thread(&f->thread, store_flusher_main, f)) != 0)
		return (ret);
	if (!f->group ||
	    (ret = worker_thread(&f->acker, store_flusher_acker, f)) == 0)
		return (0);
	pthread_mutex_lock(&f->mu);
	f->quit = 1;
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->thread, NULL);
	return (ret);
}

/* Stop the flusher's threads (after their flush in flight) and free it. */
void
store_flusher_stop(struct store *st)
{
	struct store_flusher	*f = st->flusher;

	if (f == NULL)
		return;
	pthread_mutex_lock(&f->mu);
	f->quit = 1;
	pthread_cond_signal(&f->cv);
	pthread_cond_signal(&f->ack_cv);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->thread, NULL);
	if (f->group)
		pthread_join(f->acker, NULL);
	pthread_cond_destroy(&f->ack_cv);
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	event_free(f->ev);
	close(f->fds[0]);
	close(f->fds[1]);
	(void)f->env->close(f->env, 0);
	free(f);
	st->flusher = NULL;
}

/*
 * Ask the flusher to make every commit so far durable; its answer comes
 * through the done callback, the answers in the order of the asks.  0 if
 * asked, 1 if as many flushes as the flusher takes are in flight (the
 * caller waits for an answer and asks again), -1 if there is no flusher.
 */
int
store_flush_async(struct store *st)
{
	struct store_flusher	*f = st->flusher;

	if (f == NULL || st->failed)
		return (-1);
	if (f->inflight >= f->depth)
		return (1);
	f->inflight++;
	pthread_mutex_lock(&f->mu);
	f->asks++;
	pthread_mutex_unlock(&f->mu);
	/*
	 * Signalled after the unlock: a flusher woken under the lock would
	 * wake only to wait for the mutex, and the unlock would need a
	 * second system call to wake it again.  The ask is counted under the
	 * lock, so the flusher cannot miss it.
	 */
	pthread_cond_signal(&f->cv);
	return (0);
}

/*
 * The thread: when asked, ask the replicas and flush; answer through the
 * pipe, or in a group hand the round to the acker.
 */
static void *
store_flusher_main(void *arg)
{
	struct store_flusher	*f = arg;
	struct store_flushed	 res;
	struct store_round	 r;

	pthread_mutex_lock(&f->mu);
	for (;;) {
		while (f->asks == 0 && !f->quit)
			pthread_cond_wait(&f->cv, &f->mu);
		if (f->quit)
			break;
		f->asks--;
		pthread_mutex_unlock(&f->mu);
		repl_ack_begin(&r.rd);
		r.ret = f->env->log_flush(f->env, NULL);
		if (!f->group) {
			res.ret = r.ret;
			res.acked = repl_ack_end(&r.rd) == 0;
			store_flusher_answer(f, &res);
		}
		pthread_mutex_lock(&f->mu);
		if (f->group) {
			/* No more rounds than asks in flight: there is room. */
			f->rounds[(f->first + f->nrounds) % STORE_FLUSH_DEPTH] =
			    r;
			f->nrounds++;
			pthread_cond_signal(&f->ack_cv);
		}
	}
	pthread_mutex_unlock(&f->mu);
	return (NULL);
}

/* The acker: wait for each round's acknowledgements, answer in order. */
static void *
store_flusher_acker(void *arg)
{
	struct store_flusher	*f = arg;
	struct store_flushed	 res;
	struct store_round	 r;

	pthread_mutex_lock(&f->mu);
	for (;;) {
		while (f->nrounds == 0 && !f->quit)
			pthread_cond_wait(&f->ack_cv, &f->mu);
		if (f->quit)
			break;
		r = f->rounds[f->first];
		f->first = (f->first + 1) % STORE_FLUSH_DEPTH;
		f->nrounds--;
		pthread_mutex_unlock(&f->mu);
		res.ret = r.ret;
		res.acked = repl_ack_end(&r.rd) == 0;
		store_flusher_answer(f, &res);
		pthread_mutex_lock(&f->mu);
	}
	pthread_mutex_unlock(&f->mu);
	return (NULL);
}

/* Send a flush's result to the loop. */
static void
store_flusher_answer(struct store_flusher *f, const struct store_flushed *res)
{
	/* Far below PIPE_BUF: the write is whole. */
	while (write(f->fds[1], res, sizeof *res) == -1 && errno == EINTR)
		/* again */;
}

/* The flusher answered: report failures here, on the loop, then done. */
static void
store_flusher_cb(evutil_socket_t fd, short events, void *arg)
{
	struct store		*st = arg;
	struct store_flusher	*f = st->flusher;
	struct store_flushed	 res;
	ssize_t			 n;

	(void)events;
	while ((n = read(fd, &res, sizeof res)) == -1 && errno == EINTR)
		/* again */;
	if (n != sizeof res)
		return;
	f->inflight--;
	if (res.ret != 0)
		(void)store_result(st, res.ret, "log flush");
	else if (!res.acked)
		log_warnx("store: commit not acknowledged by enough replicas");
	f->done(res.ret == 0 && res.acked && !st->failed, f->arg);
}

/*
 * Checkpoint, then remove the log files no longer needed for recovery;
 * none while a backup runs: it may not have copied them yet.
 */
int
store_checkpoint(struct store *st)
{
	int	ret, r;

	if (st->failed)
		return (STORE_ERROR);
	/* A replica checkpoints when the master's checkpoint arrives. */
	ret = repl_writable() ? st->env->txn_checkpoint(st->env, 0, 0, 0) : 0;
	if (ret == 0 && st->backup == NULL)
		ret = st->env->log_archive(st->env, NULL, DB_ARCH_REMOVE);
	r = store_result(st, ret, "checkpoint");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Fill a DBT that points at len bytes of p. */
void
store_dbt(DBT *dbt, const void *p, size_t len)
{
	memset(dbt, 0, sizeof *dbt);
	dbt->data = (void *)p;
	dbt->size = (u_int32_t)len;
}

/* Write a 16-bit big-endian length. */
void
store_put_u16(unsigned char *p, size_t v)
{
	p[0] = (v >> 8) & 0xff;
	p[1] = v & 0xff;
}

/* Read a 16-bit big-endian length. */
size_t
store_get_u16(const unsigned char *p)
{
	return (((size_t)p[0] << 8) | p[1]);
}

/* Write a 64-bit big-endian two's complement integer. */
void
store_put_i64(unsigned char *p, int64_t v)
{
	uint64_t	u = (uint64_t)v;
	int		i;

	for (i = 7; i >= 0; i--) {
		p[i] = u & 0xff;
		u >>= 8;
	}
}

/* Read a 64-bit big-endian two's complement integer. */
int64_t
store_get_i64(const unsigned char *p)
{
	uint64_t	u = 0;
	int		i;

	for (i = 0; i < 8; i++)
		u = (u << 8) | p[i];
	if (u <= INT64_MAX)
		return ((int64_t)u);
	return (-(int64_t)(UINT64_MAX - u) - 1);
}

/* Read a metadata value; STORE_NOTFOUND if it is not set. */
int
store_meta_get(struct store_txn *txn, const char *name, char **valuep)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_META);
	DBT		 key, data;
	int		 r;

	*valuep = NULL;
	if (st->failed)
		return (STORE_ERROR);
	store_dbt(&key, name, strlen(name));
	memset(&data, 0, sizeof data);
	r = store_result(st, db->get(db, txn->tid, &key, &data, DB_RMW),
	    "read metadata");
	if (r != STORE_OK)
		return (r);
	if (data.size == 0)
		*valuep = xstrdup("");
	else
		*valuep = xstrndup(data.data, data.size);
	return (STORE_OK);
}

/* Set a metadata value. */
int
store_meta_put(struct store_txn *txn, const char *name, const char *value)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_META);
	DBT		 key, data;
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	store_dbt(&key, name, strlen(name));
	store_dbt(&data, value, strlen(value));
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write metadata");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Count the records of one database exactly: DB->stat without DB_FAST_STAT
 * walks the leaf pages, which is quicker than a cursor over every record.
 */
static int
store_count_db(DB *db, DB_TXN *tid, uint64_t *np)
{
	DB_BTREE_STAT	*sp;
	int		 ret;

	*np = 0;
	if ((ret = db->stat(db, tid, &sp, 0)) != 0)
		return (ret);
	*np = sp->bt_ndata;
	free(sp);
	return (0);
}

/*
 * Count claims, pending claims and conflicts once at open.  From then on
 * every committed put and delete keeps the counts, so store_count is O(1).
 * Pending claims are those in the expiry index; all others are active.
 *
 * Counting reads every page (minutes at tens of millions of claims), so a
 * clean close leaves the counts in meta.db and the next open takes them
 * instead, deleting them in the same durable transaction: after a crash
 * they are gone and the open counts again.
 */
static int
store_count_init(struct store *st, char **cause)
{
	struct store_counts	 counts, *c = &counts;
	struct store_txn	*txn;
	char			*saved = NULL;
	int			 r;

	/* Counted here, then published (a group's opener is no loop). */
	memset(c, 0, sizeof *c);
	store_count_set(st, c);
	if ((r = store_txn_begin(st, &txn)) != STORE_OK)
		goto fail;
	r = store_meta_get(txn, STORE_META_COUNTS, &saved);
	if (r == STORE_OK && sscanf(saved, "%" SCNu64 " %" SCNu64 " %" SCNu64
	    " %" SCNu64, &c->claims, &c->pending, &c->conflicts,
	    &c->verify) == 4 && c->pending <= c->claims)
		r = store_meta_del(txn, STORE_META_COUNTS);
	else if (r == STORE_OK || r == STORE_NOTFOUND) {
		memset(c, 0, sizeof *c);
		r = store_count_all(st, txn, c);
	}
	free(saved);
	if (r != STORE_OK) {
		store_txn_abort(txn);
		goto fail;
	}
	if (store_txn_commit_local(txn) != STORE_OK ||
	    store_flush_log(st) != STORE_OK)
		goto fail;
	c->active = c->claims - c->pending;
	store_count_set(st, c);
	st->counted = 1;
	log_debug("store: %llu claim(s), %llu pending, %llu conflict(s)",
	    (unsigned long long)c->claims, (unsigned long long)c->pending,
	    (unsigned long long)c->conflicts);
	return (0);

fail:
	xasprintf(cause, "cannot count the records in %s", st->dir);
	return (-1);
}

/* Count every claim, pending claim, conflict and verification into c. */
static int
store_count_all(struct store *st, struct store_txn *txn,
    struct store_counts *c)
{
	DB_TXN			*tid = txn->tid;
	time_t			 t0 = time(NULL);
	int			 ret;

	ret = store_claims_count(st, tid, &c->claims, &c->pending);
	if (ret == 0)
		ret = store_count_db(st->db[STORE_DB_CONFLICTS], tid,
		    &c->conflicts);
	if (ret == 0)
		ret = store_count_db(st->db[STORE_DB_VERIFY], tid, &c->verify);
	if (ret == 0 && c->pending > c->claims)
		ret = STORE_CORRUPT;
	if (ret == 0 && time(NULL) - t0 >= 2)
		log_info("store: counted %llu claim(s) in %llds (the last stop "
		    "was not clean)", (unsigned long long)c->claims,
		    (long long)(time(NULL) - t0));
	return (store_result(st, ret, "count the records"));
}

/* Publish counts for store_count, on any thread. */
static void
store_count_set(struct store *st, const struct store_counts *c)
{
	pthread_mutex_lock(&st->counts_mu);
	st->counts = *c;
	pthread_mutex_unlock(&st->counts_mu);
}

/* Leave the counts for the next open (a clean close). */
static void
store_count_save(struct store *st)
{
	struct store_counts	 counts, *c = &counts;
	struct store_txn	*txn;
	char			 value[128];
	int			 r;

	pthread_mutex_lock(&st->counts_mu);
	counts = st->counts;
	pthread_mutex_unlock(&st->counts_mu);
	snprintf(value, sizeof value, "%" PRIu64 " %" PRIu64 " %" PRIu64
	    " %" PRIu64, c->claims, c->pending, c->conflicts, c->verify);
	if (store_txn_begin(st, &txn) != STORE_OK)
		return;
	if ((r = store_meta_put(txn, STORE_META_COUNTS, value)) != STORE_OK) {
		store_txn_abort(txn);
		return;
	}
	(void)store_txn_commit(txn);
}

/* Delete a metadata value (STORE_OK if it was not set). */
int
store_meta_del(struct store_txn *txn, const char *name)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_META);
	DBT		 key;
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	store_dbt(&key, name, strlen(name));
	r = store_result(st, db->del(db, txn->tid, &key, 0), "delete metadata");
	return (r == STORE_NOTFOUND ? STORE_OK : r);
}

/*
 * Read one record in a transaction, as a request would, for the watchdog
 * (main.c): STORE_OK once the store answered, whatever the answer (a
 * replica's store closed while it has no master has nothing to answer),
 * STORE_ERROR once it has failed.  A lock that is never released blocks
 * here, and the event loop with it.
 */
int
store_probe(struct store *st)
{
	DB	*db;
	DB_TXN	*tid;
	DBT	 key, data;
	int	 ret;

	if (st->failed)
		return (STORE_ERROR);
	/* Not while the opener has the handles (store_role.c). */
	if (!store_ready(st) || (db = st->db[STORE_DB_META]) == NULL)
		return (STORE_OK);
	if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) == 0) {
		store_dbt(&key, STORE_META_SCHEMA, strlen(STORE_META_SCHEMA));
		memset(&data, 0, sizeof data);
		data.flags = DB_DBT_PARTIAL;	/* the lock, not the value */
		ret = db->get(db, tid, &key, &data, 0);
		if (ret == DB_NOTFOUND)
			ret = 0;
		(void)store_result(st, ret, "watchdog read");
		(void)store_result(st, tid->abort(tid), "abort");
	} else
		(void)store_result(st, ret, "begin transaction");
	return (st->failed ? STORE_ERROR : STORE_OK);
}

/* The committed verifications waiting, from any thread. */
uint64_t
store_count_verify(struct store *st)
{
	uint64_t	n;

	pthread_mutex_lock(&st->counts_mu);
	n = st->counts.verify;
	pthread_mutex_unlock(&st->counts_mu);
	return (n);
}

/* Return the counts of committed claims and conflicts. */
int
store_count(struct store *st, struct store_counts *counts)
{
	if (st->failed) {
		memset(counts, 0, sizeof *counts);
		return (STORE_ERROR);
	}
	pthread_mutex_lock(&st->counts_mu);
	*counts = st->counts;
	pthread_mutex_unlock(&st->counts_mu);
	return (STORE_OK);
}

