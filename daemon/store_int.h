/*
 * What the store's files share (store.c, store_claims.c, store_events.c,
 * store_backup.c): the databases, the record formats, the store and
 * transaction structures and the helpers for keys, integers and errors.
 * Nothing outside the store includes it.
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#define STORE_DIR_MODE		0700
#define STORE_FILE_MODE		0600

/*
 * Number record, format 3 (numbers.db): the claims on one number.  The
 * fixed part, then one entry per holder in user id order; an entry is
 * state(1) source(1) since(6) [expires(8), pending only] user_len(1 or 2)
 * user_id enrol_len(1) enrol_id.  'since' is in milliseconds (48 bits:
 * until the year 10889).  A user_len below 0x80 is one byte; a longer one
 * is two, big-endian, with the top bit set.  Format 2 (schema 4) is the
 * same with since(4) in seconds: still read, never written.
 */
#define NUMBER_FORMAT		3
#define NUMBER_FORMAT_2		2	/* since in seconds, 4 bytes */
#define NUMBER_OFF_LAST4	1
#define NUMBER_OFF_ENTRIES	(NUMBER_OFF_LAST4 + LAST4_LEN)
#define NUMBER_ENTRY_FIXED	8	/* state, source, since */
#define NUMBER_ENTRY_FIXED_2	6	/* the same in format 2 */
#define NUMBER_SINCE_MAX	((int64_t)1 << 48)	/* ms, excluded */
#define NUMBER_ENTRY_MAX	(NUMBER_ENTRY_FIXED + 8 + 2 + USER_ID_MAX + \
				    1 + ENROL_ID_MAX)
#define CLAIM_KEY_MAX		(NUMKEY_LEN + USER_ID_MAX)

/* The keys of the user and enrolment indexes: a keyed 64-bit hash. */
#define INDEX_HASH_LEN		8

/* Conflict record, format 2: the fixed part before the holders. */
#define CONFLICT_FORMAT		3
#define CONFLICT_FORMAT_2	2	/* no resolved date */
#define CONFLICT_FORMAT_1	1	/* no removal part */
#define CONFLICT_RESOLVED_LEN	8	/* format 3: resolved, last */
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
#define VERIFY_FORMAT		2	/* with tries and not-before */
#define VERIFY_REC_LEN		20
#define VERIFY_FORMAT_1		1	/* reasons, queued: still read */
#define VERIFY_REC_LEN_1	10

/* Seen and watermark records: one big-endian int64. */
#define STORE_TIME_LEN		8
#define WATERMARK_KEY_MAX	(USER_ID_MAX + 1 + NUMKEY_LEN)

enum store_db {
	STORE_DB_NUMBERS,
	STORE_DB_NUMBERS_USER,
	STORE_DB_NUMBERS_EXPIRY,
	STORE_DB_NUMBERS_ENROL,
	STORE_DB_CONFLICTS,
	STORE_DB_SEEN,
	STORE_DB_SEEN_DATE,
	STORE_DB_WATERMARKS,
	STORE_DB_VERIFY,
	STORE_DB_LIMITS,
	STORE_DB_META,
	STORE_DB_COUNT
};

struct store_flusher;
struct store_backup;
struct store_closer;
struct store_opener;

struct store {
	char		*dir;
	int		 lock_fd;	/* flock on <dir>/phoneclaimd.lock */
	DB_ENV		*env;
	DB		*db[STORE_DB_COUNT];
	int		 env_open;
	atomic_int	 failed;	/* set once, from any thread */
	void		(*fail_cb)(void *);
	void		*fail_arg;
	struct store_counts counts;	/* of committed data */
	struct store_flusher *flusher;	/* NULL: flushes are synchronous */
	struct store_backup *backup;	/* NULL: no backup running */
	struct store_closer *closer;	/* NULL: handles close here */
	struct store_opener *opener;	/* NULL: no group */
	atomic_int	 opening;	/* the opener has the databases */
	atomic_int	 lockout;	/* 1: reopening, 2: met a lockout */
	int		 counted;	/* counts are right: save them */
	int		 dbs_open;	/* replica or master (repl.c) */
	db_mutex_t	 db_mutex[STORE_DB_COUNT];	/* kept aside */
	u_int32_t	 db_create;	/* DB_CREATE, 0 on a replica */
	pthread_t	 loop;		/* the thread that opened it */
	pthread_mutex_t	 counts_mu;	/* counts: commits on any thread */
	char		 limits_next[USER_ID_MAX];	/* prune from here */
	size_t		 limits_next_len;		/* 0: the start */
};

/* A transaction and the changes it makes to the counts, if it commits. */
struct store_txn {
	struct store	*st;
	DB_TXN		*tid;
	struct store_txn *parent;	/* a child's, else NULL */
	int64_t		 d_claims;
	int64_t		 d_active;
	int64_t		 d_pending;
	int64_t		 d_conflicts;
	int64_t		 d_verify;
};

/* store.c */
extern unsigned char	store_index_key[STORE_INDEX_KEY_LEN];
int	store_env_config(DB_ENV *, uint64_t);
int	store_file_exists(struct store *, const char *);
int	store_end_key(DB *, DB_TXN *, u_int32_t, void *, size_t, size_t *);
db_mutex_t store_unthread(DB *);
uint64_t store_count_verify(struct store *);
int	store_handles_open(struct store *, DB **, db_mutex_t *);
void	store_handles_close(DB **, db_mutex_t *);
void	store_rethread(DB *, db_mutex_t);
int	store_result(struct store *, int, const char *);
int	store_cursor_done(struct store *, DBC *, int, const char *);
void	store_dbt(DBT *, const void *, size_t);
void	store_put_u16(unsigned char *, size_t);
size_t	store_get_u16(const unsigned char *);
void	store_put_i64(unsigned char *, int64_t);
int64_t	store_get_i64(const unsigned char *);

/* store_claims.c: index keys, counting, the record of a number. */
int	store_user_key_cb(DB *, const DBT *, const DBT *, DBT *);
int	store_expiry_key_cb(DB *, const DBT *, const DBT *, DBT *);
int	store_enrol_key_cb(DB *, const DBT *, const DBT *, DBT *);
void	store_index_hash(const void *, size_t, unsigned char *);
int	store_number_format_ok(const unsigned char *, size_t);
int	store_claims_count(struct store *, DB_TXN *, uint64_t *, uint64_t *);
int	store_number_pack(const struct claim *, size_t, unsigned char **,
	    size_t *);
int	store_number_repack(const DBT *, const DBT *, unsigned char **,
	    size_t *);

/* store_thread.c: each thread's handles on the databases. */
DB	*store_db(struct store *, enum store_db);
int	store_thread_enter(struct store *);
int	store_threads_prepare(struct store *, int, char **);
void	store_threads_close(struct store *);

/* store_role.c: a group's closes and openings, off the loop. */
int	store_closer_hand(struct store *);
void	store_closer_stop(struct store *);
void	store_opener_stop(struct store *);
int	store_dbs_mine(struct store *);
int	store_on_opener(void);

/* store_events.c, store_backup.c, store_migrate.c */
int	store_seen_index_build(struct store *, DB_TXN *);
void	store_backup_stop(struct store *);
int	store_migrate(struct store *, long long, char **);

#endif /* STORE_INT_H */
