/*
 * Reconciliation: every active claim is checked against the user's phone
 * methods (GET /api/v2/users/{id}/authentication-methods, fetched by
 * mgmt.c) at least once per reconcile_interval, so that whatever the log
 * stream missed, masked or never sent is repaired in bounded time.
 *
 * A pass walks the claims in the store's order (by number key) from a
 * cursor kept in meta.db with the pass's progress; the cursor moves in
 * the transaction that applies an answer, so a pass goes on where it
 * stopped after a restart and no answer is applied twice.  A pass starts
 * reconcile_interval after the previous one started, and is paced to end
 * within half the interval; "reconcile" on the status socket starts one
 * now, unpaced.  One user can be checked now ("reconcile USER"): such
 * requests wait in memory only.
 *
 * For the user of the claim at the cursor, the answer settles:
 *
 *   a user Auth0 does not know (404 inexistent_user): every claim of the
 *   user is released (users deleted with their connection, linked away);
 *
 *   an active claim that no phone method backs (same method id, same full
 *   number, or visible digits that match) is released; a method that
 *   shows no digit and carries no known id might back it: kept, counted
 *   unsettled;
 *
 *   a confirmed method with a full number that the user holds no claim
 *   on is claimed for the user (source "verify"), or recorded as a
 *   conflict when others hold the number, as an enrolment would be;
 *   a masked one no claim matches cannot be learned: unsettled.
 *
 * Only claims that were active when the request went out are released,
 * and releases and new claims are dated when the request went out: an
 * event that happened while the answer was on its way wins (DESIGN I4).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define RECONCILE_META		"reconcile_pass"
#define RECONCILE_QUEUE_MAX	1000	/* users asked for by hand */
#define RECONCILE_SNAP_MAX	VERIFY_METHODS_MAX

/* The pass, as kept in meta.db. */
struct reconcile_pass {
	int64_t		 started;	/* 0: no pass under way */
	int64_t		 last_start;	/* of the last complete pass */
	int64_t		 last_done;
	uint64_t	 checked;
	uint64_t	 total;
	int		 manual;	/* started by hand: unpaced */
	int		 have_cursor;
	struct claim	 cursor;	/* the last claim checked */
};

struct reconcile {
	struct store		*store;
	const struct conf	*conf;
	int			 enabled;
	int			 loaded;
	struct reconcile_pass	 pass;
	/* The user being read. */
	char			 user[USER_ID_MAX + 1];
	int			 busy;
	int			 queued;	/* from the queue, not the pass */
	struct claim		 at;		/* the claim at the cursor */
	unsigned char		 snap[RECONCILE_SNAP_MAX][NUMKEY_LEN];
	size_t			 nsnap;
	int64_t			 asked_ms;	/* when its GET was sent */
	int64_t			 next_ms;	/* pacing: not before */
	char			**queue;
	size_t			 nqueue;
	struct reconcile_status	 st;
};

/* One answer being applied. */
struct reconcile_op {
	struct reconcile		*r;
	const struct verify_method	*m;
	size_t				 n;
	int				 found;
	int				 skip;
	int64_t				 now;
	struct claims_when		 when;	/* asked for */
	size_t				 released;
	size_t				 learned;
	size_t				 conflicts;
	size_t				 unsettled;
	struct reconcile_pass		 pass;	/* as it will be */
};

struct reconcile_find {
	struct claim	 c;
	int		 found;
};

static struct reconcile	*rec;

static int	reconcile_load_txn(struct store_txn *, void *);
static int	reconcile_save(struct store_txn *, const struct reconcile_pass *);
static int	reconcile_parse(const char *, struct reconcile_pass *);
static int	reconcile_find_cb(const struct claim *, void *);
static int	reconcile_find_txn(struct store_txn *, void *);
static int	reconcile_start_txn(struct store_txn *, void *);
static int	reconcile_snap_txn(struct store_txn *, void *);
static int	reconcile_done_txn(struct store_txn *, void *);
static int	reconcile_settle_txn(struct store_txn *, void *);
static int64_t	reconcile_now_ms(void);
static int	reconcile_pass_next(int64_t, char *, int64_t *);
static void	reconcile_pass_end(int64_t);

/* Set up reconciliation; enabled when a Management API client exists. */
void
reconcile_init(struct store *store, const struct conf *conf, int mgmt)
{
	rec = xcalloc(1, sizeof *rec);
	rec->store = store;
	rec->conf = conf;
	rec->enabled = mgmt && conf->reconcile_interval > 0;
	rec->st.configured = mgmt;
	rec->st.interval = conf->reconcile_interval;
	rec->st.share = conf->reconcile_share;
	/* A replica reads it when it becomes the master (reconcile_next). */
	if (rec->enabled && !repl_enabled() &&
	    claims_run(reconcile_load_txn, &rec->pass) == STORE_OK)
		rec->loaded = 1;
}

/* Free the module. */
void
reconcile_free(void)
{
	size_t	i;

	if (rec == NULL)
		return;
	for (i = 0; i < rec->nqueue; i++)
		free(rec->queue[i]);
	free(rec->queue);
	free(rec);
	rec = NULL;
}

/* What status and /metrics show. */
const struct reconcile_status *
reconcile_status(void)
{
	static const struct reconcile_status	none;

	if (rec == NULL)
		return (&none);
	rec->st.enabled = rec->enabled;
	rec->st.running = rec->pass.started != 0;
	rec->st.pass_started = rec->pass.started;
	rec->st.pass_checked = rec->pass.checked;
	rec->st.pass_total = rec->pass.total;
	rec->st.last_pass = rec->pass.last_done;
	rec->st.queued = rec->nqueue;
	return (&rec->st);
}

/* Seconds and milliseconds of the wall clock, in milliseconds. */
static int64_t
reconcile_now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/*
 * Read a pass from its meta.db text: started last_start last_done checked
 * total manual hex-cursor user (the user id last: it may hold blanks).
 */
static int
reconcile_parse(const char *s, struct reconcile_pass *p)
{
	long long	 v[6];
	char		*end;
	size_t		 i;
	unsigned int	 byte;

	memset(p, 0, sizeof *p);
	for (i = 0; i < 6; i++) {
		v[i] = strtoll(s, &end, 10);
		if (end == s || *end != ' ' || v[i] < 0)
			return (-1);
		s = end + 1;
	}
	p->started = v[0];
	p->last_start = v[1];
	p->last_done = v[2];
	p->checked = (uint64_t)v[3];
	p->total = (uint64_t)v[4];
	p->manual = v[5] != 0;
	if (*s == '-')
		return (s[1] == ' ' || s[1] == '\0' ? 0 : -1);
	for (i = 0; i < NUMKEY_LEN; i++, s += 2) {
		if (sscanf(s, "%2x", &byte) != 1)
			return (-1);
		p->cursor.numkey[i] = (unsigned char)byte;
	}
	if (*s != ' ' || strlen(s + 1) > USER_ID_MAX)
		return (-1);
	snprintf(p->cursor.user_id, sizeof p->cursor.user_id, "%s", s + 1);
	p->have_cursor = 1;
	return (0);
}

/* Write the pass into meta.db, inside txn. */
static int
reconcile_save(struct store_txn *txn, const struct reconcile_pass *p)
{
	char	hex[2 * NUMKEY_LEN + 1], *text;
	size_t	i;
	int	rv;

	hex[0] = '-';
	hex[1] = '\0';
	for (i = 0; p->have_cursor && i < NUMKEY_LEN; i++)
		snprintf(hex + 2 * i, 3, "%02x", p->cursor.numkey[i]);
	xasprintf(&text, "%lld %lld %lld %llu %llu %d %s %s",
	    (long long)p->started, (long long)p->last_start,
	    (long long)p->last_done, (unsigned long long)p->checked,
	    (unsigned long long)p->total, p->manual, hex,
	    p->have_cursor ? p->cursor.user_id : "");
	rv = store_meta_put(txn, RECONCILE_META, text);
	free(text);
	return (rv);
}

/* Read the pass kept in meta.db (none: a first pass is due now). */
static int
reconcile_load_txn(struct store_txn *txn, void *arg)
{
	struct reconcile_pass	*p = arg;
	char			*text;
	int			 rv;

	memset(p, 0, sizeof *p);
	rv = store_meta_get(txn, RECONCILE_META, &text);
	if (rv == STORE_NOTFOUND)
		return (STORE_OK);
	if (rv != STORE_OK)
		return (rv);
	if (reconcile_parse(text, p) != 0) {
		log_warnx("reconcile: unreadable progress in the store; "
		    "starting a new pass");
		memset(p, 0, sizeof *p);
	}
	free(text);
	return (STORE_OK);
}

/* Stop at the first active claim. */
static int
reconcile_find_cb(const struct claim *c, void *arg)
{
	struct reconcile_find	*f = arg;

	if (c->state != CLAIM_ACTIVE)
		return (0);
	f->c = *c;
	f->found = 1;
	return (1);
}

/* Find the first active claim after the cursor. */
static int
reconcile_find_txn(struct store_txn *txn, void *arg)
{
	struct reconcile_find	*f = arg;

	f->found = 0;
	return (store_claims_all(txn, rec->pass.have_cursor ?
	    &rec->pass.cursor : NULL, reconcile_find_cb, f));
}

/* Start a pass (arg: manual) and keep it. */
static int
reconcile_start_txn(struct store_txn *txn, void *arg)
{
	struct reconcile_pass	p = rec->pass;
	struct store_counts	counts;

	if (p.started == 0) {
		if (store_count(rec->store, &counts) != STORE_OK)
			return (STORE_ERROR);
		p.started = (int64_t)time(NULL);
		p.checked = 0;
		p.total = counts.active;
		p.have_cursor = 0;
		memset(&p.cursor, 0, sizeof p.cursor);
	}
	p.manual = p.manual || *(int *)arg;
	return (reconcile_save(txn, &p));
}

/* Note the user's active claims as they are when the request goes out. */
static int
reconcile_snap_txn(struct store_txn *txn, void *arg)
{
	struct claim	*list;
	size_t		 n, i;
	int		 rv;

	(void)arg;
	rec->nsnap = 0;
	if ((rv = store_claims_by_user(txn, rec->user, &list, &n)) != 0)
		return (rv);
	for (i = 0; i < n && rec->nsnap < RECONCILE_SNAP_MAX; i++) {
		if (list[i].state == CLAIM_ACTIVE)
			memcpy(rec->snap[rec->nsnap++], list[i].numkey,
			    NUMKEY_LEN);
	}
	free(list);
	return (STORE_OK);
}

/* End the pass in meta.db. */
static int
reconcile_done_txn(struct store_txn *txn, void *arg)
{
	struct reconcile_pass	*p = arg;

	return (reconcile_save(txn, p));
}

/* The pass is complete: keep when it was, and log it. */
static void
reconcile_pass_end(int64_t now)
{
	struct reconcile_pass	p = rec->pass;

	p.last_start = p.started;
	p.last_done = now;
	p.total = p.checked;	/* what the pass found in the end */
	p.started = 0;
	p.manual = 0;
	if (claims_run(reconcile_done_txn, &p) != STORE_OK ||
	    claims_flush() != STORE_OK) {
		reconcile_failed("the store is unavailable");
		return;
	}
	rec->pass = p;
	rec->st.passes++;
	log_info("reconcile: pass done, %llu active claim(s) checked in %llds",
	    (unsigned long long)p.checked, (long long)(now - p.last_start));
}

/*
 * The next user of the pass, into user (USER_ID_MAX + 1 bytes): 1 if
 * one is to be read now, 0 if not (*wait: seconds until one is, or -1),
 * -1 if the store failed.
 */
static int
reconcile_pass_next(int64_t now, char *user, int64_t *wait)
{
	struct reconcile_find	f;
	int64_t			 due, gap, ms;
	int			 manual = 0;

	if (rec->pass.started == 0) {
		due = rec->pass.last_start + rec->conf->reconcile_interval;
		if (rec->pass.last_start != 0 && now < due) {
			*wait = due - now;
			return (0);
		}
		if (claims_run(reconcile_start_txn, &manual) != STORE_OK ||
		    claims_run(reconcile_load_txn, &rec->pass) != STORE_OK)
			return (-1);
		log_info("reconcile: pass started over %llu active claim(s)",
		    (unsigned long long)rec->pass.total);
	}
	ms = reconcile_now_ms();
	if (!rec->pass.manual && ms < rec->next_ms) {
		*wait = (rec->next_ms - ms + 999) / 1000;
		return (0);
	}
	if (claims_run(reconcile_find_txn, &f) != STORE_OK)
		return (-1);
	if (!f.found) {
		reconcile_pass_end(now);
		return (reconcile_pass_next(now, user, wait));
	}
	/* Half the interval for the whole pass, in milliseconds. */
	gap = rec->conf->reconcile_interval * 500 /
	    (int64_t)(rec->pass.total > 0 ? rec->pass.total : 1);
	rec->next_ms = ms + gap;
	rec->at = f.c;
	snprintf(user, USER_ID_MAX + 1, "%s", f.c.user_id);
	return (1);
}

/*
 * The user whose methods mgmt.c should read next, into user (USER_ID_MAX
 * + 1 bytes): 1 if there is one now, 0 if not (*wait: seconds until
 * there is, -1 never).  Users asked for by hand come first.
 */
int
reconcile_next(int64_t now, char *user, int64_t *wait)
{
	int	rv;

	*wait = -1;
	if (rec == NULL || !rec->enabled)
		return (0);
	if (!rec->loaded) {
		if (claims_run(reconcile_load_txn, &rec->pass) != STORE_OK)
			return (0);
		rec->loaded = 1;
	}
	if (!rec->busy) {
		rec->queued = rec->nqueue > 0;
		if (rec->queued)
			snprintf(rec->user, sizeof rec->user, "%s",
			    rec->queue[0]);
		else if ((rv = reconcile_pass_next(now, rec->user, wait)) != 1)
			return (0);
		if (claims_run(reconcile_snap_txn, NULL) != STORE_OK)
			return (0);
		rec->busy = 1;
	}
	rec->asked_ms = claims_clock_ms();
	snprintf(user, USER_ID_MAX + 1, "%s", rec->user);
	return (1);
}

/* Apply one answer and move the cursor, in one transaction. */
static int
reconcile_settle_txn(struct store_txn *txn, void *arg)
{
	struct reconcile_op	*op = arg;
	struct verify_answer	 a;
	int			 rv = STORE_OK;

	op->released = op->learned = op->conflicts = op->unsettled = 0;
	if (!op->skip) {
		memset(&a, 0, sizeof a);
		a.user_id = rec->user;
		a.reasons = VERIFY_RECONCILE;
		a.m = op->m;
		a.n = op->n;
		a.found = op->found;
		a.now = op->now;
		a.when = op->when;
		a.snap = (const unsigned char (*)[NUMKEY_LEN])rec->snap;
		a.nsnap = rec->nsnap;
		rv = verify_apply(txn, &a);
		op->released = a.r.released;
		op->learned = a.r.claimed - a.r.conflicts;
		op->conflicts = a.r.conflicts;
		op->unsettled = a.r.unsettled;
	}
	if (rv != STORE_OK || rec->queued)
		return (rv);
	op->pass = rec->pass;
	op->pass.cursor = rec->at;
	op->pass.have_cursor = 1;
	op->pass.checked++;
	return (reconcile_save(txn, &op->pass));
}

/*
 * The answer for the user being read: the n phone methods Auth0 listed,
 * or found 0 (Auth0 does not know the user), or skip (Auth0 refuses the
 * user id: nothing to learn).  -1 if the store failed (the same user is
 * read again).
 */
int
reconcile_settle(const struct verify_method *m, size_t n, int found,
    int skip)
{
	struct reconcile_op	op;
	char			who[DEADLETTER_LOG_SIZE];

	if (rec == NULL || !rec->busy)
		return (0);
	memset(&op, 0, sizeof op);
	op.r = rec;
	op.m = m;
	op.n = n;
	op.found = found;
	op.skip = skip;
	op.now = (int64_t)time(NULL);
	op.when.ms = rec->asked_ms;
	op.when.kind = CLAIMS_DATED;
	if (claims_run(reconcile_settle_txn, &op) != STORE_OK ||
	    claims_flush() != STORE_OK) {
		reconcile_failed("the store is unavailable");
		return (-1);
	}
	rec->busy = 0;
	if (rec->queued) {
		free(rec->queue[0]);
		memmove(rec->queue, rec->queue + 1, --rec->nqueue *
		    sizeof *rec->queue);
	} else
		rec->pass = op.pass;
	rec->st.checked++;
	rec->st.released += op.released;
	rec->st.learned += op.learned;
	rec->st.conflicts += op.conflicts;
	rec->st.unsettled += op.unsettled;
	rec->st.missing += !found && !skip;
	if (op.released + op.learned + op.conflicts + op.unsettled > 0 ||
	    !found || skip)
		log_info("reconcile: user %s%s: %zu phone method(s); %zu "
		    "released, %zu learned, %zu conflict(s), %zu unsettled",
		    deadletter_log_value(rec->user, who),
		    skip ? " refused by Auth0 (HTTP 400)" : found ?
		    "" : " does not exist", n, op.released, op.learned,
		    op.conflicts, op.unsettled);
	return (0);
}

/* A request failed (mgmt.c retries it with back-off): count it. */
void
reconcile_failed(const char *why)
{
	if (rec == NULL)
		return;
	rec->st.failures++;
	snprintf(rec->st.last_error, sizeof rec->st.last_error, "%s", why);
}

/*
 * Start a pass now, unpaced (or take the pass under way off its pace):
 * 0, -1 if reconciliation is off, -2 if the store failed.
 */
int
reconcile_start(void)
{
	int	manual = 1;

	if (rec == NULL || !rec->enabled)
		return (-1);
	if (claims_run(reconcile_start_txn, &manual) != STORE_OK ||
	    claims_run(reconcile_load_txn, &rec->pass) != STORE_OK)
		return (-2);
	rec->loaded = 1;
	rec->next_ms = 0;
	log_info("reconcile: pass %s by hand over %llu active claim(s)",
	    rec->pass.checked == 0 ? "started" : "hurried",
	    (unsigned long long)rec->pass.total);
	return (0);
}

/* Check one user now: 0, -1 if reconciliation is off, -2 if too many wait. */
int
reconcile_user(const char *user_id)
{
	size_t	i;

	if (rec == NULL || !rec->enabled)
		return (-1);
	for (i = 0; i < rec->nqueue; i++) {
		if (strcmp(rec->queue[i], user_id) == 0)
			return (0);
	}
	if (rec->nqueue >= RECONCILE_QUEUE_MAX)
		return (-2);
	rec->queue = xreallocarray(rec->queue, rec->nqueue + 1,
	    sizeof *rec->queue);
	rec->queue[rec->nqueue++] = xstrdup(user_id);
	return (0);
}

/* The rate-limit share: 1 if a request may use the bucket now. */
int
reconcile_may_send(long long limit, long long remaining)
{
	if (rec == NULL || limit <= 0 || remaining < 0)
		return (1);
	return (remaining * 100 > limit * (100 - rec->conf->reconcile_share));
}
