/*
 * Fuzz target: the claim request, POST /v1/claims without the HTTP.  The
 * input is the request body: api_parse() reads it as api_claims_cb does,
 * then a well-formed request goes through the normaliser and the claim
 * rules on a real store, as the daemon would run it.  The caller then
 * owns the number, asking again or at a login; a second user asking for
 * it finds it taken, or is recorded as a conflict (I1).  The store is
 * then checked and emptied.  The same bytes are also read as a batch of
 * claims (batch.c), whose items must lie in order inside the input and
 * come back alike once framed again.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "phone.h"
#include "phoneclaimd.h"

#include "fuzz.h"

#define FUZZ_CLAIM_OTHER	"auth0|fuzz-other-user"
#define FUZZ_CLAIM_OTHER2	"auth0|fuzz-other-user-2"

static void	fuzz_claim_check_body(const struct api_body *);
static void	fuzz_claim_batch(const char *, size_t);

/* The input as a batch: split, framed again, split alike. */
static void
fuzz_claim_batch(const char *data, size_t size)
{
	struct batch_item	 in[BATCH_MAX], out[BATCH_MAX];
	const char		*at = data;
	char			*text;
	size_t			 len;
	int			 i, n;

	if ((n = batch_split(data, size, in, BATCH_MAX)) < 0)
		return;
	FUZZ_CHECK(n >= 1 && n <= BATCH_MAX);
	for (i = 0; i < n; i++) {
		FUZZ_CHECK(in[i].p >= at && in[i].p + in[i].len <= data + size);
		at = in[i].p + in[i].len;
	}
	FUZZ_CHECK(at == data + size);
	text = batch_encode(in, (size_t)n, 0, &len);
	FUZZ_CHECK(len <= size);
	FUZZ_CHECK(batch_split(text, len, out, BATCH_MAX) == n);
	for (i = 0; i < n; i++)
		FUZZ_CHECK(out[i].len == in[i].len &&
		    memcmp(out[i].p, in[i].p, in[i].len) == 0);
	free(text);
}

/* What api_parse promises api_claims_cb. */
static void
fuzz_claim_check_body(const struct api_body *b)
{
	if (b->phone_ok)
		FUZZ_CHECK(b->phone_len <= PHONE_INPUT_MAX &&
		    strlen(b->phone) == b->phone_len);
	if (b->error != NULL) {
		FUZZ_CHECK(strcmp(b->error, "invalid_user_id") == 0 ||
		    strcmp(b->error, "invalid_action") == 0);
		return;
	}
	FUZZ_CHECK(claims_user_id_ok(b->user_id));
	FUZZ_CHECK(b->action == CLAIMS_ENROLL ||
	    b->action == CLAIMS_CHALLENGE);
}

/* Parse the body, and claim its number when it is a good request. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct api_body		 b;
	struct claims_answer	 a;
	const char		*error, *other, *region;
	char			 e164[PHONE_E164_SIZE];
	int64_t			 now = (int64_t)time(NULL);

	fuzz_claim_batch((const char *)data, size);
	fuzz_store();
	error = api_parse((const char *)data, size, &b);
	if (error != NULL) {
		FUZZ_CHECK(strcmp(error, "invalid_json") == 0);
		return (0);
	}
	fuzz_claim_check_body(&b);
	if (!b.phone_ok || b.error != NULL)
		return (0);
	/* With and without a default_region, by the input's length. */
	region = size % 2 == 0 ? NULL : "US";
	if (phone_normalise(b.phone, b.phone_len, region, e164) != 0)
		return (0);
	FUZZ_CHECK(claims_request(e164, b.user_id, b.action, now, &a) ==
	    STORE_OK);
	/* The store is empty: the number is the caller's now. */
	FUZZ_CHECK(a.result == (b.action == CLAIMS_ENROLL ? CLAIMS_RESERVED :
	    CLAIMS_LEARNED));
	/* Asked again, and then at a login (which makes it permanent). */
	FUZZ_CHECK(claims_request(e164, b.user_id, b.action, now, &a) ==
	    STORE_OK && a.result == CLAIMS_OWNED);
	FUZZ_CHECK(claims_request(e164, b.user_id, CLAIMS_CHALLENGE, now,
	    &a) == STORE_OK && a.result == CLAIMS_OWNED);
	/* Anyone else is refused at enrolment, recorded at a login. */
	other = strcmp(b.user_id, FUZZ_CLAIM_OTHER) == 0 ? FUZZ_CLAIM_OTHER2 :
	    FUZZ_CLAIM_OTHER;
	FUZZ_CHECK(claims_request(e164, other, CLAIMS_ENROLL, now, &a) ==
	    STORE_OK);
	FUZZ_CHECK(a.result == CLAIMS_TAKEN && a.enforced);
	FUZZ_CHECK(claims_request(e164, other, CLAIMS_CHALLENGE, now, &a) ==
	    STORE_OK && a.result == CLAIMS_CONFLICT);
	fuzz_store_reset(now);
	return (0);
}
