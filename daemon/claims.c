/*
 * The claim rules of DESIGN section 4: reserve, learn, expire, conflicts
 * and the exempt list.  No Berkeley DB here: every change goes through the
 * store's claim functions inside one transaction, retried on deadlock.
 *
 * The rule of time and order (invariants I1 and I4, issue 21).  Auth0
 * delivers events late, twice and out of order, and a verification answer
 * arrives seconds after it was asked for, so every change is judged by
 * its date, never by when it reaches us:
 *
 *   - Every claim keeps, to the millisecond, the date of the event or
 *     request that last made or confirmed it ('since'): a reservation, a
 *     renewal ("owned"), a login challenge, an enrolment event, an
 *     administrator's claim, a verification answer.  It never goes back.
 *   - Every release leaves a watermark, to the millisecond: per user and
 *     number, and per user for a release of all of a user's factors.
 *     Watermarks never go back either.
 *   - A release takes a claim only if it is dated after the claim's date.
 *     An older release (a late SMS failure, an unenrolment delivered after
 *     the enrolment that followed it) leaves the claim alone.
 *   - A creation or an activation happens only if it is dated after every
 *     watermark that applies (the user's, and the user's on that number).
 *
 * Dates: an event's "date" (RFC 3339, any offset or precision, taken to
 * the millisecond); a verification answer is dated when it was asked for,
 * so it loses to any release after that.  A request made now (the claim
 * API, the status socket's claim and release) comes after every release
 * already applied, whatever the clocks say: it is dated now, or just
 * after the watermark or claim date it meets when that is later.  An
 * event whose date cannot be read is dated at its arrival: it may release,
 * but never create or activate a claim where any watermark applies.
 *
 * claims_in_order() is the rule; every path (log stream, claim API, status
 * socket, verification) asks it before it releases, creates or activates.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define CLAIMS_RETRIES	8
#define CLAIMS_LIMIT_WINDOW 3600	/* s: max_reservations_per_user's hour */
#define EXEMPT_LINE_MAX	256

struct claims_op {
	const unsigned char	*numkey;
	const char		*user_id;
	const char		*last4;
	int			 action;
	int64_t			 now;
	struct claims_when	 when;
	struct claims_answer	*answer;
	size_t			 released;	/* by an admin release */
};

struct claims_prune_op {
	int64_t	 before;
	size_t	 max;
	size_t	 pruned;
	int	 wrapped;
};

struct claims_expire_op {
	int64_t	 now;
	size_t	 max;
	size_t	 released;
};

/* A lookup or a piece of a walk: the live claims it found. */
struct claims_list_op {
	const unsigned char	*numkey;
	const char		*user_id;
	const struct claim	*after;
	int64_t			 now;
	struct claim		*v;
	size_t			 n;
	size_t			 max;
};

struct claims_conflicts_op {
	struct conflict	*v;
	size_t		 n;
};

static int	claims_live(const struct claim *, int64_t);
static int	claims_enroll(struct store_txn *, void *);
static int	claims_limit(struct store_txn *, struct claims_op *, int *);
static int	claims_challenge(struct store_txn *, void *);
static int	claims_release_pending(struct store_txn *, const char *,
		    const unsigned char *);
static int	claims_scan(struct store_txn *, struct claims_op *,
		    struct claim **, size_t *, struct claim **, size_t *);
static int	claims_put_new(struct store_txn *, struct claims_op *, int,
		    int, int64_t);
static int	claims_now_date(struct store_txn *, struct claims_op *,
		    int64_t *);
static int	claims_watermark(struct store_txn *, const char *,
		    const unsigned char *, int64_t *);
static int	claims_conflict(struct store_txn *, struct claims_op *,
		    const char *, const char *, struct claim *, size_t);
static int	claims_enrolled_full(struct store_txn *,
		    const struct claims_event *, int64_t);
static int	claims_enrolled_partial(struct store_txn *,
		    const struct claims_event *, int *);
static int	claims_release_all(struct store_txn *, int, struct claim *,
		    size_t, const struct claims_event *, int, int *);
static void	claims_pick(const struct claim *, size_t,
		    const struct claims_event *, ssize_t *);
static void	claims_pick_id(const struct claim *, size_t,
		    const struct claims_event *, ssize_t *);
static int	claims_expire_txn(struct store_txn *, void *);
static int	claims_limits_prune_txn(struct store_txn *, void *);
static int	claims_key_cmp(const void *, const void *);
static void	claims_exempt_set(unsigned char *, size_t);
static void	claims_admin_op(struct claims_op *, const unsigned char *,
		    const char *, const char *, struct claims_answer *);
static int	claims_admin_release_txn(struct store_txn *, void *);
static int	claims_admin_claim_txn(struct store_txn *, void *);
static void	claims_keep_live(struct claims_list_op *, struct claim *,
		    size_t);
static int	claims_lookup_txn(struct store_txn *, void *);
static int	claims_walk_cb(const struct claim *, void *);
static int	claims_walk_txn(struct store_txn *, void *);
static int	claims_conflicts_txn(struct store_txn *, void *);
static int	claims_removal_next_txn(struct store_txn *, void *);
static int	claims_removal_done_txn(struct store_txn *, void *);
static int	claims_promote(struct store_txn *, const unsigned char *,
		    int64_t);
static ssize_t	claims_promote_pick(struct store_txn *, struct conflict *,
		    size_t, const struct claim *, size_t, int *);
static int	claims_promote_one(struct store_txn *, struct conflict *,
		    int64_t);

static struct store		*claims_store;
static const struct conf	*claims_conf;
/*
 * With threads > 1, claim requests run on the API's worker threads too:
 * the exempt list (replaced by a reload on the loop) is read under
 * claims_exempt_lock, the counters are atomic, and the count of the
 * transaction being run belongs to its thread.
 */
static pthread_rwlock_t		 claims_exempt_lock = PTHREAD_RWLOCK_INITIALIZER;
static unsigned char		*claims_exempt;	/* sorted keys */
static size_t			 claims_nexempt;
static atomic_int		 claims_removals = 1;	/* may be waiting */
static atomic_uint_fast64_t	 claims_resolved;	/* since start */
static _Thread_local uint64_t	 claims_resolved_txn;	/* this txn */

/* Start the claim logic on a store with a configuration. */
void
claims_init(struct store *store, const struct conf *conf)
{
	claims_store = store;
	claims_conf = conf;
}

/* Forget the store and the exempt list. */
void
claims_free(void)
{
	claims_exempt_set(NULL, 0);
	claims_store = NULL;
	claims_conf = NULL;
}

/* Return the word for a result, as the API spells it. */
const char *
claims_result_name(int result)
{
	switch (result) {
	case CLAIMS_RESERVED:
		return ("reserved");
	case CLAIMS_OWNED:
		return ("owned");
	case CLAIMS_TAKEN:
		return ("taken");
	case CLAIMS_EXEMPT:
		return ("exempt");
	case CLAIMS_LEARNED:
		return ("learned");
	case CLAIMS_LIMITED:
		return ("limited");
	case CLAIMS_CONFLICT:
		return ("conflict");
	case CLAIMS_ASSIGNED:
		return ("active");
	}
	return ("unknown");
}

/* Order two number keys. */
static int
claims_key_cmp(const void *a, const void *b)
{
	return (memcmp(a, b, NUMKEY_LEN));
}

/*
 * Load the exempt list: one number per line, '#' comments.  The new list
 * replaces the old one only if the whole file is good.  With check_only the
 * file is only checked (no hash key is needed).
 */
int
claims_exempt_load(const char *path, const char *region, int check_only,
    char **cause)
{
	FILE		*f;
	char		 line[EXEMPT_LINE_MAX], e164[PHONE_E164_SIZE], *p;
	unsigned char	*keys = NULL;
	size_t		 n = 0, len;
	int		 lineno = 0;

	if (path == NULL) {
		claims_exempt_set(NULL, 0);
		return (0);
	}
	if ((f = fopen(path, "r")) == NULL) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	while (fgets(line, sizeof line, f) != NULL) {
		lineno++;
		if ((p = strchr(line, '#')) != NULL)
			*p = '\0';
		len = strcspn(line, "\r\n");
		line[len] = '\0';
		p = line + strspn(line, " \t");
		if (*p == '\0')
			continue;
		if (phone_normalise(p, strlen(p), region, e164) != 0) {
			xasprintf(cause, "%s:%d: invalid phone number", path,
			    lineno);
			fclose(f);
			free(keys);
			return (-1);
		}
		if (check_only)
			continue;
		keys = xreallocarray(keys, n + 1, NUMKEY_LEN);
		hash_number(e164, keys + n * NUMKEY_LEN);
		n++;
	}
	fclose(f);
	if (check_only)
		return (0);
	if (n > 0)
		qsort(keys, n, NUMKEY_LEN, claims_key_cmp);
	claims_exempt_set(keys, n);
	return (0);
}

/* Replace the exempt list with n sorted keys (or none). */
static void
claims_exempt_set(unsigned char *keys, size_t n)
{
	unsigned char	*old;

	pthread_rwlock_wrlock(&claims_exempt_lock);
	old = claims_exempt;
	claims_exempt = keys;
	claims_nexempt = n;
	pthread_rwlock_unlock(&claims_exempt_lock);
	free(old);
}

/* Return 1 if a number key is on the exempt list. */
int
claims_is_exempt(const unsigned char *numkey)
{
	int	found;

	pthread_rwlock_rdlock(&claims_exempt_lock);
	found = claims_nexempt > 0 && bsearch(numkey, claims_exempt,
	    claims_nexempt, NUMKEY_LEN, claims_key_cmp) != NULL;
	pthread_rwlock_unlock(&claims_exempt_lock);
	return (found);
}

/*
 * Run fn in a transaction, again on deadlock up to a bound.  fn returns
 * STORE_OK to commit; anything else aborts.
 */
int
claims_run(int (*fn)(struct store_txn *, void *), void *arg)
{
	struct store_txn	*txn;
	int			 try, rv;

	for (try = 0; try < CLAIMS_RETRIES; try++) {
		if ((rv = store_txn_begin(claims_store, &txn)) != STORE_OK)
			return (rv);
		claims_resolved_txn = 0;
		rv = fn(txn, arg);
		if (rv == STORE_OK) {
			if ((rv = store_txn_commit(txn)) == STORE_OK)
				claims_resolved += claims_resolved_txn;
			return (rv);
		}
		store_txn_abort(txn);
		if (rv != STORE_RETRY)
			return (rv);
	}
	log_warnx("transaction deadlocked %d times: giving up",
	    CLAIMS_RETRIES);
	return (STORE_RETRY);
}

/* Return 1 if a claim holds its number at time now. */
static int
claims_live(const struct claim *c, int64_t now)
{
	return (c->state == CLAIM_ACTIVE || c->expires > now);
}

/*
 * Read the claims on the number: the caller's own claim (if live) goes to
 * *mine, the other live ones to *others.  Lapsed reservations are deleted
 * on the way, since they count as free.
 */
static int
claims_scan(struct store_txn *txn, struct claims_op *op,
    struct claim **mine, size_t *nothers, struct claim **all, size_t *nall)
{
	struct claim	*c;
	size_t		 i, n;
	int		 rv;

	*mine = NULL;
	*nothers = 0;
	rv = store_claims_by_number(txn, op->numkey, all, nall);
	if (rv != STORE_OK)
		return (rv);
	for (i = 0, n = 0; i < *nall; i++) {
		c = &(*all)[i];
		if (!claims_live(c, op->now)) {
			rv = store_claim_del(txn, c->numkey, c->user_id);
			if (rv != STORE_OK)
				return (rv);
			continue;
		}
		if (n != i)
			(*all)[n] = *c;
		n++;
	}
	*nall = n;
	for (i = 0; i < n; i++) {
		if (strcmp((*all)[i].user_id, op->user_id) == 0)
			*mine = &(*all)[i];
		else
			(*nothers)++;
	}
	return (STORE_OK);
}

/* Store a new claim of the caller on the number, dated date_ms. */
static int
claims_put_new(struct store_txn *txn, struct claims_op *op, int state,
    int source, int64_t date_ms)
{
	struct claim	c;

	memset(&c, 0, sizeof c);
	memcpy(c.numkey, op->numkey, NUMKEY_LEN);
	snprintf(c.user_id, sizeof c.user_id, "%s", op->user_id);
	c.state = state;
	c.source = source;
	c.since_ms = date_ms;
	if (state == CLAIM_PENDING)
		c.expires = op->now + claims_conf->pending_ttl;
	snprintf(c.last4, sizeof c.last4, "%s", op->last4);
	return (store_claim_put(txn, &c));
}

/* Release the user's pending reservations on numbers other than keep. */
static int
claims_release_pending(struct store_txn *txn, const char *user_id,
    const unsigned char *keep)
{
	struct claim	*list;
	size_t		 n, i;
	int		 rv;

	if ((rv = store_claims_by_user(txn, user_id, &list, &n)) != STORE_OK)
		return (rv);
	for (i = 0; i < n && rv == STORE_OK; i++) {
		if (list[i].state != CLAIM_PENDING ||
		    memcmp(list[i].numkey, keep, NUMKEY_LEN) == 0)
			continue;
		rv = store_claim_del(txn, list[i].numkey, user_id);
		if (rv == STORE_NOTFOUND)
			rv = STORE_OK;
	}
	free(list);
	return (rv);
}

/* Enrolment: reserve, renew, or refuse (DESIGN section 4). */
static int
claims_enroll(struct store_txn *txn, void *arg)
{
	struct claims_op	*op = arg;
	struct claims_answer	*a = op->answer;
	struct claim		*all = NULL, *mine;
	size_t			 nall, nothers;
	int64_t			 date;
	int			 rv, over;

	rv = claims_scan(txn, op, &mine, &nothers, &all, &nall);
	if (rv == STORE_OK)
		rv = claims_now_date(txn, op, &date);
	if (rv != STORE_OK)
		goto out;
	if (mine != NULL) {
		/* A renewal: the reservation is as new as the request. */
		a->result = CLAIMS_OWNED;
		if (mine->state == CLAIM_PENDING)
			mine->expires = op->now + claims_conf->pending_ttl;
		if (mine->since_ms < date)
			mine->since_ms = date;
		rv = store_claim_put(txn, mine);
		goto out;
	}
	if ((rv = claims_limit(txn, op, &over)) != STORE_OK || over)
		goto out;
	if (nothers >= (size_t)claims_conf->max_users_per_number) {
		a->result = CLAIMS_TAKEN;
		a->enforced = claims_conf->mode == CONF_MODE_ENFORCE;
		goto out;
	}
	rv = claims_release_pending(txn, op->user_id, op->numkey);
	if (rv == STORE_OK)
		rv = claims_put_new(txn, op, CLAIM_PENDING,
		    CLAIM_SRC_ENROLLMENT, date);
	a->result = CLAIMS_RESERVED;
	a->expires_in = claims_conf->pending_ttl;
out:
	free(all);
	return (rv);
}

/*
 * The cap on the numbers one user may ask for (max_reservations_per_user,
 * 0 for none), against number squatting and against probing which numbers
 * are taken.  Each enrolment request for a number the user does not hold
 * counts, whether it is reserved or refused as taken, in a window of an
 * hour that opens with the first of them.  Once the window holds the cap,
 * the request is answered "limited" and changes nothing: refused with the
 * seconds until the window closes, or in monitor mode let through as
 * "taken" is.  A clock that went back before the window's start opens a
 * new one, so that a clock step cannot lock a user out for longer.  *over
 * is 1 when the answer is set and nothing more is to be done.
 */
static int
claims_limit(struct store_txn *txn, struct claims_op *op, int *over)
{
	struct claims_answer	*a = op->answer;
	uint64_t		 cap;
	int64_t			 start;
	uint32_t		 count;
	int			 rv;

	*over = 0;
	if (claims_conf->max_reservations_per_user <= 0)
		return (STORE_OK);
	cap = (uint64_t)claims_conf->max_reservations_per_user;
	rv = store_limit_get(txn, op->user_id, &start, &count);
	if (rv == STORE_NOTFOUND || (rv == STORE_OK && (op->now < start ||
	    op->now - start >= CLAIMS_LIMIT_WINDOW))) {
		start = op->now;
		count = 0;
		rv = STORE_OK;
	}
	if (rv != STORE_OK)
		return (rv);
	if (count >= cap) {
		a->result = CLAIMS_LIMITED;
		a->enforced = claims_conf->mode == CONF_MODE_ENFORCE;
		a->retry_after = start + CLAIMS_LIMIT_WINDOW - op->now;
		*over = 1;
		return (STORE_OK);
	}
	return (store_limit_put(txn, op->user_id, start, count + 1));
}

/*
 * Forget reservation windows that have closed: look at up to max of them,
 * going on from where the last call stopped.  *wrapped says that a pass
 * over all of them ended.
 */
int
claims_limits_prune(int64_t now, size_t max, size_t *pruned, int *wrapped)
{
	struct claims_prune_op	op = { now - CLAIMS_LIMIT_WINDOW, max, 0, 0 };
	int			rv;

	rv = claims_run(claims_limits_prune_txn, &op);
	*pruned = rv == STORE_OK ? op.pruned : 0;
	*wrapped = rv == STORE_OK ? op.wrapped : 0;
	return (rv);
}

/* One stretch of that walk, in a transaction of its own. */
static int
claims_limits_prune_txn(struct store_txn *txn, void *arg)
{
	struct claims_prune_op	*op = arg;

	return (store_limits_prune(txn, op->before, op->max, &op->pruned,
	    &op->wrapped));
}

/*
 * Record that the caller uses a number that others hold, with the log id
 * of the event that showed it ("" for a login challenge).  With
 * on_conflict = remove and the enrolment id of the caller's phone method,
 * the record asks for that method to be deleted (mgmt.c does it).
 */
static int
claims_conflict(struct store_txn *txn, struct claims_op *op,
    const char *log_id, const char *enrol_id, struct claim *all, size_t nall)
{
	struct conflict	 cf;
	size_t		 i;
	int		 rv;
	char		 user[DEADLETTER_LOG_SIZE], id[DEADLETTER_LOG_SIZE];

	memset(&cf, 0, sizeof cf);
	memcpy(cf.numkey, op->numkey, NUMKEY_LEN);
	snprintf(cf.user_id, sizeof cf.user_id, "%s", op->user_id);
	snprintf(cf.last4, sizeof cf.last4, "%s", op->last4);
	cf.since = op->now;
	snprintf(cf.log_id, sizeof cf.log_id, "%s", log_id);
	cf.holders = xcalloc(nall, sizeof *cf.holders);
	for (i = 0; i < nall; i++)
		cf.holders[i] = all[i].user_id;
	cf.nholders = nall;
	if (claims_conf->on_conflict_remove && enrol_id != NULL) {
		cf.removal = CONFLICT_RM_PENDING;
		snprintf(cf.method, sizeof cf.method, "%s", enrol_id);
		claims_removals = 1;
	}
	rv = store_conflict_put(txn, &cf);
	free(cf.holders);
	if (rv == STORE_OK)
		log_warnx("conflict: user %s uses a number ending %s that "
		    "%zu other user(s) hold%s%s",
		    deadletter_log_value(op->user_id, user), op->last4, nall,
		    *log_id != '\0' ? "; log id " : "",
		    deadletter_log_value(log_id, id));
	return (rv);
}

/* Login challenge: learn the number or note a conflict; never refuse. */
static int
claims_challenge(struct store_txn *txn, void *arg)
{
	struct claims_op	*op = arg;
	struct claims_answer	*a = op->answer;
	struct claim		*all = NULL, *mine;
	size_t			 nall, nothers;
	int64_t			 date;
	int			 rv;

	rv = claims_scan(txn, op, &mine, &nothers, &all, &nall);
	if (rv == STORE_OK)
		rv = claims_now_date(txn, op, &date);
	if (rv != STORE_OK)
		goto out;
	if (mine != NULL) {
		a->result = CLAIMS_OWNED;
		rv = claims_confirm(txn, mine, NULL, date);
	} else if (nothers < (size_t)claims_conf->max_users_per_number) {
		a->result = CLAIMS_LEARNED;
		rv = claims_put_new(txn, op, CLAIM_ACTIVE, CLAIM_SRC_CHALLENGE,
		    date);
	} else {
		a->result = CLAIMS_CONFLICT;
		rv = claims_conflict(txn, op, "", NULL, all, nall);
	}
out:
	free(all);
	return (rv);
}

/*
 * Make the operation of a claim request for the E.164 number e164 by
 * user_id at now_ms (milliseconds), its key in numkey: 1 if the number is
 * exempt (the answer says so, there is nothing to store), else 0.
 */
static int
claims_request_op(const char *e164, const char *user_id, int action,
    int64_t now_ms, struct claims_answer *answer, unsigned char *numkey,
    struct claims_op *op)
{
	size_t	len = strlen(e164);

	memset(answer, 0, sizeof *answer);
	answer->enforced = 1;
	hash_number(e164, numkey);
	if (claims_is_exempt(numkey)) {
		answer->result = CLAIMS_EXEMPT;
		return (1);
	}
	memset(op, 0, sizeof *op);
	op->numkey = numkey;
	op->user_id = user_id;
	op->last4 = len > LAST4_LEN ? e164 + len - LAST4_LEN : e164 + 1;
	op->action = action;
	op->now = now_ms / 1000;
	op->when.ms = now_ms;
	op->when.kind = CLAIMS_NOW;
	op->when.tie_ok = 0;
	op->answer = answer;
	return (0);
}

/* The transaction of a claim request's action. */
static int
(*claims_request_fn(int action))(struct store_txn *, void *)
{
	return (action == CLAIMS_CHALLENGE ? claims_challenge : claims_enroll);
}

/*
 * Apply a claim request for the E.164 number e164 by user_id at now_ms
 * (milliseconds).  Returns STORE_OK with the answer filled in, or a store
 * error.
 */
int
claims_request(const char *e164, const char *user_id, int action,
    int64_t now_ms, struct claims_answer *answer)
{
	unsigned char		numkey[NUMKEY_LEN];
	struct claims_op	op;

	if (claims_request_op(e164, user_id, action, now_ms, answer, numkey,
	    &op))
		return (STORE_OK);
	return (claims_run(claims_request_fn(action), &op));
}

/*
 * Commit the transaction of claims_request_many that holds reqs[from] to
 * reqs[to - 1]; if that fails, so does each of them that it held.
 */
static void
claims_many_commit(struct store_txn **top, struct claims_req *reqs,
    size_t from, size_t to, uint64_t *resolved)
{
	size_t	i;

	if (*top == NULL)
		return;
	if (store_txn_commit(*top) == STORE_OK)
		claims_resolved += *resolved;
	else {
		for (i = from; i < to; i++)
			if (reqs[i].held)
				reqs[i].rv = STORE_ERROR;
	}
	*top = NULL;
	*resolved = 0;
}

/*
 * Apply n claim requests in one transaction, each in a child of its own:
 * a replication group sends and acknowledges one commit for all of them
 * instead of one each.  Each request's rv and answer are what
 * claims_request would have given it, in this order; a child that fails
 * takes back its own changes only.  The commit of the whole decides: if
 * it fails, so does every request it held.  A child that deadlocks (it
 * cannot wait for its parent's locks, but another thread might wait for
 * them) has the requests before it committed, and is tried again in a
 * new transaction.
 */
void
claims_request_many(struct claims_req *reqs, size_t n)
{
	struct store_txn	*top = NULL, *txn;
	struct claims_op	 op;
	size_t			 i, first = 0;
	uint64_t		 resolved = 0;
	int			 try, rv;

	for (i = 0; i < n; i++) {
		reqs[i].held = 0;
		reqs[i].rv = STORE_OK;
		if (claims_request_op(reqs[i].e164, reqs[i].user_id,
		    reqs[i].action, reqs[i].now_ms, reqs[i].answer,
		    reqs[i].numkey, &op))
			continue;
		for (try = 0; try < CLAIMS_RETRIES; try++) {
			if (top == NULL &&
			    (rv = store_txn_begin(claims_store, &top)) !=
			    STORE_OK)
				break;
			if ((rv = store_txn_begin_child(top, &txn)) !=
			    STORE_OK)
				break;
			claims_resolved_txn = 0;
			rv = claims_request_fn(op.action)(txn, &op);
			if (rv == STORE_OK) {
				if ((rv = store_txn_commit(txn)) ==
				    STORE_OK) {
					resolved += claims_resolved_txn;
					reqs[i].held = 1;
				}
				break;
			}
			store_txn_abort(txn);
			if (rv != STORE_RETRY)
				break;
			claims_many_commit(&top, reqs, first, i, &resolved);
			first = i;
		}
		if (try == CLAIMS_RETRIES)
			log_warnx("transaction deadlocked %d times: giving up",
			    CLAIMS_RETRIES);
		reqs[i].rv = rv;
	}
	claims_many_commit(&top, reqs, first, n, &resolved);
}

/* Delete up to op->max lapsed reservations. */
static int
claims_expire_txn(struct store_txn *txn, void *arg)
{
	struct claims_expire_op	*op = arg;
	struct claim		*list;
	size_t			 n, i;
	int			 rv;

	op->released = 0;
	rv = store_claims_expired(txn, -1, op->now, op->max, &list, &n);
	if (rv != STORE_OK)
		return (rv);
	for (i = 0; i < n; i++) {
		rv = store_claim_del(txn, list[i].numkey, list[i].user_id);
		if (rv == STORE_NOTFOUND)
			rv = STORE_OK;
		if (rv == STORE_OK)
			rv = claims_promote(txn, list[i].numkey, op->now * 1000);
		if (rv != STORE_OK)
			break;
		op->released++;
	}
	free(list);
	return (rv);
}

/*
 * Release reservations that lapsed by now, at most max in one transaction;
 * *released says how many went.
 */
int
claims_expire(int64_t now, size_t max, size_t *released)
{
	struct claims_expire_op	op = { now, max, 0 };
	int			rv;

	rv = claims_run(claims_expire_txn, &op);
	*released = rv == STORE_OK ? op.released : 0;
	return (rv);
}

/*
 * Log events.  Each function below works inside the caller's transaction
 * (one per log-stream request) and says through *outcome what it did;
 * CLAIMS_STALE when the rule of time and order (the top of this file)
 * kept it from changing anything.
 */

/*
 * A user id is 1 to USER_ID_MAX bytes of well-formed UTF-8 without C0 or
 * C1 controls.
 */
int
claims_user_id_ok(const char *s)
{
	const unsigned char	*p = (const unsigned char *)s;
	size_t			 len = strlen(s);

	if (len == 0 || len > USER_ID_MAX || !json_utf8_ok(s, len))
		return (0);
	for (; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return (0);
		/* U+0080 to U+009F are 0xc2 0x80 to 0xc2 0x9f in UTF-8. */
		if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			return (0);
	}
	return (1);
}

/* The wall clock, in milliseconds since the epoch. */
int64_t
claims_clock_ms(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return ((int64_t)time(NULL) * 1000);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/*
 * The latest release watermark of user_id, user-wide or on numkey (when it
 * is not NULL), into *wm: -1 if there is none.
 */
static int
claims_watermark(struct store_txn *txn, const char *user_id,
    const unsigned char *numkey, int64_t *wm)
{
	int64_t	w;
	int	rv;

	*wm = -1;
	rv = store_watermark_get(txn, user_id, NULL, &w);
	if (rv == STORE_OK)
		*wm = w;
	else if (rv != STORE_NOTFOUND)
		return (rv);
	if (numkey == NULL)
		return (STORE_OK);
	rv = store_watermark_get(txn, user_id, numkey, &w);
	if (rv == STORE_OK && w > *wm)
		*wm = w;
	else if (rv != STORE_OK && rv != STORE_NOTFOUND)
		return (rv);
	return (STORE_OK);
}

/*
 * The rule of time and order (the top of this file), the one place it is
 * written.  With take set: may a release dated w take the claim take?
 * Else: may a creation or activation dated w happen for user_id, on the
 * number numkey (NULL: not known)?  Returns 1 if so, with the date the
 * change leaves (the claim's date, or the watermark) in *date_ms; 0 if it
 * is out of order or the store failed (*rv).
 */
int
claims_in_order(struct store_txn *txn, const struct claims_when *w,
    const char *user_id, const unsigned char *numkey,
    const struct claim *take, int64_t *date_ms, int *rv)
{
	int64_t	wm;

	*rv = STORE_OK;
	*date_ms = w->ms;
	if (take != NULL) {
		if (w->kind != CLAIMS_NOW)
			return (w->ms > take->since_ms);
		if (*date_ms <= take->since_ms)
			*date_ms = take->since_ms + 1;
		return (1);
	}
	if ((*rv = claims_watermark(txn, user_id, numkey, &wm)) != STORE_OK)
		return (0);
	switch (w->kind) {
	case CLAIMS_NOW:
		if (*date_ms <= wm)
			*date_ms = wm + 1;
		return (1);
	case CLAIMS_UNDATED:
		return (wm < 0);
	}
	return (w->ms > wm || (w->tie_ok && w->ms == wm));
}

/* The date a request made now leaves on the claim it makes or renews. */
static int
claims_now_date(struct store_txn *txn, struct claims_op *op, int64_t *date)
{
	int	rv;

	(void)claims_in_order(txn, &op->when, op->user_id, op->numkey, NULL,
	    date, &rv);
	return (rv);
}

/* Return 1 if a claim's last digits end with the visible suffix. */
int
claims_suffix_match(const struct claim *c, const char *suffix)
{
	size_t	clen = strlen(c->last4), slen = strlen(suffix);

	if (slen == 0 || slen > clen)
		return (0);
	return (strcmp(c->last4 + clen - slen, suffix) == 0);
}

/*
 * Make a claim active, dated at least date_ms, and remember its enrolment
 * id when one is given.  The caller has asked claims_in_order.
 */
int
claims_confirm(struct store_txn *txn, struct claim *c, const char *enrol_id,
    int64_t date_ms)
{
	c->state = CLAIM_ACTIVE;
	c->expires = 0;
	if (c->since_ms < date_ms)
		c->since_ms = date_ms;
	if (enrol_id != NULL)
		snprintf(c->enrol_id, sizeof c->enrol_id, "%s", enrol_id);
	return (store_claim_put(txn, c));
}

/*
 * An enrolment with a full number, in order and dated date_ms: activate,
 * create, or record a conflict.
 */
static int
claims_enrolled_full(struct store_txn *txn, const struct claims_event *ev,
    int64_t date_ms)
{
	struct claims_op	 op;
	struct claims_answer	 a;
	struct claim		*all = NULL, *mine, c;
	size_t			 nall, nothers;
	int			 rv;

	memset(&op, 0, sizeof op);
	op.numkey = ev->numkey;
	op.user_id = ev->user_id;
	op.last4 = ev->last4;
	op.now = ev->now;
	op.answer = &a;
	rv = claims_scan(txn, &op, &mine, &nothers, &all, &nall);
	if (rv != STORE_OK)
		goto out;
	if (mine != NULL)
		rv = claims_confirm(txn, mine, ev->enrol_id, date_ms);
	else if (nothers < (size_t)claims_conf->max_users_per_number) {
		memset(&c, 0, sizeof c);
		memcpy(c.numkey, ev->numkey, NUMKEY_LEN);
		snprintf(c.user_id, sizeof c.user_id, "%s", ev->user_id);
		c.source = ev->source;
		c.since_ms = date_ms;
		snprintf(c.last4, sizeof c.last4, "%s", ev->last4);
		rv = claims_confirm(txn, &c, ev->enrol_id, date_ms);
	} else {
		rv = claims_conflict(txn, &op, ev->log_id, ev->enrol_id, all,
		    nall);
	}
out:
	free(all);
	return (rv);
}

/*
 * An enrolment without a full number: the user's pending claim that the
 * masked number matches, or the most recent one when there is no number.
 */
static int
claims_enrolled_partial(struct store_txn *txn, const struct claims_event *ev,
    int *outcome)
{
	struct claim	*list, *best = NULL;
	size_t		 n, i;
	int64_t		 date;
	int		 rv;

	if ((rv = store_claims_by_user(txn, ev->user_id, &list, &n)) != 0)
		return (rv);
	for (i = 0; i < n; i++) {
		if (ev->suffix != NULL && !claims_suffix_match(&list[i],
		    ev->suffix))
			continue;
		if (list[i].state != CLAIM_PENDING ||
		    !claims_live(&list[i], ev->now))
			continue;
		if (best == NULL || list[i].since_ms > best->since_ms)
			best = &list[i];
	}
	if (best == NULL) {
		*outcome = CLAIMS_UNMATCHED;
		rv = verify_ask(txn, ev->user_id, VERIFY_UNMATCHED, ev->now);
	} else if (claims_in_order(txn, &ev->when, ev->user_id, best->numkey,
	    NULL, &date, &rv))
		rv = claims_confirm(txn, best, ev->enrol_id, date);
	else if (rv == STORE_OK)
		*outcome = CLAIMS_STALE;
	free(list);
	return (rv);
}

/* gd_enrollment_complete, or a factor an administrator added. */
int
claims_ev_enrolled(struct store_txn *txn, const struct claims_event *ev,
    int *outcome)
{
	int64_t	date;
	int	rv;

	*outcome = CLAIMS_APPLIED;
	if (ev->numkey == NULL)
		return (claims_enrolled_partial(txn, ev, outcome));
	if (!claims_in_order(txn, &ev->when, ev->user_id, ev->numkey, NULL,
	    &date, &rv)) {
		if (rv == STORE_OK)
			*outcome = CLAIMS_STALE;
		return (rv);
	}
	if (claims_is_exempt(ev->numkey)) {
		*outcome = CLAIMS_IGNORED;
		return (STORE_OK);
	}
	return (claims_enrolled_full(txn, ev, date));
}

/*
 * Release one claim by a release dated w, if the rule lets it (*taken),
 * and leave its per-number watermark in any case.
 */
int
claims_release(struct store_txn *txn, const struct claim *c,
    const struct claims_when *w, int *taken)
{
	int64_t	date;
	int	rv;

	*taken = claims_in_order(txn, w, c->user_id, NULL, c, &date, &rv);
	if (*taken) {
		rv = store_claim_del(txn, c->numkey, c->user_id);
		if (rv != STORE_OK && rv != STORE_NOTFOUND)
			return (rv);
		rv = claims_promote(txn, c->numkey, claims_clock_ms());
		if (rv != STORE_OK)
			return (rv);
	}
	return (store_watermark_raise(txn, c->user_id, c->numkey, date));
}

/*
 * Conflicts resolve themselves (DESIGN section 4): when a release leaves
 * a number with fewer live holders than allowed, the users its recorded
 * conflicts name, earliest first, become holders (active, source
 * conflict), as they still have it enrolled in Auth0.  Each conflict is
 * marked resolved and its user queued for verification, which takes the
 * claim back if the number is no longer theirs.
 */
static int
claims_promote(struct store_txn *txn, const unsigned char *numkey,
    int64_t now_ms)
{
	struct conflict	*v = NULL;
	struct claim	*all = NULL;
	size_t		 n = 0, nall, live = 0, i;
	ssize_t		 next;
	int		 rv;

	if ((rv = store_claims_by_number(txn, numkey, &all, &nall)) != 0)
		return (rv);
	for (i = 0; i < nall; i++)
		live += claims_live(&all[i], now_ms / 1000);
	if (live < (size_t)claims_conf->max_users_per_number)
		rv = store_conflicts_by_number(txn, numkey, &v, &n);
	while (rv == STORE_OK &&
	    live < (size_t)claims_conf->max_users_per_number &&
	    (next = claims_promote_pick(txn, v, n, all, nall, &rv)) >= 0) {
		rv = claims_promote_one(txn, &v[next], now_ms);
		live++;
	}
	free(all);
	store_conflicts_free(v, n);
	return (rv);
}

/*
 * The earliest conflict whose user may become a holder: not resolved yet,
 * its method not deleted (on_conflict = remove), not holding the number,
 * and released by nothing since it was recorded.  -1 for none.
 */
static ssize_t
claims_promote_pick(struct store_txn *txn, struct conflict *v, size_t n,
    const struct claim *all, size_t nall, int *rv)
{
	struct claims_when	 w;
	ssize_t			 best = -1;
	int64_t			 date;
	size_t			 i, j;

	memset(&w, 0, sizeof w);
	w.kind = CLAIMS_DATED;
	for (i = 0; i < n && *rv == STORE_OK; i++) {
		if (v[i].resolved != 0 || v[i].removal == CONFLICT_RM_DONE ||
		    v[i].removal == CONFLICT_RM_ABSENT ||
		    (best >= 0 && v[i].since >= v[best].since))
			continue;
		for (j = 0; j < nall; j++) {
			if (strcmp(all[j].user_id, v[i].user_id) == 0)
				break;
		}
		w.ms = v[i].since * 1000;
		if (j == nall && claims_in_order(txn, &w, v[i].user_id,
		    v[i].numkey, NULL, &date, rv))
			best = (ssize_t)i;
	}
	return (*rv == STORE_OK ? best : -1);
}

/* Make a conflict's user a holder of its number; see claims_promote. */
static int
claims_promote_one(struct store_txn *txn, struct conflict *cf,
    int64_t now_ms)
{
	struct claim	c;
	char		user[DEADLETTER_LOG_SIZE], id[DEADLETTER_LOG_SIZE];
	int		rv;

	memset(&c, 0, sizeof c);
	memcpy(c.numkey, cf->numkey, NUMKEY_LEN);
	snprintf(c.user_id, sizeof c.user_id, "%s", cf->user_id);
	snprintf(c.last4, sizeof c.last4, "%s", cf->last4);
	snprintf(c.enrol_id, sizeof c.enrol_id, "%s", cf->method);
	c.state = CLAIM_ACTIVE;
	c.source = CLAIM_SRC_CONFLICT;
	c.since_ms = cf->since * 1000;	/* when it was seen enrolled */
	if ((rv = store_claim_put(txn, &c)) != STORE_OK)
		return (rv);
	cf->resolved = now_ms / 1000;
	if (cf->removal == CONFLICT_RM_PENDING)
		cf->removal = CONFLICT_RM_NONE;	/* the holder's now */
	if ((rv = store_conflict_put(txn, cf)) != STORE_OK)
		return (rv);
	claims_resolved_txn++;
	log_warnx("conflict resolved: user %s now holds the number ending %s "
	    "that its holder left; verifying it%s%s",
	    deadletter_log_value(cf->user_id, user), cf->last4,
	    cf->log_id[0] != '\0' ? "; log id " : "",
	    deadletter_log_value(cf->log_id, id));
	return (verify_ask(txn, cf->user_id, VERIFY_PROMOTED, now_ms / 1000));
}

/* How many conflicts resolved themselves since start. */
uint64_t
claims_resolved_total(void)
{
	return (claims_resolved);
}

/*
 * Pick the claim an unenrolment without a full number means: the one
 * with the event's enrolment id, else the only one (among those the
 * masked number matches).  *pick is -1 for none, -2 for several.
 */
static void
claims_pick(const struct claim *list, size_t n,
    const struct claims_event *ev, ssize_t *pick)
{
	size_t	i, found = 0;

	*pick = -1;
	for (i = 0; ev->enrol_id != NULL && i < n; i++) {
		if (strcmp(list[i].enrol_id, ev->enrol_id) == 0) {
			*pick = (ssize_t)i;
			return;
		}
	}
	for (i = 0; i < n; i++) {
		if (ev->suffix != NULL && !claims_suffix_match(&list[i],
		    ev->suffix))
			continue;
		if (found++ == 0)
			*pick = (ssize_t)i;
	}
	if (found > 1)
		*pick = -2;
}

/*
 * Pick by enrolment id only (an id without a type may name another
 * factor): *pick is -1 if the user holds nothing, -2 if no claim has it.
 */
static void
claims_pick_id(const struct claim *list, size_t n,
    const struct claims_event *ev, ssize_t *pick)
{
	size_t	i;

	*pick = n == 0 ? -1 : -2;
	for (i = 0; i < n; i++) {
		if (strcmp(list[i].enrol_id, ev->enrol_id) == 0) {
			*pick = (ssize_t)i;
			return;
		}
	}
}

/* gd_unenroll or the deletion of one phone method: release one claim. */
int
claims_ev_unenrolled(struct store_txn *txn, const struct claims_event *ev,
    int *outcome)
{
	struct claim	*list;
	size_t		 n, i;
	ssize_t		 pick = -1;
	int		 rv, taken;

	*outcome = CLAIMS_UNMATCHED;
	if ((rv = store_claims_by_user(txn, ev->user_id, &list, &n)) != 0)
		return (rv);
	if (ev->numkey != NULL) {
		for (i = 0; i < n; i++) {
			if (memcmp(list[i].numkey, ev->numkey, NUMKEY_LEN) == 0)
				pick = (ssize_t)i;
		}
		if (pick == -1) {
			/* Nothing held, but a late enrolment must not return. */
			rv = store_watermark_raise(txn, ev->user_id,
			    ev->numkey, ev->when.ms);
		}
	} else if (ev->id_only && ev->enrol_id != NULL)
		claims_pick_id(list, n, ev, &pick);
	else if (ev->id_only)
		pick = n == 0 ? -1 : -2;	/* no id: verify */
	else
		claims_pick(list, n, ev, &pick);
	if (pick == -2) {
		*outcome = CLAIMS_AMBIGUOUS;
		rv = verify_ask(txn, ev->user_id, VERIFY_AMBIGUOUS, ev->now);
	} else if (pick >= 0 && ev->enrol_id != NULL &&
	    list[pick].enrol_id[0] != '\0' &&
	    strcmp(list[pick].enrol_id, ev->enrol_id) != 0) {
		/*
		 * The event ends another enrolment of this number than the
		 * one the claim records: a late unenrolment of an earlier
		 * one must not release the user's new enrolment.
		 */
		*outcome = CLAIMS_STALE;
	} else if (pick >= 0) {
		rv = claims_release(txn, &list[pick], &ev->when, &taken);
		*outcome = taken ? CLAIMS_APPLIED : CLAIMS_STALE;
	}
	free(list);
	return (rv);
}

/*
 * Release every claim in a list read by rv's lookup that the rule lets
 * the event take; the outcome is applied when one went, stale when none
 * could, else none_outcome.
 */
static int
claims_release_all(struct store_txn *txn, int rv, struct claim *list,
    size_t n, const struct claims_event *ev, int none_outcome, int *outcome)
{
	size_t	i;
	int	taken;

	*outcome = none_outcome;
	if (rv != STORE_OK)
		return (rv);
	if (n > 0)
		*outcome = CLAIMS_STALE;
	for (i = 0; i < n && rv == STORE_OK; i++) {
		rv = claims_release(txn, &list[i], &ev->when, &taken);
		if (taken)
			*outcome = CLAIMS_APPLIED;
	}
	free(list);
	return (rv);
}

/* User deleted, MFA reset: release every claim of the user. */
int
claims_ev_release_user(struct store_txn *txn, const struct claims_event *ev,
    int *outcome)
{
	struct claim	*list;
	size_t		 n;
	int		 rv;

	rv = store_claims_by_user(txn, ev->user_id, &list, &n);
	rv = claims_release_all(txn, rv, list, n, ev, CLAIMS_IGNORED, outcome);
	if (rv != STORE_OK)
		return (rv);
	return (store_watermark_raise(txn, ev->user_id, NULL, ev->when.ms));
}

/* A Guardian enrolment deleted by id: release the claims that carry it. */
int
claims_ev_release_enrol(struct store_txn *txn, const struct claims_event *ev,
    int *outcome)
{
	struct claim	*list;
	size_t		 n;
	int		 rv;

	rv = store_claims_by_enrol(txn, ev->enrol_id, &list, &n);
	return (claims_release_all(txn, rv, list, n, ev, CLAIMS_UNMATCHED,
	    outcome));
}

/*
 * The SMS or voice message failed: release the reservations it is newer
 * than (a renewal after it keeps its reservation).
 */
int
claims_ev_failed(struct store_txn *txn, const struct claims_event *ev,
    int *outcome)
{
	struct claim	*list;
	size_t		 n, i;
	int64_t		 date;
	int		 rv;

	*outcome = CLAIMS_IGNORED;
	if ((rv = store_claims_by_user(txn, ev->user_id, &list, &n)) != 0)
		return (rv);
	for (i = 0; i < n && rv == STORE_OK; i++) {
		if (list[i].state != CLAIM_PENDING ||
		    !claims_in_order(txn, &ev->when, ev->user_id, NULL,
		    &list[i], &date, &rv))
			continue;
		rv = store_claim_del(txn, list[i].numkey, list[i].user_id);
		if (rv == STORE_NOTFOUND)
			rv = STORE_OK;
		if (rv == STORE_OK)
			rv = claims_promote(txn, list[i].numkey, ev->now * 1000);
		*outcome = CLAIMS_APPLIED;
	}
	free(list);
	return (rv);
}

/*
 * Administration (the status socket).  Each call is one transaction of its
 * own; the caller flushes the log before it reports success.
 */

/* Fill an operation on the E.164 number e164 (hashed into numkey) now. */
static void
claims_admin_op(struct claims_op *op, const unsigned char *numkey,
    const char *e164, const char *user_id, struct claims_answer *answer)
{
	size_t	len = strlen(e164);

	memset(op, 0, sizeof *op);
	memset(answer, 0, sizeof *answer);
	op->numkey = numkey;
	op->user_id = user_id;
	op->last4 = len > LAST4_LEN ? e164 + len - LAST4_LEN : e164 + 1;
	op->when.ms = claims_clock_ms();
	op->when.kind = CLAIMS_NOW;
	op->now = op->when.ms / 1000;
	op->answer = answer;
}

/*
 * Release the claims on the number, of op->user_id only if it is set.
 * Each leaves a per-number watermark, as a release by the log stream does,
 * so that an older enrolment event cannot bring it back: dated now, to
 * the millisecond, and after the claim's own date.  Only live claims are
 * counted: a lapsed reservation was free already.
 */
static int
claims_admin_release_txn(struct store_txn *txn, void *arg)
{
	struct claims_op	*op = arg;
	struct claim		*list;
	size_t			 n, i;
	int			 rv, taken;

	op->released = 0;	/* again on a retry */
	if ((rv = store_claims_by_number(txn, op->numkey, &list, &n)) != 0)
		return (rv);
	for (i = 0; i < n && rv == STORE_OK; i++) {
		if (op->user_id != NULL &&
		    strcmp(list[i].user_id, op->user_id) != 0)
			continue;
		rv = claims_release(txn, &list[i], &op->when, &taken);
		if (taken && claims_live(&list[i], op->now))
			op->released++;
	}
	free(list);
	return (rv);
}

/*
 * Release user_id's claim on the number e164, or every claim on it when
 * user_id is NULL; *released says how many claims held it.
 */
int
claims_admin_release(const char *e164, const char *user_id, size_t *released)
{
	unsigned char		numkey[NUMKEY_LEN];
	struct claims_op	op;
	struct claims_answer	a;
	int			rv;

	hash_number(e164, numkey);
	claims_admin_op(&op, numkey, e164, user_id, &a);
	rv = claims_run(claims_admin_release_txn, &op);
	*released = rv == STORE_OK ? op.released : 0;
	return (rv);
}

/* Make the user's claim on the number active, unless others hold it. */
static int
claims_admin_claim_txn(struct store_txn *txn, void *arg)
{
	struct claims_op	*op = arg;
	struct claim		*all = NULL, *mine;
	size_t			 nall, nothers;
	int64_t			 date;
	int			 rv;

	rv = claims_scan(txn, op, &mine, &nothers, &all, &nall);
	if (rv == STORE_OK)
		rv = claims_now_date(txn, op, &date);
	if (rv != STORE_OK)
		goto out;
	op->answer->result = CLAIMS_ASSIGNED;
	if (mine != NULL)
		rv = claims_confirm(txn, mine, NULL, date);
	else if (nothers >= (size_t)claims_conf->max_users_per_number)
		op->answer->result = CLAIMS_TAKEN;
	else
		rv = claims_put_new(txn, op, CLAIM_ACTIVE, CLAIM_SRC_ADMIN,
		    date);
out:
	free(all);
	return (rv);
}

/*
 * Assign the number e164 to user_id as an active claim (source admin).
 * *result: CLAIMS_ASSIGNED (also when the user held it already),
 * CLAIMS_TAKEN when max_users_per_number others hold it (in monitor mode
 * too), CLAIMS_EXEMPT for a number on the exempt list (nothing stored).
 */
int
claims_admin_claim(const char *e164, const char *user_id, int *result)
{
	unsigned char		numkey[NUMKEY_LEN];
	struct claims_op	op;
	struct claims_answer	a;
	int			rv;

	*result = 0;
	hash_number(e164, numkey);
	if (claims_is_exempt(numkey)) {
		*result = CLAIMS_EXEMPT;
		return (STORE_OK);
	}
	claims_admin_op(&op, numkey, e164, user_id, &a);
	if ((rv = claims_run(claims_admin_claim_txn, &op)) == STORE_OK)
		*result = a.result;
	return (rv);
}

/* Keep the live claims of a list read by a lookup (it takes the list). */
static void
claims_keep_live(struct claims_list_op *op, struct claim *list, size_t n)
{
	size_t	i;

	free(op->v);
	op->v = list;
	op->n = 0;
	for (i = 0; i < n; i++) {
		if (claims_live(&list[i], op->now))
			op->v[op->n++] = list[i];
	}
	if (op->n == 0) {
		free(op->v);
		op->v = NULL;
	}
}

/* Read the claims on a number or of a user. */
static int
claims_lookup_txn(struct store_txn *txn, void *arg)
{
	struct claims_list_op	*op = arg;
	struct claim		*list;
	size_t			 n;
	int			 rv;

	if (op->numkey != NULL)
		rv = store_claims_by_number(txn, op->numkey, &list, &n);
	else
		rv = store_claims_by_user(txn, op->user_id, &list, &n);
	if (rv == STORE_OK)
		claims_keep_live(op, list, n);
	return (rv);
}

/*
 * Read the live claims on the number e164 (when it is not NULL) or else
 * of user_id; free *arrp.  Lapsed reservations are left out: they are free.
 */
int
claims_lookup(const char *e164, const char *user_id, struct claim **arrp,
    size_t *np)
{
	unsigned char		numkey[NUMKEY_LEN];
	struct claims_list_op	op;
	int			rv;

	memset(&op, 0, sizeof op);
	op.now = (int64_t)time(NULL);
	if (e164 != NULL) {
		hash_number(e164, numkey);
		op.numkey = numkey;
	} else
		op.user_id = user_id;
	rv = claims_run(claims_lookup_txn, &op);
	if (rv != STORE_OK) {
		free(op.v);
		op.v = NULL;
		op.n = 0;
	}
	*arrp = op.v;
	*np = op.n;
	return (rv);
}

/* Collect one live claim of a walk; stop when the piece is full. */
static int
claims_walk_cb(const struct claim *c, void *arg)
{
	struct claims_list_op	*op = arg;

	if (!claims_live(c, op->now))
		return (0);
	op->v[op->n++] = *c;
	return (op->n == op->max);
}

/* Read one piece of a walk; a retry starts the piece again. */
static int
claims_walk_txn(struct store_txn *txn, void *arg)
{
	struct claims_list_op	*op = arg;

	op->n = 0;
	return (store_claims_all(txn, op->after, claims_walk_cb, op));
}

/*
 * Read up to max live claims in store order, from the first or from the
 * one after the claim after, into arr (room for max).  *np < max means
 * the walk is over.  A long walk goes in short transactions, so that it
 * never holds the store: it sees each claim that exists throughout, not a
 * snapshot.
 */
int
claims_walk(const struct claim *after, size_t max, struct claim *arr,
    size_t *np)
{
	struct claims_list_op	op;
	int			rv;

	memset(&op, 0, sizeof op);
	op.after = after;
	op.now = (int64_t)time(NULL);
	op.v = arr;
	op.max = max;
	rv = claims_run(claims_walk_txn, &op);
	*np = rv == STORE_OK ? op.n : 0;
	return (rv);
}

/* Read every conflict. */
static int
claims_conflicts_txn(struct store_txn *txn, void *arg)
{
	struct claims_conflicts_op	*op = arg;

	store_conflicts_free(op->v, op->n);
	op->v = NULL;
	op->n = 0;
	return (store_conflicts(txn, &op->v, &op->n));
}

/* Read every recorded conflict; free with store_conflicts_free. */
int
claims_conflicts(struct conflict **arrp, size_t *np)
{
	struct claims_conflicts_op	op = { NULL, 0 };
	int				rv;

	rv = claims_run(claims_conflicts_txn, &op);
	*arrp = op.v;
	*np = op.n;
	return (rv);
}

/* The first conflict whose phone method is still to be removed. */
static int
claims_removal_next_txn(struct store_txn *txn, void *arg)
{
	struct conflict	*cf = arg, *v;
	size_t		 n, i;
	int		 rv;

	if ((rv = store_conflicts(txn, &v, &n)) != STORE_OK)
		return (rv);
	rv = STORE_NOTFOUND;
	for (i = 0; i < n; i++) {
		if (v[i].removal != CONFLICT_RM_PENDING || v[i].resolved != 0)
			continue;
		*cf = v[i];
		cf->holders = NULL;	/* not needed; freed with v */
		cf->nholders = 0;
		rv = STORE_OK;
		break;
	}
	store_conflicts_free(v, n);
	return (rv);
}

/*
 * Find a conflict whose phone method on_conflict = remove is to delete;
 * STORE_NOTFOUND when none is.  Only a conflict recorded since the last
 * empty answer (or since start) makes it read the conflicts again.
 */
int
claims_removal_next(struct conflict *cf)
{
	int	rv;

	memset(cf, 0, sizeof *cf);
	if (!claims_removals)
		return (STORE_NOTFOUND);
	rv = claims_run(claims_removal_next_txn, cf);
	if (rv == STORE_NOTFOUND)
		claims_removals = 0;
	return (rv);
}

/* What a removal came to. */
struct claims_removal_op {
	const struct conflict	*cf;
	int			 removal;
	int			 code;
	int64_t			 now;
};

/* Write what became of a conflict's method into its record. */
static int
claims_removal_done_txn(struct store_txn *txn, void *arg)
{
	struct claims_removal_op	*op = arg;
	struct conflict			 cf;
	int				 rv;

	rv = store_conflict_get(txn, op->cf->numkey, op->cf->user_id, &cf);
	if (rv == STORE_NOTFOUND)
		return (STORE_OK);	/* cleared meanwhile */
	if (rv != STORE_OK)
		return (rv);
	if (cf.removal == CONFLICT_RM_PENDING) {
		cf.removal = op->removal;
		cf.removal_at = op->now;
		cf.removal_code = op->code;
		rv = store_conflict_put(txn, &cf);
	}
	store_conflict_clear(&cf);
	return (rv);
}

/*
 * Record in the conflict cf what the deletion of its phone method came to
 * (CONFLICT_RM_DONE, _ABSENT or _FAILED) and the HTTP status it got.
 */
int
claims_removal_done(const struct conflict *cf, int removal, int code,
    int64_t now)
{
	struct claims_removal_op	op = { cf, removal, code, now };

	return (claims_run(claims_removal_done_txn, &op));
}

/* Make every commit so far durable (for callers without an HTTP reply). */
int
claims_flush(void)
{
	return (store_flush(claims_store));
}
