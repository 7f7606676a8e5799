/*
 * Unit tests for deadletter.c: redaction of phone numbers, the JSON lines
 * of the dead-letter file, invalid UTF-8, rotation at the size bound, the
 * file mode and errors that must not be fatal.
 */
#include "config.h"

#include <sys/stat.h>

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <yajl/yajl_tree.h>

#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

#define LOG_ID_56 \
	"90020240115103000123000000000000000000000000000000000001"
#define DOTS \
	"................................................................" \
	"................................................................" \
	"................................................................" \
	"................................................................"

struct redact_case {
	const char	*in;
	const char	*out;
};

static void	 check_redact(const struct redact_case *, size_t);
static char	*slurp(const char *, size_t *);
static yajl_val	 parse_line(const char *, size_t);
static const char *member_string(yajl_val, const char *);
static void	 check_time(const char *);
static void	 check_members(yajl_val);
static size_t	 check_file(const char *, size_t);
static yajl_val	 only_line(const char *);
static void	 assert_no_phone_run(const char *, size_t);
static int	 digit_run_at(const char *, size_t, size_t, size_t *);
static char	*digits_of(const char *);
static int	 capture_start(const char *);
static char	*capture_end(int, const char *);
static void	 check_digits(const char *, const char **, size_t);

/* Redact each case in a copy and compare with what is expected. */
static void
check_redact(const struct redact_case *c, size_t n)
{
	char	*buf;
	size_t	 i, len;

	for (i = 0; i < n; i++) {
		len = strlen(c[i].in);
		buf = xstrdup(c[i].in);
		assert_int_equal(deadletter_redact(buf, len), len);
		assert_string_equal(buf, c[i].out);
		free(buf);
	}
}

/* Read a whole file; NULL if it does not exist. */
static char *
slurp(const char *path, size_t *len)
{
	FILE	*f;
	char	*buf;
	long	 size;

	if ((f = fopen(path, "rb")) == NULL)
		return (NULL);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size >= 0);
	rewind(f);
	buf = xmalloc((size_t)size + 1);
	assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
	buf[size] = '\0';
	fclose(f);
	*len = (size_t)size;
	return (buf);
}

/* Parse one line (without its newline) with yajl's tree parser. */
static yajl_val
parse_line(const char *line, size_t len)
{
	char		*copy, err[256];
	yajl_val	 v;

	assert_null(memchr(line, '\n', len));
	copy = xstrndup(line, len);
	v = yajl_tree_parse(copy, err, sizeof err);
	if (v == NULL)
		fail_msg("not JSON (%s): %s", err, copy);
	free(copy);
	assert_true(YAJL_IS_OBJECT(v));
	return (v);
}

/* Return the string member key of v, or NULL if it is not a string. */
static const char *
member_string(yajl_val v, const char *key)
{
	const char	*path[] = { key, NULL };
	yajl_val	 m;

	if ((m = yajl_tree_get(v, path, yajl_t_string)) == NULL)
		return (NULL);
	return (YAJL_GET_STRING(m));
}

/* When the tests began: every line was written since. */
static time_t	tests_began;

/*
 * Check a "time" member: UTC ISO 8601 with milliseconds and Z, written
 * while the tests ran (a fixed window would flake: a rotation test writes
 * and syncs hundreds of lines, which took over a minute once on a disk
 * busy with a 50M-claim benchmark).
 */
static void
check_time(const char *s)
{
	struct tm	tm;
	int		ms;
	char		z;
	time_t		t;
	struct timespec	now;

	assert_non_null(s);
	assert_int_equal(strlen(s), 24);
	memset(&tm, 0, sizeof tm);
	assert_int_equal(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c",
	    &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
	    &tm.tm_sec, &ms, &z), 8);
	assert_int_equal(z, 'Z');
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	t = timegm(&tm);
	/*
	 * The line's time comes from CLOCK_REALTIME; time() reads the
	 * kernel's coarse clock, which can still show the last second for a
	 * few milliseconds after the precise one has moved on.
	 */
	clock_gettime(CLOCK_REALTIME, &now);
	assert_true(t >= tests_began && t <= now.tv_sec);
}

/* Check that a line has exactly the members it must have. */
static void
check_members(yajl_val v)
{
	const char	*id[] = { "log_id", NULL };
	const char	*tr[] = { "truncated", NULL };
	yajl_val	 m;
	size_t		 want = 4;

	check_time(member_string(v, "time"));
	assert_non_null(member_string(v, "reason"));
	assert_non_null(member_string(v, "item"));
	m = yajl_tree_get(v, id, yajl_t_any);
	assert_non_null(m);
	assert_true(YAJL_IS_STRING(m) || YAJL_IS_NULL(m));
	if ((m = yajl_tree_get(v, tr, yajl_t_any)) != NULL) {
		assert_true(YAJL_IS_TRUE(m));
		want++;
	}
	assert_int_equal(YAJL_GET_OBJECT(v)->len, want);
}

/* Check every line of a file and its size; return the number of lines. */
static size_t
check_file(const char *path, size_t max)
{
	char		*buf, *p, *nl;
	size_t		 len, lines = 0;
	yajl_val	 v;

	buf = slurp(path, &len);
	assert_non_null(buf);
	assert_true(len <= max);
	assert_true(len == 0 || buf[len - 1] == '\n');
	for (p = buf; p < buf + len; p = nl + 1) {
		nl = memchr(p, '\n', buf + len - p);
		assert_non_null(nl);
		v = parse_line(p, nl - p);
		check_members(v);
		yajl_tree_free(v);
		lines++;
	}
	assert_no_phone_run(buf, len);
	free(buf);
	return (lines);
}

/* Parse the only line of a file. */
static yajl_val
only_line(const char *path)
{
	char		*buf;
	size_t		 len;
	yajl_val	 v;

	buf = slurp(path, &len);
	assert_non_null(buf);
	assert_true(len > 0 && buf[len - 1] == '\n');
	assert_ptr_equal(memchr(buf, '\n', len), buf + len - 1);
	v = parse_line(buf, len - 1);
	check_members(v);
	free(buf);
	return (v);
}

/* Is there a maximal run of digits at i?  Its length goes in *n. */
static int
digit_run_at(const char *buf, size_t len, size_t i, size_t *n)
{
	size_t	j;

	if (buf[i] < '0' || buf[i] > '9' ||
	    (i > 0 && buf[i - 1] >= '0' && buf[i - 1] <= '9'))
		return (0);
	for (j = i; j < len && buf[j] >= '0' && buf[j] <= '9'; j++)
		;
	*n = j - i;
	return (1);
}

/* Fail if buf holds a run of 7 to 15 consecutive digits. */
static void
assert_no_phone_run(const char *buf, size_t len)
{
	size_t	i, n;

	for (i = 0; i < len; i++) {
		if (digit_run_at(buf, len, i, &n) && n >= 7 && n <= 15)
			fail_msg("%zu digits in a row at %zu: %.*s", n, i,
			    (int)n, buf + i);
	}
}

/* Send stderr (the log in the foreground) to path; return the old one. */
static int
capture_start(const char *path)
{
	int	saved, fd;

	fflush(stderr);
	saved = dup(STDERR_FILENO);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(saved != -1 && fd != -1);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	close(fd);
	return (saved);
}

/* Put stderr back; return what was logged meanwhile. */
static char *
capture_end(int saved, const char *path)
{
	char	*text;
	size_t	 len;

	fflush(stderr);
	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	text = slurp(path, &len);
	assert_non_null(text);
	unlink(path);
	return (text);
}

/* Return the digits of s alone, in order. */
static char *
digits_of(const char *s)
{
	char	*d, *p;

	p = d = xstrdup(s);
	for (; *s != '\0'; s++) {
		if (*s >= '0' && *s <= '9')
			*p++ = *s;
	}
	*p = '\0';
	return (d);
}

/*
 * Line k of the file was written for numbers[k]: the digits of its item and
 * log id, separators and masks dropped, must not hold the whole number.
 */
static void
check_digits(const char *path, const char **numbers, size_t count)
{
	char		*buf, *p, *nl, *want, *item, *id;
	size_t		 len, k = 0;
	yajl_val	 v;

	buf = slurp(path, &len);
	assert_non_null(buf);
	for (p = buf; p < buf + len; p = nl + 1, k++) {
		nl = memchr(p, '\n', buf + len - p);
		assert_true(nl != NULL && k < count);
		v = parse_line(p, nl - p);
		want = digits_of(numbers[k]);
		item = digits_of(member_string(v, "item"));
		id = digits_of(member_string(v, "log_id"));
		assert_null(strstr(item, want));
		assert_null(strstr(id, want));
		/* The last 4 digits are kept, as the rule says. */
		assert_non_null(strstr(item, want + strlen(want) - 4));
		free(id);
		free(item);
		free(want);
		yajl_tree_free(v);
	}
	assert_int_equal(k, count);
	free(buf);
}

/* The examples of the rule. */
static void
test_redact_examples(void **state)
{
	static const struct redact_case	c[] = {
		{ "+1 (201) 555-0123", "+X (XXX) XXX-0123" },
		{ "\"phone_number\":\"+447700900123\"",
		  "\"phone_number\":\"+XXXXXXXX0123\"" },
		{ "{\"phone_number\":1234567891}",
		  "{\"phone_number\":XXXXXX7891}" },
		{ "1234567891", "XXXXXX7891" },
		{ LOG_ID_56, LOG_ID_56 },
		{ "\"log_id\":\"" LOG_ID_56 "\"",
		  "\"log_id\":\"" LOG_ID_56 "\"" },
		/* Known over-masking of dates: 8 digits in one run. */
		{ "\"2024-01-15T10:30:00.000Z\"",
		  "\"XXXX-01-15T10:30:00.000Z\"" },
		{ "+44 07700 900123", "+XX XXXXX XX0123" },
		{ "+49 (0)30 1234567", "+XX (X)XX XXX4567" },
		{ "555/123/4567", "XXX/XXX/4567" },
		{ "555.123.4567", "XXX.XXX.4567" },
	};

	(void)state;
	check_redact(c, sizeof c / sizeof c[0]);
}

/* Edges of the rule: digit counts, separators, buffer ends, bytes. */
static void
test_redact_edges(void **state)
{
	static const struct redact_case	c[] = {
		{ "", "" },
		{ "123456", "123456" },
		{ "1234567", "XXX4567" },
		{ "123456789012345", "XXXXXXXXXXX2345" },
		{ "1234567890123456", "1234567890123456" },
		{ "12-34-56", "12-34-56" },
		{ "1-2-3-4-5-6-7", "X-X-X-4-5-6-7" },
		{ "1+2+3+4+5+6+7", "X+X+X+4+5+6+7" },
		{ "5551234567 at the start", "XXXXXX4567 at the start" },
		{ "at the end 5551234567", "at the end XXXXXX4567" },
		{ "abc5551234567def", "abcXXXXXX4567def" },
		{ " -./()+ ", " -./()+ " },
		{ "+", "+" },
		{ "(", "(" },
		{ "()", "()" },
		{ "+ + +", "+ + +" },
		{ "-5551234567", "-XXXXXX4567" },
		{ ") 555 123 4567 (", ") XXX XXX 4567 (" },
		{ "a 5551234567 b +44 7700 900123 c 123 d 5550000000",
		  "a XXXXXX4567 b +XX XXXX XX0123 c 123 d XXXXXX0000" },
		{ "5551234567,5559876543", "XXXXXX4567,XXXXXX6543" },
		{ "[5551234567][5559876543]", "[XXXXXX4567][XXXXXX6543]" },
		/* Two short numbers in one run are judged together. */
		{ "5551234 / 5557654", "XXXXXXX / XXX7654" },
		/* 20 digits with separators: numbers side by side. */
		{ "555 123 4567 / 555 765 4321",
		  "XXX XXX XXXX / XXX XXX 4321" },
		/* 20 bare digits: an id, left alone. */
		{ "55512345675557654321", "55512345675557654321" },
		/* Non-ASCII ends a run, on either side. */
		{ "t\xc3\xa9l\xc3\xa9phone\xc2\xa0+33612345678\xc3\xa9",
		  "t\xc3\xa9l\xc3\xa9phone\xc2\xa0+XXXXXXX5678\xc3\xa9" },
		/* A known limit: no-break spaces split a number. */
		{ "06\xc2\xa0" "12\xc2\xa0" "34\xc2\xa0" "56\xc2\xa0" "78",
		  "06\xc2\xa0" "12\xc2\xa0" "34\xc2\xa0" "56\xc2\xa0" "78" },
		{ "\xff" "5551234567" "\xfe", "\xff" "XXXXXX4567" "\xfe" },
		{ "\xef\xbc\x95\xef\xbc\x95\xef\xbc\x95",
		  "\xef\xbc\x95\xef\xbc\x95\xef\xbc\x95" },
	};

	(void)state;
	check_redact(c, sizeof c / sizeof c[0]);
}

/* NUL bytes end runs, and only len bytes are looked at. */
static void
test_redact_nul_and_bounds(void **state)
{
	char	a[] = "555\0" "1234567\0" "89";
	char	b[] = "5551234\0" "567";
	char	c[] = "5551234567";
	char	d[] = "x5551234567";

	(void)state;
	/* NUL ends a run: "555" stays, "1234567" is masked. */
	assert_int_equal(deadletter_redact(a, sizeof a - 1), sizeof a - 1);
	assert_memory_equal(a, "555\0XXX4567\0" "89", sizeof a);
	assert_int_equal(deadletter_redact(b, sizeof b - 1), sizeof b - 1);
	assert_memory_equal(b, "XXX1234\0" "567", sizeof b);
	/* Only len bytes are looked at: 5 digits is not a number. */
	assert_int_equal(deadletter_redact(c, 5), 5);
	assert_string_equal(c, "5551234567");
	assert_int_equal(deadletter_redact(c, 7), 7);
	assert_string_equal(c, "XXX1234567");
	/* A run ending exactly at len. */
	assert_int_equal(deadletter_redact(d, 8), 8);
	assert_string_equal(d, "xXXX1234567");
	assert_int_equal(deadletter_redact(NULL, 0), 0);
}

/* Each add writes one JSON line with every member. */
static void
test_add_line_members(void **state)
{
	const char	*body = "{\"type\":\"gd_enrollment_complete\","
			    "\"phone_number\":\"+447700900123\"}";
	char		*dir = unit_tmpdir(), *path, *cause = NULL;
	yajl_val	 v;
	const char	*id[] = { "log_id", NULL };

	(void)state;
	xasprintf(&path, "%s/deadletter.jsonl", dir);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	assert_null(cause);
	deadletter_add("rejected", LOG_ID_56, body, strlen(body));
	v = only_line(path);
	assert_string_equal(member_string(v, "reason"), "rejected");
	assert_string_equal(member_string(v, "log_id"), LOG_ID_56);
	assert_string_equal(member_string(v, "item"),
	    "{\"type\":\"gd_enrollment_complete\","
	    "\"phone_number\":\"+XXXXXXXX0123\"}");
	assert_null(member_string(v, "truncated"));
	yajl_tree_free(v);

	deadletter_add("not_json", NULL, "oops", 4);
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), 2);
	deadletter_close();
	unlink(path);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("not_json", NULL, "oops", 4);
	v = only_line(path);
	assert_true(YAJL_IS_NULL(yajl_tree_get(v, id, yajl_t_any)));
	assert_string_equal(member_string(v, "item"), "oops");
	yajl_tree_free(v);
	deadletter_add("empty", "1", NULL, 0);
	deadletter_add("empty", "2", "", 0);
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), 3);
	deadletter_close();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

/* An item is cut to 64 KiB, then redacted, and says it was cut. */
static void
test_add_truncated(void **state)
{
	char		*dir = unit_tmpdir(), *path, *cause = NULL, *text;
	const char	*item;
	size_t		 len = 100 * 1024;
	yajl_val	 v;
	const char	*tr[] = { "truncated", NULL };

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	text = xmalloc(len);
	memset(text, 'a', len);
	memcpy(text, "+447700900123", 13);
	/* A number cut at 64 KiB is judged on what is kept. */
	memcpy(text + 65536 - 8, " 5551234567", 11);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("too_big", "x", text, len);
	v = only_line(path);
	item = member_string(v, "item");
	assert_int_equal(strlen(item), 65536);
	assert_memory_equal(item, "+XXXXXXXX0123aaa", 16);
	assert_memory_equal(item + 65536 - 8, " XXX1234", 8);
	assert_true(YAJL_IS_TRUE(yajl_tree_get(v, tr, yajl_t_any)));
	yajl_tree_free(v);
	deadletter_close();
	unlink(path);

	/* Exactly 64 KiB is kept whole. */
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("big", "x", text, 65536);
	v = only_line(path);
	assert_int_equal(strlen(member_string(v, "item")), 65536);
	assert_null(yajl_tree_get(v, tr, yajl_t_any));
	yajl_tree_free(v);
	deadletter_close();
	unit_rmtree(dir);
	free(text);
	free(path);
	free(dir);
}

/* The cut at 64 KiB does not split a UTF-8 character. */
static void
test_add_cut_utf8(void **state)
{
	char		*dir = unit_tmpdir(), *path, *cause = NULL, *text;
	const char	*item;
	size_t		 len = 65536 + 100;
	yajl_val	 v;
	const char	*tr[] = { "truncated", NULL };

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	text = xmalloc(len);
	memset(text, 'a', len);
	memcpy(text + 65536 - 2, "\xe2\x82\xac", 3);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("big", "x", text, len);
	v = only_line(path);
	item = member_string(v, "item");
	assert_int_equal(strlen(item), 65536 - 2);
	assert_null(strchr(item, '?'));
	assert_true(YAJL_IS_TRUE(yajl_tree_get(v, tr, yajl_t_any)));
	yajl_tree_free(v);
	deadletter_close();
	unit_rmtree(dir);
	free(text);
	free(path);
	free(dir);
}

/* Invalid UTF-8 becomes '?', so the line is valid JSON and UTF-8. */
static void
test_add_invalid_utf8(void **state)
{
	static const char	in[] =
				    "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\x9e|"
				    "\xff|\xfe\xfe|\xc3|\xc3(|\xc0\xaf|"
				    "\xe0\x80\x80|\xed\xa0\x80|"
				    "\xf4\x90\x80\x80|"
				    "\x80\xbf|\xe2\x82|\xf0\x9f\x93|"
				    "\xf0\x8f\xbf\xbf|"
				    "+44\xff" "7700900123\xc3";
	static const char	out[] =
				    "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\x9e|"
				    "?|??|?|?(|??|"
				    "???|???|"
				    "????|"
				    "??|??|???|"
				    "????|"
				    "+44?XXXXXX0123?";
	char			*dir = unit_tmpdir(), *path, *cause = NULL;
	yajl_val		 v;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("bad\xff", "id\xc3", in, sizeof in - 1);
	v = only_line(path);
	assert_string_equal(member_string(v, "item"), out);
	assert_string_equal(member_string(v, "reason"), "bad?");
	assert_string_equal(member_string(v, "log_id"), "id?");
	yajl_tree_free(v);
	deadletter_close();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

/* Quotes, backslashes, control bytes and NUL are escaped by yajl. */
static void
test_add_escapes(void **state)
{
	static const char	 in[] = "q\"b\\s/\n\t\r\x01" "a\0b\x7f}";
	char			*dir = unit_tmpdir(), *path, *cause = NULL;
	char			*buf;
	size_t			 len;
	yajl_val		 v;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("r", "i", in, sizeof in - 1);
	buf = slurp(path, &len);
	assert_non_null(strstr(buf,
	    "\"item\":\"q\\\"b\\\\s/\\n\\t\\r\\u0001a\\u0000b\x7f}\""));
	free(buf);
	v = only_line(path);
	/* The tree parser stops a string at its NUL byte. */
	assert_string_equal(member_string(v, "item"), "q\"b\\s/\n\t\r\x01" "a");
	yajl_tree_free(v);
	deadletter_close();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

/* The file is rotated at the bound; both files keep whole lines. */
static void
test_rotation(void **state)
{
	char		*dir = unit_tmpdir(), *path, *old, *cause = NULL;
	char		*text, *buf;
	size_t		 i, n, cur, prev, len;
	struct stat	 sb;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	xasprintf(&old, "%s/dl.1", dir);
	assert_int_equal(deadletter_open(path, 4096, &cause), 0);
	for (i = 0; i < 500; i++) {
		n = (size_t)xasprintf(&text, "item %05zu call +1 (201) "
		    "555-%04zu or +4477009%05zu %.*s", i, i % 10000, i,
		    (int)(i % 200), DOTS);
		deadletter_add("rejected", LOG_ID_56, text, n);
		free(text);
	}
	cur = check_file(path, 4096);
	prev = check_file(old, 4096);
	assert_true(cur > 0 && prev > 0 && prev + cur < 500);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(stat(old, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	/* The newest item is last in the file; .1 ended just before it. */
	buf = slurp(path, &len);
	assert_non_null(strstr(buf, "item 00499 "));
	free(buf);
	xasprintf(&text, "item %05zu ", 499 - cur);
	buf = slurp(old, &len);
	assert_non_null(strstr(buf, text));
	free(text);
	free(buf);
	deadletter_close();
	unit_rmtree(dir);
	free(old);
	free(path);
	free(dir);
}

/* An item too big for the bound is cut until its line fits. */
static void
test_rotation_huge_item(void **state)
{
	char		*dir = unit_tmpdir(), *path, *old, *cause = NULL;
	char		*text;
	const char	*tr[] = { "truncated", NULL };
	yajl_val	 v;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	xasprintf(&old, "%s/dl.1", dir);
	assert_int_equal(deadletter_open(path, 4096, &cause), 0);
	deadletter_add("small", LOG_ID_56, "x", 1);
	/* Quotes double in JSON: the cut must allow for escaping. */
	text = xmalloc(65536);
	memset(text, '"', 65536);
	deadletter_add("huge", LOG_ID_56, text, 65536);
	free(text);
	assert_int_equal(check_file(old, 4096), 1);
	v = only_line(path);
	assert_true(YAJL_IS_TRUE(yajl_tree_get(v, tr, yajl_t_any)));
	assert_true(strlen(member_string(v, "item")) > 1000);
	yajl_tree_free(v);
	assert_int_equal(check_file(path, 4096), 1);
	deadletter_close();
	unit_rmtree(dir);
	free(old);
	free(path);
	free(dir);
}

/* The file and path.1 are made 0600, whatever they were. */
static void
test_mode(void **state)
{
	char		*dir = unit_tmpdir(), *path, *old, *cause = NULL;
	struct stat	 sb;
	mode_t		 mask;

	(void)state;
	path = unit_write(dir, "dl", "", 0644);
	old = unit_write(dir, "dl.1", "", 0666);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(stat(old, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	deadletter_add("r", NULL, "x", 1);
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), 1);
	deadletter_close();
	unlink(path);

	/* A new file is 0600 whatever the umask. */
	mask = umask(0);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	umask(mask);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	deadletter_close();
	unit_rmtree(dir);
	free(old);
	free(path);
	free(dir);
}

/* Adding while the module is closed does nothing and logs nothing. */
static void
test_not_open(void **state)
{
	char		*dir = unit_tmpdir(), *path, *log, *cause = NULL;
	char		*logged;
	struct stat	 sb;
	int		 saved;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	xasprintf(&log, "%s/log", dir);
	saved = capture_start(log);
	deadletter_close();
	deadletter_add("r", "i", "5551234567", 10);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_close();
	deadletter_close();
	deadletter_add("r", "i", "5551234567", 10);
	logged = capture_end(saved, log);
	assert_string_equal(logged, "");
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 0);
	unit_rmtree(dir);
	free(logged);
	free(log);
	free(path);
	free(dir);
}

/* No number of the input, in any format, reaches the file. */
static void
test_no_phone_digits(void **state)
{
	static const char	*numbers[] = {
		"+447700900123", "+44 7700 900123", "+44 (0)7700 900-123",
		"07700900123", "+1 (201) 555-0123", "201.555.0123",
		"+12015550123", "2015550123", "+33 6 12 34 56 78",
		"+49 (0)30 1234567", "+390612345678", "+8613800138000",
		"+61 4 1234 5678", "1234567", "123456789012345",
	};
	const size_t		 count = sizeof numbers / sizeof numbers[0];
	char			*dir = unit_tmpdir(), *path, *cause = NULL;
	char			*text, *buf;
	size_t			 i, j, n, run, len;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	for (i = 0; i < count; i++) {
		n = (size_t)xasprintf(&text, "{\"phone_number\":\"%s\","
		    "\"n\":%s,\"s\":\"call %s now\"}[%s]", numbers[i],
		    numbers[i], numbers[i], numbers[i]);
		deadletter_add("rejected", numbers[i], text, n);
		/* No run of 7 to 15 digits of the input is in the file. */
		buf = slurp(path, &len);
		for (j = 0; j < n; j++) {
			if (digit_run_at(text, n, j, &run) && run >= 7 &&
			    run <= 15)
				assert_null(memmem(buf, len, text + j, run));
		}
		free(buf);
		free(text);
	}
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), count);
	check_digits(path, numbers, count);
	deadletter_close();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

/* Open errors are explained; a failed open leaves the module closed. */
static void
test_open_errors(void **state)
{
	char	*dir = unit_tmpdir(), *path, *cause = NULL;

	(void)state;
	xasprintf(&path, "%s/none/dl", dir);
	assert_int_equal(deadletter_open(path, 0, &cause), -1);
	assert_non_null(strstr(cause, path));
	free(cause);
	cause = NULL;
	deadletter_add("r", "i", "x", 1);
	free(path);

	/* A directory or a FIFO is refused. */
	assert_int_equal(deadletter_open(dir, 0, &cause), -1);
	assert_non_null(cause);
	free(cause);
	cause = NULL;
	xasprintf(&path, "%s/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(deadletter_open(path, 0, &cause), -1);
	assert_non_null(cause);
	free(cause);
	deadletter_add("r", "i", "x", 1);
	unit_rmtree(dir);
	free(path);
	free(dir);
}

/*
 * Write errors are logged at most once a minute, name no number and are
 * not fatal; the file is started again when it can be.  This is the first
 * test to fail a write, so exactly one warning is logged.
 */
static void
test_write_errors(void **state)
{
	char	*dir = unit_tmpdir(), *sub, *path, *moved, *cause = NULL;
	char	*log, *logged, *p;
	int	 saved, lines = 0;

	(void)state;
	xasprintf(&sub, "%s/sub", dir);
	xasprintf(&path, "%s/dl", sub);
	xasprintf(&moved, "%s/moved", sub);
	xasprintf(&log, "%s/log", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	unit_rmtree(sub);
	saved = capture_start(log);
	deadletter_add("r", "+447700900123", "+447700900123", 13);
	deadletter_add("r", "i", "x", 1);
	deadletter_add("r", "i", "x", 1);
	logged = capture_end(saved, log);
	for (p = logged; (p = strchr(p, '\n')) != NULL; p++)
		lines++;
	assert_int_equal(lines, 1);
	assert_non_null(strstr(logged, path));
	assert_null(strstr(logged, "0123"));
	free(logged);
	assert_int_equal(mkdir(sub, 0700), 0);
	deadletter_add("r", "i", "y", 1);
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), 1);
	/* The file is moved away by an operator: a new one is started. */
	assert_int_equal(rename(path, moved), 0);
	deadletter_add("r", "i", "z", 1);
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), 1);
	assert_int_equal(check_file(moved, DEADLETTER_MAX_SIZE), 1);
	deadletter_close();
	/* A bound too small for any line: the line is dropped. */
	assert_int_equal(deadletter_open(path, 10, &cause), 0);
	deadletter_add("r", NULL, "x", 1);
	assert_int_equal(check_file(path, DEADLETTER_MAX_SIZE), 1);
	deadletter_close();
	unit_rmtree(dir);
	free(log);
	free(moved);
	free(path);
	free(sub);
	free(dir);
}

/* The log id is redacted and cut to LOG_ID_MAX bytes too. */
static void
test_log_id_redacted(void **state)
{
	char		*dir = unit_tmpdir(), *path, *cause = NULL, id[300];
	yajl_val	 v;

	(void)state;
	xasprintf(&path, "%s/dl", dir);
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("rejected", "+447700900123", "{}", 2);
	v = only_line(path);
	assert_string_equal(member_string(v, "log_id"), "+XXXXXXXX0123");
	yajl_tree_free(v);
	deadletter_close();
	unlink(path);

	/* A log id is cut to LOG_ID_MAX bytes. */
	memset(id, 'a', sizeof id - 1);
	id[sizeof id - 1] = '\0';
	assert_int_equal(deadletter_open(path, 0, &cause), 0);
	deadletter_add("rejected", id, "{}", 2);
	v = only_line(path);
	assert_int_equal(strlen(member_string(v, "log_id")), LOG_ID_MAX);
	yajl_tree_free(v);
	deadletter_close();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

/* A value for the log: masked, escaped, bounded (issue 18, point 5). */
static void
test_log_value(void **state)
{
	char	buf[DEADLETTER_LOG_SIZE], big[600];
	size_t	i;

	(void)state;
	assert_string_equal(deadletter_log_value("+1 201 555 0123\nx: FORGED",
	    buf), "+X XXX XXX 0123\\x0ax: FORGED");
	assert_string_equal(deadletter_log_value("a\\b\x1b\xc2\x85\xff\xc3\xa9",
	    buf), "a\\x5cb\\x1b\\xc2\\x85\\xff\xc3\xa9");
	assert_string_equal(deadletter_log_value("900202611270000000000000000"
	    "00000000000000000000000000001", buf), "900202611270000000000000000"
	    "00000000000000000000000000001");
	memset(big, '\n', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	deadletter_log_value(big, buf);
	assert_true(strlen(buf) < DEADLETTER_LOG_SIZE);
	assert_int_equal(strcmp(buf + strlen(buf) - 3, "..."), 0);
	for (i = 0; i < sizeof big - 1; i++)
		big[i] = (char)('a' + i % 26);
	deadletter_log_value(big, buf);
	assert_int_equal(strlen(buf), DEADLETTER_LOG_SIZE - 4 + 3);
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test(test_redact_examples),
		cmocka_unit_test(test_redact_edges),
		cmocka_unit_test(test_redact_nul_and_bounds),
		cmocka_unit_test(test_add_line_members),
		cmocka_unit_test(test_add_truncated),
		cmocka_unit_test(test_add_cut_utf8),
		cmocka_unit_test(test_add_invalid_utf8),
		cmocka_unit_test(test_add_escapes),
		cmocka_unit_test(test_rotation),
		cmocka_unit_test(test_rotation_huge_item),
		cmocka_unit_test(test_mode),
		cmocka_unit_test(test_not_open),
		cmocka_unit_test(test_no_phone_digits),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_write_errors),
		cmocka_unit_test(test_log_id_redacted),
		cmocka_unit_test(test_log_value),
	};

	tests_began = time(NULL);
	return (cmocka_run_group_tests(tests, NULL, NULL));
}
