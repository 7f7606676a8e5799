/*
 * Unit tests for claims.c: the enrolment and challenge tables of DESIGN
 * section 4, on a real Berkeley DB store in a temporary directory.
 */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

#define NOW	1700000000
#define TTL	600

static struct unit_claims	*fx;

static int
setup(void **state)
{
	fx = unit_claims_open();
	*state = fx;
	return (0);
}

static int
teardown(void **state)
{
	(void)state;
	unit_claims_close(fx);
	return (0);
}

/* Make a request and return its result. */
static int
req(const char *number, const char *user, int action, int64_t now,
    struct claims_answer *out)
{
	struct claims_answer	a;

	assert_int_equal(claims_request(number, user, action, now * 1000, &a),
	    STORE_OK);
	if (out != NULL)
		*out = a;
	return (a.result);
}

/* Return the claims held on a number. */
static size_t
holders(const char *number, struct claim **list)
{
	unsigned char		 key[NUMKEY_LEN];
	struct store_txn	*txn;
	size_t			 n;

	hash_number(number, key);
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_claims_by_number(txn, key, list, &n),
	    STORE_OK);
	store_txn_abort(txn);
	return (n);
}

static void
test_reserve_free_number(void **state)
{
	struct claims_answer	 a;
	struct claim		*l;

	(void)state;
	assert_int_equal(req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW,
	    &a), CLAIMS_RESERVED);
	assert_int_equal(a.expires_in, TTL);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_string_equal(l[0].user_id, "auth0|a");
	assert_int_equal(l[0].state, CLAIM_PENDING);
	assert_int_equal(l[0].source, CLAIM_SRC_ENROLLMENT);
	assert_int_equal(l[0].expires, NOW + TTL);
	assert_string_equal(l[0].last4, "0100");
	free(l);
}

static void
test_owned_pushes_expiry(void **state)
{
	struct claim	*l;

	(void)state;
	req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550100", "auth0|a", CLAIMS_ENROLL,
	    NOW + 100, NULL), CLAIMS_OWNED);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_int_equal(l[0].expires, NOW + 100 + TTL);
	free(l);
}

static void
test_taken_and_monitor(void **state)
{
	struct claims_answer	 a;
	struct claim		*l;

	(void)state;
	req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL, NOW,
	    &a), CLAIMS_TAKEN);
	assert_true(a.enforced);
	fx->conf.mode = CONF_MODE_MONITOR;
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL, NOW,
	    &a), CLAIMS_TAKEN);
	assert_false(a.enforced);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_string_equal(l[0].user_id, "auth0|a");
	free(l);
}

static void
test_max_users_per_number(void **state)
{
	struct claim	*l;

	(void)state;
	fx->conf.max_users_per_number = 2;
	assert_int_equal(req("+12015550100", "u1", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(req("+12015550100", "u2", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(req("+12015550100", "u3", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_TAKEN);
	assert_int_equal(req("+12015550100", "u2", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_OWNED);
	assert_int_equal(holders("+12015550100", &l), 2);
	free(l);
}

static void
test_one_pending_per_user(void **state)
{
	struct claim	*l;

	(void)state;
	req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550101", "auth0|a", CLAIMS_ENROLL, NOW,
	    NULL), CLAIMS_RESERVED);
	assert_int_equal(holders("+12015550100", &l), 0);
	free(l);
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL, NOW,
	    NULL), CLAIMS_RESERVED);
}

static void
test_active_survives_new_reservation(void **state)
{
	(void)state;
	req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550100", "auth0|a", CLAIMS_CHALLENGE,
	    NOW, NULL), CLAIMS_OWNED);
	req("+12015550101", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL, NOW,
	    NULL), CLAIMS_TAKEN);
}

static void
test_expired_counts_as_free(void **state)
{
	struct claim	*l;

	(void)state;
	req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL,
	    NOW + TTL - 1, NULL), CLAIMS_TAKEN);
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL,
	    NOW + TTL, NULL), CLAIMS_RESERVED);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_string_equal(l[0].user_id, "auth0|b");
	free(l);
}

static void
test_challenge_learns_and_conflicts(void **state)
{
	struct store_txn	*txn;
	struct conflict		*cf;
	struct claim		*l;
	size_t			 n;

	(void)state;
	assert_int_equal(req("+12015550100", "auth0|a", CLAIMS_CHALLENGE,
	    NOW, NULL), CLAIMS_LEARNED);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_int_equal(l[0].state, CLAIM_ACTIVE);
	assert_int_equal(l[0].source, CLAIM_SRC_CHALLENGE);
	free(l);
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_CHALLENGE,
	    NOW + 5, NULL), CLAIMS_CONFLICT);
	assert_int_equal(holders("+12015550100", &l), 1);
	free(l);
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_conflicts(txn, &cf, &n), STORE_OK);
	store_txn_abort(txn);
	assert_int_equal(n, 1);
	assert_string_equal(cf[0].user_id, "auth0|b");
	assert_string_equal(cf[0].last4, "0100");
	assert_int_equal(cf[0].since, NOW + 5);
	assert_int_equal(cf[0].nholders, 1);
	assert_string_equal(cf[0].holders[0], "auth0|a");
	store_conflicts_free(cf, n);
}

static void
test_challenge_activates_pending(void **state)
{
	struct claim	*l;

	(void)state;
	req("+12015550100", "auth0|a", CLAIMS_ENROLL, NOW, NULL);
	assert_int_equal(req("+12015550100", "auth0|a", CLAIMS_CHALLENGE,
	    NOW, NULL), CLAIMS_OWNED);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_int_equal(l[0].state, CLAIM_ACTIVE);
	assert_int_equal(l[0].expires, 0);
	free(l);
	/* An active claim does not lapse. */
	assert_int_equal(req("+12015550100", "auth0|b", CLAIMS_ENROLL,
	    NOW + 10 * TTL, NULL), CLAIMS_TAKEN);
}

static void
test_exempt(void **state)
{
	char		*path, *cause = NULL;
	struct claim	*l;

	(void)state;
	path = unit_write(fx->dir, "exempt", "# test numbers\n\n"
	    "+1 (201) 555-0199\n  +447700900123 # uk\n", 0644);
	assert_int_equal(claims_exempt_load(path, NULL, 0, &cause), 0);
	assert_int_equal(req("+12015550199", "a", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_EXEMPT);
	assert_int_equal(req("+12015550199", "b", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_EXEMPT);
	assert_int_equal(req("+447700900123", "b", CLAIMS_CHALLENGE, NOW,
	    NULL), CLAIMS_EXEMPT);
	assert_int_equal(holders("+12015550199", &l), 0);
	free(l);
	free(path);
	path = unit_write(fx->dir, "bad", "+12015550199\nnot a number\n",
	    0644);
	assert_int_equal(claims_exempt_load(path, NULL, 0, &cause), -1);
	assert_non_null(strstr(cause, "bad:2: invalid phone number"));
	free(cause);
	/* The old list stays after a failed load. */
	assert_int_equal(req("+12015550199", "c", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_EXEMPT);
	free(path);
}

static void
test_expire_timer(void **state)
{
	struct claim	*l;
	size_t		 released;
	char		 num[32];
	int		 i;

	(void)state;
	for (i = 0; i < 30; i++) {
		snprintf(num, sizeof num, "+120155501%02d", i);
		req(num, i % 3 == 0 ? "active" : num, i % 3 == 0 ?
		    CLAIMS_CHALLENGE : CLAIMS_ENROLL, NOW, NULL);
	}
	assert_int_equal(claims_expire(NOW + TTL - 1, 100, &released),
	    STORE_OK);
	assert_int_equal(released, 0);
	assert_int_equal(claims_expire(NOW + TTL, 7, &released), STORE_OK);
	assert_int_equal(released, 7);
	assert_int_equal(claims_expire(NOW + TTL, 100, &released), STORE_OK);
	assert_int_equal(released, 13);
	assert_int_equal(holders("+12015550100", &l), 1);
	assert_int_equal(l[0].state, CLAIM_ACTIVE);
	free(l);
	assert_int_equal(holders("+12015550101", &l), 0);
	free(l);
}

/*
 * Administration: claim makes an active admin claim (or activates the
 * user's reservation), unless another holds the number or it is exempt;
 * the lookups show live claims only.
 */
static void
test_admin_claim(void **state)
{
	struct claim	*l;
	size_t		 n;
	int64_t		 now = (int64_t)time(NULL);
	int		 result;
	char		*path, *cause = NULL;

	(void)state;
	assert_int_equal(claims_admin_claim("+12015550100", "a", &result),
	    STORE_OK);
	assert_int_equal(result, CLAIMS_ASSIGNED);
	assert_string_equal(claims_result_name(result), "active");
	assert_int_equal(claims_admin_claim("+12015550100", "b", &result),
	    STORE_OK);
	assert_int_equal(result, CLAIMS_TAKEN);
	assert_int_equal(claims_admin_claim("+12015550100", "a", &result),
	    STORE_OK);
	assert_int_equal(result, CLAIMS_ASSIGNED);
	assert_int_equal(claims_lookup("+12015550100", NULL, &l, &n),
	    STORE_OK);
	assert_int_equal(n, 1);
	assert_string_equal(l[0].user_id, "a");
	assert_int_equal(l[0].state, CLAIM_ACTIVE);
	assert_int_equal(l[0].source, CLAIM_SRC_ADMIN);
	assert_string_equal(l[0].last4, "0100");
	free(l);

	/* A reservation becomes active, and keeps its source. */
	assert_int_equal(req("+12015550101", "c", CLAIMS_ENROLL, now, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(claims_admin_claim("+12015550101", "c", &result),
	    STORE_OK);
	assert_int_equal(result, CLAIMS_ASSIGNED);
	assert_int_equal(claims_lookup(NULL, "c", &l, &n), STORE_OK);
	assert_int_equal(n, 1);
	assert_int_equal(l[0].state, CLAIM_ACTIVE);
	assert_int_equal(l[0].expires, 0);
	assert_int_equal(l[0].source, CLAIM_SRC_ENROLLMENT);
	free(l);

	/* A lapsed reservation is free: not shown, and no obstacle. */
	assert_int_equal(req("+12015550102", "d", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(holders("+12015550102", &l), 1);
	free(l);
	assert_int_equal(claims_lookup("+12015550102", NULL, &l, &n),
	    STORE_OK);
	assert_int_equal(n, 0);
	assert_null(l);
	assert_int_equal(claims_admin_claim("+12015550102", "e", &result),
	    STORE_OK);
	assert_int_equal(result, CLAIMS_ASSIGNED);

	path = unit_write(fx->dir, "exempt", "+12015550199\n", 0644);
	assert_int_equal(claims_exempt_load(path, NULL, 0, &cause), 0);
	assert_int_equal(claims_admin_claim("+12015550199", "a", &result),
	    STORE_OK);
	assert_int_equal(result, CLAIMS_EXEMPT);
	assert_int_equal(holders("+12015550199", &l), 0);
	free(path);
}

/*
 * Administration: release frees a number, of one user or of all, counts
 * the live claims only, and leaves a per-number watermark.
 */
static void
test_admin_release(void **state)
{
	unsigned char		 key[NUMKEY_LEN];
	struct store_txn	*txn;
	struct claim		*l;
	size_t			 released;
	int64_t			 now = (int64_t)time(NULL), wm;
	int			 result;

	(void)state;
	fx->conf.max_users_per_number = 3;
	assert_int_equal(claims_admin_claim("+12015550100", "a", &result),
	    STORE_OK);
	assert_int_equal(req("+12015550100", "b", CLAIMS_ENROLL, now, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(req("+12015550100", "c", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_RESERVED);	/* lapsed long ago */
	assert_int_equal(claims_admin_release("+12015550100", "x",
	    &released), STORE_OK);
	assert_int_equal(released, 0);
	assert_int_equal(claims_admin_release("+12015550100", "b",
	    &released), STORE_OK);
	assert_int_equal(released, 1);
	assert_int_equal(holders("+12015550100", &l), 2);
	free(l);
	assert_int_equal(claims_admin_release("+12015550100", NULL,
	    &released), STORE_OK);
	assert_int_equal(released, 1);
	assert_int_equal(holders("+12015550100", &l), 0);

	hash_number("+12015550100", key);
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_watermark_get(txn, "a", key, &wm), STORE_OK);
	assert_true(wm >= now * 1000);
	assert_int_equal(store_watermark_get(txn, "a", NULL, &wm),
	    STORE_NOTFOUND);
	store_txn_abort(txn);
}

/* The walk: live claims in store order, in pieces, to the end. */
static void
test_walk(void **state)
{
	struct claim	 v[4], all[16], last;
	size_t		 n, total = 0, i;
	int64_t		 now = (int64_t)time(NULL);
	int		 result, started = 0;
	char		 num[32];

	(void)state;
	for (i = 0; i < 10; i++) {
		snprintf(num, sizeof num, "+120155502%02zu", i);
		assert_int_equal(claims_admin_claim(num, num, &result),
		    STORE_OK);
	}
	assert_int_equal(req("+12015550300", "p", CLAIMS_ENROLL, now, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(req("+12015550301", "q", CLAIMS_ENROLL, NOW, NULL),
	    CLAIMS_RESERVED);	/* lapsed: left out */
	do {
		assert_int_equal(claims_walk(started ? &last : NULL, 4, v, &n),
		    STORE_OK);
		assert_true(total + n <= 16);
		memcpy(all + total, v, n * sizeof *v);
		total += n;
		if (n > 0)
			last = v[n - 1];
		started = 1;
	} while (n == 4);
	assert_int_equal(total, 11);
	for (i = 1; i < total; i++)
		assert_true(memcmp(all[i - 1].numkey, all[i].numkey,
		    NUMKEY_LEN) < 0);
	for (i = 0; i < total; i++)
		assert_string_not_equal(all[i].user_id, "q");
}

/* Ask for the number +1201555010<i> as user u at now. */
static int
req_nth(int i, const char *user, int64_t now, struct claims_answer *a)
{
	char	number[32];

	snprintf(number, sizeof number, "+1201555%04d", 100 + i);
	return (req(number, user, CLAIMS_ENROLL, now, a));
}

static void
test_reservation_window(void **state)
{
	struct claims_answer	a;
	int			i;

	(void)state;
	fx->conf.max_reservations_per_user = 3;
	for (i = 0; i < 3; i++)
		assert_int_equal(req_nth(i, "u", NOW + i, NULL),
		    CLAIMS_RESERVED);
	/* The window opened at NOW: refused until NOW + 3600. */
	assert_int_equal(req_nth(3, "u", NOW + 3, &a), CLAIMS_LIMITED);
	assert_true(a.enforced);
	assert_int_equal(a.retry_after, 3597);
	/* The number held is still "owned" over the cap. */
	assert_int_equal(req_nth(2, "u", NOW + 4, NULL), CLAIMS_OWNED);
	assert_int_equal(req_nth(3, "u", NOW + 3599, &a), CLAIMS_LIMITED);
	assert_int_equal(a.retry_after, 1);
	/* The next window opens with the next request. */
	assert_int_equal(req_nth(3, "u", NOW + 3600, NULL), CLAIMS_RESERVED);
	assert_int_equal(req_nth(4, "u", NOW + 3601, NULL), CLAIMS_RESERVED);
	assert_int_equal(req_nth(5, "u", NOW + 3602, NULL), CLAIMS_RESERVED);
	assert_int_equal(req_nth(6, "u", NOW + 3603, &a), CLAIMS_LIMITED);
	assert_int_equal(a.retry_after, 3597);
	/* A clock stepped back before the window's start opens a new one. */
	assert_int_equal(req_nth(6, "u", NOW + 100, NULL), CLAIMS_RESERVED);
	/* In monitor mode the answer says so and nothing is refused. */
	fx->conf.mode = CONF_MODE_MONITOR;
	assert_int_equal(req_nth(7, "u", NOW + 101, NULL), CLAIMS_RESERVED);
	assert_int_equal(req_nth(8, "u", NOW + 102, NULL), CLAIMS_RESERVED);
	assert_int_equal(req_nth(9, "u", NOW + 103, &a), CLAIMS_LIMITED);
	assert_false(a.enforced);
}

static void
test_reservation_windows_pruned(void **state)
{
	size_t	pruned, total;
	int	i, wrapped;
	char	user[16];

	(void)state;
	fx->conf.max_reservations_per_user = 1;
	for (i = 0; i < 50; i++) {
		snprintf(user, sizeof user, "u%02d", i);
		assert_int_equal(req_nth(i, user, i < 20 ? NOW : NOW + 1000,
		    NULL), CLAIMS_RESERVED);
	}
	/* Nothing has closed at NOW + 3600: a whole pass prunes nothing. */
	assert_int_equal(claims_limits_prune(NOW + 3600, 1000, &pruned,
	    &wrapped), STORE_OK);
	assert_int_equal(pruned, 0);
	assert_true(wrapped);
	/* At NOW + 3601 the first 20 have: found 7 windows at a time. */
	total = 0;
	for (i = 0; i < 20; i++) {
		assert_int_equal(claims_limits_prune(NOW + 3601, 7, &pruned,
		    &wrapped), STORE_OK);
		total += pruned;
		if (wrapped)
			break;
	}
	assert_int_equal(i, 7);		/* 50 windows, 7 a time, then the end */
	assert_int_equal(total, 20);
	/* Those users start again; the others are still capped. */
	assert_int_equal(req_nth(60, "u05", NOW + 3601, NULL),
	    CLAIMS_RESERVED);
	assert_int_equal(req_nth(61, "u30", NOW + 3601, NULL),
	    CLAIMS_LIMITED);
}

/*
 * The rule of time and order (issue 21): a release takes a claim only if
 * dated after the claim's date; a creation or activation happens only if
 * dated after every watermark that applies; both to the millisecond.
 */

#define T0	((int64_t)NOW * 1000)	/* ms */
#define N	"+12015550100"

/* A log event about user's phone (number NULL: none), dated ms. */
static void
mkevent(struct claims_event *ev, unsigned char *key, const char *user,
    const char *number, int64_t ms, int kind)
{
	memset(ev, 0, sizeof *ev);
	ev->user_id = user;
	if (number != NULL) {
		hash_number(number, key);
		ev->numkey = key;
		ev->last4 = number + strlen(number) - 4;
	}
	ev->log_id = "";
	ev->when.ms = ms;
	ev->when.kind = kind;
	ev->now = ms / 1000;
	ev->source = CLAIM_SRC_LOGSTREAM;
}

/* Apply an event through fn in a transaction; return the outcome. */
static int
apply(int (*fn)(struct store_txn *, const struct claims_event *, int *),
    const struct claims_event *ev)
{
	struct store_txn	*txn;
	int			 outcome;

	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(fn(txn, ev, &outcome), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	return (outcome);
}

/* The date of user's claim on number, or -1 if it holds none. */
static int64_t
since_of(const char *number, const char *user)
{
	struct claim	*l;
	size_t		 n, i;
	int64_t		 since = -1;

	n = holders(number, &l);
	for (i = 0; i < n; i++) {
		if (strcmp(l[i].user_id, user) == 0)
			since = l[i].since_ms;
	}
	free(l);
	return (since);
}

/* Reserve at ms (the API's clock), and check the claim's date. */
static void
reserve_ms(const char *number, const char *user, int64_t ms, int result)
{
	struct claims_answer	a;

	assert_int_equal(claims_request(number, user, CLAIMS_ENROLL, ms, &a),
	    STORE_OK);
	assert_int_equal(a.result, result);
	assert_true(since_of(number, user) == ms);
}

/* Point 1: a renewal dates the reservation; a failure before it loses. */
static void
test_order_renewal(void **state)
{
	struct claims_event	ev;
	unsigned char		key[NUMKEY_LEN];

	(void)state;
	reserve_ms(N, "u", T0, CLAIMS_RESERVED);
	reserve_ms(N, "u", T0 + 2000, CLAIMS_OWNED);
	mkevent(&ev, key, "u", NULL, T0 + 1000, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_IGNORED);
	assert_true(since_of(N, "u") == T0 + 2000);
	ev.when.ms = T0 + 2000;		/* the same millisecond */
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_IGNORED);
	assert_true(since_of(N, "u") == T0 + 2000);
	ev.when.ms = T0 + 2001;
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == -1);
}

/* Point 2: a failure in the same second, 1 ms either side. */
static void
test_order_failure_ms(void **state)
{
	struct claims_event	ev;
	unsigned char		key[NUMKEY_LEN];

	(void)state;
	reserve_ms(N, "u", T0 + 500, CLAIMS_RESERVED);
	mkevent(&ev, key, "u", NULL, T0 + 100, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_IGNORED);
	ev.when.ms = T0 + 499;
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_IGNORED);
	ev.when.ms = T0 + 500;
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_IGNORED);
	assert_true(since_of(N, "u") == T0 + 500);
	ev.when.ms = T0 + 501;
	assert_int_equal(apply(claims_ev_failed, &ev), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == -1);
}

/* Point 3: an older release leaves a newer claim alone, every kind. */
static void
test_order_older_release(void **state)
{
	struct claims_event	ev, rel;
	unsigned char		key[NUMKEY_LEN], rkey[NUMKEY_LEN];

	(void)state;
	mkevent(&ev, key, "u", N, T0 + 500, CLAIMS_DATED);
	ev.enrol_id = "dev_1";
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == T0 + 500);
	mkevent(&rel, rkey, "u", NULL, T0 - 30000, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_release_user, &rel), CLAIMS_STALE);
	rel.when.ms = T0 + 500;
	assert_int_equal(apply(claims_ev_release_user, &rel), CLAIMS_STALE);
	rel.enrol_id = "dev_1";
	assert_int_equal(apply(claims_ev_release_enrol, &rel), CLAIMS_STALE);
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_STALE);
	mkevent(&rel, rkey, "u", N, T0 + 499, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_STALE);
	assert_true(since_of(N, "u") == T0 + 500);
	rel.when.ms = T0 + 501;
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == -1);
}

/* A creation needs a date after every watermark, to the millisecond. */
static void
test_order_watermarks(void **state)
{
	struct claims_event	ev, rel;
	unsigned char		key[NUMKEY_LEN], rkey[NUMKEY_LEN];

	(void)state;
	mkevent(&rel, rkey, "u", N, T0 + 608, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_UNMATCHED);
	mkevent(&ev, key, "u", N, T0 + 300, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_STALE);
	ev.when.ms = T0 + 607;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_STALE);
	ev.when.ms = T0 + 608;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_STALE);
	assert_true(since_of(N, "u") == -1);
	/* The user-wide watermark applies to every number. */
	mkevent(&rel, rkey, "u", NULL, T0 + 900, CLAIMS_DATED);
	assert_int_equal(apply(claims_ev_release_user, &rel), CLAIMS_IGNORED);
	ev.when.ms = T0 + 900;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_STALE);
	ev.when.ms = T0 + 901;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == T0 + 901);
	/* An activation too: a masked enrolment of a reservation. */
	unit_claims_close(fx);
	fx = unit_claims_open();
	reserve_ms(N, "u", T0, CLAIMS_RESERVED);
	mkevent(&rel, rkey, "u", NULL, T0 + 50, CLAIMS_DATED);
	rel.numkey = NULL;
	apply(claims_ev_release_user, &rel);
	reserve_ms(N, "u", T0 + 100, CLAIMS_RESERVED);
	mkevent(&ev, key, "u", NULL, T0 + 50, CLAIMS_DATED);
	ev.suffix = "0100";
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_STALE);
	ev.when.ms = T0 + 51;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == T0 + 100);
}

/* An undated event may release, never create past a watermark. */
static void
test_order_undated(void **state)
{
	struct claims_event	ev, rel;
	unsigned char		key[NUMKEY_LEN], rkey[NUMKEY_LEN];

	(void)state;
	/* No watermark: an undated enrolment creates (dated at arrival). */
	mkevent(&ev, key, "u", N, T0 + 10, CLAIMS_UNDATED);
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == T0 + 10);
	/* It releases what is older than its arrival. */
	mkevent(&rel, rkey, "u", NULL, T0 + 20, CLAIMS_UNDATED);
	assert_int_equal(apply(claims_ev_release_user, &rel), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == -1);
	/* A watermark, even an older one: no undated creation. */
	ev.when.ms = T0 + 100000;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_STALE);
	assert_true(since_of(N, "u") == -1);
	ev.when.kind = CLAIMS_DATED;
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_APPLIED);
}

/* A request made now comes after every release already applied. */
static void
test_order_now(void **state)
{
	struct claims_event	rel;
	unsigned char		rkey[NUMKEY_LEN];
	struct claims_answer	a;

	(void)state;
	/* A release dated ahead of our clock. */
	mkevent(&rel, rkey, "u", NULL, T0 + 5000, CLAIMS_DATED);
	apply(claims_ev_release_user, &rel);
	assert_int_equal(claims_request(N, "u", CLAIMS_ENROLL, T0, &a),
	    STORE_OK);
	assert_int_equal(a.result, CLAIMS_RESERVED);
	assert_true(since_of(N, "u") == T0 + 5001);
	/* So that the release, delivered again, does not take it. */
	assert_int_equal(apply(claims_ev_release_user, &rel), CLAIMS_STALE);
	assert_true(since_of(N, "u") == T0 + 5001);
}

/* Point 7: an id without a type releases only the claim that has it. */
static void
test_order_untyped_id(void **state)
{
	struct claims_event	ev, rel;
	unsigned char		key[NUMKEY_LEN], rkey[NUMKEY_LEN];

	(void)state;
	mkevent(&ev, key, "u", N, T0, CLAIMS_DATED);
	ev.enrol_id = "dev_phone1";
	assert_int_equal(apply(claims_ev_enrolled, &ev), CLAIMS_APPLIED);
	mkevent(&rel, rkey, "u", NULL, T0 + 10, CLAIMS_DATED);
	rel.enrol_id = "dev_totp77";
	rel.id_only = 1;
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_AMBIGUOUS);
	assert_true(since_of(N, "u") == T0);
	rel.enrol_id = "dev_phone1";
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_APPLIED);
	assert_true(since_of(N, "u") == -1);
	rel.user_id = "nobody";
	assert_int_equal(apply(claims_ev_unenrolled, &rel), CLAIMS_UNMATCHED);
}

/* Point 6: every RFC 3339 form, to the millisecond. */
static void
test_order_rfc3339(void **state)
{
	const int64_t	y2020 = INT64_C(1577836800000);	/* 2020-01-01Z */
	int64_t		ms;

	(void)state;
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00Z", &ms), 0);
	assert_true(ms == y2020);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00.123Z", &ms), 0);
	assert_true(ms == y2020 + 123);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00.1z", &ms), 0);
	assert_true(ms == y2020 + 100);
	assert_int_equal(events_rfc3339("2020-01-01t00:00:00.123456789Z",
	    &ms), 0);
	assert_true(ms == y2020 + 123);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00.000+01:00",
	    &ms), 0);
	assert_true(ms == y2020 - 3600000);
	assert_int_equal(events_rfc3339("2019-12-31 19:30:00.5-04:30", &ms),
	    0);
	assert_true(ms == y2020 + 500);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00+00:00", &ms), 0);
	assert_true(ms == y2020);
	assert_int_equal(events_rfc3339("2016-12-31T23:59:60Z", &ms), 0);
	assert_int_equal(events_rfc3339(NULL, &ms), -1);
	assert_int_equal(events_rfc3339("", &ms), -1);
	assert_int_equal(events_rfc3339("2020-01-01", &ms), -1);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00", &ms), -1);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00.Z", &ms), -1);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00+0100", &ms), -1);
	assert_int_equal(events_rfc3339("2020-02-30T00:00:00Z", &ms), -1);
	assert_int_equal(events_rfc3339("2020-01-01T24:00:00Z", &ms), -1);
	assert_int_equal(events_rfc3339("2020-01-01T00:00:00Zjunk", &ms), -1);
	assert_int_equal(events_rfc3339("1577836800", &ms), -1);
	/* Before 1970 is no date (the store keeps ms since 1970). */
	assert_int_equal(events_rfc3339("1970-01-01T00:00:00Z", &ms), 0);
	assert_true(ms == 0);
	assert_int_equal(events_rfc3339("1969-12-31T23:59:59.999Z", &ms), -1);
	assert_int_equal(events_rfc3339("1970-01-01T00:30:00+01:00", &ms), -1);
	assert_int_equal(events_rfc3339("1013-11-27T10:30:00.123Z", &ms), -1);
}

/*
 * Claims from several threads at once (threads > 1): the store is opened
 * free-threaded and each thread uses handles of its own.  Every thread
 * asks for every shared number, each time as a user of its own, and
 * reserves numbers nobody else asks for: one user holds each shared
 * number (I1), every fresh one is reserved, and the counts add up.
 */
#define MT_THREADS	4
#define MT_SHARED	40
#define MT_FRESH	40

struct mt_arg {
	int	t;
	int	shared[MT_SHARED];	/* results */
	int	fresh[MT_FRESH];
	int	failed;
};

static void *
mt_main(void *p)
{
	struct mt_arg		*m = p;
	struct claims_answer	 a;
	char			 num[32], user[64];
	int			 i;

	for (i = 0; i < MT_SHARED + MT_FRESH; i++) {
		if (i < MT_SHARED)
			snprintf(num, sizeof num, "+1201555%04d", i);
		else
			snprintf(num, sizeof num, "+1202555%d%03d", m->t, i);
		snprintf(user, sizeof user, "auth0|t%d-%d", m->t, i);
		if (claims_request(num, user, CLAIMS_ENROLL, (int64_t)NOW * 1000,
		    &a) != STORE_OK)
			m->failed++;
		else if (i < MT_SHARED)
			m->shared[i] = a.result;
		else
			m->fresh[i - MT_SHARED] = a.result;
	}
	return (NULL);
}

static int
setup_threads(void **state)
{
	store_set_threads(MT_THREADS);
	setup(state);
	store_set_threads(1);
	return (0);
}

static void
test_threads_one_holder(void **state)
{
	struct mt_arg		 m[MT_THREADS];
	pthread_t		 th[MT_THREADS];
	struct store_counts	 c;
	struct claim		*l;
	char			 num[32], user[64];
	int			 i, t, won;

	(void)state;
	memset(m, 0, sizeof m);
	for (t = 0; t < MT_THREADS; t++) {
		m[t].t = t;
		assert_int_equal(pthread_create(&th[t], NULL, mt_main, &m[t]),
		    0);
	}
	for (t = 0; t < MT_THREADS; t++)
		assert_int_equal(pthread_join(th[t], NULL), 0);
	for (t = 0; t < MT_THREADS; t++) {
		assert_int_equal(m[t].failed, 0);
		for (i = 0; i < MT_FRESH; i++)
			assert_int_equal(m[t].fresh[i], CLAIMS_RESERVED);
	}
	for (i = 0; i < MT_SHARED; i++) {
		snprintf(num, sizeof num, "+1201555%04d", i);
		for (t = 0, won = -1; t < MT_THREADS; t++) {
			if (m[t].shared[i] == CLAIMS_TAKEN)
				continue;
			assert_int_equal(m[t].shared[i], CLAIMS_RESERVED);
			assert_int_equal(won, -1);
			won = t;
		}
		assert_int_not_equal(won, -1);
		assert_int_equal(holders(num, &l), 1);
		snprintf(user, sizeof user, "auth0|t%d-%d", won, i);
		assert_string_equal(l[0].user_id, user);
		free(l);
	}
	assert_int_equal(store_count(fx->store, &c), STORE_OK);
	assert_int_equal(c.pending, MT_SHARED + MT_THREADS * MT_FRESH);
	assert_int_equal(c.claims, c.pending);
}

/*
 * The claim threads' handles are opened with the store, one set per
 * thread (store_threads_prepare), never by a thread while others write:
 * a set opened then could leave a mutex locked and hang a commit
 * (store_thread.c).  Each of MT_THREADS threads takes a set and claims;
 * one more thread finds none left and fails its claim, at once.
 */
struct one_arg {
	const char	*num, *user;
	int		 rv, result;
};

static void *
one_main(void *p)
{
	struct one_arg		*o = p;
	struct claims_answer	 a;

	memset(&a, 0, sizeof a);
	o->rv = claims_request(o->num, o->user, CLAIMS_ENROLL,
	    (int64_t)NOW * 1000, &a);
	o->result = a.result;
	return (NULL);
}

static void
test_threads_take_sets_opened_with_store(void **state)
{
	struct one_arg	 o[MT_THREADS + 1];
	struct claim	*l;
	pthread_t	 th;
	char		 num[MT_THREADS + 1][32], user[MT_THREADS + 1][64];
	int		 t;

	(void)state;
	for (t = 0; t <= MT_THREADS; t++) {
		snprintf(num[t], sizeof num[t], "+1203555%04d", t);
		snprintf(user[t], sizeof user[t], "auth0|set%d", t);
		o[t].num = num[t];
		o[t].user = user[t];
		o[t].rv = -100;
		/* One after the other: each thread keeps its set. */
		assert_int_equal(pthread_create(&th, NULL, one_main, &o[t]),
		    0);
		assert_int_equal(pthread_join(th, NULL), 0);
	}
	for (t = 0; t < MT_THREADS; t++) {
		assert_int_equal(o[t].rv, STORE_OK);
		assert_int_equal(o[t].result, CLAIMS_RESERVED);
	}
	assert_int_equal(o[MT_THREADS].rv, STORE_ERROR);
	assert_int_equal(holders(num[MT_THREADS], &l), 0);
	free(l);
	/* The loop's own handles are not a thread's set. */
	assert_int_equal(req(num[MT_THREADS], user[MT_THREADS], CLAIMS_ENROLL,
	    NOW, NULL), CLAIMS_RESERVED);
}

int
main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest	tests[] = {
		T(test_reserve_free_number),
		T(test_owned_pushes_expiry),
		T(test_taken_and_monitor),
		T(test_max_users_per_number),
		T(test_one_pending_per_user),
		T(test_active_survives_new_reservation),
		T(test_expired_counts_as_free),
		T(test_challenge_learns_and_conflicts),
		T(test_challenge_activates_pending),
		T(test_exempt),
		T(test_expire_timer),
		T(test_admin_claim),
		T(test_admin_release),
		T(test_walk),
		T(test_reservation_window),
		T(test_reservation_windows_pruned),
		T(test_order_renewal),
		T(test_order_failure_ms),
		T(test_order_older_release),
		T(test_order_watermarks),
		T(test_order_undated),
		T(test_order_now),
		T(test_order_untyped_id),
		T(test_order_rfc3339),
		cmocka_unit_test_setup_teardown(test_threads_one_holder,
		    setup_threads, teardown),
		cmocka_unit_test_setup_teardown(
		    test_threads_take_sets_opened_with_store, setup_threads,
		    teardown),
	};
#undef T

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
