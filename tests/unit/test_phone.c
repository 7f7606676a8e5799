/*
 * Unit tests for the libphonenumber shim (daemon/phone.cc).
 *
 * Expected results were checked against libphonenumber 8.12.57 and
 * python3-phonenumbers 8.12.57, the versions Debian 12 ships.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "phone.h"

static void	escape(const char *, size_t, char *, size_t);
static void	check_len(const char *, size_t, const char *, const char *);
static void	check(const char *, const char *, const char *);

/* Write a printable copy of the len bytes at in to buf. */
static void
escape(const char *in, size_t len, char *buf, size_t size)
{
	size_t		i, used = 0;
	unsigned char	c;
	int		n;

	buf[0] = '\0';
	for (i = 0; i < len && used + 5 < size; i++) {
		c = (unsigned char)in[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			n = snprintf(buf + used, size - used, "%c", c);
		else
			n = snprintf(buf + used, size - used, "\\x%02x", c);
		if (n < 0)
			break;
		used += (size_t)n;
	}
}

/* Normalise len bytes of in; want is the E.164 result, or NULL for -1. */
static void
check_len(const char *in, size_t len, const char *region, const char *want)
{
	char	out[PHONE_E164_SIZE], shown[256];
	int	rc;

	memset(out, 'x', sizeof out);
	rc = phone_normalise(in, len, region, out);
	escape(in, len > 40 ? 40 : len, shown, sizeof shown);
	if (want == NULL) {
		if (rc != -1)
			fail_msg("\"%s\" (%zu bytes, region %s): want -1, "
			    "got %d \"%.*s\"", shown, len,
			    region == NULL ? "NULL" : region, rc,
			    (int)sizeof out, out);
		/* A failed call leaves an empty string in out. */
		assert_int_equal(out[0], '\0');
		return;
	}
	if (rc != 0)
		fail_msg("\"%s\" (region %s): want %s, got %d", shown,
		    region == NULL ? "NULL" : region, want, rc);
	assert_string_equal(out, want);
}

/* Normalise the string in; want is the E.164 result, or NULL for -1. */
static void
check(const char *in, const char *region, const char *want)
{
	check_len(in, strlen(in), region, want);
}

/* A trunk 0 written after the country code is dropped where it is one. */
static void
test_trunk_zero(void **state)
{
	(void)state;

	check("+44 07700 900123", NULL, "+447700900123");
	check("+447700900123", NULL, "+447700900123");
	check("+44 7700 900123", NULL, "+447700900123");
	check("+4407700900123", NULL, "+447700900123");
	check("+33 06 12 34 56 78", NULL, "+33612345678");
	check("+33 6 12 34 56 78", NULL, "+33612345678");
	check("+330631966543", NULL, "+33631966543");
	check("+49016000000001", NULL, "+4916000000001");
	check("+49 0151 23456789", NULL, "+4915123456789");
	check("+49 151 23456789", NULL, "+4915123456789");
	/* Other trunk prefixes: Hungary 06, Russia 8, Brazil 0. */
	check("+36 06 1 234 5678", NULL, "+3612345678");
	check("+7 8 495 123 45 67", NULL, "+74951234567");
	check("+55 0 11 91234 5678", NULL, "+5511912345678");
	/*
	 * One prefix too many (found by tests/fuzz): one parse strips one,
	 * so the E.164 form is parsed again until it stays the same.
	 */
	check("+91 00 1334 5678", NULL, "+9113345678");
	check("+91013345678", NULL, "+9113345678");
	check("009-1001334-5678", "JP", "+9113345678");
}

/* Italy has no trunk prefix: its leading 0 is part of the number. */
static void
test_italian_zero(void **state)
{
	(void)state;

	check("+39 06 12345678", NULL, "+390612345678");
	check("+390612345678", NULL, "+390612345678");
	check("0039 06 1234 5678", NULL, "+390612345678");
	check("06 12345678", "IT", "+390612345678");
	check("+39 312 345 6789", NULL, "+393123456789");
	/* So a 0 before an Italian mobile number makes another number. */
	check("+39 0312 345 6789", NULL, "+3903123456789");
}

/* A "(0)" after the country code is a trunk prefix in brackets. */
static void
test_bracketed_zero(void **state)
{
	(void)state;

	check("+49 (0)30 1234567", NULL, "+49301234567");
	check("+49 30 1234567", NULL, "+49301234567");
	check("+44 (0)7700 900123", NULL, "+447700900123");
	check("+33 (0)6 12 34 56 78", NULL, "+33612345678");
	check("+39 (0)6 12345678", NULL, "+390612345678");
}

/* A leading 00 is an international prefix, whatever the region. */
static void
test_double_zero(void **state)
{
	(void)state;

	check("0049 30 1234567", NULL, "+49301234567");
	check("004930 1234567", NULL, "+49301234567");
	check("  0044 7700 900123  ", NULL, "+447700900123");
	check("00 44 7700 900123", NULL, "+447700900123");
	check("0044 7700 900123", "US", "+447700900123");
	check("0044 7700 900123", "GB", "+447700900123");
	check("0044 07700 900123", NULL, "+447700900123");
	check("00", NULL, NULL);
	check("00", "GB", NULL);
	check("0", "GB", NULL);
	check("000 44 7700 900123", NULL, NULL);
	/* Only a 00 at the start counts. */
	check("(0044) 7700 900123", NULL, NULL);
	check("-0044 7700 900123", NULL, NULL);
}

/* Formatting characters are allowed and dropped. */
static void
test_formatting(void **state)
{
	(void)state;

	check("+1 (555) 123-4567", NULL, "+15551234567");
	check("+1-555-123-4567", NULL, "+15551234567");
	check("+44.7700.900123", NULL, "+447700900123");
	check("+44/7700/900123", NULL, "+447700900123");
	check("+ 44 7700 900123", NULL, "+447700900123");
	check("   +447700900123", NULL, "+447700900123");
	check("+447700900123   ", NULL, "+447700900123");
	check("+800 1234 5678", NULL, "+80012345678");
}

/* Letters are rejected: no vanity numbers, extensions or URIs. */
static void
test_letters(void **state)
{
	(void)state;

	check("+1 800 FLOWERS", NULL, NULL);
	check("+1 800 flowers", NULL, NULL);
	check("1-800-FLOWERS", "US", NULL);
	check("+44 7700 900123 ext 5", NULL, NULL);
	check("+44 7700 900123 x5", NULL, NULL);
	check("+44 7700 900123x", NULL, NULL);
	check("tel:+447700900123", NULL, NULL);
	check("+447700900123;ext=5", NULL, NULL);
	check("+44 7700 900123#", NULL, NULL);
	check("+44 7700 900123,5", NULL, NULL);
	check("+44 7700 900123*", NULL, NULL);
	check("+44_7700_900123", NULL, NULL);
	check("[+44] 7700 900123", NULL, NULL);
}

/* Numbers too short or longer than 15 digits are rejected. */
static void
test_length(void **state)
{
	(void)state;

	check("+44 12", NULL, NULL);
	check("+1 555", NULL, NULL);
	check("+4", NULL, NULL);
	check("123", "US", NULL);
	check("+1234567890123456", NULL, NULL);
	check("+44 7700 900123 900123", NULL, NULL);
	/*
	 * Germany allows national numbers of up to 15 digits, so these are
	 * possible numbers; 15 digits with the country code is the limit.
	 */
	check("+49 1512 3456 78901", NULL, "+491512345678901");
	check("+49 1512 3456 789012", NULL, NULL);
	check("+49 123456789012345", NULL, NULL);
	check("+81 12345678901234", NULL, NULL);
	check("+82 12345678901234", NULL, NULL);
	check("+234 12345678901234", NULL, NULL);
}

/* Empty and blank input is rejected. */
static void
test_empty(void **state)
{
	char	out[PHONE_E164_SIZE];

	(void)state;

	check("", NULL, NULL);
	check("", "GB", NULL);
	check_len("+447700900123", 0, NULL, NULL);
	check(" ", NULL, NULL);
	check("      ", "GB", NULL);
	check("+", NULL, NULL);
	check(" + ", NULL, NULL);
	check("()", NULL, NULL);
	check("- . /", "US", NULL);
	assert_int_equal(phone_normalise(NULL, 5, NULL, out), -1);
	assert_int_equal(out[0], '\0');
	assert_int_equal(phone_normalise("+447700900123", 13, NULL, NULL),
	    -1);
}

/* Control characters anywhere are rejected. */
static void
test_control(void **state)
{
	static const char	nul[] = "+44 7700\0 900123";

	(void)state;

	check("\t+447700900123", NULL, NULL);
	check("+447700900123\t", NULL, NULL);
	check("+44 7700\n900123", NULL, NULL);
	check("+447700900123\n", NULL, NULL);
	check("+447700900123\r", NULL, NULL);
	check("+44\x7f" "7700900123", NULL, NULL);
	check("+44\x1b[0m7700900123", NULL, NULL);
	check_len(nul, sizeof nul - 1, NULL, NULL);
	check_len("+447700900123", 14, NULL, NULL);
	check_len("\0+447700900123", 14, NULL, NULL);
}

/* Bytes outside ASCII are rejected, even digits in other scripts. */
static void
test_non_ascii(void **state)
{
	(void)state;

	/* Full-width plus sign and digits. */
	check("\xef\xbc\x8b\xef\xbc\x94\xef\xbc\x94\xef\xbc\x97\xef\xbc\x97"
	    "\xef\xbc\x90\xef\xbc\x90\xef\xbc\x99\xef\xbc\x90\xef\xbc\x90"
	    "\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93", NULL, NULL);
	check("+44 \xef\xbc\x97\xef\xbc\x97\xef\xbc\x90\xef\xbc\x90 900123",
	    NULL, NULL);
	/* Arabic-Indic digits. */
	check("+\xd9\xa4\xd9\xa4\xd9\xa7\xd9\xa7\xd9\xa0\xd9\xa0\xd9\xa9"
	    "\xd9\xa0\xd9\xa0\xd9\xa1\xd9\xa2\xd9\xa3", NULL, NULL);
	/* No-break space, and a lone Latin-1 no-break space. */
	check("+44\xc2\xa0" "7700 900123", NULL, NULL);
	check("+44\xa0" "7700 900123", NULL, NULL);
	/* Hyphen-like U+2010 and a byte-order mark. */
	check("+44\xe2\x80\x90" "7700900123", NULL, NULL);
	check("\xef\xbb\xbf+447700900123", NULL, NULL);
	check("+447700900123\xff", NULL, NULL);
}

/* Numbers without '+' need a region. */
static void
test_region(void **state)
{
	(void)state;

	check("(555) 123-4567", "US", "+15551234567");
	check("555-123-4567", "US", "+15551234567");
	check("1-808-555-1234", "US", "+18085551234");
	check("1 (555) 123-4567", "US", "+15551234567");
	check("011 44 7700 900123", "US", "+447700900123");
	check("07700 900123", "GB", "+447700900123");
	check("7700 900123", "GB", "+447700900123");
	check("+1 (555) 123-4567", "GB", "+15551234567");
	check("06 12 34 56 78", "FR", "+33612345678");
	check("030 1234567", "DE", "+49301234567");

	/* libphonenumber's guesses: a leading country code, a GB number. */
	check("44 7700 900123", "GB", "+447700900123");
	check("(555) 123-4567", "GB", "+445551234567");

	check("07700 900123", NULL, NULL);
	check("07700 900123", "", NULL);
	check("07700 900123", "ZZ", NULL);
	check("07700 900123", "US", NULL);
	check("(555) 123-4567", NULL, NULL);
	check("447700900123", NULL, NULL);
	check("1-808-555-1234", "GB", NULL);

	/* Region codes are matched exactly, as libphonenumber does. */
	check("07700 900123", "gb", NULL);
	check("07700 900123", "XX", NULL);
	check("07700 900123", "001", NULL);
	check("+447700900123", "XX", "+447700900123");
	check("+447700900123", "gb", "+447700900123");
}

/* Input longer than PHONE_INPUT_MAX bytes is rejected unparsed. */
static void
test_input_max(void **state)
{
	char	buf[PHONE_INPUT_MAX + 2];
	char	big[1000];

	(void)state;

	memset(buf, ' ', sizeof buf);
	memcpy(buf, "+447700900123", 13);
	check_len(buf, PHONE_INPUT_MAX, NULL, "+447700900123");
	check_len(buf, PHONE_INPUT_MAX + 1, NULL, NULL);
	check_len(buf + 1, PHONE_INPUT_MAX, NULL, NULL);

	memset(buf, ' ', sizeof buf);
	memcpy(buf + PHONE_INPUT_MAX - 13, "+447700900123", 13);
	check_len(buf, PHONE_INPUT_MAX, NULL, "+447700900123");
	memset(buf, ' ', sizeof buf);
	memcpy(buf + PHONE_INPUT_MAX + 1 - 13, "+447700900123", 13);
	check_len(buf, PHONE_INPUT_MAX + 1, NULL, NULL);

	memset(big, '1', sizeof big);
	big[0] = '+';
	check_len(big, sizeof big, NULL, NULL);
	check_len(big, 12, NULL, "+11111111111");
}

/* Only len bytes are read; the input need not end in a NUL. */
static void
test_not_terminated(void **state)
{
	static const char	 tail[] = "+447700900123999";
	char			*copy;

	(void)state;

	check_len(tail, 13, NULL, "+447700900123");
	check_len(tail, 16, NULL, NULL);
	check_len("+49 30 1234567 / 89", 14, NULL, "+49301234567");
	check_len("07700 900123 FLOWERS", 12, "GB", "+447700900123");

	/* Exactly len bytes, so valgrind sees any read past the end. */
	copy = malloc(13);
	assert_non_null(copy);
	memcpy(copy, "+447700900123", 13);
	check_len(copy, 13, NULL, "+447700900123");
	check_len(copy, 12, NULL, "+44770090012");
	free(copy);

	copy = malloc(2);
	assert_non_null(copy);
	memcpy(copy, "00", 2);
	check_len(copy, 2, NULL, NULL);
	free(copy);
}

/*
 * The cache answers a key it saw, exactly as libphonenumber did (refusals
 * too); the region is part of the key; a key that replaces another in its
 * slot does not take its answer.
 */
static void
test_cache(void **state)
{
	uint64_t	hits, misses, h0, m0;
	char		out[PHONE_E164_SIZE];
	char		num[32];
	int		i;

	(void)state;
	phone_cache_free();
	phone_cache_stats(&hits, &misses);
	assert_true(hits == 0 && misses == 0);
	check("07700 900123", "GB", "+447700900123");
	check("07700 900123", "GB", "+447700900123");
	check("07700 900123", "US", NULL);
	check("07700 900123", "US", NULL);
	check("07700 900123", NULL, NULL);
	phone_cache_stats(&hits, &misses);
	assert_true(hits == 2 && misses == 3);
	/* "00" is turned into '+' before the key is made: one key. */
	check("0044 7700 900123", NULL, "+447700900123");
	check("+44 7700 900123", NULL, "+447700900123");
	phone_cache_stats(&hits, &misses);
	assert_true(hits == 3 && misses == 4);
	/* Many keys: each answer is still its own. */
	for (i = 0; i < 40000; i++) {
		snprintf(num, sizeof num, "+1415%07d", 2000000 + i);
		assert_int_equal(phone_normalise(num, strlen(num), NULL, out),
		    0);
		assert_string_equal(out, num);
	}
	phone_cache_stats(&h0, &m0);
	for (i = 39999; i >= 0; i--) {
		snprintf(num, sizeof num, "+1415%07d", 2000000 + i);
		assert_int_equal(phone_normalise(num, strlen(num), NULL, out),
		    0);
		assert_string_equal(out, num);
	}
	phone_cache_stats(&hits, &misses);
	assert_true(hits > h0 && misses > m0);
	assert_true(hits - h0 + misses - m0 == 40000);
	phone_cache_free();
}

/*
 * phone_learn: an answer parsed on another thread fills the cache and
 * counts as libphonenumber's once; one the cache has is left alone.
 */
static void
test_learn(void **state)
{
	uint64_t	hits, misses;
	char		out[PHONE_E164_SIZE], e164[PHONE_E164_SIZE];
	const char	*text = "+1 415 555 2671", *bad = "+999 1";
	int		rv;

	(void)state;
	phone_cache_free();
	assert_int_equal(phone_parse_uncached(text, strlen(text), NULL, e164),
	    0);
	phone_learn(text, strlen(text), NULL, 0, e164);
	phone_cache_stats(&hits, &misses);
	assert_true(hits == 0 && misses == 1);
	assert_int_equal(phone_lookup(text, strlen(text), NULL, out, &rv), 1);
	assert_int_equal(rv, 0);
	assert_string_equal(out, "+14155552671");
	/* Known: nothing changes, not even with another answer. */
	phone_learn(text, strlen(text), NULL, -1, NULL);
	phone_cache_stats(&hits, &misses);
	assert_true(hits == 1 && misses == 1);
	assert_int_equal(phone_normalise(text, strlen(text), NULL, out), 0);
	assert_string_equal(out, "+14155552671");
	/* "Not a number" is an answer the cache keeps as well. */
	assert_int_equal(phone_parse_uncached(bad, strlen(bad), NULL, e164),
	    -1);
	phone_learn(bad, strlen(bad), NULL, -1, e164);
	assert_int_equal(phone_lookup(bad, strlen(bad), NULL, out, &rv), 1);
	assert_int_equal(rv, -1);
	phone_cache_stats(&hits, &misses);
	assert_true(hits == 3 && misses == 2);
	phone_cache_free();
}

/* '+' may only be the first character after leading spaces. */
static void
test_plus(void **state)
{
	(void)state;

	check("+", NULL, NULL);
	check("++447700900123", NULL, NULL);
	check("+ +447700900123", NULL, NULL);
	check("44+7700900123", "GB", NULL);
	check("+44 7700 +900123", NULL, NULL);
	check("+447700900123+", NULL, NULL);
	check("00+447700900123", NULL, NULL);
	check("+0044 7700 900123", NULL, NULL);
	check("(+44) 7700 900123", NULL, NULL);
	check("-+447700900123", NULL, NULL);
	check("+0 7700 900123", NULL, NULL);
}

/* phone_region_known accepts the region codes libphonenumber has. */
static void
test_region_known(void **state)
{
	(void)state;

	assert_int_equal(phone_region_known("US"), 1);
	assert_int_equal(phone_region_known("GB"), 1);
	assert_int_equal(phone_region_known("IT"), 1);
	assert_int_equal(phone_region_known("DE"), 1);
	assert_int_equal(phone_region_known("FR"), 1);
	assert_int_equal(phone_region_known("VA"), 1);

	assert_int_equal(phone_region_known(NULL), 0);
	assert_int_equal(phone_region_known(""), 0);
	assert_int_equal(phone_region_known("ZZ"), 0);
	assert_int_equal(phone_region_known("XX"), 0);
	assert_int_equal(phone_region_known("001"), 0);
	assert_int_equal(phone_region_known("UK"), 0);
	assert_int_equal(phone_region_known("USA"), 0);
	assert_int_equal(phone_region_known("us"), 0);
	assert_int_equal(phone_region_known("U"), 0);
	assert_int_equal(phone_region_known("+1"), 0);
}

/* Run the phone tests. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_trunk_zero),
		cmocka_unit_test(test_italian_zero),
		cmocka_unit_test(test_bracketed_zero),
		cmocka_unit_test(test_double_zero),
		cmocka_unit_test(test_formatting),
		cmocka_unit_test(test_letters),
		cmocka_unit_test(test_length),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_control),
		cmocka_unit_test(test_non_ascii),
		cmocka_unit_test(test_region),
		cmocka_unit_test(test_input_max),
		cmocka_unit_test(test_not_terminated),
		cmocka_unit_test(test_plus),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_learn),
		cmocka_unit_test(test_region_known),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
