/*
 * Verification: settle what the log stream left in doubt by reading the
 * user's phone methods through the Management API (mgmt.c fetches them).
 *
 * Three things ask for it, each inside the transaction that found the
 * doubt, so that a request is never lost and never made for a change
 * that did not commit: a reservation about to lapse without news of its
 * enrolment (VERIFY_EXPIRING), an enrolment that matched no reservation
 * (VERIFY_UNMATCHED) and an unenrolment that could mean several claims
 * (VERIFY_AMBIGUOUS).  Requests wait in verify.db, one per user with the
 * reasons or-ed, at most VERIFY_QUEUE_MAX of them.
 *
 * What the answer settles depends on whether the tenant shows numbers
 * (disable_management_api_sms_obfuscation) or masks them ("XXXXXXXX4567",
 * or no digit at all):
 *
 *   a confirmed method with a full number: the user's claim on it becomes
 *   active (or is created, or a conflict is recorded, as an enrolment
 *   event with that number would);
 *
 *   a confirmed masked method that no claim carries the id of: the user's
 *   live reservation becomes active when exactly one fits it, that is when
 *   the visible digits match its number, or, with no digit visible, when
 *   the method was created after the reservation;
 *
 *   for an ambiguous unenrolment: every active claim of the user that no
 *   method backs is released (backed: same method id, same full number,
 *   or visible digits that match); a claim that a method without visible
 *   digits might back stays, counted unsettled;
 *
 *   a user Auth0 does not know (404 inexistent_user): every claim of the
 *   user is released, as a user deletion would.
 *
 * A reservation with no evidence is left to lapse.  Every change the
 * answer makes is dated when the answer was asked for, not when it came:
 * what Auth0 listed was true then, and a release after that (an event, an
 * administrator) wins over it.  The rule is claims.c's (claims_in_order):
 * the answer creates or activates a claim only if it was asked for after
 * every watermark that applies, and releases only claims made before it;
 * its releases leave watermarks at that date, so that a late event older
 * than the answer cannot undo them (I4).
 */
#include "config.h"

#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define VERIFY_SLACK	60	/* seconds of clock difference allowed */
#define VERIFY_RETRY_MAX 3600	/* seconds between tries, at most */

struct verify_expiring_op {
	int64_t	 after;
	int64_t	 until;
	size_t	 max;
	int64_t	 now;
	int64_t	 last;
	size_t	 asked;
};

struct verify_next_op {
	char			*user_id;
	int64_t			 now;
	struct verify_req	*r;
};

struct verify_retry_op {
	const char	*user_id;
	int		 tries;
	int64_t		 not_before;
	int		 gave_up;
};

static int	verify_enabled;
static atomic_uint_fast64_t verify_refused;	/* any claim thread */

static int	verify_settle_txn(struct store_txn *, void *);
static int	verify_gone(struct store_txn *, struct verify_answer *);
static int	verify_full(struct store_txn *, struct verify_answer *,
		    struct claim *, size_t);
static int	verify_masked(struct store_txn *, struct verify_answer *,
		    struct claim *, size_t);
static int	verify_unenrolled(struct store_txn *, struct verify_answer *,
		    struct claim *, size_t);
static int	verify_linked(const struct claim *, size_t, const char *);
static int	verify_shown(const struct claim *, size_t, const char *);
static int	verify_listed(const struct verify_answer *, const char *);
static int	verify_in_snap(const struct verify_answer *,
		    const unsigned char *);
static int	verify_holds(struct store_txn *, const char *,
		    const unsigned char *, int *);
static int	verify_fits(const struct verify_method *,
		    const struct claim *);
static int	verify_expiring_txn(struct store_txn *, void *);
static int	verify_next_txn(struct store_txn *, void *);
static int	verify_drop_txn(struct store_txn *, void *);
static int	verify_retry_txn(struct store_txn *, void *);
static void	verify_method(yajl_val, struct verify_method *);

/* Turn verification requests on (a Management API client is set up). */
void
verify_init(int enabled)
{
	verify_enabled = enabled;
	verify_refused = 0;
}

/* How many requests were refused because too many were waiting. */
uint64_t
verify_refused_total(void)
{
	return (verify_refused);
}

/*
 * Ask, inside txn, for the user's phone methods to be read, for reasons.
 * Does nothing without a Management API client; a full queue is logged
 * and counted, not an error.
 */
int
verify_ask(struct store_txn *txn, const char *user_id, int reasons,
    int64_t now)
{
	int	rv;

	if (!verify_enabled)
		return (STORE_OK);
	rv = store_verify_add(txn, user_id, reasons, now, VERIFY_QUEUE_MAX);
	if (rv != STORE_FULL)
		return (rv);
	if (verify_refused++ == 0)
		log_warnx("verify: %d verifications are waiting; not asking "
		    "for more until they are done", VERIFY_QUEUE_MAX);
	return (STORE_OK);
}

/* Ask for the users whose reservations lapse in (after, until]. */
static int
verify_expiring_txn(struct store_txn *txn, void *arg)
{
	struct verify_expiring_op	*op = arg;
	struct claim			*list;
	size_t				 n, i;
	int				 rv;

	op->asked = 0;
	op->last = op->after;
	rv = store_claims_expired(txn, op->after, op->until, op->max, &list,
	    &n);
	for (i = 0; i < n && rv == STORE_OK; i++) {
		rv = verify_ask(txn, list[i].user_id, VERIFY_EXPIRING,
		    op->now);
		op->asked++;
		op->last = list[i].expires;
	}
	if (n < op->max)
		op->last = op->until;
	free(list);
	return (rv);
}

/*
 * Ask for a verification of every reservation that lapses after *after
 * and at or before until (at most max of them); *after moves on to where
 * the next call should start.
 */
int
verify_expiring(int64_t *after, int64_t until, size_t max, int64_t now,
    size_t *asked)
{
	struct verify_expiring_op	op;
	int				rv;

	*asked = 0;
	if (!verify_enabled || until <= *after)
		return (STORE_OK);
	memset(&op, 0, sizeof op);
	op.after = *after;
	op.until = until;
	op.max = max;
	op.now = now;
	if ((rv = claims_run(verify_expiring_txn, &op)) == STORE_OK) {
		*after = op.last;
		*asked = op.asked;
	}
	return (rv);
}

/* Read the next request due. */
static int
verify_next_txn(struct store_txn *txn, void *arg)
{
	struct verify_next_op	*op = arg;

	return (store_verify_next(txn, op->now, op->user_id, op->r));
}

/*
 * The next user to verify at now (seconds), into user_id (USER_ID_MAX +
 * 1 bytes), with the request; STORE_NOTFOUND when none is due, with
 * r->not_before the time one will be (0 if none waits).
 */
int
verify_next(char *user_id, int64_t now, struct verify_req *r)
{
	struct verify_next_op	op = { user_id, now, r };

	return (claims_run(verify_next_txn, &op));
}

/* Count a failed lookup, or give up on the user after the last. */
static int
verify_retry_txn(struct store_txn *txn, void *arg)
{
	struct verify_retry_op	*op = arg;

	op->gave_up = op->tries >= VERIFY_TRIES_MAX;
	if (op->gave_up)
		return (store_verify_del(txn, op->user_id));
	return (store_verify_retry(txn, op->user_id, op->tries,
	    op->not_before));
}

/*
 * A lookup of user_id failed for the tries-th time at now: put it behind
 * the others, back from now by 1 s doubling with each try (at most an
 * hour), or, after VERIFY_TRIES_MAX tries, forget it (*gave_up).  In
 * seconds *wait, the back-off.
 */
int
verify_retry(const char *user_id, int tries, int64_t now, int *gave_up,
    int64_t *wait)
{
	struct verify_retry_op	op;
	int			rv;

	*wait = tries >= 12 ? VERIFY_RETRY_MAX : (int64_t)1 << (tries - 1);
	if (*wait > VERIFY_RETRY_MAX)
		*wait = VERIFY_RETRY_MAX;
	op.user_id = user_id;
	op.tries = tries;
	op.not_before = now + *wait;
	op.gave_up = 0;
	rv = claims_run(verify_retry_txn, &op);
	*gave_up = rv == STORE_OK && op.gave_up;
	return (rv == STORE_NOTFOUND ? STORE_OK : rv);
}

/* Forget a user's request. */
static int
verify_drop_txn(struct store_txn *txn, void *arg)
{
	return (store_verify_del(txn, arg));
}

/* Forget a request that cannot be answered (Auth0 refused the user id). */
int
verify_drop(const char *user_id)
{
	return (claims_run(verify_drop_txn, (void *)(uintptr_t)user_id));
}

/* Return 1 if one of the claims carries the method id. */
static int
verify_linked(const struct claim *list, size_t n, const char *id)
{
	size_t	i;

	for (i = 0; id[0] != '\0' && i < n; i++) {
		if (strcmp(list[i].enrol_id, id) == 0)
			return (1);
	}
	return (0);
}

/*
 * Return 1 if the answer lists a method with the id: a claim carrying it
 * keeps it; one carrying an id Auth0 no longer lists takes the method's
 * (the number was enrolled again while its event was missed, and the new
 * method's unenrolment must match the claim).
 */
static int
verify_listed(const struct verify_answer *op, const char *id)
{
	size_t	i;

	for (i = 0; id[0] != '\0' && i < op->n; i++) {
		if (strcmp(op->m[i].id, id) == 0)
			return (1);
	}
	return (0);
}

/* Return 1 if one of the claims ends in the visible digits. */
static int
verify_shown(const struct claim *list, size_t n, const char *digits)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		if (claims_suffix_match(&list[i], digits))
			return (1);
	}
	return (0);
}

/*
 * Return 1 if a release may consider the number: any number, or when
 * reconciling, one the user held when the request went out (a claim made
 * since is newer than the answer).
 */
static int
verify_in_snap(const struct verify_answer *op, const unsigned char *numkey)
{
	size_t	i;

	if (!(op->reasons & VERIFY_RECONCILE))
		return (1);
	for (i = 0; i < op->nsnap; i++) {
		if (memcmp(op->snap[i], numkey, NUMKEY_LEN) == 0)
			return (1);
	}
	return (0);
}

/* *mine: 1 if the user holds the number (0: a conflict was recorded). */
static int
verify_holds(struct store_txn *txn, const char *user_id,
    const unsigned char *numkey, int *mine)
{
	struct claim	*on;
	size_t		 non, j;
	int		 rv;

	*mine = 0;
	if ((rv = store_claims_by_number(txn, numkey, &on, &non)) != STORE_OK)
		return (rv);
	for (j = 0; j < non; j++)
		*mine |= strcmp(on[j].user_id, user_id) == 0;
	free(on);
	return (STORE_OK);
}

/*
 * Return 1 if a masked method can be the enrolment of the reservation c:
 * its visible digits match, or, with none visible, it was created after
 * the reservation was made.
 */
static int
verify_fits(const struct verify_method *m, const struct claim *c)
{
	if (m->last4[0] != '\0')
		return (claims_suffix_match(c, m->last4));
	return (m->created != 0 &&
	    m->created >= c->since_ms / 1000 - VERIFY_SLACK);
}

/* Every claim of a user Auth0 does not know is released. */
static int
verify_gone(struct store_txn *txn, struct verify_answer *op)
{
	struct claims_event	 ev;
	struct claim		*list;
	size_t			 n;
	int			 rv, outcome;

	if ((rv = store_claims_by_user(txn, op->user_id, &list, &n)) != 0)
		return (rv);
	free(list);
	memset(&ev, 0, sizeof ev);
	ev.user_id = op->user_id;
	ev.now = op->now;
	ev.when = op->when;
	rv = claims_ev_release_user(txn, &ev, &outcome);
	op->r.released = n;
	return (rv);
}

/* Confirmed methods with a full number: claim each for the user. */
static int
verify_full(struct store_txn *txn, struct verify_answer *op,
    struct claim *list, size_t n)
{
	const struct verify_method	*m;
	struct claims_event		 ev;
	struct claim			*c;
	size_t				 i, j;
	int64_t				 date;
	int				 rv = STORE_OK, outcome, mine;

	for (i = 0; i < op->n && rv == STORE_OK; i++) {
		m = &op->m[i];
		if (!m->full || !m->confirmed || claims_is_exempt(m->numkey))
			continue;
		for (c = NULL, j = 0; j < n; j++) {
			if (memcmp(list[j].numkey, m->numkey, NUMKEY_LEN) == 0)
				c = &list[j];
		}
		if (c != NULL && (c->state == CLAIM_ACTIVE ||
		    c->expires > op->now)) {
			if (c->state == CLAIM_ACTIVE && (m->id[0] == '\0' ||
			    verify_listed(op, c->enrol_id)))
				continue;
			if (!claims_in_order(txn, &op->when, op->user_id,
			    c->numkey, NULL, &date, &rv))
				continue;
			if (c->state == CLAIM_PENDING)
				op->r.activated++;
			rv = claims_confirm(txn, c, m->id[0] != '\0' ?
			    m->id : NULL, date);
			continue;
		}
		memset(&ev, 0, sizeof ev);
		ev.user_id = op->user_id;
		ev.numkey = m->numkey;
		ev.last4 = m->last4;
		ev.enrol_id = m->id[0] != '\0' ? m->id : NULL;
		ev.log_id = "";
		ev.when = op->when;
		ev.now = op->now;
		ev.source = op->source != 0 ? op->source : CLAIM_SRC_VERIFY;
		rv = claims_ev_enrolled(txn, &ev, &outcome);
		if (rv != STORE_OK || outcome != CLAIMS_APPLIED)
			continue;
		op->r.claimed++;
		if ((rv = verify_holds(txn, op->user_id, m->numkey, &mine)) ==
		    STORE_OK && !mine)
			op->r.conflicts++;
	}
	return (rv);
}

/*
 * Confirmed masked methods that no claim carries: the one reservation
 * that fits becomes active with the method's id.
 */
static int
verify_masked(struct store_txn *txn, struct verify_answer *op,
    struct claim *list, size_t n)
{
	const struct verify_method	*m;
	struct claim			*pick;
	size_t				 i, j, fits, unknown = 0;
	int64_t				 date;
	int				 rv = STORE_OK;

	for (i = 0; i < op->n && rv == STORE_OK; i++) {
		m = &op->m[i];
		if (m->full || !m->confirmed || verify_linked(list, n, m->id))
			continue;
		/* Reconciling: digits no claim shows cannot be learned. */
		if ((op->reasons & VERIFY_RECONCILE) && m->last4[0] != '\0' &&
		    !verify_shown(list, n, m->last4)) {
			op->r.unsettled++;
			continue;
		}
		if (m->id[0] == '\0')
			continue;
		for (pick = NULL, fits = 0, j = 0; j < n; j++) {
			if (list[j].state != CLAIM_PENDING ||
			    list[j].expires <= op->now ||
			    !verify_fits(m, &list[j]))
				continue;
			pick = &list[j];
			fits++;
		}
		if (fits != 1)
			unknown++;
		else if (claims_in_order(txn, &op->when, op->user_id,
		    pick->numkey, NULL, &date, &rv)) {
			rv = claims_confirm(txn, pick, m->id, date);
			op->r.activated++;
		}
	}
	/* An enrolment seen but not found: unsettled if a method hides it. */
	if ((op->reasons & VERIFY_UNMATCHED) && unknown > 0 &&
	    op->r.activated + op->r.claimed == 0)
		op->r.unsettled++;
	return (rv);
}

/*
 * An ambiguous unenrolment, a promotion or a reconciliation: release the
 * active claims that no method backs any more.
 */
static int
verify_unenrolled(struct store_txn *txn, struct verify_answer *op,
    struct claim *list, size_t n)
{
	const struct verify_method	*m;
	struct claim			*c;
	size_t				 i, j;
	int				 rv = STORE_OK, backed, maybe, taken;

	for (j = 0; j < n && rv == STORE_OK; j++) {
		c = &list[j];
		if (c->state != CLAIM_ACTIVE || !verify_in_snap(op, c->numkey))
			continue;
		backed = maybe = 0;
		for (i = 0; i < op->n && !backed; i++) {
			m = &op->m[i];
			if (c->enrol_id[0] != '\0' &&
			    strcmp(m->id, c->enrol_id) == 0)
				backed = 1;
			else if (m->full)
				backed = memcmp(m->numkey, c->numkey,
				    NUMKEY_LEN) == 0;
			else if (!verify_linked(list, n, m->id)) {
				if (m->last4[0] == '\0')
					maybe = 1;
				else
					backed = claims_suffix_match(c,
					    m->last4);
			}
		}
		if (backed)
			continue;
		if (maybe) {
			op->r.unsettled++;
			continue;
		}
		rv = claims_release(txn, c, &op->when, &taken);
		if (taken)
			op->r.released++;
	}
	return (rv);
}

/*
 * Settle a user's claims from an answer in txn: claim or activate what
 * the confirmed methods show, and with VERIFY_AMBIGUOUS, VERIFY_PROMOTED
 * or VERIFY_RECONCILE release the active claims no method backs; op->r
 * says what changed.
 */
int
verify_apply(struct store_txn *txn, struct verify_answer *op)
{
	struct claim	*list;
	size_t		 n;
	int		 rv;

	memset(&op->r, 0, sizeof op->r);	/* again on a retry */
	if (!op->found)
		return (verify_gone(txn, op));
	if ((rv = store_claims_by_user(txn, op->user_id, &list, &n)) !=
	    STORE_OK)
		return (rv);
	rv = verify_full(txn, op, list, n);
	if (rv == STORE_OK)
		rv = verify_masked(txn, op, list, n);
	if (rv == STORE_OK && (op->reasons &
	    (VERIFY_AMBIGUOUS | VERIFY_PROMOTED | VERIFY_RECONCILE)))
		rv = verify_unenrolled(txn, op, list, n);
	free(list);
	return (rv);
}

/* Settle a user's claims from the answer, and forget the request. */
static int
verify_settle_txn(struct store_txn *txn, void *arg)
{
	struct verify_answer	*op = arg;
	int			 rv;

	if ((rv = verify_apply(txn, op)) == STORE_OK)
		rv = store_verify_del(txn, op->user_id);
	return (rv);
}

/*
 * Settle user_id's claims from the n phone methods Auth0 listed (found 0:
 * Auth0 does not know the user) in an answer asked for at asked_ms and
 * settled at now (seconds); *r says what changed.
 */
int
verify_settle(const char *user_id, int reasons,
    const struct verify_method *m, size_t n, int found, int64_t asked_ms,
    int64_t now, struct verify_result *r)
{
	struct verify_answer	op;
	int			rv;

	memset(&op, 0, sizeof op);
	op.user_id = user_id;
	op.reasons = reasons;
	op.m = m;
	op.n = n;
	op.found = found;
	op.now = now;
	op.when.ms = asked_ms;
	op.when.kind = CLAIMS_DATED;
	rv = claims_run(verify_settle_txn, &op);
	*r = op.r;
	return (rv);
}

/* Return 1 if a 404 body says the user does not exist. */
int
verify_no_such_user(const char *body, size_t len)
{
	const char	*ep[] = { "errorCode", NULL };
	yajl_val	 root, e;
	char		*cause = NULL;
	int		 gone;

	if (body == NULL || (root = json_parse(body, len, &cause)) == NULL) {
		free(cause);
		return (0);
	}
	e = yajl_tree_get(root, ep, yajl_t_string);
	gone = e != NULL && strcmp(e->u.string, "inexistent_user") == 0;
	json_free(root);
	return (gone);
}

/* Read one phone method of the answer. */
static void
verify_method(yajl_val v, struct verify_method *m)
{
	const char	*idp[] = { "id", NULL };
	const char	*cp[] = { "confirmed", NULL };
	const char	*np[] = { "phone_number", NULL };
	const char	*tp[] = { "created_at", NULL };
	const char	*ep[] = { "enrolled_at", NULL };
	yajl_val	 id, num, t;
	char		 e164[PHONE_E164_SIZE];
	const char	*s;

	memset(m, 0, sizeof *m);
	if ((id = yajl_tree_get(v, idp, yajl_t_string)) != NULL)
		snprintf(m->id, sizeof m->id, "%s",
		    events_method_id(id->u.string));
	m->confirmed = YAJL_IS_TRUE(yajl_tree_get(v, cp, yajl_t_any));
	if ((t = yajl_tree_get(v, tp, yajl_t_string)) == NULL)
		t = yajl_tree_get(v, ep, yajl_t_string);
	if (t != NULL)
		m->created = events_iso_ms(t->u.string, 0) / 1000;
	if ((num = yajl_tree_get(v, np, yajl_t_string)) == NULL)
		return;
	s = num->u.string;
	if (events_masked(s, m->last4))
		return;
	if (phone_normalise(s, strlen(s), NULL, e164) != 0)
		return;
	hash_number(e164, m->numkey);
	snprintf(m->last4, sizeof m->last4, "%s", e164 + strlen(e164) -
	    LAST4_LEN);
	m->full = 1;
}

/*
 * Read the phone methods of a GET .../authentication-methods answer (a
 * JSON array; other types are skipped) into *mp, at most VERIFY_METHODS_MAX;
 * -1 and *cause if the body is not such an array.
 */
int
verify_methods(const char *body, size_t len, struct verify_method **mp,
    size_t *np, char **cause)
{
	const char	*tp[] = { "type", NULL };
	yajl_val	 root, v, type;
	size_t		 i;

	*mp = NULL;
	*np = 0;
	if ((root = json_parse(body, len, cause)) == NULL)
		return (-1);
	if (!YAJL_IS_ARRAY(root)) {
		json_free(root);
		*cause = xstrdup("not a JSON array");
		return (-1);
	}
	for (i = 0; i < root->u.array.len && *np < VERIFY_METHODS_MAX; i++) {
		v = root->u.array.values[i];
		if (!YAJL_IS_OBJECT(v) ||
		    (type = yajl_tree_get(v, tp, yajl_t_string)) == NULL ||
		    strcmp(type->u.string, "phone") != 0)
			continue;
		*mp = xreallocarray(*mp, *np + 1, sizeof **mp);
		verify_method(v, &(*mp)[(*np)++]);
	}
	json_free(root);
	return (0);
}
