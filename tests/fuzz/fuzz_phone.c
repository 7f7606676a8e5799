/*
 * Fuzz target: the number normaliser (daemon/phone.cc over
 * libphonenumber).  The first byte chooses the default region, the rest
 * is the number as a client would send it.  Besides not crashing, the
 * answers must agree: through the cache or not, asked twice, and for the
 * E.164 result itself, which must normalise to itself (a claim made with
 * "+44 07700 900123" and a log event carrying the E.164 form have to
 * reach the same key).
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "phone.h"

#include "fuzz.h"

static void	fuzz_phone_check_e164(const char *);

/* Regions to try, NULL (no default_region) first. */
static const char	*fuzz_phone_regions[] = { NULL, "US", "GB", "DE",
			    "FR", "IT", "IN", "BR", "RU", "AU", "JP", "CN",
			    "MX", "AR", "NL", "ZZ", "" };
#define FUZZ_PHONE_NREGIONS \
	(sizeof fuzz_phone_regions / sizeof *fuzz_phone_regions)

/* '+', a first digit that is no 0, and 15 digits at most in all. */
static void
fuzz_phone_check_e164(const char *s)
{
	size_t	i, len = strlen(s);

	FUZZ_CHECK(len >= 2 && len < PHONE_E164_SIZE);
	FUZZ_CHECK(s[0] == '+' && s[1] != '0');
	for (i = 1; i < len; i++)
		FUZZ_CHECK(isdigit((unsigned char)s[i]));
}

/* Normalise the input every way the daemon does. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char	*region, *in = (const char *)data + 1;
	char		 out[PHONE_E164_SIZE], again[PHONE_E164_SIZE];
	char		 raw[PHONE_E164_SIZE];
	size_t		 len;
	int		 rv, rv2, cached;

	if (size == 0)
		return (0);
	region = fuzz_phone_regions[data[0] % FUZZ_PHONE_NREGIONS];
	len = size - 1;

	rv = phone_normalise(in, len, region, out);
	/* libphonenumber alone agrees with the cached path. */
	rv2 = phone_parse_uncached(in, len, region, raw);
	FUZZ_CHECK(rv == rv2);
	/* Now the cache knows the answer, and gives the same one. */
	FUZZ_CHECK(phone_lookup(in, len, region, again, &cached) == 1);
	FUZZ_CHECK(cached == rv);
	if (rv != 0) {
		FUZZ_CHECK(out[0] == '\0' && raw[0] == '\0');
		return (0);
	}
	FUZZ_CHECK(strcmp(out, raw) == 0 && strcmp(out, again) == 0);
	fuzz_phone_check_e164(out);
	/* E.164 in, the same E.164 out, whatever the region. */
	FUZZ_CHECK(phone_normalise(out, strlen(out), NULL, again) == 0);
	FUZZ_CHECK(strcmp(out, again) == 0);
	FUZZ_CHECK(phone_normalise(out, strlen(out), region, again) == 0);
	FUZZ_CHECK(strcmp(out, again) == 0);
	return (0);
}
