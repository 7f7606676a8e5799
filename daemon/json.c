/*
 * JSON parsing with bounds.  yajl's tree parser has no nesting limit, so a
 * first pass with the event parser checks the depth before the tree is
 * built.  yajl refuses bytes that never occur in UTF-8 but lets through
 * overlong forms, surrogates and code points over U+10FFFF (and makes
 * surrogates of lone \u escapes).  json_parse_strict, for the claim API,
 * checks every string and key against RFC 3629 in that first pass.  The
 * other parses do not: Auth0's log events carry text users typed, and
 * JavaScript writes a lone surrogate in it as a \u escape, so refusing it
 * would refuse a whole batch for one field; the fields that matter (user
 * ids) are checked where they are used, and only that event is refused.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

struct json_depth {
	int	depth;
	int	bad;
	size_t	items;		/* values at depth 1 (elements of the top) */
	size_t	max_items;	/* 0: no bound */
	int	too_many;
	int	strict;		/* strings and keys must be UTF-8 */
};

static struct yajl_val_s *json_parse_any(const char *, size_t, size_t, int,
		    int *, char **);
static int	json_item(struct json_depth *);
static int	json_scalar_cb(void *);
static int	json_bool_cb(void *, int);
static int	json_number_cb(void *, const char *, size_t);
static int	json_key_cb(void *, const unsigned char *, size_t);
static int	json_string_cb(void *, const unsigned char *, size_t);
static int	json_open_cb(void *);
static int	json_close_cb(void *);
static int	json_check(const char *, size_t, size_t, int, int *);
static void	json_gen_value(yajl_gen, yajl_val, int);

/*
 * Return 1 if the len bytes at p are well-formed UTF-8 (RFC 3629, section
 * 4): shortest forms only, no surrogates, nothing over U+10FFFF.
 */
int
json_utf8_ok(const char *p, size_t len)
{
	const unsigned char	*s = (const unsigned char *)p;
	size_t		i = 0, n, k;
	unsigned char	lo, hi;

	while (i < len) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		lo = 0x80;
		hi = 0xbf;
		if (s[i] >= 0xc2 && s[i] <= 0xdf)
			n = 1;
		else if (s[i] >= 0xe0 && s[i] <= 0xef) {
			n = 2;
			if (s[i] == 0xe0)
				lo = 0xa0;	/* overlong */
			else if (s[i] == 0xed)
				hi = 0x9f;	/* surrogates */
		} else if (s[i] >= 0xf0 && s[i] <= 0xf4) {
			n = 3;
			if (s[i] == 0xf0)
				lo = 0x90;	/* overlong */
			else if (s[i] == 0xf4)
				hi = 0x8f;	/* over U+10FFFF */
		} else
			return (0);
		if (len - i <= n || s[i + 1] < lo || s[i + 1] > hi)
			return (0);
		for (k = 2; k <= n; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return (0);
		i += n + 1;
	}
	return (1);
}

/* Count a value; stop the parse when the top holds too many. */
static int
json_item(struct json_depth *d)
{
	if (d->depth != 1 || d->max_items == 0)
		return (1);
	if (++d->items > d->max_items) {
		d->too_many = 1;
		return (0);
	}
	return (1);
}

/* A null. */
static int
json_scalar_cb(void *arg)
{
	return (json_item(arg));
}

/* A boolean. */
static int
json_bool_cb(void *arg, int b)
{
	(void)b;
	return (json_item(arg));
}

/* A number. */
static int
json_number_cb(void *arg, const char *s, size_t len)
{
	(void)s;
	(void)len;
	return (json_item(arg));
}

/*
 * Refuse keys with a NUL byte ("\u0000"): the tree keeps strings
 * NUL-terminated, so "a\u0000b" would silently become "a".  And, in a
 * strict parse, keys that are not UTF-8.
 */
static int
json_key_cb(void *arg, const unsigned char *s, size_t len)
{
	struct json_depth	*d = arg;

	if (memchr(s, '\0', len) != NULL ||
	    (d->strict && !json_utf8_ok((const char *)s, len))) {
		d->bad = 1;
		return (0);
	}
	return (1);
}

/* A string: the same rules, and it counts as a value. */
static int
json_string_cb(void *arg, const unsigned char *s, size_t len)
{
	return (json_key_cb(arg, s, len) && json_item(arg));
}

/* Enter a map or an array; stop the parse when it is too deep. */
static int
json_open_cb(void *arg)
{
	struct json_depth	*d = arg;

	if (!json_item(d))
		return (0);
	if (++d->depth > JSON_MAX_DEPTH) {
		d->bad = 1;
		return (0);
	}
	return (1);
}

/* Leave a map or an array. */
static int
json_close_cb(void *arg)
{
	struct json_depth	*d = arg;

	d->depth--;
	return (1);
}

/*
 * Return 0 if buf is JSON nested at most JSON_MAX_DEPTH deep without NUL
 * bytes in its strings (all UTF-8 if strict) and at most max_items values
 * in its top-level array or object (0: no bound), else -1 (*too_many says
 * why).
 */
static int
json_check(const char *buf, size_t len, size_t max_items, int strict,
    int *too_many)
{
	static const yajl_callbacks	 cb = {
		.yajl_null = json_scalar_cb,
		.yajl_boolean = json_bool_cb,
		.yajl_number = json_number_cb,
		.yajl_string = json_string_cb,
		.yajl_map_key = json_key_cb,
		.yajl_start_map = json_open_cb,
		.yajl_end_map = json_close_cb,
		.yajl_start_array = json_open_cb,
		.yajl_end_array = json_close_cb,
	};
	struct json_depth		 d;
	yajl_handle			 h;
	int				 ok;

	memset(&d, 0, sizeof d);
	d.max_items = max_items;
	d.strict = strict;
	if ((h = yajl_alloc(&cb, NULL, &d)) == NULL)
		fatalx("yajl_alloc");
	ok = yajl_parse(h, (const unsigned char *)buf, len) == yajl_status_ok &&
	    yajl_complete_parse(h) == yajl_status_ok;
	yajl_free(h);
	if (too_many != NULL)
		*too_many = d.too_many;
	return (ok && !d.bad ? 0 : -1);
}

/*
 * Parse len bytes of JSON into a tree; NULL with *cause on error.  The
 * caller frees the tree with json_free.
 */
struct yajl_val_s *
json_parse(const char *buf, size_t len, char **cause)
{
	return (json_parse_any(buf, len, 0, 0, NULL, cause));
}

/* Parse like json_parse; every string and key must also be UTF-8. */
struct yajl_val_s *
json_parse_strict(const char *buf, size_t len, char **cause)
{
	return (json_parse_any(buf, len, 0, 1, NULL, cause));
}

/*
 * Parse like json_parse, refusing (with *too_many set) a top-level array
 * or object of more than max_items values before any tree is built.
 */
struct yajl_val_s *
json_parse_items(const char *buf, size_t len, size_t max_items,
    int *too_many, char **cause)
{
	return (json_parse_any(buf, len, max_items, 0, too_many, cause));
}

/* The parses above: max_items 0 for no bound, strict for UTF-8. */
static struct yajl_val_s *
json_parse_any(const char *buf, size_t len, size_t max_items, int strict,
    int *too_many, char **cause)
{
	yajl_val	 v;
	char		*copy;

	if (too_many != NULL)
		*too_many = 0;
	if (buf == NULL || len == 0) {
		*cause = xstrdup("empty JSON text");
		return (NULL);
	}
	if (memchr(buf, '\0', len) != NULL) {
		*cause = xstrdup("NUL byte in JSON text");
		return (NULL);
	}
	if (json_check(buf, len, max_items, strict, too_many) != 0) {
		*cause = xstrdup(strict ? "invalid JSON, too deeply nested, "
		    "too many items, or a string with a NUL or not UTF-8" :
		    "invalid JSON, too deeply nested, too many items, or a "
		    "string with a NUL");
		return (NULL);
	}
	copy = xmalloc(len + 1);
	memcpy(copy, buf, len);
	copy[len] = '\0';
	/* yajl's message quotes the input, which may hold a number. */
	v = yajl_tree_parse(copy, NULL, 0);
	free(copy);
	if (v == NULL)
		*cause = xstrdup("invalid JSON");
	return (v);
}

/* Free a tree from json_parse. */
void
json_free(struct yajl_val_s *v)
{
	if (v != NULL)
		yajl_tree_free(v);
}

/* Write one value of a tree to a generator. */
static void
json_gen_value(yajl_gen g, yajl_val v, int depth)
{
	size_t	i;

	if (v == NULL || depth > JSON_MAX_DEPTH + 1) {
		yajl_gen_null(g);
		return;
	}
	switch (v->type) {
	case yajl_t_string:
		yajl_gen_string(g, (const unsigned char *)v->u.string,
		    strlen(v->u.string));
		break;
	case yajl_t_number:
		yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r));
		break;
	case yajl_t_object:
		yajl_gen_map_open(g);
		for (i = 0; i < v->u.object.len; i++) {
			yajl_gen_string(g,
			    (const unsigned char *)v->u.object.keys[i],
			    strlen(v->u.object.keys[i]));
			json_gen_value(g, v->u.object.values[i], depth + 1);
		}
		yajl_gen_map_close(g);
		break;
	case yajl_t_array:
		yajl_gen_array_open(g);
		for (i = 0; i < v->u.array.len; i++)
			json_gen_value(g, v->u.array.values[i], depth + 1);
		yajl_gen_array_close(g);
		break;
	case yajl_t_true:
		yajl_gen_bool(g, 1);
		break;
	case yajl_t_false:
		yajl_gen_bool(g, 0);
		break;
	default:
		yajl_gen_null(g);
		break;
	}
}

/* Return a tree as compact JSON text; the caller frees it. */
char *
json_text(struct yajl_val_s *v, size_t *lenp)
{
	yajl_gen		 g;
	const unsigned char	*buf;
	size_t			 len;
	char			*out;

	if ((g = yajl_gen_alloc(NULL)) == NULL)
		fatalx("yajl_gen_alloc");
	json_gen_value(g, v, 0);
	yajl_gen_get_buf(g, &buf, &len);
	out = xmalloc(len + 1);
	memcpy(out, buf, len);
	out[len] = '\0';
	yajl_gen_free(g);
	if (lenp != NULL)
		*lenp = len;
	return (out);
}
