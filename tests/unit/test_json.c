/*
 * Unit tests for json.c: depth bound, NUL bytes in strings, UTF-8, bad
 * input.
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
#include <yajl/yajl_tree.h>

#include "phoneclaimd.h"
#include "xmalloc.h"

static int	parses_with(yajl_val (*)(const char *, size_t, char **),
		    const char *, size_t);
static void	same_tree(yajl_val, yajl_val, const char *);

/* Parse text and return 1 on success. */
static int
parses(const char *text, size_t len)
{
	return (parses_with(json_parse, text, len));
}

/* The same with json_parse_strict. */
static int
parses_strict(const char *text, size_t len)
{
	return (parses_with(json_parse_strict, text, len));
}

/* Return 1 if parse accepts the text, else 0 (with a cause). */
static int
parses_with(yajl_val (*parse)(const char *, size_t, char **),
    const char *text, size_t len)
{
	yajl_val	 v;
	char		*cause = NULL;

	v = parse(text, len, &cause);
	if (v == NULL) {
		assert_non_null(cause);
		free(cause);
		return (0);
	}
	json_free(v);
	return (1);
}

/* Build n nested arrays. */
static char *
nested(int n)
{
	char	*s = xmalloc(2 * n + 1);

	memset(s, '[', n);
	memset(s + n, ']', n);
	s[2 * n] = '\0';
	return (s);
}

static void
test_valid(void **state)
{
	const char	*t = "{\"phone_number\":\"+1 201 555 0123\","
			    "\"user_id\":\"auth0|abc\",\"n\":[1,2.5,null]}";
	yajl_val	 v;
	char		*cause;
	const char	*path[] = { "user_id", NULL };

	(void)state;
	v = json_parse(t, strlen(t), &cause);
	assert_non_null(v);
	assert_string_equal(YAJL_GET_STRING(yajl_tree_get(v, path,
	    yajl_t_string)), "auth0|abc");
	json_free(v);
}

static void
test_depth_bound(void **state)
{
	char	*s;

	(void)state;
	s = nested(JSON_MAX_DEPTH);
	assert_true(parses(s, strlen(s)));
	free(s);
	s = nested(JSON_MAX_DEPTH + 1);
	assert_false(parses(s, strlen(s)));
	free(s);
	s = nested(100000);
	assert_false(parses(s, strlen(s)));
	free(s);
}

static void
test_invalid(void **state)
{
	static const char	*bad[] = { "", "{", "{\"a\":}", "[1,]",
				    "{\"a\":1} x", "nul", "\"\\ud800\"x",
				    "{\"a\":\"\xff\"}", "'single'",
				    "[\"\\u00\"]", "[\"\\ud800\\u12\"]" };
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (parses(bad[i], strlen(bad[i])))
			fail_msg("accepted bad JSON #%zu", i);
	}
	/* A NUL byte in the text itself, outside any string. */
	assert_false(parses("{}\0", 3));
	assert_false(parses(NULL, 0));
	assert_false(parses("", 0));
	assert_true(parses("{\"a\":\"\\u0001\"}", 14));
}

static void
test_item_bound(void **state)
{
	const char	*t = "[{},1,\"a\",null,true,[[1,2,3]]]";
	yajl_val	 v;
	char		*cause = NULL;
	int		 too_many;

	(void)state;
	v = json_parse_items(t, strlen(t), 6, &too_many, &cause);
	assert_non_null(v);
	assert_false(too_many);
	json_free(v);
	assert_null(json_parse_items(t, strlen(t), 5, &too_many, &cause));
	assert_true(too_many);
	free(cause);
	/* Nested values do not count, only the top's elements. */
	t = "[[1,2,3,4,5,6,7,8]]";
	v = json_parse_items(t, strlen(t), 1, &too_many, &cause);
	assert_non_null(v);
	json_free(v);
}

/* Wrap bytes in a JSON string, as a value and as a key; parse strictly. */
static int
string_parses(const char *bytes, int as_key)
{
	char	buf[64];
	int	n;

	n = snprintf(buf, sizeof buf, as_key ? "{\"%s\":1}" : "[\"%s\"]",
	    bytes);
	return (parses_strict(buf, (size_t)n));
}

static void
test_utf8(void **state)
{
	/* Well-formed: the edges of each range of RFC 3629. */
	const char	*good[] = { "a", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80",
			    "\xed\x9f\xbf", "\xee\x80\x80", "\xef\xbf\xbf",
			    "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf",
			    "\\u00e9", "\\ud83d\\ude00", NULL };
	/* Overlong, surrogates, over U+10FFFF, cut short, stray bytes. */
	const char	*bad[] = { "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf",
			    "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf",
			    "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
			    "\xf8\x88\x80\x80\x80", "\xe2\x82", "\xc3", "\x80", "\xff",
			    "\xe2\x28\xa1", NULL };
	const char	*t;
	size_t		 i;

	(void)state;
	for (i = 0; good[i] != NULL; i++) {
		assert_true(string_parses(good[i], 0));
		assert_true(string_parses(good[i], 1));
	}
	for (i = 0; bad[i] != NULL; i++) {
		assert_false(string_parses(bad[i], 0));
		assert_false(string_parses(bad[i], 1));
	}
	/*
	 * An escaped lone surrogate is valid JSON: even the strict parse
	 * takes it, and leaves it to the field's check (it is not UTF-8).
	 */
	t = "[\"\\udc00\"]";
	assert_true(parses(t, strlen(t)));
	assert_true(parses_strict(t, strlen(t)));
	t = "{\"a\\ud800\":1}";
	assert_true(parses(t, strlen(t)));
	t = "[\"\xff\"]";
	assert_false(parses(t, strlen(t)));
}

/* The first string of an array, as the tree keeps it; the caller frees. */
static char *
first_string(const char *text)
{
	yajl_val	 v;
	char		*cause = NULL, *s;

	v = json_parse(text, strlen(text), &cause);
	assert_non_null(v);
	assert_true(YAJL_IS_ARRAY(v) && YAJL_IS_STRING(v->u.array.values[0]));
	s = xstrdup(YAJL_GET_STRING(v->u.array.values[0]));
	json_free(v);
	return (s);
}

/*
 * "\u0000" and lone surrogates keep every character, as bytes that are
 * not UTF-8, so that no two ids become one; pairs decode as usual; and
 * json_text writes the escapes back.
 */
static void
test_escapes_kept(void **state)
{
	static const char	*cases[][2] = {
		{ "[\"ev\\ud800\"]", "ev\xed\xa0\x80" },
		{ "[\"ev\\udbff\"]", "ev\xed\xaf\xbf" },
		{ "[\"ev\\uDC00x\"]", "ev\xed\xb0\x80x" },
		{ "[\"ev\\ud800\\u0041\"]", "ev\xed\xa0\x80" "A" },
		{ "[\"ev\\ud800\\ud800\"]", "ev\xed\xa0\x80\xed\xa0\x80" },
		{ "[\"a\\u0000b\"]", "a\xc0\x80" "b" },
		{ "[\"\\\\ud800\"]", "\\ud800" },
		{ "[\"\\\"\\u0000\"]", "\"\xc0\x80" },
		{ "[\"\\ud83d\\ude00\"]", "\xf0\x9f\x98\x80" },
		{ "[\"ev?\"]", "ev?" },
	};
	const char		*t;
	yajl_val		 v;
	char			*s, *cause = NULL;
	size_t			 i, len;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		s = first_string(cases[i][0]);
		if (strcmp(s, cases[i][1]) != 0)
			fail_msg("case #%zu: got \"%s\"", i, s);
		free(s);
	}
	t = "{\"k\\u0000\":[\"\\ud800\",\"a\\u0000\\udfff\\n\",1.50]}";
	v = json_parse(t, strlen(t), &cause);
	assert_non_null(v);
	s = json_text(v, &len);
	assert_string_equal(s, t);
	assert_int_equal(len, strlen(t));
	free(s);
	json_free(v);
}

/* Fail unless a and b are the same tree, from yajl_tree and json_parse. */
static void
same_tree(yajl_val a, yajl_val b, const char *text)
{
	size_t	i;

	assert_non_null(a);
	assert_non_null(b);
	if (a->type != b->type)
		fail_msg("types %d and %d in %s", a->type, b->type, text);
	switch (a->type) {
	case yajl_t_string:
		assert_string_equal(a->u.string, b->u.string);
		break;
	case yajl_t_number:
		assert_string_equal(a->u.number.r, b->u.number.r);
		if (a->u.number.flags != b->u.number.flags ||
		    a->u.number.i != b->u.number.i ||
		    memcmp(&a->u.number.d, &b->u.number.d, sizeof (double)) != 0)
			fail_msg("number %s: flags %d/%d, %lld/%lld in %s",
			    a->u.number.r, a->u.number.flags,
			    b->u.number.flags, a->u.number.i, b->u.number.i,
			    text);
		break;
	case yajl_t_object:
		assert_int_equal(a->u.object.len, b->u.object.len);
		for (i = 0; i < a->u.object.len; i++) {
			assert_string_equal(a->u.object.keys[i],
			    b->u.object.keys[i]);
			same_tree(a->u.object.values[i], b->u.object.values[i],
			    text);
		}
		break;
	case yajl_t_array:
		assert_int_equal(a->u.array.len, b->u.array.len);
		for (i = 0; i < a->u.array.len; i++)
			same_tree(a->u.array.values[i], b->u.array.values[i],
			    text);
		break;
	default:
		break;
	}
}

/*
 * json_parse builds its own tree (one pass, in chunks): the same as
 * yajl_tree_parse's, member for member, number for number.
 */
static void
test_same_as_yajl_tree(void **state)
{
	static const char	*texts[] = {
		"1", "-0", "\"s\"", "true", "false", "null", "[]", "{}",
		"[1, 1.5, -3, 99999999999999999999, -9223372036854775808, "
		"9223372036854775807, 9223372036854775808, 1e3, 0.0, 1E400, "
		"-1e-400, 922337203685477581, 9223372036854775799, -12]",
		"{\"a\":1,\"a\":2,\"b\":[],\"c\":{},\"d\":[[],[{}],{\"e\":"
		"null}]}",
		"[{\"log_id\":\"9001\",\"data\":{\"type\":\"gd_unenroll\","
		"\"details\":{\"authenticator\":{\"phone_number\":"
		"\"+1******0123\"}},\"user_id\":\"auth0|x\"}}, {\"x\":[1,"
		"[2,[3,[4]]],\"\\n\\t\\\"\\/\\u00e9\\ud83d\\ude00\"]}]",
		"  {\"k\" : [ true , false , null , \"\" ] }  ",
	};
	yajl_val		 a, b;
	char			 err[256], *cause = NULL;
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof texts / sizeof texts[0]; i++) {
		a = yajl_tree_parse(texts[i], err, sizeof err);
		if (a == NULL)
			fail_msg("yajl: %s: %s", err, texts[i]);
		b = json_parse(texts[i], strlen(texts[i]), &cause);
		if (b == NULL)
			fail_msg("json_parse: %s: %s", cause, texts[i]);
		same_tree(a, b, texts[i]);
		yajl_tree_free(a);
		json_free(b);
	}
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_depth_bound),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_item_bound),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_escapes_kept),
		cmocka_unit_test(test_same_as_yajl_tree),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
