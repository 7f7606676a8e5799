/*
 * phoneclaimd: one user per SMS/voice MFA phone number for Auth0.
 *
 * Shared structures and each module's exported functions, one section per
 * source file.  Requests flow one way: http -> api -> claims -> store.
 */
#ifndef PHONECLAIMD_H
#define PHONECLAIMD_H

#include <sys/types.h>

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <event2/event.h>
#include <event2/http.h>

#include "phone.h"

#define PHONECLAIMD_CONF	"/etc/phoneclaimd/phoneclaimd.conf"

/* Sizes of the things a claim is made of. */
#define NUMKEY_LEN	16	/* HMAC-SHA256 of the E.164 number, cut */
#define USER_ID_MAX	512	/* bytes of UTF-8 */
#define LAST4_LEN	4
#define ENROL_ID_MAX	128
#define LOG_ID_MAX	128

/* Exit statuses (DESIGN section 7). */
#define EXIT_OK		0
#define EXIT_RUNTIME	1
#define EXIT_CONFIG	2

/* conf.c */
enum conf_mode {
	CONF_MODE_ENFORCE = 0,
	CONF_MODE_MONITOR
};

#define CONF_PEERS_MAX	8
#define CONF_THREADS_MAX 256	/* threads (the table in conf.c says 256) */

/* A member of the replication group: its repmgr and API addresses. */
struct conf_peer {
	char		*repl;
	char		*api;
	int		 line;
};

struct conf {
	char		*path;
	char		*listen;
	char		*state_dir;
	char		*status_socket;
	char		*api_token_file;
	char		*log_stream_token_file;
	char		*hash_key_file;
	int		 mode;
	long long	 pending_ttl;
	long long	 max_users_per_number;
	long long	 max_reservations_per_user;	/* an hour; 0: no cap */
	char		*exempt_numbers_file;
	char		*default_region;
	long long	 max_body_size;
	long long	 max_body_memory;	/* all bodies together */
	long long	 cache_size;		/* bytes of Berkeley DB cache */
	long long	 log_file_size;		/* bytes of each log file */
	long long	 checkpoint_interval;	/* seconds */
	long long	 dedup_retention;
	int		 log_level;
	long long	 request_timeout;
	long long	 max_connections;
	long long	 threads;		/* claim threads; 1: the loop */
	char		*tls_cert_file;		/* NULL: plain HTTP */
	char		*tls_key_file;
	char		*auth0_domain;		/* NULL: no Management API */
	char		*auth0_client_id;
	char		*auth0_client_secret_file;
	char		*auth0_base_url;	/* NULL: https://domain */
	long long	 backfill_idle;
	char		*backfill_since;	/* ISO date, or NULL */
	int64_t		 backfill_since_t;	/* the same, seconds */
	char		*on_conflict;		/* "report" or "remove" */
	long long	 reconcile_interval;	/* seconds; 0: off */
	long long	 reconcile_share;	/* percent of the rate limit */
	int		 on_conflict_remove;
	char		*repl_local;		/* NULL: no replication */
	struct conf_peer repl_peers[CONF_PEERS_MAX];
	size_t		 repl_npeers;
	long long	 repl_priority;
	char		*repl_ack_policy;	/* quorum, all, one */
	char		*repl_ack_durability;	/* disk, memory */
	long long	 repl_ack_timeout;	/* ms */
	long long	 repl_election_timeout;	/* ms */
	long long	 repl_heartbeat;	/* ms */
	long long	 repl_forward_timeout;	/* ms */
	long long	 repl_clock_warn;	/* ms */
	char		*repl_ca_file;		/* to verify peers' TLS */
};

struct conf	*conf_load(const char *, char **);
void		 conf_free(struct conf *);
int		 conf_read_secret(const char *, char **, size_t *, char **);
int		 conf_check_private(const char *, char **);
int		 conf_read_private(const char *, void *, size_t, size_t *,
		     char **);
const char	*conf_key_name(size_t);
const char	*conf_mode_name(int);

/* hash.c */
#define HASH_DIGEST_LEN	32
#define HASH_CHECK_LEN	(2 * HASH_DIGEST_LEN)	/* hex, without the NUL */
#define STORE_INDEX_KEY_LEN	16	/* SipHash key of the store's indexes */
#define STORE_META_HASH_CHECK	"hash_key_check"	/* in meta.db */

int		 hash_init(const char *, char **);
int		 hash_load(const char *, char **);
void		 hash_check(char *);
void		 hash_free(void);
void		 hash_number(const char *, unsigned char *);
void		 hash_index_key(unsigned char *);
void		 hash_digest(const void *, size_t, unsigned char *);
int		 hash_digest_equal(const unsigned char *, const unsigned char *);

/* json.c */
#define JSON_MAX_DEPTH	32

struct yajl_val_s;
struct yajl_val_s *json_parse(const char *, size_t, char **);
struct yajl_val_s *json_parse_strict(const char *, size_t, char **);
int		 json_utf8_ok(const char *, size_t);
struct yajl_val_s *json_parse_items(const char *, size_t, size_t, int *,
		     char **);
void		 json_free(struct yajl_val_s *);
char		*json_text(struct yajl_val_s *, size_t *);

/* store.c */
#define STORE_OK	 0
#define STORE_ERROR	-1	/* the environment failed: answer 503 */
#define STORE_RETRY	-2	/* deadlock: abort and run the transaction again */
#define STORE_NOTFOUND	-3
#define STORE_EXISTS	-4	/* a seen log id was seen before */
#define STORE_FULL	-5	/* too many verifications waiting */

#define STORE_SCHEMA_VERSION	5

enum claim_state {
	CLAIM_PENDING = 1,
	CLAIM_ACTIVE = 2
};

enum claim_source {
	CLAIM_SRC_ENROLLMENT = 1,
	CLAIM_SRC_CHALLENGE,
	CLAIM_SRC_ADMIN,
	CLAIM_SRC_IMPORT,
	CLAIM_SRC_LOGSTREAM,
	CLAIM_SRC_VERIFY,	/* the Management API showed the method */
	CLAIM_SRC_CONFLICT,	/* a conflict's user, once the holder left */
	CLAIM_SRC_BOOTSTRAP	/* learned by phoneclaimctl bootstrap */
};

/* What became of a conflicting phone method (on_conflict = remove). */
enum conflict_removal {
	CONFLICT_RM_NONE = 0,	/* report only */
	CONFLICT_RM_PENDING,	/* to delete through the Management API */
	CONFLICT_RM_DONE,	/* deleted */
	CONFLICT_RM_ABSENT,	/* already gone (404) */
	CONFLICT_RM_FAILED	/* refused; removal_code says how */
};

/* Why a user's phone methods are to be read (a bit mask). */
#define VERIFY_EXPIRING		0x01	/* a reservation is about to lapse */
#define VERIFY_UNMATCHED	0x02	/* an enrolment matched no claim */
#define VERIFY_AMBIGUOUS	0x04	/* an unenrolment named no claim */
#define VERIFY_PROMOTED		0x08	/* a conflict's user became holder */
#define VERIFY_RECONCILE	0x10	/* reconciliation: every claim active
					   when asked must be backed */

/* A waiting verification (verify.db). */
struct verify_req {
	int		 reasons;
	int64_t		 queued;	/* when it was first asked */
	int		 tries;		/* failed lookups so far */
	int64_t		 not_before;	/* not retried before (seconds) */
};

struct claim {
	unsigned char	 numkey[NUMKEY_LEN];
	char		 user_id[USER_ID_MAX + 1];
	int		 state;
	int		 source;
	int64_t		 since_ms;	/* date that made or confirmed it */
	int64_t		 expires;	/* pending: when it lapses; else 0 */
	char		 last4[LAST4_LEN + 1];
	char		 enrol_id[ENROL_ID_MAX + 1];
};

struct conflict {
	unsigned char	 numkey[NUMKEY_LEN];
	char		 user_id[USER_ID_MAX + 1];	/* who conflicted */
	char		 last4[LAST4_LEN + 1];
	int64_t		 since;
	char		 log_id[LOG_ID_MAX + 1];	/* "" if none */
	char		**holders;	/* users holding the number then */
	size_t		 nholders;
	int		 removal;	/* enum conflict_removal */
	int64_t		 removal_at;	/* when it was settled, or 0 */
	int		 removal_code;	/* HTTP status of the DELETE, or 0 */
	char		 method[ENROL_ID_MAX + 1];	/* "dev_..." or "" */
	int64_t		 resolved;	/* its user became the holder, or 0 */
};

struct store_counts {
	uint64_t	 claims;
	uint64_t	 active;
	uint64_t	 pending;
	uint64_t	 conflicts;
	uint64_t	 verify;	/* verifications waiting */
};

struct store;
struct store_txn;

/* What a backup made (files and bytes of the copy), or why it failed. */
struct store_backup_result {
	int			 ok;
	unsigned long long	 files;
	unsigned long long	 bytes;
	double			 seconds;
	char			 cause[256];
};

void		 store_set_cache_size(uint64_t);
void		 store_set_threads(int);
void		 store_set_keys(const unsigned char *, const char *,
		    const char *);
void		 store_set_log_file_size(uint32_t);
struct store	*store_open(const char *, char **);
void		 store_close(struct store *);
void		 store_set_fail_cb(struct store *, void (*)(void *), void *);
int		 store_failed(struct store *);
int		 store_ready(struct store *);
int		 store_txn_begin(struct store *, struct store_txn **);
int		 store_txn_begin_child(struct store_txn *, struct store_txn **);
int		 store_txn_commit(struct store_txn *);
int		 store_txn_commit_local(struct store_txn *);
void		 store_txn_abort(struct store_txn *);
int		 store_flush(struct store *);
int		 store_flush_local(struct store *);
int		 store_probe(struct store *);
int		 store_flusher_start(struct store *, struct event_base *,
		     void (*)(int, void *), void *, char **);
void		 store_flusher_stop(struct store *);
int		 store_flush_async(struct store *);
int		 store_checkpoint(struct store *);
int		 store_repl_open(struct store *, int, char **);
void		 store_repl_close(struct store *);
void		 store_lockout_begin(struct store *);
int		 store_lockout_end(struct store *);
int		 store_role_start(struct store *, struct event_base *, char **);
int		 store_open_async(struct store *, void (*)(void *),
		     void (*)(void *), void *);
int		 store_recount(struct store *);
int		 store_backup_start(struct store *, struct event_base *,
		     const char *, const char *,
		     void (*)(const struct store_backup_result *, void *),
		     void *, char **);
int		 store_backup_running(struct store *);
int		 store_claims_by_number(struct store_txn *,
		     const unsigned char *, struct claim **, size_t *);
int		 store_claims_by_user(struct store_txn *, const char *,
		     struct claim **, size_t *);
int		 store_claim_put(struct store_txn *, const struct claim *);
int		 store_claim_del(struct store_txn *, const unsigned char *,
		     const char *);
int		 store_claims_all(struct store_txn *, const struct claim *,
		     int (*)(const struct claim *, void *), void *);
int		 store_claims_expired(struct store_txn *, int64_t, int64_t,
		     size_t, struct claim **, size_t *);
int		 store_conflict_put(struct store_txn *, const struct conflict *);
int		 store_conflicts(struct store_txn *, struct conflict **,
		     size_t *);
void		 store_conflicts_free(struct conflict *, size_t);
int		 store_conflicts_by_number(struct store_txn *,
		     const unsigned char *, struct conflict **, size_t *);
int		 store_conflict_get(struct store_txn *, const unsigned char *,
		     const char *, struct conflict *);
void		 store_conflict_clear(struct conflict *);
int		 store_verify_add(struct store_txn *, const char *, int,
		     int64_t, uint64_t);
int		 store_verify_first(struct store_txn *, char *, int *,
		     int64_t *);
int		 store_verify_next(struct store_txn *, int64_t, char *,
		     struct verify_req *);
int		 store_verify_retry(struct store_txn *, const char *, int,
		     int64_t);
int		 store_verify_del(struct store_txn *, const char *);
int		 store_limit_get(struct store_txn *, const char *, int64_t *,
		     uint32_t *);
int		 store_limit_put(struct store_txn *, const char *, int64_t,
		     uint32_t);
int		 store_limits_prune(struct store_txn *, int64_t, size_t,
		     size_t *, int *);
int		 store_meta_get(struct store_txn *, const char *, char **);
int		 store_meta_put(struct store_txn *, const char *, const char *);
int		 store_meta_del(struct store_txn *, const char *);
int		 store_count(struct store *, struct store_counts *);
int		 store_claims_by_enrol(struct store_txn *, const char *,
		     struct claim **, size_t *);
int		 store_seen_add(struct store_txn *, const char *, int64_t);
int		 store_seen_prune(struct store_txn *, int64_t, size_t,
		     size_t *);
int		 store_watermark_get(struct store_txn *, const char *,
		     const unsigned char *, int64_t *);
int		 store_watermark_raise(struct store_txn *, const char *,
		     const unsigned char *, int64_t);

/* frame.c */
#define FRAME_HEAD_MAX	(2 * 16384 + 4096)	/* request line and headers */
#define FRAME_AUTH_MAX	512			/* Authorization kept */

enum frame_state {
	FRAME_START,		/* between requests */
	FRAME_HEAD,		/* in a request head (held) */
	FRAME_BODY,		/* in a body by Content-Length */
	FRAME_SIZE,		/* in a chunk-size line (held) */
	FRAME_DATA,		/* in a chunk's data */
	FRAME_TRAILER,		/* after the last chunk */
	FRAME_OFF		/* no longer followed */
};
#define FRAME_NONE	0
#define FRAME_HOLD	1
#define FRAME_WHOLE	2

struct frame {
	int		 state;		/* enum frame_state */
	int		 first;		/* the next chunk is the first */
	uint64_t	 left;		/* body or chunk bytes to come */
	size_t		 line;		/* bytes in the line so far, no CR */
	size_t		 unit;		/* bytes in the unit so far */
};

struct frame_head {
	char		 method[16];
	char		 path[128];	/* "" if longer, or none */
	int		 chunked;
	int		 has_length;
	uint64_t	 length;
	int		 has_auth;
	int		 auth_long;	/* longer than FRAME_AUTH_MAX */
	char		 auth[FRAME_AUTH_MAX + 1];
};

void		 frame_init(struct frame *);
size_t		 frame_scan(struct frame *, const char *, size_t, int *);
int		 frame_head(const char *, size_t, struct frame_head *);
void		 frame_body(struct frame *, const struct frame_head *);
int		 frame_chunk(struct frame *, const char *, size_t, uint64_t *);
void		 frame_off(struct frame *);

/* deadletter.c */
#define DEADLETTER_MAX_SIZE	(16 * 1024 * 1024)

int		 deadletter_open(const char *, size_t, char **);
void		 deadletter_close(void);
void		 deadletter_add(const char *, const char *, const char *,
		     size_t);
size_t		 deadletter_redact(char *, size_t);
/* A value from a request, fit for the log: at most this, NUL included. */
#define DEADLETTER_LOG_SIZE	128
const char	*deadletter_log_value(const char *, char *);

/* claims.c */
enum claims_action {
	CLAIMS_ENROLL = 1,
	CLAIMS_CHALLENGE
};

enum claims_result {
	CLAIMS_RESERVED = 1,
	CLAIMS_OWNED,
	CLAIMS_TAKEN,
	CLAIMS_EXEMPT,
	CLAIMS_LEARNED,
	CLAIMS_CONFLICT,
	CLAIMS_ASSIGNED,	/* by an administrator: "active" */
	CLAIMS_LIMITED		/* max_reservations_per_user reached */
};

struct claims_answer {
	int		 result;	/* enum claims_result */
	int		 enforced;	/* 0 for a 'taken' in monitor mode */
	int64_t		 expires_in;	/* seconds, for CLAIMS_RESERVED */
	int64_t		 retry_after;	/* seconds, for CLAIMS_LIMITED */
};

enum claims_outcome {
	CLAIMS_APPLIED = 1,
	CLAIMS_IGNORED,
	CLAIMS_UNMATCHED,
	CLAIMS_AMBIGUOUS,
	CLAIMS_STALE
};

/* One of the requests of claims_request_many. */
struct claims_req {
	const char		*e164;
	const char		*user_id;
	int			 action;
	int64_t			 now_ms;
	struct claims_answer	*answer;
	int			 rv;	/* out: as claims_request's */
	/* Its own. */
	int			 held;	/* in the transaction being made */
	unsigned char		 numkey[NUMKEY_LEN];
};

/* How a change is dated, for the rule of time and order (claims.c). */
enum claims_date_kind {
	CLAIMS_DATED = 0,	/* an event's own date, or when an answer was
				   asked for */
	CLAIMS_UNDATED,		/* an event whose date cannot be read: its
				   arrival */
	CLAIMS_NOW		/* a request made now, after every release
				   already applied */
};

struct claims_when {
	int64_t		 ms;		/* milliseconds since the epoch */
	int		 kind;		/* enum claims_date_kind */
	int		 tie_ok;	/* as new as a release of its own */
};

/* What a log event says about one user's phone factor. */
struct claims_event {
	const char		*user_id;
	const unsigned char	*numkey;	/* full number, or NULL */
	const char		*last4;		/* of a full number */
	const char		*suffix;	/* visible end of a masked one */
	const char		*enrol_id;	/* normalised, or NULL */
	const char		*log_id;
	struct claims_when	 when;		/* when Auth0 says it happened */
	int64_t			 now;		/* seconds */
	int			 source;	/* enum claim_source */
	int			 id_only;	/* enrol_id must match a claim */
};

void		 claims_init(struct store *, const struct conf *);
void		 claims_free(void);
int		 claims_exempt_load(const char *, const char *, int, char **);
int		 claims_is_exempt(const unsigned char *);
int		 claims_request(const char *, const char *, int, int64_t,
		     struct claims_answer *);
void		 claims_request_many(struct claims_req *, size_t);
int		 claims_expire(int64_t, size_t, size_t *);
int		 claims_limits_prune(int64_t, size_t, size_t *, int *);
const char	*claims_result_name(int);
int		 claims_run(int (*)(struct store_txn *, void *), void *);
int		 claims_user_id_ok(const char *);
int		 claims_ev_enrolled(struct store_txn *,
		     const struct claims_event *, int *);
int		 claims_ev_unenrolled(struct store_txn *,
		     const struct claims_event *, int *);
int		 claims_ev_release_user(struct store_txn *,
		     const struct claims_event *, int *);
int		 claims_ev_release_enrol(struct store_txn *,
		     const struct claims_event *, int *);
int		 claims_ev_failed(struct store_txn *,
		     const struct claims_event *, int *);
int		 claims_admin_release(const char *, const char *, size_t *);
int		 claims_admin_claim(const char *, const char *, int *);
int		 claims_lookup(const char *, const char *, struct claim **,
		     size_t *);
int		 claims_walk(const struct claim *, size_t, struct claim *,
		     size_t *);
int		 claims_conflicts(struct conflict **, size_t *);
uint64_t	 claims_resolved_total(void);
int64_t		 claims_clock_ms(void);
int		 claims_in_order(struct store_txn *, const struct claims_when *,
		     const char *, const unsigned char *, const struct claim *,
		     int64_t *, int *);
int		 claims_confirm(struct store_txn *, struct claim *,
		     const char *, int64_t);
int		 claims_release(struct store_txn *, const struct claim *,
		     const struct claims_when *, int *);
int		 claims_suffix_match(const struct claim *, const char *);
int		 claims_flush(void);
int		 claims_removal_next(struct conflict *);
int		 claims_removal_done(const struct conflict *, int, int,
		     int64_t);

/* verify.c */
#define VERIFY_QUEUE_MAX	10000	/* users waiting, at most */
#define VERIFY_METHODS_MAX	100	/* phone methods read per user */
#define VERIFY_TRIES_MAX	10	/* failed lookups before giving up */

/* One phone method as GET /api/v2/users/{id}/authentication-methods says. */
struct verify_method {
	char		 id[ENROL_ID_MAX + 1];	/* without "phone|" */
	int		 confirmed;
	int		 full;		/* numkey and last4 are the number's */
	unsigned char	 numkey[NUMKEY_LEN];
	char		 last4[LAST4_LEN + 1];	/* or the visible digits */
	int64_t		 created;	/* seconds, 0 if not given */
};

/* What one verification changed. */
struct verify_result {
	size_t	 activated;	/* reservations made active */
	size_t	 claimed;	/* claims created (or conflicts recorded) */
	size_t	 conflicts;	/* of those, conflicts */
	size_t	 released;
	size_t	 unsettled;	/* doubts the answer could not settle */
};

/* One Management API answer about a user's phone methods. */
struct verify_answer {
	const char			*user_id;
	int				 reasons;	/* VERIFY_* */
	const struct verify_method	*m;
	size_t				 n;
	int				 found;	/* 0: Auth0 does not know
						   the user */
	int64_t				 now;	/* seconds */
	struct claims_when		 when;	/* asked for */
	/* With VERIFY_RECONCILE, the numbers the user held when asked. */
	const unsigned char		(*snap)[NUMKEY_LEN];
	size_t				 nsnap;
	int				 source;	/* of new claims; 0:
							   CLAIM_SRC_VERIFY */
	struct verify_result		 r;	/* what changed */
};

void		 verify_init(int);
uint64_t	 verify_refused_total(void);
int		 verify_ask(struct store_txn *, const char *, int, int64_t);
int		 verify_expiring(int64_t *, int64_t, size_t, int64_t,
		     size_t *);
int		 verify_next(char *, int64_t, struct verify_req *);
int		 verify_retry(const char *, int, int64_t, int *, int64_t *);
int		 verify_drop(const char *);
int		 verify_settle(const char *, int, const struct verify_method *,
		     size_t, int, int64_t, int64_t, struct verify_result *);
int		 verify_methods(const char *, size_t, struct verify_method **,
		     size_t *, char **);
int		 verify_apply(struct store_txn *, struct verify_answer *);
int		 verify_no_such_user(const char *, size_t);

/* reconcile.c */
/* Reconciliation, for status and metrics. */
struct reconcile_status {
	int		 configured;	/* a Management API client exists */
	int		 enabled;	/* and reconcile_interval > 0 */
	int		 running;	/* a pass is under way */
	long long	 interval;
	long long	 share;
	int64_t		 pass_started;	/* 0 if none */
	uint64_t	 pass_checked;
	uint64_t	 pass_total;	/* active claims when it started */
	int64_t		 last_pass;	/* end of the last complete pass, or 0 */
	size_t		 queued;	/* users asked for by hand */
	/* Since start. */
	uint64_t	 passes;
	uint64_t	 checked;
	uint64_t	 released;
	uint64_t	 learned;
	uint64_t	 conflicts;
	uint64_t	 unsettled;
	uint64_t	 missing;	/* users Auth0 does not know */
	uint64_t	 failures;
	char		 last_error[128];
};

void		 reconcile_init(struct store *, const struct conf *, int);
void		 reconcile_free(void);
const struct reconcile_status *reconcile_status(void);
int		 reconcile_next(int64_t, char *, int64_t *);
int		 reconcile_settle(const struct verify_method *, size_t, int,
		     int);
void		 reconcile_failed(const char *);
int		 reconcile_start(void);
int		 reconcile_user(const char *);
int		 reconcile_may_send(long long, long long);

/* bootstrap.c */
/* A request the bootstrap wants sent; mgmt.c sends it. */
struct bootstrap_req {
	char		*url;
	char		*post;		/* a JSON body to POST; NULL: GET */
	int		 auth;		/* with the Management API token */
	FILE		*out;		/* the body goes there (the export) */
};

/* The bootstrap, for status and metrics. */
struct bootstrap_status {
	int		 configured;	/* a Management API client exists */
	const char	*state;		/* never, running, done, failed */
	const char	*phase;		/* of a running one, or NULL */
	const char	*via;		/* "export" or "users", or NULL */
	int64_t		 started;
	int64_t		 finished;
	uint64_t	 total;		/* users listed, once known */
	uint64_t	 checked;
	uint64_t	 claimed;
	uint64_t	 conflicts;
	uint64_t	 known;		/* phones the store had already */
	uint64_t	 masked;	/* numbers Auth0 would not show */
	uint64_t	 missing;	/* users gone since the listing */
	uint64_t	 refused;	/* user ids Auth0 refused (400) */
	uint64_t	 failures;	/* failed requests since start */
	char		 last_error[160];
};

void		 bootstrap_init(const struct conf *, int);
void		 bootstrap_free(void);
const struct bootstrap_status *bootstrap_status(void);
int		 bootstrap_start(void);
int		 bootstrap_next(const char *, struct bootstrap_req *, int64_t *);
void		 bootstrap_req_clear(struct bootstrap_req *);
int		 bootstrap_done(long, const char *, size_t, char *, size_t,
		     int64_t *);
void		 bootstrap_failed(const char *);

/* events.c */
struct events_counts {
	size_t	 applied;
	size_t	 ignored;
	size_t	 unmatched;
	size_t	 ambiguous;
	size_t	 stale;
};

/* What events_apply_info read in an event, beside its outcome. */
struct events_info {
	int		 undated;	/* no readable date: dated at arrival */
	int64_t		 date_ms;	/* its date, 0 if undated */
	const char	*unreadable;	/* why its number is unreadable */
	const char	*user;		/* and the event's user (in the tree) */
};

struct yajl_val_s;
int		 events_apply(struct store_txn *, struct yajl_val_s *,
		     const char *, int64_t, int *);
int		 events_apply_info(struct store_txn *, struct yajl_val_s *,
		     const char *, int64_t, int *, struct events_info *);
const char	*events_type(struct yajl_val_s *);
const char	*events_refusal(struct yajl_val_s *);
int64_t		 events_date(struct yajl_val_s *, int64_t);
int		 events_rfc3339(const char *, int64_t *);
int64_t		 events_iso_ms(const char *, int64_t);
void		 events_count_undated(const char *, size_t, const char *);
uint64_t	 events_undated_total(void);
const char	*events_unreadable(struct yajl_val_s *, const char **);
void		 events_count_unreadable(const char *, const char *,
		     const char *);
uint64_t	 events_unreadable_total(void);
int		 events_masked(const char *, char *);
const char	*events_method_id(const char *);
void		 events_count_ignored(const char *);
size_t		 events_ignored_types(const char ***, const size_t **);
void		 events_free(void);

/* logstream.c */
#define LOGSTREAM_OK		0
#define LOGSTREAM_NOT_JSON	-1
#define LOGSTREAM_TOO_MANY	-2
#define LOGSTREAM_UNAVAILABLE	-3

/* What one applied batch did. */
struct logstream_result {
	size_t	 received;
	size_t	 applied;
	size_t	 duplicates;
	size_t	 ignored;
	size_t	 rejected;
	char	 last[LOG_ID_MAX + 1];	/* highest new log id, or "" */
};

void		 logstream_init(struct event_base *);
void		 logstream_free(void);
void		 logstream_http_cb(struct evhttp_request *, void *);
int		 logstream_ingest(const char *, const char *, size_t, int,
		     struct logstream_result *);
int		 logstream_last_id(char **);
int		 logstream_prune(int64_t, int64_t, size_t *);

/* worker.c */
struct worker;

struct worker	*worker_start(struct event_base *, int, char **);
void		 worker_stop(struct worker *);
void		 worker_submit(struct worker *, void (*)(void *),
		     void (*)(void *, int), void *);
size_t		 worker_queued(struct worker *);
int		 worker_thread(pthread_t *, void *(*)(void *), void *);

/* http.c */
struct http;
struct tls;

/* A request kept to be answered later (http_suspend). */
struct http_ctx {
	struct evhttp_request	*req;
	int			 endpoint;
	int64_t			 start;
};

struct http	*http_init(struct event_base *, const struct conf *,
		     struct store *, char **);
void		 http_free(struct http *);
void		 http_stop_accepting(struct http *);
void		 http_set_tokens(struct http *, const char *, size_t,
		     const char *, size_t);
void		 http_reply(struct http *, struct evhttp_request *, int,
		     const char *);
void		 http_reply_type(struct http *, struct evhttp_request *, int,
		     const char *, const char *);
void		 http_reply_now(struct http *, struct evhttp_request *, int,
		     const char *, const char *);
void		 http_error(struct http *, struct evhttp_request *, int,
		     const char *);
int		 http_store_ok(struct http *);
const struct conf *http_conf(struct http *);
int		 http_authorised(struct http *, struct evhttp_request *, int);
const char	*http_bound_address(struct http *);
void		 http_set_tls(struct http *, struct tls *);
struct worker	*http_worker(struct http *);
struct event_base *http_base(struct http *);
void		 http_suspend(struct http *, struct evhttp_request *,
		     struct http_ctx *);
void		 http_resume(struct http *, const struct http_ctx *);
void		 http_resumed(struct http *);

#define HTTP_TOKEN_API		0
#define HTTP_TOKEN_LOG_STREAM	1

/* control.c */
struct control;

struct control	*control_init(struct event_base *, const struct conf *,
		     struct store *, char **);
void		 control_free(struct control *);

/* metrics.c */
enum metrics_endpoint {
	METRICS_EP_CLAIMS = 0,
	METRICS_EP_LOG_STREAM,
	METRICS_EP_HEALTHZ,
	METRICS_EP_METRICS,
	METRICS_EP_OTHER,
	METRICS_EP_COUNT
};

/* Log-stream events since start, and the latest one. */
struct metrics_events {
	uint64_t	 applied;
	uint64_t	 duplicates;
	uint64_t	 ignored;	/* all that changed nothing */
	uint64_t	 rejected;
	uint64_t	 unmatched;
	uint64_t	 ambiguous;
	uint64_t	 stale;
	char		 last_log_id[LOG_ID_MAX + 1]; /* of the event */
	int64_t		 last_date_ms;	/* with the latest date of all */
	int64_t		 last_received;	/* when it arrived, seconds */
};

void		 metrics_init(struct store *);
void		 metrics_free(void);
void		 metrics_request(int, int, int64_t);
void		 metrics_connection_closed(void);
void		 metrics_log_stream(const struct metrics_events *);
const struct metrics_events *metrics_events_totals(void);
uint64_t	 metrics_ignored_other(const struct metrics_events *);
char		*metrics_text(void);
void		 metrics_http_cb(struct evhttp_request *, void *);

/* mgmt.c */
enum mgmt_state {
	MGMT_DISABLED = 0,
	MGMT_IDLE,
	MGMT_RUNNING,
	MGMT_FAILING
};

/* The backfill, for status and metrics. */
struct mgmt_status {
	int		 state;		/* enum mgmt_state */
	int64_t		 last_run;	/* last complete run, or 0 */
	char		 last_error[128];
	uint64_t	 pages;		/* of the current or last run */
	uint64_t	 events;
	uint64_t	 applied;
	uint64_t	 total_pages;
	uint64_t	 total_events;
	uint64_t	 runs;
	uint64_t	 failures;
	/* Verifications (verify.c) since start. */
	uint64_t	 v_done;
	uint64_t	 v_activated;
	uint64_t	 v_claimed;
	uint64_t	 v_released;
	uint64_t	 v_unsettled;
	uint64_t	 v_dropped;
	uint64_t	 v_failures;
	uint64_t	 v_gave_up;	/* users given up after failed tries */
	char		 v_last_error[128];
	/* Removals (on_conflict = remove) since start. */
	uint64_t	 rm_done;
	uint64_t	 rm_absent;
	uint64_t	 rm_refused;
	uint64_t	 rm_failures;
	char		 rm_last_error[128];
};

int		 mgmt_init(struct event_base *, const struct conf *, char **);
void		 mgmt_free(void);
int		 mgmt_backfill(void);
void		 mgmt_tick(int64_t);
void		 mgmt_wake(void);
int		 mgmt_reload(char **);
const struct mgmt_status *mgmt_status(void);
const char	*mgmt_state_name(int);

/* tls.c */
struct tls;
struct bufferevent;

struct tls	*tls_init(const struct conf *, char **);
int		 tls_reload(struct tls *, const struct conf *, char **);
const char	*tls_summary(struct tls *);
struct bufferevent *tls_bufferevent(struct tls *, struct event_base *,
		     void (*)(void *), void *);
void		 tls_forget(struct bufferevent *);
void		 tls_free(struct tls *);

/* notify.c */
void		 notify_init(void);
void		 notify_send(const char *, ...)
		     __attribute__((format(printf, 1, 2)));
void		 notify_free(void);
uint64_t	 notify_watchdog_usec(void);

/* repl.c */
enum repl_role {
	REPL_ROLE_NONE = 0,	/* starting, or between masters */
	REPL_ROLE_MASTER,
	REPL_ROLE_REPLICA
};

/* The verdict on this member's clock (repl_clock.c). */
enum repl_clock_state {
	REPL_CLOCK_UNCHECKED = 0,	/* too few peers measured */
	REPL_CLOCK_OK,			/* a majority agrees with it */
	REPL_CLOCK_OFF			/* more peers disagree than agree */
};

/* The header of /healthz that carries the clock, ms since the epoch. */
#define REPL_CLOCK_HEADER	"X-Phoneclaimd-Clock"

/* What status and /metrics show of replication. */
struct repl_info {
	int		 enabled;
	int		 role;		/* enum repl_role */
	int		 ready;		/* the store is open for this role */
	char		 master[300];	/* repl address, or "" */
	struct {
		char	 repl[300];
		char	 api[300];
		int	 connected;
		int	 skew_known;
		int64_t	 skew;		/* its clock minus ours, ms */
	}		 peers[CONF_PEERS_MAX];
	size_t		 npeers;
	uint64_t	 lag;		/* log records waiting to be applied */
	uint32_t	 lsn_file;	/* the next log record's LSN */
	uint32_t	 lsn_offset;
	uint64_t	 perm_failed;
	uint64_t	 ack_waits;	/* rounds of acknowledgements */
	uint64_t	 forwarded;
	uint64_t	 forward_failed;
	uint64_t	 unavailable;
	uint64_t	 resent;	/* to a new master */
	uint64_t	 batches;	/* of claims, sent to the master */
	uint64_t	 batched;	/* claims sent in them */
	int		 clock;		/* enum repl_clock_state */
	int		 skew_known;
	int64_t		 skew;		/* the worst peer's, ms */
};

struct __db_env;
int		 repl_enabled(void);
int		 repl_init(struct event_base *, const struct conf *, char **);
void		 repl_free(void);
void		 repl_set_hook(void (*)(void *, int, int), void *);
int		 repl_env_prepare(struct __db_env *, u_int32_t *);
int		 repl_start(struct __db_env *, char **);
void		 repl_event(struct __db_env *, u_int32_t, void *);
unsigned long	 repl_perm_failures(void);
void		 repl_commit_waits(int);
int		 repl_writable(void);
int		 repl_serving(void);
void		 repl_handles_dead(void);
void		 repl_store_failed(void);
void		 repl_stop(void);
void		 repl_retry(void);
void		 repl_info(struct repl_info *);
const char	*repl_role_name(int);
int		 repl_forward(struct http *, struct evhttp_request *, int);
void		 repl_electable(int);
void		 repl_perm_failed(void);
void		 repl_cond_monotonic(pthread_cond_t *);
int		 repl_env_usable(void);
size_t		 repl_connected_eids(int *, size_t);

/* repl_ack.c */
/* One round of acknowledgements (repl_ack_begin, repl_ack_end). */
struct repl_ack_round {
	uint64_t	 upto;		/* the commits it covers (a count) */
	uint64_t	 lsn;		/* the last commit record sent */
	uint32_t	 gen;
	int		 needed;	/* answers */
	int		 only_peers;	/* from electable members */
	int		 state;		/* 1 to wait, 0 none, -1 failed */
};
int		 repl_ack_prepare(struct __db_env *, const struct conf *);
int		 repl_ack_start(char **);
void		 repl_ack_stop(int);
void		 repl_ack_free(void);
void		 repl_ack_committed(void);
int		 repl_ack_wait(void);
void		 repl_ack_begin(struct repl_ack_round *);
int		 repl_ack_end(struct repl_ack_round *);
uint64_t	 repl_ack_waits(void);
void		 repl_ack_nodelay(void);

/* repl_clock.c */
void		 repl_clock_init(const struct conf *);
int		 repl_clock_start(char **);
void		 repl_clock_stop(void);
void		 repl_clock_free(void);
int		 repl_clock_trusted(void);
void		 repl_clock_info(struct repl_info *);
const char	*repl_clock_name(int);
int64_t		 repl_clock_now_ms(void);

/* api.c */
/* A claim request's body: what POST /v1/claims sent. */
struct api_body {
	char		 phone[PHONE_INPUT_MAX + 1];	/* as sent */
	size_t		 phone_len;
	int		 phone_ok;	/* a string of at most INPUT_MAX */
	char		 user_id[USER_ID_MAX + 1];
	int		 action;	/* enum claims_action */
	const char	*error;		/* of the other fields, or NULL */
};

/* batch.c: a replica's claims forwarded in one request (repl.c, api.c) */
#define BATCH_TYPE	"application/x-phoneclaimd-batch"
#define BATCH_MAX	128		/* claims in a batch, at most */

struct batch_item {
	const char	*p;		/* a body, not terminated */
	size_t		 len;
	int		 code;		/* an answer's status */
	long long	 retry;		/* its Retry-After, 0: none */
};

int		 batch_split(const char *, size_t, struct batch_item *,
		     size_t);
int		 batch_answers(const char *, size_t, struct batch_item *,
		     size_t);
char		*batch_encode(const struct batch_item *, size_t, int,
		     size_t *);

const char	*api_parse(const char *, size_t, struct api_body *);
void		 api_claims_cb(struct evhttp_request *, void *);
void		 api_healthz_cb(struct evhttp_request *, void *);
void		 api_free(void);

#endif
