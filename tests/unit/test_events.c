/*
 * Unit tests for events.c and the log-event functions of claims.c: every
 * row of the DESIGN section 4 event table, watermarks (I4), on a real
 * store.  Events are synthetic, written in Auth0's documented shapes.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <yajl/yajl_tree.h>

#include "log.h"
#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

#define NOW	1800000000	/* 2027-01-15 */
#define N1	"+14155550123"
#define N2	"+14155550199"

static struct unit_claims	*fx;
static int		 serial;

static int
setup(void **state)
{
	serial = 0;
	fx = unit_claims_open();
	*state = fx;
	return (0);
}

static int
teardown(void **state)
{
	(void)state;
	events_free();
	unit_claims_close(fx);
	return (0);
}

/* Apply one event given as JSON text; return its outcome. */
static int
apply(const char *fmt, ...)
{
	struct store_txn	*txn;
	yajl_val		 v;
	va_list			 ap;
	char			*text, *cause, id[32];
	int			 outcome;

	va_start(ap, fmt);
	if (vasprintf(&text, fmt, ap) < 0)
		fail();
	va_end(ap);
	if ((v = json_parse(text, strlen(text), &cause)) == NULL)
		fail_msg("bad test JSON: %s", text);
	snprintf(id, sizeof id, "%d", ++serial);
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(events_apply(txn, v, id, (int64_t)NOW * 1000,
	    &outcome), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	json_free(v);
	free(text);
	return (outcome);
}

/* Reserve through the API path (a pending claim made "now"). */
static int
reserve(const char *number, const char *user, int64_t when)
{
	struct claims_answer	a;

	assert_int_equal(claims_request(number, user, CLAIMS_ENROLL,
	    when * 1000, &a), STORE_OK);
	return (a.result);
}

/* Return the state of user's claim on number, or 0 if none. */
static int
state_of(const char *number, const char *user)
{
	unsigned char		 key[NUMKEY_LEN];
	struct store_txn	*txn;
	struct claim		*l;
	size_t			 n, i;
	int			 st = 0;

	hash_number(number, key);
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_claims_by_number(txn, key, &l, &n), STORE_OK);
	store_txn_abort(txn);
	for (i = 0; i < n; i++) {
		if (strcmp(l[i].user_id, user) == 0)
			st = l[i].state;
	}
	free(l);
	return (st);
}

/* A gd_enrollment_complete with a number (JSON text) and a date. */
#define ENROLLED(user, num, date) apply("{\"type\":\"gd_enrollment_complete\"," \
    "\"date\":\"%s\",\"description\":\"Guardian - Enrollment complete " \
    "(sms)\",\"user_id\":\"%s\",\"details\":{\"authenticator\":{\"id\":" \
    "\"sms|dev_1\",\"type\":\"sms\",\"phone_number\":%s},\"enrollment\":" \
    "{\"_id\":\"dev_1\",\"user_id\":\"%s\"}}}", date, user, num, user)

static void
test_enrolled_full_number(void **state)
{
	(void)state;
	assert_int_equal(reserve(N1, "auth0|a", NOW), CLAIMS_RESERVED);
	assert_int_equal(ENROLLED("auth0|a", "\"" N1 "\"",
	    "2027-01-15T08:00:00.000Z"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_ACTIVE);
	/* Created when free, from a JSON number too. */
	assert_int_equal(ENROLLED("auth0|b", "14155550199",
	    "2027-01-15T08:00:00Z"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|b"), CLAIM_ACTIVE);
}

static void
test_enrolled_conflict(void **state)
{
	struct store_txn	*txn;
	struct conflict		*cf;
	size_t			 n;

	(void)state;
	assert_int_equal(ENROLLED("auth0|a", "\"" N1 "\"",
	    "2027-01-15T08:00:00Z"), CLAIMS_APPLIED);
	assert_int_equal(ENROLLED("auth0|b", "\"" N1 "\"",
	    "2027-01-15T08:01:00Z"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|b"), 0);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_ACTIVE);
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_conflicts(txn, &cf, &n), STORE_OK);
	store_txn_abort(txn);
	assert_int_equal(n, 1);
	assert_string_equal(cf[0].user_id, "auth0|b");
	assert_string_equal(cf[0].log_id, "2");
	assert_string_equal(cf[0].holders[0], "auth0|a");
	store_conflicts_free(cf, n);
}

static void
test_enrolled_masked_and_absent(void **state)
{
	(void)state;
	reserve(N1, "auth0|a", NOW);
	assert_int_equal(ENROLLED("auth0|a", "\"+1******9999\"",
	    "2027-01-15T08:00:00Z"), CLAIMS_UNMATCHED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_PENDING);
	assert_int_equal(ENROLLED("auth0|a", "\"XXXXXXXX0123\"",
	    "2027-01-15T08:00:00Z"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_ACTIVE);
	reserve(N2, "auth0|b", NOW);
	assert_int_equal(ENROLLED("auth0|b", "null", "2027-01-15T08:00:00Z"),
	    CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|b"), CLAIM_ACTIVE);
	assert_int_equal(ENROLLED("auth0|c", "null", "2027-01-15T08:00:00Z"),
	    CLAIMS_UNMATCHED);
}

static void
test_enrolled_other_factors_ignored(void **state)
{
	(void)state;
	reserve(N1, "auth0|a", NOW);
	assert_int_equal(apply("{\"type\":\"gd_enrollment_complete\","
	    "\"user_id\":\"auth0|a\",\"details\":{\"authenticator\":"
	    "{\"type\":\"otp\"}}}"), CLAIMS_IGNORED);
	assert_int_equal(apply("{\"type\":\"gd_enrollment_complete\","
	    "\"description\":\"Guardian - Enrollment complete\","
	    "\"user_id\":\"auth0|a\",\"details\":{}}"), CLAIMS_IGNORED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_PENDING);
	/* Description ending (voice) and no type: a phone factor. */
	assert_int_equal(apply("{\"type\":\"gd_enrollment_complete\","
	    "\"description\":\"Guardian - Enrollment complete (voice)\","
	    "\"user_id\":\"auth0|a\",\"details\":{}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_ACTIVE);
}

static void
test_unenroll(void **state)
{
	(void)state;
	ENROLLED("auth0|a", "\"" N1 "\"", "2027-01-15T08:00:00Z");
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"user_id\":\"auth0|a\",\"details\":"
	    "{\"authenticator\":{\"id\":\"phone|dev_1\"}}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
	/* Several claims and no id or number: ambiguous, nothing goes. */
	ENROLLED("auth0|b", "\"" N1 "\"", "2027-01-15T10:00:00Z");
	assert_int_equal(apply("{\"type\":\"gd_enrollment_complete\","
	    "\"date\":\"2027-01-15T10:00:00Z\",\"user_id\":\"auth0|b\","
	    "\"details\":{\"authenticator\":{\"type\":\"sms\","
	    "\"phone_number\":\"" N2 "\",\"id\":\"sms|dev_2\"}}}"),
	    CLAIMS_APPLIED);
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T11:00:00Z\",\"user_id\":\"auth0|b\"}"),
	    CLAIMS_AMBIGUOUS);
	assert_int_equal(state_of(N1, "auth0|b"), CLAIM_ACTIVE);
	assert_int_equal(state_of(N2, "auth0|b"), CLAIM_ACTIVE);
	/* The masked number picks one. */
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T11:00:00Z\",\"user_id\":\"auth0|b\",\"details\":"
	    "{\"authenticator\":{\"phone_number\":\"+1*****0199\"}}}"),
	    CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|b"), 0);
	assert_int_equal(state_of(N1, "auth0|b"), CLAIM_ACTIVE);
}

static void
test_late_unenroll_of_an_earlier_enrolment(void **state)
{
	(void)state;
	/* Enrolled as dev_1, unenrolled, enrolled again as dev_2. */
	ENROLLED("auth0|a", "\"" N1 "\"", "2027-01-15T07:00:00Z");
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T07:10:00Z\",\"user_id\":\"auth0|a\",\"details\":"
	    "{\"authenticator\":{\"id\":\"sms|dev_1\",\"type\":\"sms\","
	    "\"phone_number\":\"" N1 "\"}}}"), CLAIMS_APPLIED);
	assert_int_equal(apply("{\"type\":\"gd_enrollment_complete\","
	    "\"date\":\"2027-01-15T07:20:00Z\",\"user_id\":\"auth0|a\","
	    "\"details\":{\"authenticator\":{\"type\":\"sms\","
	    "\"phone_number\":\"" N1 "\",\"id\":\"sms|dev_2\"}}}"),
	    CLAIMS_APPLIED);
	/* A redelivered copy of dev_1's unenrolment (another log id). */
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T07:10:00Z\",\"user_id\":\"auth0|a\",\"details\":"
	    "{\"authenticator\":{\"id\":\"sms|dev_1\",\"type\":\"sms\","
	    "\"phone_number\":\"" N1 "\"}}}"), CLAIMS_STALE);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_ACTIVE);
	/* dev_2's own unenrolment, and one that names no id, release. */
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T07:30:00Z\",\"user_id\":\"auth0|a\",\"details\":"
	    "{\"authenticator\":{\"id\":\"phone|dev_2\",\"type\":\"sms\","
	    "\"phone_number\":\"" N1 "\"}}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
	assert_int_equal(ENROLLED("auth0|b", "\"" N2 "\"",
	    "2027-01-15T07:00:00Z"), CLAIMS_APPLIED);
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T07:30:00Z\",\"user_id\":\"auth0|b\",\"details\":"
	    "{\"authenticator\":{\"type\":\"sms\",\"phone_number\":\"" N2
	    "\"}}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|b"), 0);
}

static void
test_user_deleted_and_watermark(void **state)
{
	(void)state;
	ENROLLED("auth0|a", "\"" N1 "\"", "2027-01-15T08:00:00Z");
	assert_int_equal(apply("{\"type\":\"sdu\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"user_id\":\"auth0|a\"}"),
	    CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
	/* An older enrolment arriving late does not bring it back. */
	assert_int_equal(ENROLLED("auth0|a", "\"" N1 "\"",
	    "2027-01-15T08:30:00Z"), CLAIMS_STALE);
	assert_int_equal(ENROLLED("auth0|a", "\"" N1 "\"",
	    "2027-01-15T09:00:00Z"), CLAIMS_STALE);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
	/* A newer one does. */
	assert_int_equal(ENROLLED("auth0|a", "\"" N1 "\"",
	    "2027-01-15T09:00:00.001Z"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_ACTIVE);
	assert_int_equal(apply("{\"type\":\"du\",\"user_id\":\"auth0|zz\"}"),
	    CLAIMS_IGNORED);
}

static void
test_per_number_watermark(void **state)
{
	(void)state;
	assert_int_equal(apply("{\"type\":\"gd_unenroll\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"user_id\":\"auth0|a\",\"details\":"
	    "{\"authenticator\":{\"type\":\"sms\",\"phone_number\":\"" N1
	    "\"}}}"), CLAIMS_UNMATCHED);
	assert_int_equal(ENROLLED("auth0|a", "\"" N1 "\"",
	    "2027-01-15T08:00:00Z"), CLAIMS_STALE);
	assert_int_equal(ENROLLED("auth0|a", "\"" N2 "\"",
	    "2027-01-15T08:00:00Z"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|a"), CLAIM_ACTIVE);
}

static void
test_sapi(void **state)
{
	(void)state;
	ENROLLED("auth0|123", "\"" N1 "\"", "2027-01-15T08:00:00Z");
	/* A failed call changes nothing; the top-level user is the admin. */
	assert_int_equal(apply("{\"type\":\"sapi\",\"user_id\":\"auth0|123\","
	    "\"details\":{\"request\":{\"method\":\"delete\",\"path\":"
	    "\"/api/v2/users/auth0%%7C123\"},\"response\":{\"statusCode\":404}}"
	    "}"), CLAIMS_IGNORED);
	assert_int_equal(apply("{\"type\":\"sapi\",\"user_id\":\"auth0|123\","
	    "\"details\":{\"request\":{\"method\":\"DELETE\",\"path\":"
	    "\"/api/v2/users/auth0%%7C999/authenticators\"}}}"),
	    CLAIMS_IGNORED);
	assert_int_equal(state_of(N1, "auth0|123"), CLAIM_ACTIVE);
	assert_int_equal(apply("{\"type\":\"sapi\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"user_id\":\"github|admin\","
	    "\"details\":{\"request\":{\"method\":\"delete\",\"path\":"
	    "\"/api/v2/users/auth0%%7C123/authentication-methods\"},"
	    "\"response\":{\"statusCode\":204}}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|123"), 0);
	/* POST: an admin adds a phone: active claim, source admin. */
	assert_int_equal(apply("{\"type\":\"sapi\",\"date\":"
	    "\"2027-01-15T10:00:00Z\",\"user_id\":\"github|admin\","
	    "\"details\":{\"request\":{\"method\":\"post\",\"path\":"
	    "\"/api/v2/users/auth0%%7C123/authentication-methods\",\"body\":"
	    "{\"type\":\"phone\",\"name\":\"SMS\",\"phone_number\":\"" N2
	    "\"}},\"response\":{\"statusCode\":201}}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|123"), CLAIM_ACTIVE);
	/* Deleting a totp method leaves the phone alone. */
	assert_int_equal(apply("{\"type\":\"sapi\",\"details\":{\"request\":"
	    "{\"method\":\"delete\",\"path\":\"/api/v2/users/auth0%%7C123/"
	    "authentication-methods/totp%%7Cdev_9\"}}}"), CLAIMS_IGNORED);
	assert_int_equal(state_of(N2, "auth0|123"), CLAIM_ACTIVE);
	/* PUT replaces the set. */
	assert_int_equal(apply("{\"type\":\"sapi\",\"date\":"
	    "\"2027-01-15T11:00:00Z\",\"details\":{\"request\":{\"method\":"
	    "\"put\",\"path\":\"/api/v2/users/auth0%%7C123/"
	    "authentication-methods\",\"body\":[{\"type\":\"email\"},"
	    "{\"type\":\"phone\",\"phone_number\":\"" N1 "\"}]}}}"),
	    CLAIMS_APPLIED);
	assert_int_equal(state_of(N2, "auth0|123"), 0);
	assert_int_equal(state_of(N1, "auth0|123"), CLAIM_ACTIVE);
}

static void
test_sapi_guardian_enrollment(void **state)
{
	(void)state;
	ENROLLED("auth0|a", "\"" N1 "\"", "2027-01-15T08:00:00Z");
	assert_int_equal(apply("{\"type\":\"sapi\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"details\":{\"request\":{\"method\":"
	    "\"DELETE\",\"path\":\"/api/v2/guardian/enrollments/dev_1\"}}}"),
	    CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
	assert_int_equal(apply("{\"type\":\"sapi\",\"details\":{\"request\":"
	    "{\"method\":\"DELETE\",\"path\":\"/api/v2/guardian/enrollments/"
	    "dev_1\"}}}"), CLAIMS_UNMATCHED);
}

static void
test_failures_release_older_pending(void **state)
{
	(void)state;
	reserve(N1, "auth0|a", NOW - 100);
	/* Failure before the reservation (07:58:20): it stays. */
	assert_int_equal(apply("{\"type\":\"gd_send_sms_failure\",\"date\":"
	    "\"2027-01-15T07:58:00Z\",\"user_id\":\"auth0|a\"}"),
	    CLAIMS_IGNORED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_PENDING);
	/* NOW is 2027-01-15T08:00:00Z. */
	assert_int_equal(apply("{\"type\":\"gd_send_sms_failure\",\"date\":"
	    "\"2027-01-15T08:00:00Z\",\"user_id\":\"auth0|a\"}"),
	    CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
	reserve(N1, "auth0|a", NOW);
	/* A push enrolment failure, as Auth0 documents it: no phone shown. */
	assert_int_equal(apply("{\"type\":\"gd_start_enroll_failed\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"details\":{\"enrollment\":{"
	    "\"user_id\":\"auth0|a\"}}}"), CLAIMS_IGNORED);
	assert_int_equal(state_of(N1, "auth0|a"), CLAIM_PENDING);
	assert_int_equal(apply("{\"type\":\"gd_start_enroll_failed\",\"date\":"
	    "\"2027-01-15T09:00:00Z\",\"details\":{\"enrollment\":{"
	    "\"user_id\":\"auth0|a\"},\"authenticator\":{\"type\":"
	    "\"sms\"}}}"), CLAIMS_APPLIED);
	assert_int_equal(state_of(N1, "auth0|a"), 0);
}

static void
test_other_types_ignored_and_counted(void **state)
{
	const char	**names;
	const size_t	 *counts;
	size_t		  n, i, s = 0;

	(void)state;
	assert_int_equal(apply("{\"type\":\"s\"}"), CLAIMS_IGNORED);
	assert_int_equal(apply("{\"type\":\"gd_send_sms\"}"), CLAIMS_IGNORED);
	assert_int_equal(apply("{\"type\":\"mgmt_api_read\"}"),
	    CLAIMS_IGNORED);
	/* The caller counts ignored types once the request is committed. */
	events_count_ignored("s");
	events_count_ignored("s");
	n = events_ignored_types(&names, &counts);
	for (i = 0; i < n; i++) {
		if (strcmp(names[i], "s") == 0)
			s = counts[i];
	}
	assert_int_equal(s, 2);
}

static void
test_seen_ids_pruned(void **state)
{
	struct store_txn	*txn;
	size_t			 pruned;

	(void)state;
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_seen_add(txn, "old", NOW - 7200), STORE_OK);
	assert_int_equal(store_seen_add(txn, "new", NOW - 60), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(logstream_prune(NOW, 3600, &pruned), STORE_OK);
	assert_int_equal(pruned, 1);
	/* "old" is forgotten (it may be seen again); "new" is kept. */
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_seen_add(txn, "old", NOW), STORE_OK);
	assert_int_equal(store_seen_add(txn, "new", NOW), STORE_EXISTS);
	store_txn_abort(txn);
}

static void
test_dates(void **state)
{
	yajl_val	 v;
	char		*cause;
	const char	*t = "{\"date\":\"2027-01-15T08:00:00.25Z\"}";

	(void)state;
	v = json_parse(t, strlen(t), &cause);
	assert_int_equal(events_date(v, 7), (int64_t)NOW * 1000 + 250);
	json_free(v);
	t = "{\"date\":\"yesterday\"}";
	v = json_parse(t, strlen(t), &cause);
	assert_int_equal(events_date(v, 7), 7);
	json_free(v);
}

int
main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest	tests[] = {
		T(test_enrolled_full_number),
		T(test_enrolled_conflict),
		T(test_enrolled_masked_and_absent),
		T(test_enrolled_other_factors_ignored),
		T(test_unenroll),
		T(test_late_unenroll_of_an_earlier_enrolment),
		T(test_user_deleted_and_watermark),
		T(test_per_number_watermark),
		T(test_sapi),
		T(test_sapi_guardian_enrollment),
		T(test_failures_release_older_pending),
		T(test_other_types_ignored_and_counted),
		T(test_seen_ids_pruned),
		T(test_dates),
	};
#undef T

	log_init(1, LOG_LEVEL_ERROR);
	return (cmocka_run_group_tests(tests, NULL, NULL));
}
