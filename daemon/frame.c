/*
 * HTTP/1.1 request framing, followed byte by byte before evhttp reads it.
 *
 * libevent 2.1 takes "Content-Length: +53" and chunk sizes like " 35",
 * "0x35" or "35 junk" (a proxy in front may read them otherwise: request
 * smuggling), and reads a whole body before a handler may look at the
 * headers (an unauthenticated client can make it buffer megabytes, and a
 * wrong token even gets "100 Continue").  It has no hook for a request's
 * headers on the server side (evhttp_set_newreqcb came in 2.2).
 *
 * So http.c feeds frame_scan every byte that arrives on a connection,
 * before evhttp's read callback runs.  frame_scan says where each unit to
 * check begins and ends: a request head (request line to the empty line)
 * and a chunk-size line (with the CRLF that ends the chunk before it).
 * http.c holds a unit back from evhttp until it is whole, checks it with
 * frame_head or frame_chunk, and then gives it to evhttp or refuses the
 * request.  Bodies by Content-Length and chunk data only pass, counted.
 * No libevent here, so that tests can feed it any bytes.
 */
#include "config.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "phoneclaimd.h"

#define FRAME_DIGITS_MAX	18	/* of a Content-Length: < 10^18 */
#define FRAME_HEX_MAX		15	/* of a chunk size: < 2^60 */
#define FRAME_SIZE_UNIT_MAX	(2 + FRAME_HEX_MAX + 2)

static int	frame_byte(struct frame *, char);
static void	frame_first_line(const char *, size_t, struct frame_head *);
static int	frame_header(const char *, size_t, struct frame_head *);
static int	frame_length(const char *, size_t, struct frame_head *);
static void	frame_trim(const char **, size_t *);

/* Start following a new connection. */
void
frame_init(struct frame *f)
{
	memset(f, 0, sizeof *f);
	f->state = FRAME_START;
}

/*
 * One byte of a unit (or of trailers): return 1 if it ends the unit.  A
 * head and trailers end with an empty line, a chunk-size line with the
 * first line that is not empty; a unit over its bound ends at once (its
 * check then fails).
 */
static int
frame_byte(struct frame *f, char c)
{
	f->unit++;
	if (f->state == FRAME_SIZE && f->unit > FRAME_SIZE_UNIT_MAX)
		return (1);
	if (f->state == FRAME_HEAD && f->unit > FRAME_HEAD_MAX)
		return (1);
	if (c != '\n') {
		if (c != '\r')
			f->line++;
		return (0);
	}
	if (f->state == FRAME_SIZE)
		return (f->line > 0);
	if (f->line == 0)
		return (1);
	f->line = 0;
	return (0);
}

/*
 * Follow len bytes at p.  Return how many were taken before *ev says
 * something: FRAME_HOLD (a unit begins here), FRAME_WHOLE (the unit ended
 * with the last byte taken; the caller checks it and calls frame_body or
 * frame_chunk) or FRAME_NONE (all taken).
 */
size_t
frame_scan(struct frame *f, const char *p, size_t len, int *ev)
{
	size_t	i = 0, n;

	*ev = FRAME_NONE;
	while (i < len) {
		switch (f->state) {
		case FRAME_START:
			/* Empty lines between requests pass (evhttp's call). */
			if (p[i] == '\r' || p[i] == '\n') {
				i++;
				break;
			}
			f->state = FRAME_HEAD;
			f->line = f->unit = 0;
			*ev = FRAME_HOLD;
			return (i);
		case FRAME_BODY:
		case FRAME_DATA:
			n = len - i < f->left ? len - i : (size_t)f->left;
			i += n;
			f->left -= n;
			if (f->left > 0)
				break;
			if (f->state == FRAME_BODY) {
				f->state = FRAME_START;
				break;
			}
			f->state = FRAME_SIZE;
			f->line = f->unit = 0;
			*ev = FRAME_HOLD;
			return (i);
		case FRAME_HEAD:
		case FRAME_SIZE:
			if (frame_byte(f, p[i++])) {
				*ev = FRAME_WHOLE;
				return (i);
			}
			break;
		case FRAME_TRAILER:
			if (frame_byte(f, p[i++]))
				f->state = FRAME_START;
			break;
		default:
			return (len);
		}
	}
	return (i);
}

/* Trim spaces and tabs from both ends of a value. */
static void
frame_trim(const char **s, size_t *len)
{
	while (*len > 0 && (**s == ' ' || **s == '\t')) {
		(*s)++;
		(*len)--;
	}
	while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
		(*len)--;
}

/* The request line: keep the method and the path (without the query). */
static void
frame_first_line(const char *s, size_t len, struct frame_head *hd)
{
	const char	*sp, *target, *end;
	size_t		 n;

	if ((sp = memchr(s, ' ', len)) == NULL)
		return;		/* evhttp refuses it */
	n = sp - s;
	if (n < sizeof hd->method) {
		memcpy(hd->method, s, n);
		hd->method[n] = '\0';
	}
	target = sp + 1;
	if ((end = memchr(target, ' ', len - (target - s))) == NULL)
		return;
	for (n = 0; target + n < end && target[n] != '?' && target[n] != '#';
	    n++)
		;
	if (n < sizeof hd->path) {
		memcpy(hd->path, target, n);
		hd->path[n] = '\0';
	}
}

/* A Content-Length value: plain decimal, the same each time it is given. */
static int
frame_length(const char *v, size_t n, struct frame_head *hd)
{
	uint64_t	length = 0;
	size_t		i;

	if (n == 0 || n > FRAME_DIGITS_MAX)
		return (-1);
	for (i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return (-1);
		length = length * 10 + (uint64_t)(v[i] - '0');
	}
	if (hd->has_length && hd->length != length)
		return (-1);
	hd->has_length = 1;
	hd->length = length;
	return (0);
}

/*
 * One header line: -1 for framing that is not plain (a folded line, a
 * Content-Length that is not plain decimal or differs from another, a
 * Transfer-Encoding other than one "chunked").  Keep Authorization.
 */
static int
frame_header(const char *s, size_t len, struct frame_head *hd)
{
	const char	*colon, *v;
	size_t		 n, vlen;

	if (s[0] == ' ' || s[0] == '\t')
		return (-1);	/* obs-fold (RFC 9112, section 5.2) */
	if ((colon = memchr(s, ':', len)) == NULL)
		return (0);	/* evhttp refuses it */
	n = colon - s;
	v = colon + 1;
	vlen = len - n - 1;
	frame_trim(&v, &vlen);
	if (n == 14 && strncasecmp(s, "Content-Length", n) == 0)
		return (frame_length(v, vlen, hd));
	if (n == 17 && strncasecmp(s, "Transfer-Encoding", n) == 0) {
		if (hd->chunked || vlen != 7 || strncasecmp(v, "chunked", 7) != 0)
			return (-1);
		hd->chunked = 1;
	} else if (n == 13 && strncasecmp(s, "Authorization", n) == 0 &&
	    !hd->has_auth) {
		hd->has_auth = 1;
		if (vlen >= sizeof hd->auth)
			hd->auth_long = 1;
		else {
			memcpy(hd->auth, v, vlen);
			hd->auth[vlen] = '\0';
		}
	}
	return (0);
}

/*
 * Check a whole request head (len bytes, the empty line included) and
 * fill *hd.  Return 0, or -1 if its framing is not plain (see
 * frame_header), it holds a NUL or it is over FRAME_HEAD_MAX.
 */
int
frame_head(const char *text, size_t len, struct frame_head *hd)
{
	const char	*p = text, *end = text + len, *nl;
	size_t		 n;
	int		 first = 1;

	memset(hd, 0, sizeof *hd);
	if (len > FRAME_HEAD_MAX || memchr(text, '\0', len) != NULL)
		return (-1);
	for (; p < end && (nl = memchr(p, '\n', end - p)) != NULL;
	    p = nl + 1) {
		n = nl - p;
		if (n > 0 && p[n - 1] == '\r')
			n--;
		if (n == 0)
			break;
		if (first) {
			frame_first_line(p, n, hd);
			first = 0;
		} else if (frame_header(p, n, hd) != 0)
			return (-1);
	}
	if (hd->chunked && hd->has_length)
		return (-1);
	return (0);
}

/*
 * After a head that passed: follow its body.  As evhttp does, HEAD and
 * TRACE have none, nor has a request without Content-Length or chunks.
 */
void
frame_body(struct frame *f, const struct frame_head *hd)
{
	f->state = FRAME_START;
	if (strcmp(hd->method, "HEAD") == 0 || strcmp(hd->method, "TRACE") == 0)
		return;
	if (hd->chunked) {
		f->state = FRAME_SIZE;
		f->line = f->unit = 0;
		f->first = 1;
	} else if (hd->has_length && hd->length > 0) {
		f->state = FRAME_BODY;
		f->left = hd->length;
	}
}

/*
 * Check a whole chunk-size unit: the CRLF that ends the chunk before it
 * (none before the first), 1 to 15 hex digits and CRLF; nothing else.
 * Follow the chunk and return 0 with its size in *size, or -1.
 */
int
frame_chunk(struct frame *f, const char *text, size_t len, uint64_t *size)
{
	size_t	i = 0, digits;

	*size = 0;
	if (!f->first) {
		if (len < 2 || text[0] != '\r' || text[1] != '\n')
			return (-1);
		i = 2;
	}
	for (digits = 0; i < len && isxdigit((unsigned char)text[i]);
	    i++, digits++) {
		*size = *size << 4 | (uint64_t)(isdigit((unsigned char)text[i]) ?
		    text[i] - '0' : (tolower((unsigned char)text[i]) - 'a' + 10));
	}
	if (digits == 0 || digits > FRAME_HEX_MAX || len - i != 2 ||
	    text[i] != '\r' || text[i + 1] != '\n')
		return (-1);
	f->first = 0;
	f->line = f->unit = 0;
	if (*size == 0)
		f->state = FRAME_TRAILER;
	else {
		f->state = FRAME_DATA;
		f->left = *size;
	}
	return (0);
}

/* Stop following (the connection is refused or lost). */
void
frame_off(struct frame *f)
{
	f->state = FRAME_OFF;
}
