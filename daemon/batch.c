/*
 * The framing of a batch of claims that a replica forwards to its master
 * in one request (repl.c), and of the master's answers (api.c).
 *
 * A request body (Content-Type BATCH_TYPE) is the count of claims, then
 * each claim's body as the client sent it, after its length:
 *
 *	<n> LF ( <length> LF <bytes> ) * n
 *
 * The answer, 200 with the same Content-Type, is one line and body per
 * claim, in the same order:
 *
 *	( <status> SP <retry-after> SP <length> LF <bytes> ) * n  [LF]
 *
 * (retry-after 0: none).  Lengths, not separators, delimit the bodies,
 * so that no body can take the place of another; every number is plain
 * decimal digits, bounded, and anything else refuses the whole batch.
 * No libevent here, so that tests and the fuzzer can feed it any bytes.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "phoneclaimd.h"
#include "xmalloc.h"

#define BATCH_DIGITS_MAX	9	/* of a number: < 10^9 */

static int	batch_number(const char **, const char *, char,
		    unsigned long long *);

/*
 * Read the decimal number at *p (before end), which ends with the byte
 * stop: advance *p past stop and return 0, or -1 if it is not so.
 */
static int
batch_number(const char **p, const char *end, char stop,
    unsigned long long *out)
{
	const char		*s = *p;
	unsigned long long	 v = 0;
	size_t			 n = 0;

	while (s < end && *s >= '0' && *s <= '9') {
		if (++n > BATCH_DIGITS_MAX)
			return (-1);
		v = v * 10 + (unsigned long long)(*s++ - '0');
	}
	if (n == 0 || s >= end || *s != stop)
		return (-1);
	*p = s + 1;
	*out = v;
	return (0);
}

/*
 * Split a batch request's len bytes into its claims (at most max): their
 * count, each item's p and len pointing into the body, or -1 if the body
 * is not exactly a batch.
 */
int
batch_split(const char *body, size_t len, struct batch_item *items,
    size_t max)
{
	const char		*p = body, *end = body + len;
	unsigned long long	 n, blen;
	size_t			 i;

	if (batch_number(&p, end, '\n', &n) != 0 || n == 0 || n > max)
		return (-1);
	for (i = 0; i < n; i++) {
		if (batch_number(&p, end, '\n', &blen) != 0 ||
		    blen > (unsigned long long)(end - p))
			return (-1);
		memset(&items[i], 0, sizeof items[i]);
		items[i].p = p;
		items[i].len = (size_t)blen;
		p += blen;
	}
	return (p == end ? (int)n : -1);
}

/*
 * Read the n answers of a batch (the master's len bytes) into items:
 * code, retry and the body (p, len, not terminated).  0, or -1 if the
 * answer is not exactly n of them (an optional last LF aside).
 */
int
batch_answers(const char *body, size_t len, struct batch_item *items,
    size_t n)
{
	const char		*p = body, *end = body + len;
	unsigned long long	 code, retry, blen;
	size_t			 i;

	for (i = 0; i < n; i++) {
		if (batch_number(&p, end, ' ', &code) != 0 || code < 100 ||
		    code > 599 || batch_number(&p, end, ' ', &retry) != 0 ||
		    batch_number(&p, end, '\n', &blen) != 0 ||
		    blen > (unsigned long long)(end - p))
			return (-1);
		items[i].code = (int)code;
		items[i].retry = (long long)retry;
		items[i].p = p;
		items[i].len = (size_t)blen;
		p += blen;
	}
	if (p < end && *p == '\n')
		p++;
	return (p == end ? 0 : -1);
}

/*
 * Frame n items, as a request (their bodies) or, with answers set, as the
 * master's answers: a string (NUL-terminated; the bodies hold no NUL) to
 * free, its length in *len.
 */
char *
batch_encode(const struct batch_item *items, size_t n, int answers,
    size_t *len)
{
	char	*out;
	size_t	 i, size = 24, off = 0;
	int	 w;

	for (i = 0; i < n; i++)
		size += items[i].len + 48;
	out = xmalloc(size);
	if (!answers)
		off += (size_t)snprintf(out, size, "%zu\n", n);
	for (i = 0; i < n; i++) {
		if (answers)
			w = snprintf(out + off, size - off, "%d %lld %zu\n",
			    items[i].code, items[i].retry, items[i].len);
		else
			w = snprintf(out + off, size - off, "%zu\n",
			    items[i].len);
		off += (size_t)w;
		memcpy(out + off, items[i].p, items[i].len);
		off += items[i].len;
	}
	out[off] = '\0';
	*len = off;
	return (out);
}
