/*
 * Fuzz target: the log-stream body, POST /v1/log-stream without the HTTP.
 * The input is the body, given to logstream_ingest() as the webhook and
 * the backfill give theirs: the format is recognised (array, JSON Lines,
 * one item), each item checked, bad ones kept in the dead-letter file,
 * and each event mapped to claim operations (events.c, claims.c) in one
 * transaction on a real store.
 *
 * Then the same body again, as Auth0 redelivers: it must change nothing
 * (I3), every item a duplicate.  The store is then checked for I1 and
 * emptied, seen log ids included, so the next input is new again.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "phoneclaimd.h"

#include "fuzz.h"

static void	fuzz_logstream_check(const struct logstream_result *);

/* The counts of one batch add up. */
static void
fuzz_logstream_check(const struct logstream_result *r)
{
	FUZZ_CHECK(r->rejected <= r->received);
	FUZZ_CHECK(r->applied + r->duplicates + r->ignored ==
	    r->received - r->rejected);
	FUZZ_CHECK(strlen(r->last) <= LOG_ID_MAX);
	/* The highest new log id: there is one if an item was new. */
	FUZZ_CHECK((r->last[0] != '\0') == (r->applied + r->ignored > 0));
}

/* Ingest the body twice. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct logstream_result	 r1, r2;
	const char		*body = (const char *)data;
	int			 rv;

	fuzz_store();
	rv = logstream_ingest("fuzz", body, size, 1, &r1);
	FUZZ_CHECK(rv == LOGSTREAM_OK || rv == LOGSTREAM_NOT_JSON ||
	    rv == LOGSTREAM_TOO_MANY);
	if (rv != LOGSTREAM_OK) {
		fuzz_store_reset((int64_t)time(NULL));
		return (0);
	}
	fuzz_logstream_check(&r1);
	FUZZ_CHECK(logstream_ingest("fuzz", body, size, 1, &r2) ==
	    LOGSTREAM_OK);
	fuzz_logstream_check(&r2);
	FUZZ_CHECK(r2.received == r1.received && r2.rejected == r1.rejected);
	FUZZ_CHECK(r2.applied == 0 && r2.ignored == 0);
	FUZZ_CHECK(r2.duplicates == r1.received - r1.rejected);
	FUZZ_CHECK(r2.last[0] == '\0');
	fuzz_store_reset((int64_t)time(NULL));
	return (0);
}
