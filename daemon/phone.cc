/*
 * Phone-number normalisation: a C interface over libphonenumber.
 *
 * The input is untrusted text.  A strict character filter runs first so
 * that libphonenumber never sees letters (vanity numbers, "ext", RFC 3966
 * parameters) or anything outside printable ASCII.  The library then parses
 * the number, strips a trunk prefix written after the country code where the
 * country has one, and formats it as E.164.  Numbers only need to be
 * possible, not valid, because the packaged metadata is old.
 *
 * No function here logs: the text is a phone number.
 */

#include <cstring>
#include <string>

#include <phonenumbers/phonenumber.pb.h>
#include <phonenumbers/phonenumberutil.h>

#include "phone.h"

using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

/* Most digits an E.164 number may have, country code included. */
#define PHONE_E164_DIGITS	15

static int	phone_allowed(unsigned char);
static int	phone_filter(const char *, size_t, std::string &);
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

/* Parse text with libphonenumber and format it as E.164 in e164. */
static int
phone_parse(const std::string &text, const char *region, std::string &e164)
{
	const PhoneNumberUtil	*util = PhoneNumberUtil::GetInstance();
	PhoneNumber		 number;
	std::string		 default_region;

	/* "ZZ" is the unknown region: only numbers with '+' then parse. */
	if (region == NULL || *region == '\0')
		default_region.assign("ZZ");
	else
		default_region.assign(region);

	if (util->Parse(text, default_region, &number) !=
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

/* Normalise the len bytes at in to E.164 in out. */
int
phone_normalise(const char *in, size_t len, const char *region, char *out)
{
	std::string	text, e164;

	if (out == NULL)
		return (-1);
	out[0] = '\0';
	if (in == NULL)
		return (-1);
	try {
		if (phone_filter(in, len, text) != 0)
			return (-1);
		if (phone_parse(text, region, e164) != 0)
			return (-1);
	} catch (...) {
		return (-1);
	}
	if (e164.size() >= PHONE_E164_SIZE)
		return (-1);
	memcpy(out, e164.c_str(), e164.size() + 1);
	return (0);
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
