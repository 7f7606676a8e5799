/*
 * Unit tests for frame.c: request heads, chunk-size lines, and following
 * a pipelined stream however it is split (issue 18).
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

#define HEAD(extra)	"POST /v1/claims?x=1 HTTP/1.1\r\nHost: h\r\n" \
			"Authorization:  Bearer t \r\n" extra "\r\n"

static int
head_ok(const char *text, struct frame_head *hd)
{
	return (frame_head(text, strlen(text), hd) == 0);
}

static void
test_head(void **state)
{
	static const char	*bad[] = {
		HEAD("Content-Length: +5\r\n"), HEAD("Content-Length: -0\r\n"),
		HEAD("Content-Length: 0x5\r\n"), HEAD("Content-Length: 5,5\r\n"),
		HEAD("Content-Length: \r\n"),
		HEAD("Content-Length: 5\r\nContent-Length: 6\r\n"),
		HEAD("Content-Length: 1234567890123456789\r\n"),
		HEAD("Transfer-Encoding: gzip, chunked\r\n"),
		HEAD("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
		HEAD("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
		HEAD("X: a\r\n folded\r\n"),
	};
	struct frame_head	 hd;
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (head_ok(bad[i], &hd))
			fail_msg("accepted bad head #%zu", i);
	}
	assert_true(head_ok(HEAD("content-length:\t 42 \r\n"
	    "Content-Length: 42\r\n"), &hd));
	assert_string_equal(hd.method, "POST");
	assert_string_equal(hd.path, "/v1/claims");
	assert_string_equal(hd.auth, "Bearer t");
	assert_true(hd.has_length && hd.length == 42 && !hd.chunked);
	assert_true(head_ok(HEAD("Transfer-Encoding: Chunked\n"), &hd));
	assert_true(hd.chunked && !hd.has_length);
	assert_false(frame_head("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 26, &hd)
	    == 0);
}

static int
chunk_ok(int first, const char *text, uint64_t *size)
{
	struct frame	f;

	frame_init(&f);
	f.first = first;
	return (frame_chunk(&f, text, strlen(text), size) == 0);
}

static void
test_chunk(void **state)
{
	static const char	*bad[] = { " 1a\r\n", "0x1a\r\n", "+1a\r\n",
				    "1a \r\n", "1a;e=1\r\n", "1a\n", "\r\n",
				    "-0\r\n", "1000000000000000\r\n", "g\r\n" };
	uint64_t		 size;
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (chunk_ok(1, bad[i], &size))
			fail_msg("accepted bad chunk size #%zu", i);
	}
	assert_true(chunk_ok(1, "1aF\r\n", &size));
	assert_int_equal(size, 0x1af);
	assert_true(chunk_ok(0, "\r\n0\r\n", &size));
	assert_int_equal(size, 0);
	assert_false(chunk_ok(0, "1a\r\n", &size));
	assert_false(chunk_ok(0, "\r\n\r\n1a\r\n", &size));
	assert_false(chunk_ok(0, "XX1a\r\n", &size));
}

/*
 * Follow a stream split every n bytes as http.c does: collect each unit,
 * check it and go on.  Return the number of heads seen, -1 on a refusal.
 */
static int
follow(const char *s, size_t len, size_t n)
{
	struct frame		 f;
	struct frame_head	 hd;
	char			 unit[4096];
	size_t			 ulen = 0, off, part, used;
	uint64_t		 size;
	int			 ev, heads = 0, open = 0;

	frame_init(&f);
	for (off = 0; off < len; off += part) {
		part = len - off < n ? len - off : n;
		while (part > 0) {
			used = frame_scan(&f, s + off, part, &ev);
			if (open)
				memcpy(unit + ulen, s + off, used), ulen += used;
			off += used;
			part -= used;
			if (ev == FRAME_HOLD) {
				open = 1;
				ulen = 0;
			} else if (ev == FRAME_WHOLE) {
				if (f.state == FRAME_HEAD) {
					if (frame_head(unit, ulen, &hd) != 0)
						return (-1);
					frame_body(&f, &hd);
					heads++;
				} else if (frame_chunk(&f, unit, ulen,
				    &size) != 0)
					return (-1);
				open = f.state == FRAME_SIZE;
				ulen = 0;
			}
		}
		part = 0;
	}
	return (f.state == FRAME_START ? heads : -2);
}

static void
test_split(void **state)
{
	static const char	 good[] =
	    "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
	    "GET /healthz HTTP/1.1\r\n\r\n"
	    "\r\n"
	    "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
	    "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n"
	    "HEAD /c HTTP/1.1\r\nContent-Length: 9\r\n\r\n"
	    "POST /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
	static const char	 bad[] =
	    "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
	    "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
	    "3\r\nabc\r\n 1\r\nx\r\n0\r\n\r\n";
	size_t			 n;

	(void)state;
	for (n = 1; n <= sizeof good; n++) {
		if (follow(good, sizeof good - 1, n) != 5)
			fail_msg("split every %zu bytes: lost", n);
		if (follow(bad, sizeof bad - 1, n) != -1)
			fail_msg("split every %zu bytes: bad size passed", n);
	}
}

/* A batch of claims (batch.c): split, answered, framed and back. */
static void
test_batch_split(void **state)
{
	static const char	 two[] = "2\n3\nabc0\n";
	struct batch_item	 it[4];
	static const char	*bad[] = {
		"",			/* no count */
		"0\n",			/* no claim */
		"5\n1\na1\nb1\nc1\nd1\ne",	/* more than max */
		"2\n3\nabc\n",		/* one missing */
		"1\n4\nabc",		/* shorter than said */
		"1\n2\nabc",		/* bytes after the last */
		"1\n+3\nabc",		/* a sign */
		"1\n 3\nabc",		/* a space */
		"1\n3 \nabc",
		"1\n0x3\nabc",
		"1\n3\rabc",
		"1\n9999999999\nabc",	/* too many digits */
		"01\n",			/* no body line */
	};
	size_t			 i;

	(void)state;
	assert_int_equal(batch_split(two, sizeof two - 1, it, 4), 2);
	assert_int_equal(it[0].len, 3);
	assert_memory_equal(it[0].p, "abc", 3);
	assert_int_equal(it[1].len, 0);
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (batch_split(bad[i], strlen(bad[i]), it, 4) != -1)
			fail_msg("batch %zu passed", i);
	/* Leading zeros are digits like others. */
	assert_int_equal(batch_split("01\n03\nabc", 9, it, 4), 1);
}

static void
test_batch_answers(void **state)
{
	struct batch_item	 in[3], out[3];
	const char		*bodies[3] = { "{\"result\":\"reserved\"}",
				    "{\"result\":\"limited\"}", "" };
	char			*text;
	size_t			 i, len;

	(void)state;
	for (i = 0; i < 3; i++) {
		memset(&in[i], 0, sizeof in[i]);
		in[i].p = bodies[i];
		in[i].len = strlen(bodies[i]);
		in[i].code = i == 1 ? 429 : 200;
		in[i].retry = i == 1 ? 30 : 0;
	}
	text = batch_encode(in, 3, 1, &len);
	assert_int_equal(len, strlen(text));
	assert_int_equal(batch_answers(text, len, out, 3), 0);
	for (i = 0; i < 3; i++) {
		assert_int_equal(out[i].code, in[i].code);
		assert_int_equal(out[i].retry, in[i].retry);
		assert_int_equal(out[i].len, in[i].len);
		assert_memory_equal(out[i].p, bodies[i], in[i].len);
	}
	/* The last LF http.c adds is allowed; anything else is not. */
	assert_int_equal(batch_answers("200 0 2\n{}\n", 11, out, 1), 0);
	assert_int_equal(batch_answers("200 0 2\n{}\n\n", 12, out, 1), -1);
	assert_int_equal(batch_answers(text, len, out, 2), -1);
	assert_int_equal(batch_answers(text, len - 1, out, 3), -1);
	assert_int_equal(batch_answers("99 0 2\n{}", 9, out, 1), -1);
	assert_int_equal(batch_answers("600 0 2\n{}", 10, out, 1), -1);
	assert_int_equal(batch_answers("200 -1 2\n{}", 11, out, 1), -1);
	assert_int_equal(batch_answers("200 0 3\n{}", 10, out, 1), -1);
	free(text);
	/* A request, framed: what batch_split reads back. */
	text = batch_encode(in, 3, 0, &len);
	assert_int_equal(batch_split(text, len, out, 3), 3);
	for (i = 0; i < 3; i++) {
		assert_int_equal(out[i].len, in[i].len);
		assert_memory_equal(out[i].p, bodies[i], in[i].len);
	}
	free(text);
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test(test_head),
		cmocka_unit_test(test_chunk),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_batch_split),
		cmocka_unit_test(test_batch_answers),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
