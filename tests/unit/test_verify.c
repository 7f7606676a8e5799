/*
 * Unit tests for verify.c: reading the phone methods of a Management API
 * answer (full and obfuscated numbers, ids, confirmation, creation time,
 * other method types, bad bodies), and the settlement rules on a real
 * store, with and without obfuscation.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "log.h"
#include "phoneclaimd.h"
#include "unit.h"

#define ASKED	asked_at()
#define NOW	1800000000	/* 2027-01-15 */
#define N1	"+14155550123"
#define N2	"+14155550199"
#define USER	"auth0|verify"

static struct unit_claims	*fx;

/*
 * When a verification is asked for: after the claims a test made, and
 * each one after the one before, as in the daemon.
 */
static int64_t
asked_at(void)
{
	static int64_t	last;
	int64_t		now = claims_clock_ms() + 1;

	last = now > last ? now : last + 1;
	return (last);
}

static int
setup(void **state)
{
	fx = unit_claims_open();
	verify_init(1);
	*state = fx;
	return (0);
}

static int
teardown(void **state)
{
	(void)state;
	verify_init(0);
	unit_claims_close(fx);
	return (0);
}

/* Parse body; fail the test if it is refused. */
static struct verify_method *
parse(const char *body, size_t *n)
{
	struct verify_method	*m;
	char			*cause = NULL;

	if (verify_methods(body, strlen(body), &m, n, &cause) != 0)
		fail_msg("verify_methods: %s", cause);
	return (m);
}

/* Phone methods in full and masked, ids without their prefix. */
static void
test_parse(void **state)
{
	struct verify_method	*m;
	unsigned char		 k[NUMKEY_LEN];
	size_t			 n;

	(void)state;
	m = parse("[{\"id\":\"phone|dev_A\",\"type\":\"phone\","
	    "\"confirmed\":true,\"phone_number\":\"+1 415 555 0123\","
	    "\"created_at\":\"2027-01-15T08:00:00.000Z\"},"
	    "{\"id\":\"totp|dev_T\",\"type\":\"totp\",\"confirmed\":true},"
	    "{\"id\":\"phone|dev_B\",\"type\":\"phone\","
	    "\"phone_number\":\"XXXXXXXX0199\",\"enrolled_at\":"
	    "\"2027-01-15T09:00:00Z\"},"
	    "{\"id\":\"phone|dev_C\",\"type\":\"phone\",\"confirmed\":true,"
	    "\"phone_number\":\"XXXXXXXX****\"},"
	    "{\"type\":\"phone\",\"confirmed\":false},"
	    "17, \"text\"]", &n);
	assert_int_equal(n, 4);
	hash_number(N1, k);
	assert_string_equal(m[0].id, "dev_A");
	assert_true(m[0].confirmed);
	assert_true(m[0].full);
	assert_memory_equal(m[0].numkey, k, NUMKEY_LEN);
	assert_string_equal(m[0].last4, "0123");
	assert_true(m[0].created == NOW);
	assert_string_equal(m[1].id, "dev_B");
	assert_false(m[1].confirmed);
	assert_false(m[1].full);
	assert_string_equal(m[1].last4, "0199");
	assert_true(m[1].created == m[0].created + 3600);
	assert_string_equal(m[2].last4, "");
	assert_false(m[2].full);
	assert_true(m[2].created == 0);
	assert_string_equal(m[3].id, "");
	free(m);
}

/* Not an array, not JSON, too deep: refused; many: at most the bound. */
static void
test_parse_bad(void **state)
{
	struct verify_method	*m;
	char			*cause = NULL, *big;
	size_t			 n, i, len;

	(void)state;
	assert_int_equal(verify_methods("{\"id\":1}", 8, &m, &n, &cause), -1);
	assert_non_null(cause);
	free(cause);
	cause = NULL;
	assert_int_equal(verify_methods("[{", 2, &m, &n, &cause), -1);
	free(cause);
	assert_null(m);
	len = 2 + 200 * 32;
	big = malloc(len + 1);
	strcpy(big, "[");
	for (i = 0; i < 200; i++)
		strcat(big, i == 0 ? "{\"type\":\"phone\"}" :
		    ",{\"type\":\"phone\"}");
	strcat(big, "]");
	m = parse(big, &n);
	assert_int_equal(n, VERIFY_METHODS_MAX);
	free(m);
	free(big);
}

/* Reserve a number for a user (pending) at time at. */
static void
reserve(const char *e164, const char *user, int64_t at)
{
	struct claims_answer	a;

	assert_int_equal(claims_request(e164, user, CLAIMS_ENROLL, at * 1000,
	    &a), STORE_OK);
	assert_int_equal(a.result, CLAIMS_RESERVED);
}

/* The user's claim on a number: its state, or 0 if none. */
static int
state_of(const char *e164, const char *user)
{
	struct claim	*v;
	size_t		 n, i;
	int		 st = 0;

	assert_int_equal(claims_lookup(e164, NULL, &v, &n), STORE_OK);
	for (i = 0; i < n; i++) {
		if (strcmp(v[i].user_id, user) == 0)
			st = v[i].state;
	}
	free(v);
	return (st);
}

/* A method for the tests. */
static void
method(struct verify_method *m, const char *id, const char *e164,
    const char *digits, int64_t created)
{
	memset(m, 0, sizeof *m);
	snprintf(m->id, sizeof m->id, "%s", id);
	m->confirmed = 1;
	m->created = created;
	if (e164 != NULL) {
		hash_number(e164, m->numkey);
		snprintf(m->last4, sizeof m->last4, "%s", e164 + strlen(e164) -
		    4);
		m->full = 1;
	} else
		snprintf(m->last4, sizeof m->last4, "%s", digits);
}

/*
 * A lapsing reservation: a full number makes it active; masked digits that
 * match too; no digit and a method older than the reservation does not.
 */
static void
test_settle_expiring(void **state)
{
	struct verify_method	m;
	struct verify_result	r;
	time_t			now = time(NULL);

	(void)state;
	reserve(N1, USER, now);
	method(&m, "dev_1", NULL, "", now - 3600);
	assert_int_equal(verify_settle(USER, VERIFY_EXPIRING, &m, 1, 1, ASKED,
	    now, &r), STORE_OK);
	assert_int_equal(r.activated, 0);
	assert_int_equal(state_of(N1, USER), CLAIM_PENDING);
	method(&m, "dev_1", NULL, "0123", 0);
	assert_int_equal(verify_settle(USER, VERIFY_EXPIRING, &m, 1, 1, ASKED,
	    now, &r), STORE_OK);
	assert_int_equal(r.activated, 1);
	assert_int_equal(state_of(N1, USER), CLAIM_ACTIVE);

	reserve(N2, "auth0|two", now);
	method(&m, "dev_2", N2, NULL, 0);
	m.confirmed = 0;
	assert_int_equal(verify_settle("auth0|two", VERIFY_EXPIRING, &m, 1, 1,
	    ASKED, now, &r), STORE_OK);
	assert_int_equal(state_of(N2, "auth0|two"), CLAIM_PENDING);
	m.confirmed = 1;
	assert_int_equal(verify_settle("auth0|two", VERIFY_EXPIRING, &m, 1, 1,
	    ASKED, now, &r), STORE_OK);
	assert_int_equal(r.activated, 1);
	assert_int_equal(state_of(N2, "auth0|two"), CLAIM_ACTIVE);
}

/*
 * An ambiguous unenrolment: full numbers release what is gone; a method
 * without digits and an unknown id keeps both; a user Auth0 does not know
 * loses everything.
 */
static void
test_settle_ambiguous(void **state)
{
	struct verify_method	m;
	struct verify_result	r;
	int			result;
	time_t			now = time(NULL);

	(void)state;
	assert_int_equal(claims_admin_claim(N1, USER, &result), STORE_OK);
	assert_int_equal(claims_admin_claim(N2, USER, &result), STORE_OK);
	method(&m, "dev_new", NULL, "", now);
	assert_int_equal(verify_settle(USER, VERIFY_AMBIGUOUS, &m, 1, 1, ASKED,
	    now, &r), STORE_OK);
	assert_int_equal(r.released, 0);
	assert_int_equal(r.unsettled, 2);
	method(&m, "dev_2", N2, NULL, now);
	assert_int_equal(verify_settle(USER, VERIFY_AMBIGUOUS, &m, 1, 1, ASKED,
	    now, &r), STORE_OK);
	assert_int_equal(r.released, 1);
	assert_int_equal(state_of(N1, USER), 0);
	assert_int_equal(state_of(N2, USER), CLAIM_ACTIVE);
	assert_int_equal(verify_settle(USER, VERIFY_AMBIGUOUS, NULL, 0, 0, ASKED,
	    now, &r), STORE_OK);
	assert_int_equal(r.released, 1);
	assert_int_equal(state_of(N2, USER), 0);
}

/* The enrolment id the user's claim on a number carries. */
static void
enrol_of(const char *e164, const char *user, char *id, size_t size)
{
	struct claim	*v;
	size_t		 n, i;

	assert_int_equal(claims_lookup(e164, NULL, &v, &n), STORE_OK);
	snprintf(id, size, "(none)");
	for (i = 0; i < n; i++) {
		if (strcmp(v[i].user_id, user) == 0)
			snprintf(id, size, "%s", v[i].enrol_id);
	}
	free(v);
}

/*
 * Auth0's method for a number the user holds has a new id (re-enrolled
 * while an event was missed): the claim takes it, so that the method's
 * later unenrolment matches.  A stored id Auth0 still lists stays.
 */
static void
test_settle_new_method_id(void **state)
{
	struct verify_method	m[2];
	struct verify_result	r;
	char			id[ENROL_ID_MAX + 1];
	int			result;
	time_t			now = time(NULL);

	(void)state;
	assert_int_equal(claims_admin_claim(N1, USER, &result), STORE_OK);
	method(&m[0], "dev_old", N1, NULL, now);
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, m, 1, 1, ASKED,
	    now, &r), STORE_OK);
	enrol_of(N1, USER, id, sizeof id);
	assert_string_equal(id, "dev_old");
	method(&m[0], "dev_new", N1, NULL, now);
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, m, 1, 1, ASKED,
	    now, &r), STORE_OK);
	enrol_of(N1, USER, id, sizeof id);
	assert_string_equal(id, "dev_new");
	assert_int_equal(state_of(N1, USER), CLAIM_ACTIVE);
	method(&m[1], "dev_other", N1, NULL, now);
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, m + 1, 1, 1,
	    ASKED, now, &r), STORE_OK);
	enrol_of(N1, USER, id, sizeof id);
	assert_string_equal(id, "dev_other");
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, m, 2, 1, ASKED,
	    now, &r), STORE_OK);
	enrol_of(N1, USER, id, sizeof id);
	assert_string_equal(id, "dev_other");	/* still listed: kept */
}

/*
 * An answer is dated when it was asked for (issue 21, point 4): a release
 * after that wins, one before it (or in the same millisecond) does not.
 */
static void
test_settle_dated_when_asked(void **state)
{
	struct verify_method	 m;
	struct verify_result	 r;
	struct claims_event	 ev;
	struct store_txn	*txn;
	time_t			 now = time(NULL);
	int64_t			 asked = (int64_t)now * 1000 + 500;
	int			 outcome;

	(void)state;
	method(&m, "dev_1", N1, NULL, now);
	memset(&ev, 0, sizeof ev);
	ev.user_id = USER;
	ev.log_id = "";
	ev.now = now;
	ev.when.ms = asked + 1;		/* a du just after the GET */
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(claims_ev_release_user(txn, &ev, &outcome),
	    STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, &m, 1, 1, asked,
	    now, &r), STORE_OK);
	assert_int_equal(r.claimed, 0);
	assert_int_equal(state_of(N1, USER), 0);
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, &m, 1, 1,
	    asked + 1, now, &r), STORE_OK);
	assert_int_equal(state_of(N1, USER), 0);
	assert_int_equal(verify_settle(USER, VERIFY_UNMATCHED, &m, 1, 1,
	    asked + 2, now, &r), STORE_OK);
	assert_int_equal(r.claimed, 1);
	assert_int_equal(state_of(N1, USER), CLAIM_ACTIVE);
	/* Its releases leave the claims made after it alone. */
	reserve(N2, USER, now + 1);
	assert_int_equal(verify_settle(USER, VERIFY_AMBIGUOUS, NULL, 0, 0,
	    asked + 3, now, &r), STORE_OK);
	assert_int_equal(state_of(N1, USER), 0);
	assert_int_equal(state_of(N2, USER), CLAIM_PENDING);
}

/* Requests wait in the store until settled; asking needs a client. */
static void
test_queue(void **state)
{
	struct verify_method	m;
	struct verify_result	r;
	struct verify_req	q;
	char			user[USER_ID_MAX + 1];
	int64_t			after = 0;
	size_t			asked;
	time_t			now = time(NULL);

	(void)state;
	assert_int_equal(verify_next(user, now, &q), STORE_NOTFOUND);
	reserve(N1, USER, now);
	assert_int_equal(verify_expiring(&after, now + 599, 10, now, &asked),
	    STORE_OK);
	assert_int_equal(asked, 0);
	assert_true(after == now + 599);
	assert_int_equal(verify_expiring(&after, now + 600, 10, now, &asked),
	    STORE_OK);
	assert_int_equal(asked, 1);
	assert_int_equal(verify_next(user, now, &q), STORE_OK);
	assert_string_equal(user, USER);
	assert_int_equal(q.reasons, VERIFY_EXPIRING);
	assert_int_equal(q.tries, 0);
	method(&m, "dev_1", N1, NULL, 0);
	assert_int_equal(verify_settle(USER, q.reasons, &m, 1, 1, ASKED, now,
	    &r), STORE_OK);
	assert_int_equal(verify_next(user, now, &q), STORE_NOTFOUND);

	verify_init(0);
	reserve(N2, "auth0|off", now);
	after = 0;
	assert_int_equal(verify_expiring(&after, now + 600, 10, now, &asked),
	    STORE_OK);
	assert_int_equal(asked, 0);
	assert_int_equal(verify_next(user, now, &q), STORE_NOTFOUND);
}

/* Ask for a verification of user in a transaction of its own. */
static int
ask_txn(struct store_txn *txn, void *arg)
{
	return (verify_ask(txn, arg, VERIFY_UNMATCHED, 100));
}

/*
 * A user whose lookups fail waits behind the others, 1 s doubling with
 * each try, and is given up after VERIFY_TRIES_MAX (issue 17, point 7).
 */
static void
test_retry_behind_the_others(void **state)
{
	struct verify_req	q;
	char			user[USER_ID_MAX + 1];
	int64_t			now = 1000, wait;
	int			try, gave_up;

	(void)state;
	assert_int_equal(claims_run(ask_txn, "auth0|a"), STORE_OK);
	assert_int_equal(claims_run(ask_txn, "auth0|b"), STORE_OK);
	assert_int_equal(verify_next(user, now, &q), STORE_OK);
	assert_string_equal(user, "auth0|a");
	assert_int_equal(verify_retry(user, 1, now, &gave_up, &wait),
	    STORE_OK);
	assert_false(gave_up);
	assert_true(wait == 1);
	/* b is next, though a comes first in order. */
	assert_int_equal(verify_next(user, now, &q), STORE_OK);
	assert_string_equal(user, "auth0|b");
	assert_int_equal(verify_retry(user, 3, now, &gave_up, &wait),
	    STORE_OK);
	assert_true(wait == 4);
	/* Neither is due: when one will be. */
	assert_int_equal(verify_next(user, now, &q), STORE_NOTFOUND);
	assert_true(q.not_before == now + 1);
	/* A new request goes first; then the retry due the longest. */
	assert_int_equal(claims_run(ask_txn, "auth0|c"), STORE_OK);
	assert_int_equal(verify_next(user, now + 10, &q), STORE_OK);
	assert_string_equal(user, "auth0|c");
	assert_int_equal(verify_drop("auth0|c"), STORE_OK);
	assert_int_equal(verify_next(user, now + 10, &q), STORE_OK);
	assert_string_equal(user, "auth0|a");
	assert_int_equal(q.tries, 1);
	assert_int_equal(q.reasons, VERIFY_UNMATCHED);
	for (try = 2; try <= VERIFY_TRIES_MAX; try++) {
		assert_int_equal(verify_retry("auth0|a", try, now, &gave_up,
		    &wait), STORE_OK);
		assert_int_equal(gave_up, try == VERIFY_TRIES_MAX);
		assert_true(wait >= 1 && wait <= 3600);
	}
	assert_int_equal(verify_next(user, now + 100000, &q), STORE_OK);
	assert_string_equal(user, "auth0|b");
	assert_int_equal(verify_drop("auth0|b"), STORE_OK);
	assert_int_equal(verify_next(user, now + 100000, &q),
	    STORE_NOTFOUND);
	assert_true(q.not_before == 0);
}

#define T(f)	cmocka_unit_test_setup_teardown(f, setup, teardown)

int
main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_parse),
		T(test_parse_bad),
		T(test_settle_expiring),
		T(test_settle_ambiguous),
		T(test_settle_new_method_id),
		T(test_settle_dated_when_asked),
		T(test_queue),
		T(test_retry_behind_the_others),
	};

	log_init(1, LOG_LEVEL_ERROR);
	return (cmocka_run_group_tests(tests, NULL, NULL));
}
