/*
 * The store: every Berkeley DB call of phoneclaimd.
 *
 * One transactional environment in the state directory, one btree file per
 * database:
 *
 *   claims.db         numkey[32] user_id  ->  claim record
 *   claims_user.db    user_id  ->  claims.db key         (secondary, dupsort)
 *   claims_expiry.db  expires[8]  ->  claims.db key      (secondary, dupsort,
 *                     pending claims only)
 *   claims_enrol.db   enrol_id  ->  claims.db key        (secondary, dupsort,
 *                     claims with an enrolment id only)
 *   conflicts.db      numkey[32] user_id  ->  conflict record
 *   seen.db           log_id  ->  seen[8]                (seconds)
 *   seen_date.db      seen[8]  ->  seen.db key           (secondary, dupsort)
 *   watermarks.db     user_id [ 0x00 numkey[32] ]  ->  date[8]
 *                     (milliseconds; user-wide, or for one number)
 *   verify.db         user_id  ->  verification request
 *   limits.db         user_id  ->  reservation window (start, count)
 *   meta.db           name  ->  value                    (no NULs stored)
 *
 * The number key comes first so that every claim on a number is adjacent and
 * one DB_SET_RANGE finds them all.  The user id follows as raw bytes with no
 * separator or NUL: it may contain any byte but NUL, and its length is the
 * key's length minus 32.  A watermark key needs the NUL separator: without
 * it, user "a" with a number key K would be the user-wide key of the user
 * "a" K.  With it, the first NUL ends the user id, so no user's per-number
 * key is another user's user-wide key.  Every secondary is maintained by BDB
 * itself (DB->associate): the user index takes the key's tail, the expiry
 * index the expiry field of pending records, the enrolment index a non-empty
 * enrol_id, the seen index the whole seen record; so they can never disagree
 * with their primary.  A secondary missing at open (a state directory of an
 * earlier release) is created and filled from its primary in the opening
 * transaction.  A secondary that exists is trusted: a release that does not
 * know an index must never write to a store that has it, which is what the
 * schema version in meta.db is for.  Schema 3 added verify.db (created
 * empty at open like any missing database) and the removal part of
 * conflict records (format 2; format 1 records still read, as "none").
 *
 * Records are packed by hand, never struct images.  Integers are big-endian
 * so the files are portable between machines and so that the 8-byte expiry
 * and seen times sort in time order under BDB's default byte comparison
 * (times are non-negative: a negative expiry would sort last, and a negative
 * seen time is refused).  The first byte is a record format so that a later
 * release can read old records without a dump and reload.  Fixed fields have
 * fixed offsets, strings a 2-byte length; a claim record is 25 bytes plus the
 * enrolment id, since disk per claim matters at scale.  Seen and watermark
 * records are a bare 8-byte integer: there is nothing else they could hold.
 *
 *   claim, format 1:     format(1) state(1) source(1) since(8) expires(8)
 *                        last4(4, NUL padded) enrol_len(2) enrol_id
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
 */
#include "config.h"

#include <sys/types.h>
#include <sys/file.h>
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
#include "xmalloc.h"

#define STORE_CACHE_SIZE	(128 * 1024 * 1024)	/* cache_size default */
#define STORE_LOG_BUFSIZE	(1024 * 1024)
#define STORE_LOG_FILE_SIZE	(10 * 1024 * 1024)	/* log_file_size default */
#define STORE_BACKUP_CACHE	(16 * 1024 * 1024)	/* recovering a backup */
#define STORE_BACKUP_KEY	"hash.key"
#define STORE_GIB		(1024ULL * 1024 * 1024)
#define STORE_DIR_MODE		0700
#define STORE_FILE_MODE		0600

/*
 * Lock table: one log-stream request is one transaction of up to ~10,000
 * events, each a few puts on several btrees.  Page locks are counted once per
 * page and transaction, but a large request still touches tens of thousands
 * of pages; BDB's defaults (1,000 locks) would fail it with ENOMEM.
 */
#define STORE_LK_MAX_LOCKS	200000
#define STORE_LK_MAX_OBJECTS	200000
#define STORE_LK_MAX_LOCKERS	2000

#define STORE_META_SCHEMA	"schema_version"
#define STORE_META_COUNTS	"counts"

/* Claim record, format 1. */
#define CLAIM_FORMAT		1
#define CLAIM_OFF_STATE		1
#define CLAIM_OFF_SOURCE	2
#define CLAIM_OFF_SINCE		3
#define CLAIM_OFF_EXPIRES	11
#define CLAIM_OFF_LAST4		19
#define CLAIM_OFF_ENROL_LEN	23
#define CLAIM_OFF_ENROL		25
#define CLAIM_REC_MAX		(CLAIM_OFF_ENROL + ENROL_ID_MAX)
#define CLAIM_KEY_MAX		(NUMKEY_LEN + USER_ID_MAX)

/* Conflict record, format 2: the fixed part before the holders. */
#define CONFLICT_FORMAT		2
#define CONFLICT_FORMAT_1	1	/* no removal part */
#define CONFLICT_RM_LEN		13	/* removal, at, code, method_len */
#define CONFLICT_OFF_SINCE	1
#define CONFLICT_OFF_LAST4	9
#define CONFLICT_OFF_LOG_LEN	13
#define CONFLICT_OFF_LOG	15

/* A record that does not decode: reported like an errno. */
#define STORE_CORRUPT		EBADMSG

/* Reservation window record (limits.db), format 1. */
#define LIMIT_FORMAT		1
#define LIMIT_REC_LEN		13

/* Verification record, format 1. */
#define VERIFY_FORMAT		1
#define VERIFY_REC_LEN		10

/* Seen and watermark records: one big-endian int64. */
#define STORE_TIME_LEN		8
#define WATERMARK_KEY_MAX	(USER_ID_MAX + 1 + NUMKEY_LEN)

enum store_db {
	STORE_DB_CLAIMS,
	STORE_DB_CLAIMS_USER,
	STORE_DB_CLAIMS_EXPIRY,
	STORE_DB_CLAIMS_ENROL,
	STORE_DB_CONFLICTS,
	STORE_DB_SEEN,
	STORE_DB_SEEN_DATE,
	STORE_DB_WATERMARKS,
	STORE_DB_VERIFY,
	STORE_DB_LIMITS,
	STORE_DB_META,
	STORE_DB_COUNT
};

/* Opened in this order, closed in reverse: a secondary before its primary. */
static const struct {
	const char	*file;
	int		 dupsort;
} store_dbs[STORE_DB_COUNT] = {
	{ "claims.db", 0 },
	{ "claims_user.db", 1 },
	{ "claims_expiry.db", 1 },
	{ "claims_enrol.db", 1 },
	{ "conflicts.db", 0 },
	{ "seen.db", 0 },
	{ "seen_date.db", 1 },
	{ "watermarks.db", 0 },
	{ "verify.db", 0 },
	{ "limits.db", 0 },
	{ "meta.db", 0 }
};

/*
 * The flusher thread.  The loop asks (asked, under mu) and goes on; the
 * thread runs log_flush on its own environment handle and writes the
 * result, an int, to a pipe the loop watches.  One flush at a time.
 */
struct store_flusher {
	DB_ENV		*env;
	pthread_t	 thread;
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	int		 asked;
	int		 quit;
	int		 busy;		/* asked and not yet answered */
	int		 fds[2];
	struct event	*ev;
	void		(*done)(int, void *);
	void		*arg;
};

/*
 * A hot backup in progress: the thread's own handle on the environment, the
 * pipe on which it says it is done, and what it found.
 */
struct store_backup {
	struct store	*st;
	DB_ENV		*env;
	pthread_t	 thread;
	int		 started;
	int		 fds[2];
	struct event	*ev;
	char		*dir;
	char		*key_file;
	char		 errmsg[200];	/* Berkeley DB's last message */
	struct store_backup_result res;
	void		(*done)(const struct store_backup_result *, void *);
	void		*arg;
};

struct store {
	char		*dir;
	int		 lock_fd;	/* flock on <dir>/phoneclaimd.lock */
	DB_ENV		*env;
	DB		*db[STORE_DB_COUNT];
	int		 env_open;
	int		 failed;
	void		(*fail_cb)(void *);
	void		*fail_arg;
	struct store_counts counts;	/* of committed data */
	struct store_flusher *flusher;	/* NULL: flushes are synchronous */
	struct store_backup *backup;	/* NULL: no backup running */
	int		 counted;	/* counts are right: save them */
	char		 limits_next[USER_ID_MAX];	/* prune from here */
	size_t		 limits_next_len;		/* 0: the start */
};

/* A transaction and the changes it makes to the counts, if it commits. */
struct store_txn {
	struct store	*st;
	DB_TXN		*tid;
	int64_t		 d_claims;
	int64_t		 d_active;
	int64_t		 d_pending;
	int64_t		 d_conflicts;
	int64_t		 d_verify;
};

/* A growing array of claims read by a cursor. */
struct store_claims {
	struct claim	*v;
	size_t		 n;
	size_t		 size;
};

static int	store_mkdir(const char *, char **);
static int	store_lock(struct store *, char **);
static int	store_open_env(struct store *, char **);
static int	store_reserve_regions(struct store *, char **);
static int	store_reserve_region(const char *, unsigned long long, char **);
static int	store_open_dbs(struct store *, char **);
static int	store_open_db(struct store *, DB_TXN *, enum store_db);
static int	store_check_schema(struct store *, char **);
static int	store_schema_ok(struct store *, const char *, long long *,
		    char **);
static int	store_schema_write(struct store_txn *, long long);
static void	store_close_handles(struct store *);
static void	*store_flusher_main(void *);
static void	store_flusher_cb(evutil_socket_t, short, void *);
static int	store_env_config(DB_ENV *, uint64_t);
static int	store_backup_mkdir(const char *, char **);
static void	store_backup_free(struct store_backup *);
static void	*store_backup_main(void *);
static int	store_backup_copy(struct store_backup *);
static int	store_backup_key(struct store_backup *);
static int	store_backup_recover(struct store_backup *);
static int	store_backup_sync(struct store_backup *);
static int	store_backup_fail(struct store_backup *, const char *, int);
static void	store_backup_why(struct store_backup *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static void	store_backup_errcall_cb(const DB_ENV *, const char *,
		    const char *);
static void	store_backup_cb(evutil_socket_t, short, void *);
static void	store_errcall_cb(const DB_ENV *, const char *, const char *);
static void	store_event_cb(DB_ENV *, u_int32_t, void *);
static int	store_user_key_cb(DB *, const DBT *, const DBT *, DBT *);
static int	store_expiry_key_cb(DB *, const DBT *, const DBT *, DBT *);
static int	store_enrol_key_cb(DB *, const DBT *, const DBT *, DBT *);
static int	store_seen_key_cb(DB *, const DBT *, const DBT *, DBT *);
static void	store_fail(struct store *, const char *);
static int	store_result(struct store *, int, const char *);
static int	store_claims_by_index(struct store_txn *, enum store_db,
		    const char *, size_t, const char *, struct claim **,
		    size_t *);
static int	store_cursor_done(struct store *, DBC *, int, const char *);
static void	store_dbt(DBT *, const void *, size_t);
static void	store_put_u16(unsigned char *, size_t);
static size_t	store_get_u16(const unsigned char *);
static void	store_put_i64(unsigned char *, int64_t);
static int64_t	store_get_i64(const unsigned char *);
static int	store_claim_key(const unsigned char *, const char *,
		    unsigned char *, size_t *);
static int	store_claim_pack(const struct claim *, unsigned char *,
		    size_t *, unsigned char *, size_t *);
static int	store_claim_unpack(const DBT *, const DBT *, struct claim *);
static int	store_claims_add(struct store_claims *, const DBT *,
		    const DBT *);
static int	store_claims_finish(struct store *, DBC *, int,
		    struct store_claims *, struct claim **, size_t *,
		    const char *);
static unsigned char *store_conflict_pack(const struct conflict *,
		    unsigned char *, size_t *, size_t *);
static int	store_conflict_unpack(const DBT *, const DBT *,
		    struct conflict *);
static const unsigned char *store_conflict_holders(const unsigned char *,
		    const unsigned char *, struct conflict *);
static int	store_conflict_removal(const unsigned char *,
		    const unsigned char *, struct conflict *);
static int	store_count_db(DB *, DB_TXN *, uint64_t *);
static int	store_count_init(struct store *, char **);
static int	store_count_all(struct store *, struct store_txn *);
static void	store_count_save(struct store *);
static int	store_claim_old(struct store_txn *, DBT *, int *);
static void	store_count_state(struct store_txn *, int, int);
static int	store_watermark_key(const char *, const unsigned char *,
		    unsigned char *, size_t *);

/* The secondaries, associated with their primary in this order. */
static const struct {
	enum store_db	 primary;
	enum store_db	 secondary;
	int		(*key_cb)(DB *, const DBT *, const DBT *, DBT *);
} store_indexes[] = {
	{ STORE_DB_CLAIMS, STORE_DB_CLAIMS_USER, store_user_key_cb },
	{ STORE_DB_CLAIMS, STORE_DB_CLAIMS_EXPIRY, store_expiry_key_cb },
	{ STORE_DB_CLAIMS, STORE_DB_CLAIMS_ENROL, store_enrol_key_cb },
	{ STORE_DB_SEEN, STORE_DB_SEEN_DATE, store_seen_key_cb }
};

static uint64_t	store_cache_size = STORE_CACHE_SIZE;
static uint32_t	store_log_file_size = STORE_LOG_FILE_SIZE;

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
	if (store_lock(st, cause) != 0 ||
	    store_open_env(st, cause) != 0 ||
	    store_open_dbs(st, cause) != 0 ||
	    store_check_schema(st, cause) != 0 ||
	    store_count_init(st, cause) != 0) {
		store_close_handles(st);
		if (st->lock_fd != -1)
			close(st->lock_fd);
		free(st->dir);
		free(st);
		return (NULL);
	}
	log_debug("store: opened %s", dir);
	return (st);
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
	if ((ret = env->set_event_notify(env, store_event_cb)) != 0 ||
	    (ret = store_env_config(env, store_cache_size)) != 0 ||
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
static int
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
 * DB_CREATE on associate fills an empty secondary from its primary: that is
 * how an index added by a later release is built on an older store.
 */
static int
store_open_dbs(struct store *st, char **cause)
{
	DB		*pdb, *sdb;
	DB_TXN		*tid;
	const char	*what = "databases";
	size_t		 i;
	int		 ret;

	if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0) {
		xasprintf(cause, "cannot begin a transaction in %s: %s",
		    st->dir, db_strerror(ret));
		return (-1);
	}
	for (i = 0; i < STORE_DB_COUNT; i++) {
		what = store_dbs[i].file;
		if ((ret = store_open_db(st, tid, i)) != 0)
			goto fail;
	}
	for (i = 0; i < sizeof store_indexes / sizeof store_indexes[0]; i++) {
		pdb = st->db[store_indexes[i].primary];
		sdb = st->db[store_indexes[i].secondary];
		what = store_dbs[store_indexes[i].secondary].file;
		ret = pdb->associate(pdb, tid, sdb, store_indexes[i].key_cb,
		    DB_CREATE);
		if (ret != 0)
			goto fail;
	}
	what = "databases";
	if ((ret = tid->commit(tid, 0)) != 0)
		goto failed;
	return (0);

fail:
	tid->abort(tid);
failed:
	xasprintf(cause, "cannot open %s in %s: %s", what, st->dir,
	    db_strerror(ret));
	return (-1);
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
	return (db->open(db, tid, store_dbs[which].file, NULL, DB_BTREE,
	    DB_CREATE, STORE_FILE_MODE));
}

/*
 * Write the schema version into a new store, raise an older one to ours
 * (the open has just built any index it lacked), refuse a newer one.
 */
static int
store_check_schema(struct store *st, char **cause)
{
	struct store_txn	*txn;
	char			*value = NULL;
	long long		 v = 0;
	int			 r;

	if (store_txn_begin(st, &txn) != STORE_OK)
		goto fail;
	r = store_meta_get(txn, STORE_META_SCHEMA, &value);
	if (r == STORE_OK && store_schema_ok(st, value, &v, cause) != 0) {
		free(value);
		store_txn_abort(txn);
		return (-1);
	}
	free(value);
	if (r == STORE_NOTFOUND || (r == STORE_OK && v < STORE_SCHEMA_VERSION))
		r = store_schema_write(txn, v);
	if (r != STORE_OK) {
		store_txn_abort(txn);
		goto fail;
	}
	if (store_txn_commit(txn) != STORE_OK || store_flush(st) != STORE_OK)
		goto fail;
	return (0);

fail:
	xasprintf(cause, "cannot read or write the metadata in %s", st->dir);
	return (-1);
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

/* Write our schema version over old (0: a new store). */
static int
store_schema_write(struct store_txn *txn, long long old)
{
	char	version[32];
	int	r;

	snprintf(version, sizeof version, "%d", STORE_SCHEMA_VERSION);
	if ((r = store_meta_put(txn, STORE_META_SCHEMA, version)) != STORE_OK)
		return (r);
	if (old == 0)
		log_info("store: created in %s, schema version %s",
		    txn->st->dir, version);
	else
		log_info("store: %s upgraded from schema version %lld to %s",
		    txn->st->dir, old, version);
	return (STORE_OK);
}

/* Close the store: databases, a final checkpoint, the environment. */
void
store_close(struct store *st)
{
	if (st == NULL)
		return;
	if (st->backup != NULL) {
		log_info("store: waiting for the backup in progress");
		if (st->backup->started)
			pthread_join(st->backup->thread, NULL);
		st->backup->started = 0;
		if (st->backup->res.ok)
			log_info("store: backup to %s done (not answered: "
			    "stopping)", st->backup->dir);
		else
			log_warnx("store: backup to %s failed: %s",
			    st->backup->dir, st->backup->res.cause);
		store_backup_free(st->backup);
		st->backup = NULL;
	}
	store_flusher_stop(st);
	store_close_handles(st);
	if (st->lock_fd != -1)
		close(st->lock_fd);
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
	int	i, ret;

	if (st->env_open && !st->failed && st->counted)
		store_count_save(st);
	for (i = STORE_DB_COUNT - 1; i >= 0; i--) {
		if (st->db[i] == NULL)
			continue;
		ret = st->db[i]->close(st->db[i], 0);
		if (ret != 0 && !st->failed)
			log_warnx("store: closing %s: %s", store_dbs[i].file,
			    db_strerror(ret));
		st->db[i] = NULL;
	}
	if (st->env == NULL)
		return;
	if (st->env_open && !st->failed) {
		ret = st->env->txn_checkpoint(st->env, 0, 0, DB_FORCE);
		if (ret != 0)
			log_warnx("store: final checkpoint: %s",
			    db_strerror(ret));
	}
	if ((ret = st->env->close(st->env, 0)) != 0 && !st->failed)
		log_warnx("store: closing the environment: %s",
		    db_strerror(ret));
	st->env = NULL;
}

/* Register the function called once when the environment fails. */
void
store_set_fail_cb(struct store *st, void (*cb)(void *), void *arg)
{
	st->fail_cb = cb;
	st->fail_arg = arg;
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
	log_warnx("store: Berkeley DB: %s", msg);
}

/* Catch a panic of the environment. */
static void
store_event_cb(DB_ENV *env, u_int32_t event, void *info)
{
	struct store	*st = env->app_private;

	(void)info;
	if (event == DB_EVENT_PANIC && st != NULL)
		store_fail(st, "panic");
	else if (event == DB_EVENT_WRITE_FAILED)
		log_warnx("store: a write to stable storage failed");
}

/*
 * Secondary key callbacks.  Each one fills skey through store_dbt, which
 * clears it first: on a delete, Berkeley DB 5.3 (__dbc_del_primary) passes
 * the same skey to every secondary in turn, and after one returns
 * DB_DONOTINDEX it carries DB_DBT_MULTIPLE, which would make the next key be
 * read as an array of DBTs (a crash on deleting an active claim).
 */

/* Secondary key of claims_user.db: the user id after the number key. */
static int
store_user_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	(void)sdb;
	(void)pdata;
	if (pkey->size <= NUMKEY_LEN)
		return (STORE_CORRUPT);
	store_dbt(skey, (unsigned char *)pkey->data + NUMKEY_LEN,
	    pkey->size - NUMKEY_LEN);
	return (0);
}

/* Secondary key of claims_expiry.db: the expiry, for pending claims only. */
static int
store_expiry_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	const unsigned char	*rec = pdata->data;

	(void)sdb;
	(void)pkey;
	if (pdata->size < CLAIM_OFF_ENROL || rec[0] != CLAIM_FORMAT)
		return (STORE_CORRUPT);
	if (rec[CLAIM_OFF_STATE] != CLAIM_PENDING)
		return (DB_DONOTINDEX);
	store_dbt(skey, rec + CLAIM_OFF_EXPIRES, STORE_TIME_LEN);
	return (0);
}

/* Secondary key of claims_enrol.db: the enrolment id, when there is one. */
static int
store_enrol_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	const unsigned char	*rec = pdata->data;
	size_t			 elen;

	(void)sdb;
	(void)pkey;
	if (pdata->size < CLAIM_OFF_ENROL || rec[0] != CLAIM_FORMAT)
		return (STORE_CORRUPT);
	elen = store_get_u16(rec + CLAIM_OFF_ENROL_LEN);
	if (pdata->size != CLAIM_OFF_ENROL + elen)
		return (STORE_CORRUPT);
	if (elen == 0)
		return (DB_DONOTINDEX);
	store_dbt(skey, rec + CLAIM_OFF_ENROL, elen);
	return (0);
}

/* Secondary key of seen_date.db: the time the log id was seen. */
static int
store_seen_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	(void)sdb;
	(void)pkey;
	if (pdata->size != STORE_TIME_LEN)
		return (STORE_CORRUPT);
	store_dbt(skey, pdata->data, STORE_TIME_LEN);
	return (0);
}

/* Mark the store failed: log and call the callback, once. */
static void
store_fail(struct store *st, const char *what)
{
	if (st->failed)
		return;
	st->failed = 1;
	/* During the opening recovery, a restart would fail the same way. */
	if (!st->env_open)
		log_warnx("store: %s while opening %s", what, st->dir);
	else
		log_warnx("store: %s: the Berkeley DB environment has failed; "
		    "a restart will run recovery", what);
	if (st->fail_cb != NULL)
		st->fail_cb(st->fail_arg);
}

/* Turn a Berkeley DB return value into a STORE_* code. */
static int
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
		log_debug("store: %s: %s", what, db_strerror(ret));
		return (STORE_RETRY);
	case DB_RUNRECOVERY:
		store_fail(st, what);
		return (STORE_ERROR);
	default:
		log_warnx("store: %s: %s", what, db_strerror(ret));
		return (STORE_ERROR);
	}
}

/* Close a cursor after a scan that ended with ret; NOTFOUND is the end. */
static int
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
	if (st->failed)
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
 * Commit: the log records stay in the buffer, store_flush writes and syncs
 * them for the whole batch.  The handle is gone afterwards whatever the result, so a
 * failed commit is STORE_ERROR, never STORE_RETRY.  The counts take the
 * transaction's changes only once it has committed.
 */
int
store_txn_commit(struct store_txn *txn)
{
	struct store	*st = txn->st;
	DB_TXN		*tid = txn->tid;
	int		 r;

	if (st->failed) {
		free(txn);
		(void)tid->abort(tid);
		return (STORE_ERROR);
	}
	r = store_result(st, tid->commit(tid, DB_TXN_NOSYNC), "commit");
	if (r == STORE_OK) {
		st->counts.claims += (uint64_t)txn->d_claims;
		st->counts.active += (uint64_t)txn->d_active;
		st->counts.pending += (uint64_t)txn->d_pending;
		st->counts.conflicts += (uint64_t)txn->d_conflicts;
		st->counts.verify += (uint64_t)txn->d_verify;
	}
	free(txn);
	return (r == STORE_OK ? STORE_OK : STORE_ERROR);
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

/* Make every commit so far durable: write and sync the log. */
int
store_flush(struct store *st)
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
	if ((ret = db_env_create(&f->env, 0)) != 0 ||
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
	if ((ret = worker_thread(&f->thread, store_flusher_main, f)) != 0) {
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

/* Stop the flusher thread (after its flush in flight) and free it. */
void
store_flusher_stop(struct store *st)
{
	struct store_flusher	*f = st->flusher;

	if (f == NULL)
		return;
	pthread_mutex_lock(&f->mu);
	f->quit = 1;
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->thread, NULL);
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
 * through the done callback.  -1 if there is no flusher, or a flush is
 * already in flight (the caller waits for its answer and asks again).
 */
int
store_flush_async(struct store *st)
{
	struct store_flusher	*f = st->flusher;

	if (f == NULL || f->busy || st->failed)
		return (-1);
	f->busy = 1;
	pthread_mutex_lock(&f->mu);
	f->asked = 1;
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
	return (0);
}

/* The thread: flush when asked, answer through the pipe. */
static void *
store_flusher_main(void *arg)
{
	struct store_flusher	*f = arg;
	int			 ret;

	pthread_mutex_lock(&f->mu);
	for (;;) {
		while (!f->asked && !f->quit)
			pthread_cond_wait(&f->cv, &f->mu);
		if (f->quit)
			break;
		f->asked = 0;
		pthread_mutex_unlock(&f->mu);
		ret = f->env->log_flush(f->env, NULL);
		/* An int is far below PIPE_BUF: the write is whole. */
		while (write(f->fds[1], &ret, sizeof ret) == -1 &&
		    errno == EINTR)
			/* again */;
		pthread_mutex_lock(&f->mu);
	}
	pthread_mutex_unlock(&f->mu);
	return (NULL);
}

/* The flusher answered: report failures here, on the loop, then done. */
static void
store_flusher_cb(evutil_socket_t fd, short events, void *arg)
{
	struct store		*st = arg;
	struct store_flusher	*f = st->flusher;
	int			 ret;
	ssize_t			 n;

	(void)events;
	while ((n = read(fd, &ret, sizeof ret)) == -1 && errno == EINTR)
		/* again */;
	if (n != sizeof ret)
		return;
	f->busy = 0;
	if (ret != 0)
		(void)store_result(st, ret, "log flush");
	f->done(ret == 0 && !st->failed, f->arg);
}

/*
 * Hot backup (phoneclaimctl backup DIR).  A thread with its own handle
 * joined to the environment, as the flusher's, so that the loop goes on
 * serving; one backup at a time.  The thread:
 *
 *   1. checkpoints and removes the log files recovery no longer needs, so
 *      that the copy holds little log;
 *   2. runs DB_ENV->backup: every database file, copied page by page
 *      through the cache while writes go on, then every log file;
 *   3. copies the hash key (without it no number can be looked up);
 *   4. opens the copy as an environment of its own with catastrophic
 *      recovery (DB_RECOVER_FATAL, private regions), as db_hotbackup
 *      does: the pages copied at different moments become consistent with
 *      the log copied after them, as of an instant between the start and
 *      the end of the backup; then checkpoints and removes the log files
 *      the copy no longer needs;
 *   5. syncs every file and the directory, counting files and bytes.
 *
 * Every commit made durable before the backup began is in the copy, which
 * is then a state directory that a daemon can start on as it is.  While the
 * backup runs, store_checkpoint removes no log file: Berkeley DB cannot
 * know which ones a hot backup has still to copy.  The thread logs nothing
 * itself: what it found goes to the loop through the pipe, as the
 * flusher's answers do.
 */

/* Return 1 while a backup runs. */
int
store_backup_running(struct store *st)
{
	return (st->backup != NULL);
}

/*
 * Start a backup of the store and of key_file into dir, an absolute path
 * that must not exist or be an empty directory; done(result, arg) is called
 * on base when it ends.  -1 and *cause if it cannot start.
 */
int
store_backup_start(struct store *st, struct event_base *base,
    const char *dir, const char *key_file,
    void (*done)(const struct store_backup_result *, void *), void *arg,
    char **cause)
{
	struct store_backup	*b;
	int			 ret;

	*cause = NULL;
	if (st->backup != NULL) {
		xasprintf(cause, "a backup is already running");
		return (-1);
	}
	if (st->failed) {
		xasprintf(cause, "the store has failed");
		return (-1);
	}
	if (store_backup_mkdir(dir, cause) != 0)
		return (-1);
	b = xcalloc(1, sizeof *b);
	b->st = st;
	b->fds[0] = b->fds[1] = -1;
	b->dir = xstrdup(dir);
	b->key_file = xstrdup(key_file);
	b->done = done;
	b->arg = arg;
	if ((ret = db_env_create(&b->env, 0)) != 0 ||
	    (ret = b->env->open(b->env, st->dir, DB_JOINENV, 0)) != 0) {
		xasprintf(cause, "cannot join the environment: %s",
		    db_strerror(ret));
		goto fail;
	}
	b->env->app_private = b;
	b->env->set_errcall(b->env, store_backup_errcall_cb);
	if (pipe2(b->fds, O_CLOEXEC) == -1) {
		xasprintf(cause, "pipe: %s", strerror(errno));
		goto fail;
	}
	if ((b->ev = event_new(base, b->fds[0], EV_READ, store_backup_cb,
	    b)) == NULL || event_add(b->ev, NULL) != 0) {
		xasprintf(cause, "cannot watch its pipe");
		goto fail;
	}
	if ((ret = worker_thread(&b->thread, store_backup_main, b)) != 0) {
		xasprintf(cause, "pthread_create: %s", strerror(ret));
		goto fail;
	}
	b->started = 1;
	st->backup = b;
	return (0);

fail:
	if (b->env != NULL)
		(void)b->env->close(b->env, 0);
	b->env = NULL;
	store_backup_free(b);
	return (-1);
}

/*
 * Create the backup directory, mode 0700 (it will hold the hash key), or
 * accept an empty one and make it 0700.
 */
static int
store_backup_mkdir(const char *dir, char **cause)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	int		 empty = 1;

	if (*dir != '/') {
		xasprintf(cause, "%s: not an absolute path", dir);
		return (-1);
	}
	if (mkdir(dir, STORE_DIR_MODE) == 0)
		return (0);
	if (errno != EEXIST || lstat(dir, &sb) != 0) {
		xasprintf(cause, "cannot create %s: %s", dir, strerror(errno));
		return (-1);
	}
	if (!S_ISDIR(sb.st_mode)) {
		xasprintf(cause, "%s exists and is not a directory", dir);
		return (-1);
	}
	if ((d = opendir(dir)) == NULL) {
		xasprintf(cause, "%s: %s", dir, strerror(errno));
		return (-1);
	}
	while (empty && (de = readdir(d)) != NULL)
		empty = strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0;
	closedir(d);
	if (!empty) {
		xasprintf(cause, "%s is not empty", dir);
		return (-1);
	}
	if (chmod(dir, STORE_DIR_MODE) != 0) {
		xasprintf(cause, "chmod %s: %s", dir, strerror(errno));
		return (-1);
	}
	return (0);
}

/* Wait for the thread if it was started, and free everything. */
static void
store_backup_free(struct store_backup *b)
{
	if (b->started)
		pthread_join(b->thread, NULL);
	if (b->ev != NULL)
		event_free(b->ev);
	if (b->fds[0] != -1)
		close(b->fds[0]);
	if (b->fds[1] != -1)
		close(b->fds[1]);
	free(b->dir);
	free(b->key_file);
	free(b);
}

/* The thread: the steps above, then one byte down the pipe. */
static void *
store_backup_main(void *arg)
{
	struct store_backup	*b = arg;
	struct timespec		 t0, t1;
	char			 c = 0;
	int			 ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (store_backup_copy(b) == 0 && store_backup_key(b) == 0 &&
	    store_backup_recover(b) == 0 && store_backup_sync(b) == 0)
		b->res.ok = 1;
	if ((ret = b->env->close(b->env, 0)) != 0 && b->res.ok)
		(void)store_backup_fail(b, "leaving the environment", ret);
	b->env = NULL;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	b->res.seconds = (double)(t1.tv_sec - t0.tv_sec) +
	    (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	while (write(b->fds[1], &c, 1) == -1 && errno == EINTR)
		/* again */;
	return (NULL);
}

/* Steps 1 and 2: a checkpoint, then DB_ENV->backup. */
static int
store_backup_copy(struct store_backup *b)
{
	DB_ENV	*env = b->env;
	int	 ret;

	b->errmsg[0] = '\0';
	if ((ret = env->txn_checkpoint(env, 0, 0, 0)) != 0 ||
	    (ret = env->log_archive(env, NULL, DB_ARCH_REMOVE)) != 0)
		return (store_backup_fail(b, "checkpoint", ret));
	if ((ret = env->backup(env, b->dir, DB_EXCL)) != 0)
		return (store_backup_fail(b, "copy", ret));
	return (0);
}

/* Step 3: the hash key, as <dir>/hash.key, mode 0600. */
static int
store_backup_key(struct store_backup *b)
{
	char	 buf[4096], *path;
	ssize_t	 n = 0;
	int	 in, out, rv = -1;

	if ((in = open(b->key_file, O_RDONLY | O_CLOEXEC)) == -1) {
		store_backup_why(b, "%s: %s", b->key_file, strerror(errno));
		return (-1);
	}
	xasprintf(&path, "%s/%s", b->dir, STORE_BACKUP_KEY);
	out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    STORE_FILE_MODE);
	if (out != -1) {
		while ((n = read(in, buf, sizeof buf)) > 0 &&
		    write(out, buf, (size_t)n) == n)
			/* next */;
		if (n == 0 && fsync(out) == 0 && close(out) == 0)
			rv = 0;
		else if (n != -1)
			(void)close(out);
	}
	/* n is -1 only if the key could not be read. */
	if (rv != 0)
		store_backup_why(b, "%s: %s", n == -1 ? b->key_file : path,
		    strerror(errno));
	close(in);
	explicit_bzero(buf, sizeof buf);
	free(path);
	return (rv);
}

/*
 * Step 4: catastrophic recovery of the copy in an environment of its own,
 * with private regions so that no region file is left in it.
 */
static int
store_backup_recover(struct store_backup *b)
{
	DB_ENV		*env;
	u_int32_t	 flags;
	int		 ret;

	b->errmsg[0] = '\0';
	if ((ret = db_env_create(&env, 0)) != 0)
		return (store_backup_fail(b, "recovery", ret));
	env->app_private = b;
	env->set_errcall(env, store_backup_errcall_cb);
	flags = DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG |
	    DB_INIT_MPOOL | DB_PRIVATE | DB_RECOVER_FATAL;
	if ((ret = store_env_config(env, STORE_BACKUP_CACHE)) != 0 ||
	    (ret = env->open(env, b->dir, flags, STORE_FILE_MODE)) != 0 ||
	    (ret = env->txn_checkpoint(env, 0, 0, DB_FORCE)) != 0 ||
	    (ret = env->log_archive(env, NULL, DB_ARCH_REMOVE)) != 0) {
		(void)env->close(env, 0);
		return (store_backup_fail(b, "recovery", ret));
	}
	if ((ret = env->close(env, 0)) != 0)
		return (store_backup_fail(b, "recovery", ret));
	return (0);
}

/* Step 5: every file and the directory on disk; count them. */
static int
store_backup_sync(struct store_backup *b)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	int		 fd, dfd, rv = 0;

	if ((d = opendir(b->dir)) == NULL) {
		store_backup_why(b, "%s: %s", b->dir, strerror(errno));
		return (-1);
	}
	dfd = dirfd(d);
	while (rv == 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW |
		    O_CLOEXEC);
		if (fd == -1 || fstat(fd, &sb) != 0 || fsync(fd) != 0) {
			store_backup_why(b, "%s/%s: %s", b->dir, de->d_name,
			    strerror(errno));
			rv = -1;
		} else {
			b->res.files++;
			b->res.bytes += (unsigned long long)sb.st_size;
		}
		if (fd != -1)
			close(fd);
	}
	if (rv == 0 && fsync(dfd) != 0) {
		store_backup_why(b, "%s: %s", b->dir, strerror(errno));
		rv = -1;
	}
	closedir(d);
	return (rv);
}

/* Say which step failed and why (Berkeley DB's message if it gave one). */
static int
store_backup_fail(struct store_backup *b, const char *what, int ret)
{
	store_backup_why(b, "%s: %s", what,
	    b->errmsg[0] != '\0' ? b->errmsg : db_strerror(ret));
	return (-1);
}

/* Say why the backup failed, in the result's cause. */
static void
store_backup_why(struct store_backup *b, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vsnprintf(b->res.cause, sizeof b->res.cause, fmt, ap);
	va_end(ap);
}

/* Keep Berkeley DB's message for the answer: the thread does not log. */
static void
store_backup_errcall_cb(const DB_ENV *env, const char *prefix,
    const char *msg)
{
	struct store_backup	*b = env->app_private;

	(void)prefix;
	snprintf(b->errmsg, sizeof b->errmsg, "%s", msg);
}

/* The thread is done: free it, then tell the caller. */
static void
store_backup_cb(evutil_socket_t fd, short events, void *arg)
{
	struct store_backup		*b = arg;
	struct store_backup_result	 res;
	void				(*done)(const struct
					    store_backup_result *, void *);
	void				*done_arg;

	(void)fd;
	(void)events;
	res = b->res;
	done = b->done;
	done_arg = b->arg;
	b->st->backup = NULL;
	store_backup_free(b);
	done(&res, done_arg);
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
	ret = st->env->txn_checkpoint(st->env, 0, 0, 0);
	if (ret == 0 && st->backup == NULL)
		ret = st->env->log_archive(st->env, NULL, DB_ARCH_REMOVE);
	r = store_result(st, ret, "checkpoint");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Fill a DBT that points at len bytes of p. */
static void
store_dbt(DBT *dbt, const void *p, size_t len)
{
	memset(dbt, 0, sizeof *dbt);
	dbt->data = (void *)p;
	dbt->size = (u_int32_t)len;
}

/* Write a 16-bit big-endian length. */
static void
store_put_u16(unsigned char *p, size_t v)
{
	p[0] = (v >> 8) & 0xff;
	p[1] = v & 0xff;
}

/* Read a 16-bit big-endian length. */
static size_t
store_get_u16(const unsigned char *p)
{
	return (((size_t)p[0] << 8) | p[1]);
}

/* Write a 64-bit big-endian two's complement integer. */
static void
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
static int64_t
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

/* Build a claims.db key; -1 if the user id is empty or too long. */
static int
store_claim_key(const unsigned char *numkey, const char *user_id,
    unsigned char *key, size_t *len)
{
	size_t	ulen;

	ulen = strnlen(user_id, USER_ID_MAX + 1);
	if (ulen == 0 || ulen > USER_ID_MAX)
		return (-1);
	memcpy(key, numkey, NUMKEY_LEN);
	memcpy(key + NUMKEY_LEN, user_id, ulen);
	*len = NUMKEY_LEN + ulen;
	return (0);
}

/* Pack a claim's key and record; -1 if a field is out of range. */
static int
store_claim_pack(const struct claim *c, unsigned char *key, size_t *klen,
    unsigned char *rec, size_t *rlen)
{
	size_t	elen, l4;

	if (store_claim_key(c->numkey, c->user_id, key, klen) != 0)
		return (-1);
	if (c->state != CLAIM_PENDING && c->state != CLAIM_ACTIVE)
		return (-1);
	if (c->source < 0 || c->source > UCHAR_MAX)
		return (-1);
	if ((elen = strnlen(c->enrol_id, sizeof c->enrol_id)) > ENROL_ID_MAX)
		return (-1);
	if ((l4 = strnlen(c->last4, sizeof c->last4)) > LAST4_LEN)
		return (-1);
	rec[0] = CLAIM_FORMAT;
	rec[CLAIM_OFF_STATE] = (unsigned char)c->state;
	rec[CLAIM_OFF_SOURCE] = (unsigned char)c->source;
	store_put_i64(rec + CLAIM_OFF_SINCE, c->since);
	store_put_i64(rec + CLAIM_OFF_EXPIRES, c->expires);
	memset(rec + CLAIM_OFF_LAST4, 0, LAST4_LEN);
	memcpy(rec + CLAIM_OFF_LAST4, c->last4, l4);
	store_put_u16(rec + CLAIM_OFF_ENROL_LEN, elen);
	memcpy(rec + CLAIM_OFF_ENROL, c->enrol_id, elen);
	*rlen = CLAIM_OFF_ENROL + elen;
	return (0);
}

/* Unpack a claims.db key and record; -1 (logged) if corrupt. */
static int
store_claim_unpack(const DBT *key, const DBT *data, struct claim *c)
{
	const unsigned char	*k = key->data, *rec = data->data;
	size_t			 ulen, elen;

	if (key->size <= NUMKEY_LEN || key->size > CLAIM_KEY_MAX)
		goto bad;
	if (data->size < CLAIM_OFF_ENROL || rec[0] != CLAIM_FORMAT)
		goto bad;
	elen = store_get_u16(rec + CLAIM_OFF_ENROL_LEN);
	if (elen > ENROL_ID_MAX || data->size != CLAIM_OFF_ENROL + elen)
		goto bad;
	ulen = key->size - NUMKEY_LEN;
	memset(c, 0, sizeof *c);
	memcpy(c->numkey, k, NUMKEY_LEN);
	memcpy(c->user_id, k + NUMKEY_LEN, ulen);
	c->state = rec[CLAIM_OFF_STATE];
	c->source = rec[CLAIM_OFF_SOURCE];
	c->since = store_get_i64(rec + CLAIM_OFF_SINCE);
	c->expires = store_get_i64(rec + CLAIM_OFF_EXPIRES);
	memcpy(c->last4, rec + CLAIM_OFF_LAST4, LAST4_LEN);
	memcpy(c->enrol_id, rec + CLAIM_OFF_ENROL, elen);
	return (0);

bad:
	log_warnx("store: undecodable record in claims.db (format %u, "
	    "%u bytes)", data->size > 0 ? rec[0] : 0, data->size);
	return (-1);
}

/* Append one claim to a growing array. */
static int
store_claims_add(struct store_claims *sc, const DBT *key, const DBT *data)
{
	if (sc->n == sc->size) {
		sc->size = sc->size == 0 ? 4 : sc->size * 2;
		sc->v = xreallocarray(sc->v, sc->size, sizeof *sc->v);
	}
	if (store_claim_unpack(key, data, &sc->v[sc->n]) != 0)
		return (STORE_CORRUPT);
	sc->n++;
	return (0);
}

/* End a claims scan: close the cursor, hand over or free the array. */
static int
store_claims_finish(struct store *st, DBC *dbc, int ret,
    struct store_claims *sc, struct claim **arrp, size_t *np,
    const char *what)
{
	int	r;

	if ((r = store_cursor_done(st, dbc, ret, what)) != STORE_OK ||
	    sc->n == 0) {
		free(sc->v);
		return (r);
	}
	*arrp = sc->v;
	*np = sc->n;
	return (STORE_OK);
}

/* Read every claim on a number, taking write locks (check-and-reserve). */
int
store_claims_by_number(struct store_txn *txn, const unsigned char *numkey,
    struct claim **arrp, size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_CLAIMS];
	struct store_claims	 sc = { NULL, 0, 0 };
	DBC			*dbc;
	DBT			 key, data;
	u_int32_t		 op;
	int			 ret;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open claims cursor"));
	store_dbt(&key, numkey, NUMKEY_LEN);
	memset(&data, 0, sizeof data);
	for (op = DB_SET_RANGE;; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op | DB_RMW)) != 0)
			break;
		if (key.size < NUMKEY_LEN ||
		    memcmp(key.data, numkey, NUMKEY_LEN) != 0)
			break;
		if ((ret = store_claims_add(&sc, &key, &data)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np,
	    "read claims by number"));
}

/*
 * Read every claim whose secondary key in index db is the string key (at
 * most max bytes; an empty or longer one matches nothing).
 */
static int
store_claims_by_index(struct store_txn *txn, enum store_db which,
    const char *key, size_t max, const char *what, struct claim **arrp,
    size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = st->db[which];
	struct store_claims	 sc = { NULL, 0, 0 };
	DBC			*dbc;
	DBT			 skey, pkey, data;
	size_t			 len;
	u_int32_t		 op;
	int			 ret;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	len = strnlen(key, max + 1);
	if (len == 0 || len > max)
		return (STORE_OK);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, what));
	store_dbt(&skey, key, len);
	memset(&pkey, 0, sizeof pkey);
	memset(&data, 0, sizeof data);
	for (op = DB_SET;; op = DB_NEXT_DUP) {
		ret = dbc->pget(dbc, &skey, &pkey, &data, op | DB_RMW);
		if (ret != 0)
			break;
		if ((ret = store_claims_add(&sc, &pkey, &data)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np, what));
}

/* Read every claim of a user, through claims_user.db. */
int
store_claims_by_user(struct store_txn *txn, const char *user_id,
    struct claim **arrp, size_t *np)
{
	return (store_claims_by_index(txn, STORE_DB_CLAIMS_USER, user_id,
	    USER_ID_MAX, "read claims by user", arrp, np));
}

/* Read every claim with an enrolment id, through claims_enrol.db. */
int
store_claims_by_enrol(struct store_txn *txn, const char *enrol_id,
    struct claim **arrp, size_t *np)
{
	return (store_claims_by_index(txn, STORE_DB_CLAIMS_ENROL, enrol_id,
	    ENROL_ID_MAX, "read claims by enrolment id", arrp, np));
}

/*
 * Read the state of the claim stored under key, for the counts: 0 if there
 * is none.  Callers have read the claim already (with DB_RMW), so its page
 * is cached and locked: this costs no I/O and no new lock.
 */
static int
store_claim_old(struct store_txn *txn, DBT *key, int *state)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 rec[CLAIM_OFF_STATE + 1];
	DBT		 data;
	int		 r;

	*state = 0;
	memset(&data, 0, sizeof data);
	data.data = rec;
	data.ulen = sizeof rec;
	data.dlen = sizeof rec;
	data.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;
	r = store_result(st, db->get(db, txn->tid, key, &data, DB_RMW),
	    "read claim");
	if (r == STORE_NOTFOUND)
		return (STORE_OK);
	if (r != STORE_OK)
		return (r);
	/* As at open: a claim that is not pending counts as active. */
	if (data.size > CLAIM_OFF_STATE &&
	    rec[CLAIM_OFF_STATE] == CLAIM_PENDING)
		*state = CLAIM_PENDING;
	else
		*state = CLAIM_ACTIVE;
	return (STORE_OK);
}

/* Note in the transaction that a claim went from state old to new (0: none). */
static void
store_count_state(struct store_txn *txn, int old, int new)
{
	if (old == 0)
		txn->d_claims++;
	else if (old == CLAIM_PENDING)
		txn->d_pending--;
	else
		txn->d_active--;
	if (new == 0)
		txn->d_claims--;
	else if (new == CLAIM_PENDING)
		txn->d_pending++;
	else
		txn->d_active++;
}

/* Write a claim, replacing any claim of the same user on the number. */
int
store_claim_put(struct store_txn *txn, const struct claim *c)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 kbuf[CLAIM_KEY_MAX], rbuf[CLAIM_REC_MAX];
	size_t		 klen, rlen;
	DBT		 key, data;
	int		 r, old;

	if (st->failed)
		return (STORE_ERROR);
	if (store_claim_pack(c, kbuf, &klen, rbuf, &rlen) != 0) {
		log_warnx("store: refusing to write an invalid claim");
		return (STORE_ERROR);
	}
	store_dbt(&key, kbuf, klen);
	store_dbt(&data, rbuf, rlen);
	if ((r = store_claim_old(txn, &key, &old)) != STORE_OK)
		return (r);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write claim");
	if (r == STORE_OK)
		store_count_state(txn, old, c->state);
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Delete a user's claim on a number; STORE_NOTFOUND if there is none. */
int
store_claim_del(struct store_txn *txn, const unsigned char *numkey,
    const char *user_id)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 kbuf[CLAIM_KEY_MAX];
	size_t		 klen;
	DBT		 key;
	int		 r, old;

	if (st->failed)
		return (STORE_ERROR);
	if (store_claim_key(numkey, user_id, kbuf, &klen) != 0)
		return (STORE_NOTFOUND);
	store_dbt(&key, kbuf, klen);
	if ((r = store_claim_old(txn, &key, &old)) != STORE_OK)
		return (r);
	if (old == 0)
		return (STORE_NOTFOUND);
	r = store_result(st, db->del(db, txn->tid, &key, 0), "delete claim");
	if (r == STORE_OK)
		store_count_state(txn, old, 0);
	return (r);
}

/*
 * Call cb with every claim in key order (number key, then user id), from
 * the first one, or from the one after the claim after when it is not
 * NULL, so that a long walk can go in short transactions.  cb returns 0 to
 * go on, anything else to stop; either way the result is STORE_OK unless
 * the store fails.
 */
int
store_claims_all(struct store_txn *txn, const struct claim *after,
    int (*cb)(const struct claim *, void *), void *arg)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 kbuf[CLAIM_KEY_MAX];
	size_t		 klen = 0;
	struct claim	 c;
	DBC		*dbc;
	DBT		 key, data;
	u_int32_t	 op = DB_FIRST;
	int		 ret;

	if (st->failed)
		return (STORE_ERROR);
	memset(&key, 0, sizeof key);
	if (after != NULL) {
		if (store_claim_key(after->numkey, after->user_id, kbuf,
		    &klen) != 0)
			return (STORE_ERROR);
		store_dbt(&key, kbuf, klen);
		op = DB_SET_RANGE;
	}
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open claims cursor"));
	memset(&data, 0, sizeof data);
	for (;; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op)) != 0)
			break;
		if (op == DB_SET_RANGE && key.size == klen &&
		    memcmp(key.data, kbuf, klen) == 0)
			continue;
		if (store_claim_unpack(&key, &data, &c) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		if (cb(&c, arg) != 0)
			break;
	}
	return (store_cursor_done(st, dbc, ret, "read every claim"));
}

/*
 * Read up to max pending claims that expire after 'after' and at or before
 * now, oldest first.
 */
int
store_claims_expired(struct store_txn *txn, int64_t after, int64_t now,
    size_t max, struct claim **arrp, size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_CLAIMS_EXPIRY];
	struct store_claims	 sc = { NULL, 0, 0 };
	DBC			*dbc;
	DBT			 skey, pkey, data;
	unsigned char		 from[STORE_TIME_LEN];
	u_int32_t		 op;
	int			 ret = 0;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open expiry index cursor"));
	memset(&skey, 0, sizeof skey);
	memset(&pkey, 0, sizeof pkey);
	memset(&data, 0, sizeof data);
	op = DB_FIRST;
	if (after >= 0) {
		/* The first key above 'after'. */
		store_put_i64(from, after + 1);
		store_dbt(&skey, from, sizeof from);
		op = DB_SET_RANGE;
	}
	for (; sc.n < max; op = DB_NEXT) {
		ret = dbc->pget(dbc, &skey, &pkey, &data, op | DB_RMW);
		if (ret != 0)
			break;
		if (skey.size != 8) {
			ret = STORE_CORRUPT;
			break;
		}
		if (store_get_i64(skey.data) > now)
			break;
		if ((ret = store_claims_add(&sc, &pkey, &data)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np,
	    "read expired claims"));
}

/*
 * Pack a conflict's key into kbuf and return its record, allocated; NULL if
 * a field is out of range.
 */
static unsigned char *
store_conflict_pack(const struct conflict *cf, unsigned char *kbuf,
    size_t *klen, size_t *rlen)
{
	unsigned char	*rec, *p;
	size_t		 llen, hlen, mlen, size, i;

	if (store_claim_key(cf->numkey, cf->user_id, kbuf, klen) != 0)
		return (NULL);
	if ((llen = strnlen(cf->log_id, sizeof cf->log_id)) > LOG_ID_MAX ||
	    strnlen(cf->last4, sizeof cf->last4) > LAST4_LEN ||
	    (mlen = strnlen(cf->method, sizeof cf->method)) > ENROL_ID_MAX ||
	    cf->nholders > 0xffff || cf->removal < 0 || cf->removal > 0xff ||
	    cf->removal_code < 0 || cf->removal_code > 0xffff)
		return (NULL);
	size = CONFLICT_OFF_LOG + llen + 2 + CONFLICT_RM_LEN + mlen;
	for (i = 0; i < cf->nholders; i++) {
		if ((hlen = strlen(cf->holders[i])) > USER_ID_MAX)
			return (NULL);
		size += 2 + hlen;
	}
	rec = xcalloc(1, size);
	rec[0] = CONFLICT_FORMAT;
	store_put_i64(rec + CONFLICT_OFF_SINCE, cf->since);
	memcpy(rec + CONFLICT_OFF_LAST4, cf->last4,
	    strnlen(cf->last4, sizeof cf->last4));
	store_put_u16(rec + CONFLICT_OFF_LOG_LEN, llen);
	memcpy(rec + CONFLICT_OFF_LOG, cf->log_id, llen);
	p = rec + CONFLICT_OFF_LOG + llen;
	store_put_u16(p, cf->nholders);
	p += 2;
	for (i = 0; i < cf->nholders; i++) {
		hlen = strlen(cf->holders[i]);
		store_put_u16(p, hlen);
		memcpy(p + 2, cf->holders[i], hlen);
		p += 2 + hlen;
	}
	p[0] = (unsigned char)cf->removal;
	store_put_i64(p + 1, cf->removal_at);
	store_put_u16(p + 9, (size_t)cf->removal_code);
	store_put_u16(p + 11, mlen);
	memcpy(p + CONFLICT_RM_LEN, cf->method, mlen);
	*rlen = size;
	return (rec);
}

/* Unpack a conflicts.db key and record; -1 (logged) if corrupt. */
static int
store_conflict_unpack(const DBT *key, const DBT *data, struct conflict *cf)
{
	const unsigned char	*k = key->data, *rec = data->data, *p;
	size_t			 llen;

	memset(cf, 0, sizeof *cf);
	if (key->size <= NUMKEY_LEN || key->size > CLAIM_KEY_MAX)
		goto bad;
	if (data->size < CONFLICT_OFF_LOG + 2 || (rec[0] != CONFLICT_FORMAT &&
	    rec[0] != CONFLICT_FORMAT_1))
		goto bad;
	llen = store_get_u16(rec + CONFLICT_OFF_LOG_LEN);
	if (llen > LOG_ID_MAX || data->size < CONFLICT_OFF_LOG + llen + 2)
		goto bad;
	memcpy(cf->numkey, k, NUMKEY_LEN);
	memcpy(cf->user_id, k + NUMKEY_LEN, key->size - NUMKEY_LEN);
	cf->since = store_get_i64(rec + CONFLICT_OFF_SINCE);
	memcpy(cf->last4, rec + CONFLICT_OFF_LAST4, LAST4_LEN);
	memcpy(cf->log_id, rec + CONFLICT_OFF_LOG, llen);
	p = store_conflict_holders(rec + CONFLICT_OFF_LOG + llen,
	    rec + data->size, cf);
	if (p == NULL)
		goto bad;
	if (rec[0] == CONFLICT_FORMAT_1 ? p != rec + data->size :
	    store_conflict_removal(p, rec + data->size, cf) != 0)
		goto bad;
	return (0);

bad:
	store_conflict_clear(cf);
	log_warnx("store: undecodable record in conflicts.db (%u bytes)",
	    data->size);
	return (-1);
}

/* Unpack the holders list at p; return its end, or NULL if corrupt. */
static const unsigned char *
store_conflict_holders(const unsigned char *p, const unsigned char *end,
    struct conflict *cf)
{
	size_t	n, i, hlen;

	n = store_get_u16(p);
	p += 2;
	if (n > 0)
		cf->holders = xcalloc(n, sizeof *cf->holders);
	for (i = 0; i < n; i++) {
		if (end - p < 2)
			return (NULL);
		hlen = store_get_u16(p);
		p += 2;
		if (hlen > USER_ID_MAX || (size_t)(end - p) < hlen)
			return (NULL);
		cf->holders[i] = xmalloc(hlen + 1);
		memcpy(cf->holders[i], p, hlen);
		cf->holders[i][hlen] = '\0';
		cf->nholders++;
		p += hlen;
	}
	return (p);
}

/* Unpack the removal part that runs from p to end. */
static int
store_conflict_removal(const unsigned char *p, const unsigned char *end,
    struct conflict *cf)
{
	size_t	mlen;

	if (end - p < CONFLICT_RM_LEN)
		return (-1);
	cf->removal = p[0];
	cf->removal_at = store_get_i64(p + 1);
	cf->removal_code = (int)store_get_u16(p + 9);
	mlen = store_get_u16(p + 11);
	if (mlen > ENROL_ID_MAX || (size_t)(end - p) != CONFLICT_RM_LEN + mlen)
		return (-1);
	memcpy(cf->method, p + CONFLICT_RM_LEN, mlen);
	cf->method[mlen] = '\0';
	return (0);
}

/* Free a conflict's holders. */
void
store_conflict_clear(struct conflict *cf)
{
	size_t	i;

	for (i = 0; i < cf->nholders; i++)
		free(cf->holders[i]);
	free(cf->holders);
	cf->holders = NULL;
	cf->nholders = 0;
}

/* Record a conflict, replacing one for the same number and user. */
int
store_conflict_put(struct store_txn *txn, const struct conflict *cf)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CONFLICTS];
	unsigned char	 kbuf[CLAIM_KEY_MAX], *rec;
	size_t		 klen, rlen;
	DBT		 key, data;
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	if ((rec = store_conflict_pack(cf, kbuf, &klen, &rlen)) == NULL) {
		log_warnx("store: refusing to write an invalid conflict");
		return (STORE_ERROR);
	}
	store_dbt(&key, kbuf, klen);
	store_dbt(&data, rec, rlen);
	/* A new conflict counts; one that replaces another does not. */
	ret = db->put(db, txn->tid, &key, &data, DB_NOOVERWRITE);
	if (ret == 0)
		txn->d_conflicts++;
	else if (ret == DB_KEYEXIST)
		ret = db->put(db, txn->tid, &key, &data, 0);
	r = store_result(st, ret, "write conflict");
	free(rec);
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Read the conflict of a user on a number into *cf; release its holders
 * with store_conflict_clear.
 */
int
store_conflict_get(struct store_txn *txn, const unsigned char *numkey,
    const char *user_id, struct conflict *cf)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CONFLICTS];
	unsigned char	 kbuf[CLAIM_KEY_MAX];
	size_t		 klen;
	DBT		 key, data;
	int		 r;

	memset(cf, 0, sizeof *cf);
	if (st->failed)
		return (STORE_ERROR);
	if (store_claim_key(numkey, user_id, kbuf, &klen) != 0)
		return (STORE_NOTFOUND);
	store_dbt(&key, kbuf, klen);
	memset(&data, 0, sizeof data);
	r = store_result(st, db->get(db, txn->tid, &key, &data, DB_RMW),
	    "read conflict");
	if (r != STORE_OK)
		return (r);
	if (store_conflict_unpack(&key, &data, cf) != 0)
		return (store_result(st, STORE_CORRUPT, "read conflict"));
	return (STORE_OK);
}

/* Read every conflict; free the array with store_conflicts_free. */
int
store_conflicts(struct store_txn *txn, struct conflict **arrp, size_t *np)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CONFLICTS];
	struct conflict	*v = NULL;
	size_t		 n = 0, size = 0;
	DBC		*dbc;
	DBT		 key, data;
	int		 ret, r;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open conflicts cursor"));
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	while ((ret = dbc->get(dbc, &key, &data, DB_NEXT)) == 0) {
		if (n == size) {
			size = size == 0 ? 4 : size * 2;
			v = xreallocarray(v, size, sizeof *v);
		}
		if (store_conflict_unpack(&key, &data, &v[n]) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		n++;
	}
	if ((r = store_cursor_done(st, dbc, ret, "read conflicts")) !=
	    STORE_OK || n == 0) {
		store_conflicts_free(v, n);
		return (r);
	}
	*arrp = v;
	*np = n;
	return (STORE_OK);
}

/* Free an array of conflicts and their holders. */
void
store_conflicts_free(struct conflict *v, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++)
		store_conflict_clear(&v[i]);
	free(v);
}

/* Read a metadata value; STORE_NOTFOUND if it is not set. */
int
store_meta_get(struct store_txn *txn, const char *name, char **valuep)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_META];
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
	DB		*db = st->db[STORE_DB_META];
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

/* Remember a log id seen at now; STORE_EXISTS if it was seen before. */
int
store_seen_add(struct store_txn *txn, const char *log_id, int64_t now)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_SEEN];
	unsigned char	 tbuf[STORE_TIME_LEN];
	size_t		 len;
	DBT		 key, data;
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	len = strnlen(log_id, LOG_ID_MAX + 1);
	if (len == 0 || len > LOG_ID_MAX || now < 0) {
		log_warnx("store: refusing to write an invalid seen log id");
		return (STORE_ERROR);
	}
	store_put_i64(tbuf, now);
	store_dbt(&key, log_id, len);
	store_dbt(&data, tbuf, sizeof tbuf);
	ret = db->put(db, txn->tid, &key, &data, DB_NOOVERWRITE);
	if (ret == DB_KEYEXIST)
		return (STORE_EXISTS);
	r = store_result(st, ret, "write seen log id");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Forget up to max log ids seen before the given time, oldest first.  A
 * delete through the secondary cursor deletes the seen.db record too.
 */
int
store_seen_prune(struct store_txn *txn, int64_t before, size_t max,
    size_t *prunedp)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_SEEN_DATE];
	DBC		*dbc;
	DBT		 skey, data;
	int		 ret = 0, r;

	*prunedp = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open seen index cursor"));
	memset(&skey, 0, sizeof skey);
	memset(&data, 0, sizeof data);
	data.flags = DB_DBT_PARTIAL;	/* dlen 0: do not copy the data */
	while (*prunedp < max) {
		if ((ret = dbc->get(dbc, &skey, &data, DB_NEXT | DB_RMW)) != 0)
			break;
		if (skey.size != STORE_TIME_LEN) {
			ret = STORE_CORRUPT;
			break;
		}
		if (store_get_i64(skey.data) >= before)
			break;
		if ((ret = dbc->del(dbc, 0)) != 0)
			break;
		(*prunedp)++;
	}
	if ((r = store_cursor_done(st, dbc, ret, "prune seen log ids")) !=
	    STORE_OK)
		*prunedp = 0;
	return (r);
}

/*
 * Build a watermarks.db key: the user id, then for a number a NUL and the
 * number key.  -1 if the user id is empty or too long.
 */
static int
store_watermark_key(const char *user_id, const unsigned char *numkey,
    unsigned char *key, size_t *len)
{
	size_t	ulen;

	ulen = strnlen(user_id, USER_ID_MAX + 1);
	if (ulen == 0 || ulen > USER_ID_MAX)
		return (-1);
	memcpy(key, user_id, ulen);
	*len = ulen;
	if (numkey != NULL) {
		key[ulen] = '\0';
		memcpy(key + ulen + 1, numkey, NUMKEY_LEN);
		*len += 1 + NUMKEY_LEN;
	}
	return (0);
}

/* Read a user's release watermark, user-wide or for one number (ms). */
int
store_watermark_get(struct store_txn *txn, const char *user_id,
    const unsigned char *numkey, int64_t *datep)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_WATERMARKS];
	unsigned char	 kbuf[WATERMARK_KEY_MAX];
	size_t		 klen;
	DBT		 key, data;
	int		 r;

	*datep = 0;
	if (st->failed)
		return (STORE_ERROR);
	if (store_watermark_key(user_id, numkey, kbuf, &klen) != 0)
		return (STORE_NOTFOUND);
	store_dbt(&key, kbuf, klen);
	memset(&data, 0, sizeof data);
	r = store_result(st, db->get(db, txn->tid, &key, &data, DB_RMW),
	    "read watermark");
	if (r != STORE_OK)
		return (r);
	if (data.size != STORE_TIME_LEN) {
		log_warnx("store: undecodable record in watermarks.db "
		    "(%u bytes)", data.size);
		return (STORE_ERROR);
	}
	*datep = store_get_i64(data.data);
	return (STORE_OK);
}

/* Raise a release watermark to date_ms; it never goes down. */
int
store_watermark_raise(struct store_txn *txn, const char *user_id,
    const unsigned char *numkey, int64_t date_ms)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_WATERMARKS];
	unsigned char	 kbuf[WATERMARK_KEY_MAX], tbuf[STORE_TIME_LEN];
	size_t		 klen;
	int64_t		 cur;
	DBT		 key, data;
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	if (store_watermark_key(user_id, numkey, kbuf, &klen) != 0) {
		log_warnx("store: refusing to write an invalid watermark");
		return (STORE_ERROR);
	}
	r = store_watermark_get(txn, user_id, numkey, &cur);
	if (r == STORE_OK && cur >= date_ms)
		return (STORE_OK);
	if (r != STORE_OK && r != STORE_NOTFOUND)
		return (r);
	store_put_i64(tbuf, date_ms);
	store_dbt(&key, kbuf, klen);
	store_dbt(&data, tbuf, sizeof tbuf);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write watermark");
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
	struct store_counts	*c = &st->counts;
	struct store_txn	*txn;
	char			*saved = NULL;
	int			 r;

	memset(c, 0, sizeof *c);
	if ((r = store_txn_begin(st, &txn)) != STORE_OK)
		goto fail;
	r = store_meta_get(txn, STORE_META_COUNTS, &saved);
	if (r == STORE_OK && sscanf(saved, "%" SCNu64 " %" SCNu64 " %" SCNu64
	    " %" SCNu64, &c->claims, &c->pending, &c->conflicts,
	    &c->verify) == 4 && c->pending <= c->claims)
		r = store_meta_del(txn, STORE_META_COUNTS);
	else if (r == STORE_OK || r == STORE_NOTFOUND) {
		memset(c, 0, sizeof *c);
		r = store_count_all(st, txn);
	}
	free(saved);
	if (r != STORE_OK) {
		store_txn_abort(txn);
		goto fail;
	}
	if (store_txn_commit(txn) != STORE_OK || store_flush(st) != STORE_OK)
		goto fail;
	c->active = c->claims - c->pending;
	st->counted = 1;
	log_debug("store: %llu claim(s), %llu pending, %llu conflict(s)",
	    (unsigned long long)c->claims, (unsigned long long)c->pending,
	    (unsigned long long)c->conflicts);
	return (0);

fail:
	xasprintf(cause, "cannot count the records in %s", st->dir);
	return (-1);
}

/* Count every claim, pending claim, conflict and verification. */
static int
store_count_all(struct store *st, struct store_txn *txn)
{
	struct store_counts	*c = &st->counts;
	DB_TXN			*tid = txn->tid;
	time_t			 t0 = time(NULL);
	int			 ret;

	ret = store_count_db(st->db[STORE_DB_CLAIMS], tid, &c->claims);
	if (ret == 0)
		ret = store_count_db(st->db[STORE_DB_CLAIMS_EXPIRY], tid,
		    &c->pending);
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

/* Leave the counts for the next open (a clean close). */
static void
store_count_save(struct store *st)
{
	struct store_counts	*c = &st->counts;
	struct store_txn	*txn;
	char			 value[128];
	int			 r;

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
	DB		*db = st->db[STORE_DB_META];
	DBT		 key;
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	store_dbt(&key, name, strlen(name));
	r = store_result(st, db->del(db, txn->tid, &key, 0), "delete metadata");
	return (r == STORE_NOTFOUND ? STORE_OK : r);
}

/* Return the counts of committed claims and conflicts. */
int
store_count(struct store *st, struct store_counts *counts)
{
	if (st->failed) {
		memset(counts, 0, sizeof *counts);
		return (STORE_ERROR);
	}
	*counts = st->counts;
	return (STORE_OK);
}

/*
 * Ask for a verification of a user through the Management API, adding
 * reasons to one already asked.  A new request beyond max requests waiting
 * is refused with STORE_FULL.
 */
int
store_verify_add(struct store_txn *txn, const char *user_id, int reasons,
    int64_t now, uint64_t max)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_VERIFY];
	unsigned char	 rec[VERIFY_REC_LEN];
	DBT		 key, data;
	size_t		 len = strlen(user_id);
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX || reasons <= 0 || reasons > 0xff ||
	    now < 0) {
		log_warnx("store: refusing to write an invalid verification");
		return (STORE_ERROR);
	}
	store_dbt(&key, user_id, len);
	memset(&data, 0, sizeof data);
	ret = db->get(db, txn->tid, &key, &data, DB_RMW);
	if (ret == 0 && data.size == VERIFY_REC_LEN &&
	    ((unsigned char *)data.data)[0] == VERIFY_FORMAT) {
		memcpy(rec, data.data, sizeof rec);
		if ((rec[1] | reasons) == rec[1])
			return (STORE_OK);
		rec[1] |= (unsigned char)reasons;
	} else if (ret == 0 || ret == DB_NOTFOUND) {
		/* New, or an undecodable record to overwrite. */
		if (ret == DB_NOTFOUND && st->counts.verify +
		    (uint64_t)txn->d_verify >= max)
			return (STORE_FULL);
		rec[0] = VERIFY_FORMAT;
		rec[1] = (unsigned char)reasons;
		store_put_i64(rec + 2, now);
		if (ret == DB_NOTFOUND)
			txn->d_verify++;
	} else
		return (store_result(st, ret, "read verification"));
	store_dbt(&data, rec, sizeof rec);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write verification");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Read the first verification waiting (in user id order): its user into
 * user_id (USER_ID_MAX + 1 bytes), its reasons and when it was asked.
 */
int
store_verify_first(struct store_txn *txn, char *user_id, int *reasons,
    int64_t *queued)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_VERIFY];
	const unsigned char	*rec;
	DBC			*dbc;
	DBT			 key, data;
	int			 ret;

	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open verification cursor"));
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	ret = dbc->get(dbc, &key, &data, DB_FIRST);
	if (ret == 0) {
		rec = data.data;
		if (key.size == 0 || key.size > USER_ID_MAX ||
		    data.size != VERIFY_REC_LEN || rec[0] != VERIFY_FORMAT)
			ret = STORE_CORRUPT;
		else {
			memcpy(user_id, key.data, key.size);
			user_id[key.size] = '\0';
			*reasons = rec[1];
			*queued = store_get_i64(rec + 2);
		}
	}
	if (ret == DB_NOTFOUND) {
		(void)dbc->close(dbc);
		return (STORE_NOTFOUND);
	}
	return (store_cursor_done(st, dbc, ret, "read verification"));
}

/* Forget a user's verification request (STORE_OK if there was none). */
int
store_verify_del(struct store_txn *txn, const char *user_id)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_VERIFY];
	DBT		 key;
	size_t		 len = strlen(user_id);
	int		 ret;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX)
		return (STORE_OK);
	store_dbt(&key, user_id, len);
	ret = db->del(db, txn->tid, &key, 0);
	if (ret == 0)
		txn->d_verify--;
	if (ret == DB_NOTFOUND)
		return (STORE_OK);
	return (store_result(st, ret, "delete verification"));
}

/*
 * Read a user's reservation window: when it started and how many numbers
 * were asked for in it.  STORE_NOTFOUND if there is none (or it does not
 * decode: it is only a counter, and a fresh one is safe).
 */
int
store_limit_get(struct store_txn *txn, const char *user_id, int64_t *start,
    uint32_t *count)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_LIMITS];
	const unsigned char	*rec;
	DBT			 key, data;
	size_t			 len = strlen(user_id);
	int			 ret;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX)
		return (STORE_NOTFOUND);
	store_dbt(&key, user_id, len);
	memset(&data, 0, sizeof data);
	ret = db->get(db, txn->tid, &key, &data, DB_RMW);
	if (ret != 0)
		return (store_result(st, ret, "read reservation window"));
	rec = data.data;
	if (data.size != LIMIT_REC_LEN || rec[0] != LIMIT_FORMAT)
		return (STORE_NOTFOUND);
	*start = store_get_i64(rec + 1);
	*count = (uint32_t)rec[9] << 24 | (uint32_t)rec[10] << 16 |
	    (uint32_t)rec[11] << 8 | rec[12];
	return (STORE_OK);
}

/* Write a user's reservation window. */
int
store_limit_put(struct store_txn *txn, const char *user_id, int64_t start,
    uint32_t count)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_LIMITS];
	unsigned char	 rec[LIMIT_REC_LEN];
	DBT		 key, data;
	size_t		 len = strlen(user_id);
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX || start < 0) {
		log_warnx("store: refusing to write an invalid reservation "
		    "window");
		return (STORE_ERROR);
	}
	rec[0] = LIMIT_FORMAT;
	store_put_i64(rec + 1, start);
	rec[9] = count >> 24;
	rec[10] = (count >> 16) & 0xff;
	rec[11] = (count >> 8) & 0xff;
	rec[12] = count & 0xff;
	store_dbt(&key, user_id, len);
	store_dbt(&data, rec, sizeof rec);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write reservation window");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Walk on through the reservation windows from where the last walk
 * stopped, looking at up to max of them, and delete those that started
 * before the given time (they no longer limit anyone).  *wrapped is set
 * when the walk reached the end and will start again from the first.  The
 * windows have no index by date: a walk in key order keeps each
 * reservation at one write, and a window left over for a while costs only
 * its few bytes.  The position is kept in memory; an aborted transaction
 * may skip a stretch, which the next pass covers.
 */
int
store_limits_prune(struct store_txn *txn, int64_t before, size_t max,
    size_t *prunedp, int *wrapped)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_LIMITS];
	const unsigned char	*rec;
	DBC			*dbc;
	DBT			 key, data;
	size_t			 seen = 0;
	int			 ret, r, flag;

	*prunedp = 0;
	*wrapped = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open reservation cursor"));
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	if (st->limits_next_len > 0) {
		store_dbt(&key, st->limits_next, st->limits_next_len);
		flag = DB_SET_RANGE;
	} else
		flag = DB_FIRST;
	for (; seen < max; flag = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, flag | DB_RMW)) != 0)
			break;
		seen++;
		rec = data.data;
		if (data.size != LIMIT_REC_LEN || rec[0] != LIMIT_FORMAT ||
		    store_get_i64(rec + 1) < before) {
			if ((ret = dbc->del(dbc, 0)) != 0)
				break;
			(*prunedp)++;
		}
	}
	if (ret == 0 && key.size > 0 && key.size <= USER_ID_MAX) {
		/* Resume after this key: it plus a NUL is the next one up. */
		memcpy(st->limits_next, key.data, key.size);
		st->limits_next_len = key.size;
		if (key.size < USER_ID_MAX)
			st->limits_next[st->limits_next_len++] = '\0';
	} else if (ret == DB_NOTFOUND) {
		st->limits_next_len = 0;
		*wrapped = 1;
	}
	if ((r = store_cursor_done(st, dbc, ret, "prune reservation "
	    "windows")) != STORE_OK)
		*prunedp = 0;
	return (r);
}
