/*
 * Phone-number normalisation: a C interface over libphonenumber.
 *
 * The input is untrusted text.  A strict character filter runs first so
 * that libphonenumber never sees letters (vanity numbers, "ext", RFC 3966
 * parameters) or anything outside printable ASCII.  The library then parses
 * the number, strips a trunk prefix written after the country code where the
 * country has one, and formats it as E.164, then parses that again until it
 * no longer changes, so that every answer normalises to itself.  Numbers
 * only need to be possible, not valid, because the packaged metadata is old.
 *
 * libphonenumber's parse costs ~20 microseconds (ICU regular expressions),
 * as much as the whole claim transaction, and the same numbers come back
 * all the time: the enrolment, then every login challenge, then the log
 * events.  So answers are remembered in a direct-mapped cache keyed by the
 * filtered text and the region (a slot holds one key; a new key replaces
 * it).  The answer depends on nothing else, so nothing ever invalidates
 * it.  The cache lives in memory only, like the request that brought the
 * number, and is never written anywhere.
 *
 * No function here logs: the text is a phone number.
 */

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <phonenumbers/phonenumber.pb.h>
#include <phonenumbers/phonenumberutil.h>

#include "phone.h"

using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

/* Most digits an E.164 number may have, country code included. */
#define PHONE_E164_DIGITS	15

#define PHONE_CACHE_BITS	16
#define PHONE_CACHE_SLOTS	(1 << PHONE_CACHE_BITS)	/* ~6 MiB */
/* Parses of one number at most, each stripping a trunk prefix. */
#define PHONE_PARSE_ROUNDS	PHONE_E164_DIGITS
#define PHONE_REGION_MAX	8

/* One remembered answer. */
struct phone_slot {
	uint64_t	hash;		/* 0: empty */
	char		region[PHONE_REGION_MAX];
	char		text[PHONE_INPUT_MAX + 1];
	char		e164[PHONE_E164_SIZE];	/* "" for "not a number" */
};

static struct phone_slot	*phone_cache;
static uint64_t			 phone_hits, phone_misses;

static int	phone_allowed(unsigned char);
static uint64_t	phone_hash(const std::string &, const char *);
static struct phone_slot *phone_cached(const std::string &, const char *,
		    uint64_t);
static int	phone_filter(const char *, size_t, std::string &);
static int	phone_parse_once(const std::string &, const std::string &,
		    std::string &);
static int	phone_parse(const std::string &, const char *, std::string &);

/* Return 1 if c may appear in a phone number we accept, else 0. */
static int
phone_allowed(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return (1);
	switch (c) {
	case ' ':
	case '+':
	case '-':
	case '.':
	case '(':
	case ')':
	case '/':
		return (1);
	}
	return (0);
}

/* Check the raw bytes and copy them to text, with a leading 00 as '+'. */
static int
phone_filter(const char *in, size_t len, std::string &text)
{
	size_t	i, start;

	if (len == 0 || len > PHONE_INPUT_MAX)
		return (-1);
	for (i = 0; i < len; i++) {
		if (!phone_allowed((unsigned char)in[i]))
			return (-1);
	}

	for (start = 0; start < len && in[start] == ' '; start++)
		/* nothing */;
	if (start == len)
		return (-1);

	/* '+' is allowed only as the first character after the spaces. */
	for (i = start + 1; i < len; i++) {
		if (in[i] == '+')
			return (-1);
	}

	if (len - start >= 2 && in[start] == '0' && in[start + 1] == '0') {
		text.assign("+");
		text.append(in + start + 2, len - start - 2);
	} else
		text.assign(in + start, len - start);
	return (0);
}

/* Parse text with libphonenumber once and format it as E.164 in e164. */
static int
phone_parse_once(const std::string &text, const std::string &region,
    std::string &e164)
{
	const PhoneNumberUtil	*util = PhoneNumberUtil::GetInstance();
	PhoneNumber		 number;

	if (util->Parse(text, region, &number) !=
	    PhoneNumberUtil::NO_PARSING_ERROR)
		return (-1);
	if (number.has_extension())
		return (-1);
	if (!util->IsPossibleNumber(number))
		return (-1);

	util->Format(number, PhoneNumberUtil::E164, &e164);
	if (e164.size() < 2 || e164[0] != '+' ||
	    e164.size() - 1 > PHONE_E164_DIGITS)
		return (-1);
	return (0);
}

/*
 * Parse text and format it as E.164 in e164, then parse that again until
 * it stays the same.  libphonenumber strips one trunk prefix after the
 * country code per parse, so "+91 00 1334 5678" gives +91013345678, which
 * gives +9113345678: without the second round two spellings of one number
 * would have two keys, and the E.164 form of a claim (as a log event
 * carries it) would not find the claim.  The answer normalises to itself.
 */
static int
phone_parse(const std::string &text, const char *region, std::string &e164)
{
	std::string	default_region, next;
	int		i;

	/* "ZZ" is the unknown region: only numbers with '+' then parse. */
	if (region == NULL || *region == '\0')
		default_region.assign("ZZ");
	else
		default_region.assign(region);

	if (phone_parse_once(text, default_region, e164) != 0)
		return (-1);
	/*
	 * Text read without a region that is its own E.164 form (as log
	 * events carry numbers) needs no second round: it would parse the
	 * same text the same way.  Half the cost of a number not cached.
	 */
	if (default_region == "ZZ" && e164 == text)
		return (0);
	for (i = 0; i < PHONE_PARSE_ROUNDS; i++) {
		if (phone_parse_once(e164, "ZZ", next) != 0)
			return (-1);
		if (next == e164)
			return (0);
		e164.swap(next);
	}
	return (-1);
}

/* FNV-1a over the region, a separator and the text; never 0. */
static uint64_t
phone_hash(const std::string &text, const char *region)
{
	uint64_t	h = 14695981039346656037ULL;
	const char	*p;
	size_t		 i;

	for (p = region; p != NULL && *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	h = (h ^ '|') * 1099511628211ULL;
	for (i = 0; i < text.size(); i++)
		h = (h ^ (unsigned char)text[i]) * 1099511628211ULL;
	return (h == 0 ? 1 : h);
}

/* The slot of a key; it holds the key's answer if slot->hash == hash. */
static struct phone_slot *
phone_cached(const std::string &text, const char *region, uint64_t hash)
{
	struct phone_slot	*slot;

	if (phone_cache == NULL &&
	    (phone_cache = static_cast<struct phone_slot *>(calloc(
	    PHONE_CACHE_SLOTS, sizeof *phone_cache))) == NULL)
		return (NULL);
	/*
	 * The slot from the hash's high bits, mixed: FNV-1a's low bits
	 * spread numbers that differ in their last digits (a block of new
	 * numbers) over fewer slots, which evicted more of them.
	 */
	slot = &phone_cache[(hash * 0x9e3779b97f4a7c15ULL) >> (64 -
	    PHONE_CACHE_BITS)];
	if (slot->hash == hash && text.compare(slot->text) == 0 &&
	    strcmp(slot->region, region != NULL ? region : "") == 0)
		return (slot);
	if (slot->hash == hash)
		slot->hash = hash ^ 1;	/* same hash, other key: a miss */
	return (slot);
}

/*
 * The cache's slot for the len bytes at in, as *slot (NULL without a
 * cache), with their key in text and its hash: 0, or -1 for text that the
 * filter refuses (or a region too long, or a failure).
 */
static int
phone_slot_for(const char *in, size_t len, const char *region,
    std::string &text, uint64_t *hash, struct phone_slot **slot)
{
	if (in == NULL ||
	    (region != NULL && strlen(region) >= PHONE_REGION_MAX))
		return (-1);
	try {
		if (phone_filter(in, len, text) != 0)
			return (-1);
		*hash = phone_hash(text, region);
		*slot = phone_cached(text, region, *hash);
	} catch (...) {
		return (-1);
	}
	return (0);
}

/*
 * Make slot the answer for the key text (of hash) and region: e164, or
 * NULL for "not a number".  An E.164 too long is not kept.
 */
static void
phone_slot_fill(struct phone_slot *slot, uint64_t hash,
    const std::string &text, const char *region, const char *e164)
{
	if (e164 != NULL && strlen(e164) >= PHONE_E164_SIZE)
		return;
	slot->hash = hash;
	snprintf(slot->region, sizeof slot->region, "%s",
	    region != NULL ? region : "");
	memcpy(slot->text, text.c_str(), text.size() + 1);
	snprintf(slot->e164, sizeof slot->e164, "%s", e164 != NULL ? e164 :
	    "");
}

/*
 * Look the len bytes at in up in the cache: 1 if it knows them (*rv is
 * what phone_normalise returns, out is filled), else 0.  Text the filter
 * refuses is known at once.  Loop thread only.
 */
int
phone_lookup(const char *in, size_t len, const char *region, char *out,
    int *rv)
{
	struct phone_slot	*slot;
	std::string		 text;
	uint64_t		 hash;

	*rv = -1;
	if (out == NULL)
		return (1);
	out[0] = '\0';
	if (phone_slot_for(in, len, region, text, &hash, &slot) != 0)
		return (1);
	if (slot == NULL || slot->hash != hash) {
		phone_misses++;
		return (0);
	}
	phone_hits++;
	if (slot->e164[0] != '\0') {
		memcpy(out, slot->e164, strlen(slot->e164) + 1);
		*rv = 0;
	}
	return (1);
}

/*
 * Normalise without the cache: libphonenumber only.  Safe on any thread
 * (libphonenumber's PhoneNumberUtil is), for the worker.
 */
int
phone_parse_uncached(const char *in, size_t len, const char *region,
    char *out)
{
	std::string	text, e164;

	if (out == NULL)
		return (-1);
	out[0] = '\0';
	if (in == NULL ||
	    (region != NULL && strlen(region) >= PHONE_REGION_MAX))
		return (-1);
	try {
		if (phone_filter(in, len, text) != 0 ||
		    phone_parse(text, region, e164) != 0)
			return (-1);
	} catch (...) {
		return (-1);
	}
	if (e164.size() >= PHONE_E164_SIZE)
		return (-1);
	memcpy(out, e164.c_str(), e164.size() + 1);
	return (0);
}

/*
 * Remember the answer for the len bytes at in: e164, or NULL for "not a
 * number".  Loop thread only.
 */
void
phone_remember(const char *in, size_t len, const char *region,
    const char *e164)
{
	struct phone_slot	*slot;
	std::string		 text;
	uint64_t		 hash;

	if (phone_slot_for(in, len, region, text, &hash, &slot) != 0 ||
	    slot == NULL)
		return;
	phone_slot_fill(slot, hash, text, region, e164);
}

/*
 * Take the answer libphonenumber gave another thread for the len bytes at
 * in (rv and e164, as phone_parse_uncached returned them): remembered,
 * and counted as one of libphonenumber's, unless the cache knows them
 * already.  Loop thread only.
 */
void
phone_learn(const char *in, size_t len, const char *region, int rv,
    const char *e164)
{
	struct phone_slot	*slot;
	std::string		 text;
	uint64_t		 hash;

	if (phone_slot_for(in, len, region, text, &hash, &slot) != 0 ||
	    slot == NULL || slot->hash == hash)
		return;
	phone_misses++;
	phone_slot_fill(slot, hash, text, region, rv == 0 ? e164 : NULL);
}

/* Normalise the len bytes at in to E.164 in out (through the cache). */
int
phone_normalise(const char *in, size_t len, const char *region, char *out)
{
	int	rv;

	if (phone_lookup(in, len, region, out, &rv))
		return (rv);
	rv = phone_parse_uncached(in, len, region, out);
	phone_remember(in, len, region, rv == 0 ? out : NULL);
	return (rv);
}

/* How often the cache answered, and how often libphonenumber did. */
void
phone_cache_stats(uint64_t *hits, uint64_t *misses)
{
	*hits = phone_hits;
	*misses = phone_misses;
}

/* Forget every remembered answer and free the cache. */
void
phone_cache_free(void)
{
	if (phone_cache != NULL)
		explicit_bzero(phone_cache, PHONE_CACHE_SLOTS *
		    sizeof *phone_cache);
	free(phone_cache);
	phone_cache = NULL;
	phone_hits = phone_misses = 0;
}

/* Return 1 if region is a region libphonenumber knows, else 0. */
int
phone_region_known(const char *region)
{
	const PhoneNumberUtil	*util;

	if (region == NULL || *region == '\0')
		return (0);
	try {
		util = PhoneNumberUtil::GetInstance();
		if (util->GetCountryCodeForRegion(region) != 0)
			return (1);
	} catch (...) {
		return (0);
	}
	return (0);
}
