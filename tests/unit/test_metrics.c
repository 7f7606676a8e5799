/*
 * Unit tests for metrics.c: latency buckets at their bounds, answers by
 * endpoint and status, log-stream totals and the latest event, event
 * types shown escaped or folded into "(other)", and gauges from a real
 * Berkeley DB store in a temporary directory.
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

#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

struct fixture {
	char		*dir;
	struct store	*store;
};

static struct fixture	*fx;

static int
setup(void **state)
{
	char	*cause = NULL;

	fx = xcalloc(1, sizeof *fx);
	fx->dir = unit_tmpdir();
	if ((fx->store = store_open(fx->dir, &cause)) == NULL)
		fail_msg("%s", cause);
	metrics_init(fx->store);
	*state = fx;
	return (0);
}

static int
teardown(void **state)
{
	(void)state;
	metrics_free();
	events_free();
	store_close(fx->store);
	unit_rmtree(fx->dir);
	free(fx->dir);
	free(fx);
	return (0);
}

/* Assert that the exposition has this exact line. */
static void
has_line(const char *text, const char *line)
{
	const char	*p = text;
	size_t		 len = strlen(line);

	while ((p = strstr(p, line)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[len] == '\n')
			return;
		p += len;
	}
	fail_msg("no line \"%s\" in:\n%s", line, text);
}

/* Assert that the exposition has no line starting with this. */
static void
no_line(const char *text, const char *start)
{
	const char	*p = text;

	while ((p = strstr(p, start)) != NULL) {
		if (p == text || p[-1] == '\n')
			fail_msg("unexpected line \"%s...\" in:\n%s", start,
			    text);
		p++;
	}
}

/* A latency on a bucket's bound falls in that bucket ("le"). */
static void
test_buckets_include_their_bound(void **state)
{
	char	*t;

	(void)state;
	metrics_request(METRICS_EP_CLAIMS, 200, 500);
	metrics_request(METRICS_EP_CLAIMS, 200, 501);
	metrics_request(METRICS_EP_CLAIMS, 409, 2500000);
	metrics_request(METRICS_EP_CLAIMS, 200, 2500001);
	t = metrics_text();
	has_line(t, "phoneclaimd_request_duration_seconds_bucket"
	    "{endpoint=\"claims\",le=\"0.0005\"} 1");
	has_line(t, "phoneclaimd_request_duration_seconds_bucket"
	    "{endpoint=\"claims\",le=\"0.001\"} 2");
	has_line(t, "phoneclaimd_request_duration_seconds_bucket"
	    "{endpoint=\"claims\",le=\"1\"} 2");
	has_line(t, "phoneclaimd_request_duration_seconds_bucket"
	    "{endpoint=\"claims\",le=\"2.5\"} 3");
	has_line(t, "phoneclaimd_request_duration_seconds_bucket"
	    "{endpoint=\"claims\",le=\"+Inf\"} 4");
	has_line(t, "phoneclaimd_request_duration_seconds_count"
	    "{endpoint=\"claims\"} 4");
	has_line(t, "phoneclaimd_request_duration_seconds_sum"
	    "{endpoint=\"claims\"} 5.001002");
	has_line(t, "phoneclaimd_request_duration_seconds_count"
	    "{endpoint=\"healthz\"} 0");
	free(t);
}

/* Answers by endpoint and code; only those that happened are shown. */
static void
test_requests_by_endpoint_and_code(void **state)
{
	char	*t;

	(void)state;
	metrics_request(METRICS_EP_LOG_STREAM, 200, 10);
	metrics_request(METRICS_EP_LOG_STREAM, 200, 10);
	metrics_request(METRICS_EP_LOG_STREAM, 503, 10);
	metrics_request(METRICS_EP_OTHER, 404, 10);
	metrics_request(METRICS_EP_COUNT, 404, 10);	/* out of range */
	metrics_request(METRICS_EP_HEALTHZ, 0, -5);	/* not a status */
	t = metrics_text();
	has_line(t, "phoneclaimd_requests_total"
	    "{endpoint=\"log-stream\",code=\"200\"} 2");
	has_line(t, "phoneclaimd_requests_total"
	    "{endpoint=\"log-stream\",code=\"503\"} 1");
	has_line(t, "phoneclaimd_requests_total"
	    "{endpoint=\"other\",code=\"404\"} 2");
	no_line(t, "phoneclaimd_requests_total{endpoint=\"healthz\"");
	no_line(t, "phoneclaimd_requests_total{endpoint=\"claims\"");
	has_line(t, "phoneclaimd_request_duration_seconds_count"
	    "{endpoint=\"healthz\"} 1");
	free(t);
}

/*
 * Totals add up; the latest event by date is kept, its log id with its
 * date (issue 18: never one event's id with another's date).
 */
static void
test_log_stream_totals(void **state)
{
	const struct metrics_events	*e;
	struct metrics_events		 d;
	char				*t;

	(void)state;
	t = metrics_text();
	no_line(t, "phoneclaimd_last_event_timestamp_seconds ");
	no_line(t, "phoneclaimd_last_event_age_seconds ");
	free(t);
	memset(&d, 0, sizeof d);
	d.applied = 2;
	d.duplicates = 1;
	d.ignored = 5;
	d.unmatched = 1;
	d.ambiguous = 1;
	d.stale = 1;
	d.rejected = 3;
	snprintf(d.last_log_id, sizeof d.last_log_id, "9002");
	d.last_date_ms = 1700000000123LL;
	d.last_received = 1700000100;
	metrics_log_stream(&d);
	/* An older date and a lower (shorter) log id change neither. */
	memset(&d, 0, sizeof d);
	d.applied = 1;
	snprintf(d.last_log_id, sizeof d.last_log_id, "999");
	d.last_date_ms = 1600000000000LL;
	d.last_received = 1700000200;
	metrics_log_stream(&d);
	/* A higher log id with an older date, or no date, changes nothing. */
	d.applied = 0;
	snprintf(d.last_log_id, sizeof d.last_log_id, "90021");
	metrics_log_stream(&d);
	d.last_date_ms = 0;
	metrics_log_stream(&d);
	e = metrics_events_totals();
	assert_string_equal(e->last_log_id, "9002");
	/* At the same date a lower id does not win, a higher one does. */
	snprintf(d.last_log_id, sizeof d.last_log_id, "9001");
	d.last_date_ms = 1700000000123LL;
	metrics_log_stream(&d);
	assert_string_equal(e->last_log_id, "9002");
	snprintf(d.last_log_id, sizeof d.last_log_id, "9003");
	metrics_log_stream(&d);
	assert_string_equal(e->last_log_id, "9003");
	/* A later date wins with its own id, even a lower one. */
	snprintf(d.last_log_id, sizeof d.last_log_id, "9000");
	d.last_date_ms = 1700000000124LL;
	metrics_log_stream(&d);
	assert_string_equal(e->last_log_id, "9000");
	assert_int_equal(e->last_date_ms, 1700000000124LL);
	assert_int_equal(e->applied, 3);
	assert_int_equal(e->duplicates, 1);
	assert_int_equal(e->ignored, 5);
	assert_int_equal(e->rejected, 3);
	assert_int_equal(e->last_received, 1700000200);
	t = metrics_text();
	has_line(t, "phoneclaimd_events_total{outcome=\"applied\"} 3");
	has_line(t, "phoneclaimd_events_total{outcome=\"duplicate\"} 1");
	has_line(t, "phoneclaimd_events_total{outcome=\"ignored\"} 2");
	has_line(t, "phoneclaimd_events_total{outcome=\"unmatched\"} 1");
	has_line(t, "phoneclaimd_events_total{outcome=\"rejected\"} 3");
	has_line(t, "phoneclaimd_last_event_timestamp_seconds "
	    "1700000000.124");
	assert_non_null(strstr(t, "\nphoneclaimd_last_event_age_seconds "));
	free(t);
}

/* Types are escaped; odd ones are counted together as "(other)". */
static void
test_ignored_types(void **state)
{
	char	*t;

	(void)state;
	events_count_ignored("s");
	events_count_ignored("s");
	events_count_ignored("a\"b\\c");
	events_count_ignored("line\nbreak");
	events_count_ignored("f+12015550123");
	events_count_ignored("caf\xc3\xa9");
	t = metrics_text();
	has_line(t, "phoneclaimd_ignored_events_total{type=\"s\"} 2");
	has_line(t, "phoneclaimd_ignored_events_total{type=\"a\\\"b\\\\c\"} 1");
	has_line(t, "phoneclaimd_ignored_events_total{type=\"(other)\"} 3");
	assert_null(strstr(t, "5550123"));
	assert_null(strstr(t, "break"));
	free(t);
}

/* Claims and conflicts come from the store; store_ok follows it. */
static void
test_store_gauges(void **state)
{
	struct store_txn	*txn;
	struct claim		 c;
	char			*t;

	(void)state;
	memset(&c, 0, sizeof c);
	memset(c.numkey, 7, sizeof c.numkey);
	snprintf(c.user_id, sizeof c.user_id, "auth0|metrics");
	snprintf(c.last4, sizeof c.last4, "0123");
	c.state = CLAIM_ACTIVE;
	c.source = CLAIM_SRC_ADMIN;
	assert_int_equal(store_txn_begin(fx->store, &txn), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	t = metrics_text();
	has_line(t, "phoneclaimd_claims{state=\"active\"} 1");
	has_line(t, "phoneclaimd_claims{state=\"pending\"} 0");
	has_line(t, "phoneclaimd_conflicts 0");
	has_line(t, "phoneclaimd_store_ok 1");
	has_line(t, "phoneclaimd_backfill_state 0");
	has_line(t, "phoneclaimd_build_info{version=\"" PACKAGE_VERSION
	    "\"} 1");
	assert_null(strstr(t, "auth0|metrics"));
	free(t);
}

/* Every family has HELP and TYPE lines, once, before its samples. */
static void
test_help_and_type(void **state)
{
	static const char	*names[] = { "build_info",
	    "start_time_seconds", "store_ok", "backfill_state", "claims",
	    "conflicts", "events_total", "ignored_events_total",
	    "last_event_timestamp_seconds", "last_event_age_seconds",
	    "requests_total", "request_duration_seconds" };
	char			 help[128], type[128], sample[128];
	const char		*h, *ty, *s;
	char			*t;
	size_t			 i;

	(void)state;
	metrics_request(METRICS_EP_METRICS, 200, 1);
	t = metrics_text();
	for (i = 0; i < sizeof names / sizeof names[0]; i++) {
		snprintf(help, sizeof help, "# HELP phoneclaimd_%s ", names[i]);
		snprintf(type, sizeof type, "\n# TYPE phoneclaimd_%s ",
		    names[i]);
		snprintf(sample, sizeof sample, "\nphoneclaimd_%s", names[i]);
		h = strstr(t, help);
		ty = strstr(t, type);
		s = strstr(t, sample);
		assert_non_null(h);
		assert_non_null(ty);
		assert_null(strstr(h + 1, help));
		assert_true(h < ty);
		if (s != NULL)
			assert_true(ty < s);
	}
	assert_int_equal(t[strlen(t) - 1], '\n');
	free(t);
}

int
main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest	tests[] = {
		T(test_buckets_include_their_bound),
		T(test_requests_by_endpoint_and_code),
		T(test_log_stream_totals),
		T(test_ignored_types),
		T(test_store_gauges),
		T(test_help_and_type),
	};
#undef T

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
