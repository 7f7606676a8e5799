/*
 * One Auth0 log event to claim operations: the event table of DESIGN
 * section 4.  The event is a parsed yajl tree (the item's "data", or the
 * bare event); the caller's transaction carries every change.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <yajl/yajl_tree.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define EVENTS_TYPES_MAX	64	/* distinct ignored types counted */
#define EVENTS_PATH_MAX		1024

enum events_number {
	EVENTS_NUMBER_NONE,
	EVENTS_NUMBER_FULL,
	EVENTS_NUMBER_MASKED,
	EVENTS_NUMBER_INVALID
};

/* An event turned into what the claim functions need. */
struct events_ctx {
	yajl_val		 data;
	struct claims_event	 ev;
	char			 user[USER_ID_MAX + 1];
	unsigned char		 numkey[NUMKEY_LEN];
	char			 e164[PHONE_E164_SIZE];
	char			 suffix[LAST4_LEN + 1];
	char			 enrol[ENROL_ID_MAX + 1];
};

static yajl_val		 events_get(yajl_val, const char *, const char *,
			     const char *);
static const char	*events_string(yajl_val, const char *, const char *,
			     const char *);
static int		 events_set_user(struct events_ctx *, const char *);
static int		 events_phone_factor(yajl_val);
static int		 events_number(struct events_ctx *, yajl_val);
static void		 events_enrol_id(struct events_ctx *, const char *);
static int		 events_gd(struct store_txn *, struct events_ctx *,
			     const char *, int *);
static int		 events_sapi(struct store_txn *, struct events_ctx *,
			     int *);
static int		 events_sapi_path(char *, char **, char **, char **);
static int		 events_sapi_methods(struct store_txn *,
			     struct events_ctx *, const char *, const char *,
			     int *);
static int		 events_sapi_add(struct store_txn *,
			     struct events_ctx *, yajl_val, int *);
static int		 events_url_decode(char *);
static int		 events_not_utf8(yajl_val, const char *, const char *,
			     const char *);

static char		*events_ignored_name[EVENTS_TYPES_MAX];
static size_t		 events_ignored_n[EVENTS_TYPES_MAX];
static size_t		 events_ignored_used;

/* Look up up to three nested keys in an object (NULL ends the path). */
static yajl_val
events_get(yajl_val v, const char *a, const char *b, const char *c)
{
	const char	*path[4] = { a, b, c, NULL };

	if (v == NULL || !YAJL_IS_OBJECT(v))
		return (NULL);
	return (yajl_tree_get(v, path, yajl_t_any));
}

/* A nested member that is a string, or NULL. */
static const char *
events_string(yajl_val v, const char *a, const char *b, const char *c)
{
	yajl_val	s = events_get(v, a, b, c);

	return (s != NULL && YAJL_IS_STRING(s) ? YAJL_GET_STRING(s) : NULL);
}

/* Return the event's type, or NULL. */
const char *
events_type(yajl_val data)
{
	return (events_string(data, "type", NULL, NULL));
}

/*
 * Return the event's date in milliseconds since the epoch, from its
 * ISO 8601 "date" ("2026-11-27T10:30:00.123Z"); dflt_ms if it has none.
 */
int64_t
events_date(yajl_val data, int64_t dflt_ms)
{
	return (events_iso_ms(events_string(data, "date", NULL, NULL),
	    dflt_ms));
}

/* An ISO 8601 UTC time in milliseconds since the epoch; else dflt_ms. */
int64_t
events_iso_ms(const char *s, int64_t dflt_ms)
{
	struct tm	 tm;
	char		*end;
	long		 ms = 0;
	int		 digits;
	time_t		 t;

	if (s == NULL)
		return (dflt_ms);
	memset(&tm, 0, sizeof tm);
	if ((end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL)
		return (dflt_ms);
	if (*end == '.') {
		for (end++, digits = 0; isdigit((unsigned char)*end); end++) {
			if (digits++ < 3)
				ms = ms * 10 + (*end - '0');
		}
		for (; digits < 3; digits++)
			ms *= 10;
	}
	if (*end != 'Z' && strcmp(end, "+00:00") != 0)
		return (dflt_ms);
	if ((t = timegm(&tm)) == (time_t)-1)
		return (dflt_ms);
	return ((int64_t)t * 1000 + ms);
}

/* Count an event type that changed nothing, for metrics and status. */
void
events_count_ignored(const char *type)
{
	size_t	i;

	for (i = 0; i < events_ignored_used; i++) {
		if (strcmp(events_ignored_name[i], type) == 0) {
			events_ignored_n[i]++;
			return;
		}
	}
	if (events_ignored_used == EVENTS_TYPES_MAX - 1)
		type = "(other)";
	if (events_ignored_used < EVENTS_TYPES_MAX) {
		events_ignored_name[events_ignored_used] = xstrndup(type, 64);
		events_ignored_n[events_ignored_used++] = 1;
	} else
		events_ignored_n[EVENTS_TYPES_MAX - 1]++;
}

/* Hand out the ignored types and their counts. */
size_t
events_ignored_types(const char ***names, const size_t **counts)
{
	*names = (const char **)events_ignored_name;
	*counts = events_ignored_n;
	return (events_ignored_used);
}

/* Forget the ignored-type counts. */
void
events_free(void)
{
	size_t	i;

	for (i = 0; i < events_ignored_used; i++)
		free(events_ignored_name[i]);
	events_ignored_used = 0;
}

/* Take the user id the event is about; 0 if it has none usable. */
static int
events_set_user(struct events_ctx *x, const char *user)
{
	if (user == NULL || !claims_user_id_ok(user))
		return (0);
	snprintf(x->user, sizeof x->user, "%s", user);
	x->ev.user_id = x->user;
	return (1);
}

/*
 * Is the event's factor a phone?  1 for phone, sms or voice (or no type
 * and a description ending "(sms)" or "(voice)"), 0 for another type or a
 * description naming another factor ("(otp)"), -1 when nothing says.
 */
static int
events_phone_factor(yajl_val data)
{
	const char	*type, *desc, *open;
	size_t		 len;

	type = events_string(data, "details", "authenticator", "type");
	if (type != NULL)
		return (strcmp(type, "phone") == 0 || strcmp(type, "sms") == 0 ||
		    strcmp(type, "voice") == 0);
	desc = events_string(data, "description", NULL, NULL);
	if (desc == NULL || (len = strlen(desc)) == 0 || desc[len - 1] != ')' ||
	    (open = strrchr(desc, '(')) == NULL)
		return (-1);
	return (strcmp(open, "(sms)") == 0 || strcmp(open, "(voice)") == 0);
}

/*
 * Read a phone number: a string with '+' and digits (full), one with '*',
 * 'X' or 'x' (masked: its trailing digits identify it), or a JSON number
 * (the digits of an E.164 number without '+').
 */
static int
events_number(struct events_ctx *x, yajl_val v)
{
	const char	*s;
	char		 buf[PHONE_INPUT_MAX + 2];
	size_t		 len;

	if (v == NULL || YAJL_IS_NULL(v))
		return (EVENTS_NUMBER_NONE);
	if (YAJL_IS_INTEGER(v) && YAJL_GET_INTEGER(v) > 0) {
		snprintf(buf, sizeof buf, "+%lld", YAJL_GET_INTEGER(v));
		s = buf;
	} else if (YAJL_IS_STRING(v))
		s = YAJL_GET_STRING(v);
	else
		return (EVENTS_NUMBER_INVALID);
	len = strlen(s);
	if (len == 0)
		return (EVENTS_NUMBER_NONE);
	if (events_masked(s, x->suffix)) {
		if (x->suffix[0] == '\0')
			return (EVENTS_NUMBER_INVALID);
		x->ev.suffix = x->suffix;
		return (EVENTS_NUMBER_MASKED);
	}
	if (phone_normalise(s, len, NULL, x->e164) != 0)
		return (EVENTS_NUMBER_INVALID);
	hash_number(x->e164, x->numkey);
	x->ev.numkey = x->numkey;
	x->ev.last4 = x->e164 + strlen(x->e164) - LAST4_LEN;
	return (EVENTS_NUMBER_FULL);
}

/*
 * Is s a masked number ('*', 'X' or 'x' in it)?  If so, put its visible
 * trailing digits (the last LAST4_LEN at most, maybe none) in suffix.
 */
int
events_masked(const char *s, char *suffix)
{
	const char	*p;
	size_t		 len = strlen(s), n;

	if (strpbrk(s, "*Xx") == NULL)
		return (0);
	for (p = s + len, n = 0; p > s && isdigit((unsigned char)p[-1]); p--)
		n++;
	if (n > LAST4_LEN)
		n = LAST4_LEN;
	memcpy(suffix, s + len - n, n);
	suffix[n] = '\0';
	return (1);
}

/* An enrolment id without its "phone|", "sms|" or "voice|" prefix. */
const char *
events_method_id(const char *id)
{
	static const char	*prefixes[] = { "phone|", "sms|", "voice|" };
	size_t			 i;

	for (i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
		if (strncmp(id, prefixes[i], strlen(prefixes[i])) == 0)
			return (id + strlen(prefixes[i]));
	}
	return (id);
}

/* Keep an event's enrolment id, without its prefix. */
static void
events_enrol_id(struct events_ctx *x, const char *id)
{
	if (id == NULL || *id == '\0')
		return;
	snprintf(x->enrol, sizeof x->enrol, "%s", events_method_id(id));
	x->ev.enrol_id = x->enrol;
}

/* The gd_* events: enrolment complete, unenrol, failures. */
static int
events_gd(struct store_txn *txn, struct events_ctx *x, const char *type,
    int *outcome)
{
	yajl_val	num;
	int		factor, kind;

	if (!events_set_user(x, events_string(x->data, "details",
	    "enrollment", "user_id")) &&
	    !events_set_user(x, events_string(x->data, "user_id", NULL, NULL))) {
		*outcome = CLAIMS_UNMATCHED;
		return (STORE_OK);
	}
	if (strcmp(type, "gd_send_sms_failure") == 0 ||
	    strcmp(type, "gd_send_voice_failure") == 0 ||
	    strcmp(type, "gd_start_enroll_failed") == 0)
		return (claims_ev_failed(txn, &x->ev, outcome));
	num = events_get(x->data, "details", "authenticator", "phone_number");
	if (num == NULL || YAJL_IS_NULL(num))
		num = events_get(x->data, "details", "enrollment",
		    "phone_number");
	factor = events_phone_factor(x->data);
	kind = events_number(x, num);
	/* An enrolment must be a phone factor; a number shows it is one. */
	if (factor == 0 || (factor == -1 && kind == EVENTS_NUMBER_NONE &&
	    strcmp(type, "gd_enrollment_complete") == 0)) {
		*outcome = CLAIMS_IGNORED;
		return (STORE_OK);
	}
	if (kind == EVENTS_NUMBER_INVALID) {
		*outcome = CLAIMS_UNMATCHED;
		return (STORE_OK);
	}
	events_enrol_id(x, events_string(x->data, "details", "authenticator",
	    "id"));
	if (x->ev.enrol_id == NULL)
		events_enrol_id(x, events_string(x->data, "details",
		    "enrollment", "_id"));
	if (strcmp(type, "gd_enrollment_complete") == 0)
		return (claims_ev_enrolled(txn, &x->ev, outcome));
	return (claims_ev_unenrolled(txn, &x->ev, outcome));
}

/* Decode %XX escapes in place; -1 on a bad escape or a NUL. */
static int
events_url_decode(char *s)
{
	char	*w = s, hex[3] = { 0, 0, 0 };

	for (; *s != '\0'; s++) {
		if (*s != '%') {
			*w++ = *s;
			continue;
		}
		if (!isxdigit((unsigned char)s[1]) ||
		    !isxdigit((unsigned char)s[2]))
			return (-1);
		hex[0] = s[1];
		hex[1] = s[2];
		if ((*w++ = (char)strtol(hex, NULL, 16)) == '\0')
			return (-1);
		s += 2;
	}
	*w = '\0';
	return (0);
}

/*
 * Split a Management API path into its parts: /api/v2/<a>/<b>/<c>/<d>.
 * Returns how many of users/{id}[/what[/mid]] or guardian/enrollments/{id}
 * matched: *kind is "users" or "guardian", *id, *what and *mid are
 * decoded segments (NULL when absent).
 */
static int
events_sapi_path(char *path, char **id, char **what, char **mid)
{
	char	*seg[6], *p, *q;
	int	 n = 0;

	*id = *what = *mid = NULL;
	if ((q = strchr(path, '?')) != NULL)
		*q = '\0';
	if (strncmp(path, "/api/v2/", 8) != 0)
		return (-1);
	for (p = path + 8; n < 6 && (q = strsep(&p, "/")) != NULL;) {
		if (*q == '\0' || events_url_decode(q) != 0)
			return (-1);
		seg[n++] = q;
	}
	if (p != NULL)
		return (-1);
	if (n >= 2 && n <= 4 && strcmp(seg[0], "users") == 0) {
		*id = seg[1];
		*what = n >= 3 ? seg[2] : NULL;
		*mid = n == 4 ? seg[3] : NULL;
		return (0);
	}
	if (n == 3 && strcmp(seg[0], "guardian") == 0 &&
	    strcmp(seg[1], "enrollments") == 0) {
		*mid = seg[2];
		return (1);
	}
	return (-1);
}

/* POST or PUT authentication-methods: claim each phone entry of the body. */
static int
events_sapi_add(struct store_txn *txn, struct events_ctx *x, yajl_val body,
    int *outcome)
{
	yajl_val	 m;
	size_t		 i, n = 1;
	int		 rv = STORE_OK, one = 0;

	*outcome = CLAIMS_IGNORED;
	if (body != NULL && YAJL_IS_ARRAY(body))
		n = body->u.array.len;
	for (i = 0; i < n && rv == STORE_OK; i++) {
		m = YAJL_IS_ARRAY(body) ? body->u.array.values[i] : body;
		if (m == NULL || !YAJL_IS_OBJECT(m))
			continue;
		if (events_string(m, "type", NULL, NULL) == NULL ||
		    strcmp(events_string(m, "type", NULL, NULL), "phone") != 0)
			continue;
		x->ev.numkey = NULL;
		if (events_number(x, events_get(m, "phone_number", NULL,
		    NULL)) != EVENTS_NUMBER_FULL) {
			*outcome = CLAIMS_UNMATCHED;
			rv = verify_ask(txn, x->ev.user_id, VERIFY_UNMATCHED,
			    x->ev.now);
			continue;
		}
		rv = claims_ev_enrolled(txn, &x->ev, &one);
		if (one == CLAIMS_APPLIED || *outcome == CLAIMS_IGNORED)
			*outcome = one;
	}
	return (rv);
}

/* Act on one Management API write by its method and path. */
static int
events_sapi_methods(struct store_txn *txn, struct events_ctx *x,
    const char *method, const char *path, int *outcome)
{
	char	*copy, *id, *what, *mid;
	int	 kind, rv = STORE_OK, one = 0;

	*outcome = CLAIMS_IGNORED;
	copy = xstrdup(path);
	kind = events_sapi_path(copy, &id, &what, &mid);
	if (kind == 1 && strcasecmp(method, "delete") == 0) {
		events_enrol_id(x, mid);
		rv = claims_ev_release_enrol(txn, &x->ev, outcome);
		goto out;
	}
	if (kind != 0 || !events_set_user(x, id))
		goto out;
	x->ev.source = CLAIM_SRC_ADMIN;
	if (strcasecmp(method, "delete") == 0 && mid == NULL && (what == NULL ||
	    strcmp(what, "authenticators") == 0 ||
	    strcmp(what, "authentication-methods") == 0))
		rv = claims_ev_release_user(txn, &x->ev, outcome);
	else if (strcasecmp(method, "delete") == 0 && what != NULL &&
	    strcmp(what, "authentication-methods") == 0) {
		/* "phone|dev_x" is a phone method; "totp|..." is not. */
		if (strchr(mid, '|') != NULL && strncmp(mid, "phone|", 6) != 0 &&
		    strncmp(mid, "sms|", 4) != 0 && strncmp(mid, "voice|", 6) != 0)
			goto out;
		events_enrol_id(x, mid);
		rv = claims_ev_unenrolled(txn, &x->ev, outcome);
	} else if (what != NULL && mid == NULL &&
	    strcmp(what, "authentication-methods") == 0 &&
	    (strcasecmp(method, "post") == 0 || strcasecmp(method, "put") == 0)) {
		if (strcasecmp(method, "put") == 0) {
			rv = claims_ev_release_user(txn, &x->ev, &one);
			/* The new set is as new as the release. */
			x->ev.skip_watermark = 1;
		}
		if (rv == STORE_OK)
			rv = events_sapi_add(txn, x, events_get(x->data,
			    "details", "request", "body"), outcome);
		if (strcasecmp(method, "put") == 0 && one == CLAIMS_APPLIED &&
		    *outcome != CLAIMS_APPLIED)
			*outcome = CLAIMS_APPLIED;
	}
out:
	free(copy);
	return (rv);
}

/* sapi: a successful Management API write; the target is in the path. */
static int
events_sapi(struct store_txn *txn, struct events_ctx *x, int *outcome)
{
	const char	*method, *path;
	yajl_val	 code;

	*outcome = CLAIMS_IGNORED;
	code = events_get(x->data, "details", "response", "statusCode");
	if (code != NULL && !(YAJL_IS_INTEGER(code) &&
	    YAJL_GET_INTEGER(code) >= 200 && YAJL_GET_INTEGER(code) < 300))
		return (STORE_OK);
	method = events_string(x->data, "details", "request", "method");
	path = events_string(x->data, "details", "request", "path");
	if (method == NULL || path == NULL || strlen(path) > EVENTS_PATH_MAX)
		return (STORE_OK);
	return (events_sapi_methods(txn, x, method, path, outcome));
}

/*
 * Apply one event (the item's data) with its log id.  *outcome is one of
 * enum claims_outcome; the return value is a store status.
 */
int
events_apply(struct store_txn *txn, yajl_val data, const char *log_id,
    int64_t now, int *outcome)
{
	struct events_ctx	 x;
	const char		*type = events_type(data);
	int			 rv = STORE_OK;

	memset(&x, 0, sizeof x);
	x.data = data;
	x.ev.log_id = log_id;
	x.ev.now = now;
	x.ev.date_ms = events_date(data, now * 1000);
	x.ev.source = CLAIM_SRC_LOGSTREAM;
	*outcome = CLAIMS_IGNORED;
	if (type == NULL)
		return (STORE_OK);
	if (strncmp(type, "gd_", 3) == 0 &&
	    (strcmp(type, "gd_enrollment_complete") == 0 ||
	    strcmp(type, "gd_unenroll") == 0 ||
	    strcmp(type, "gd_send_sms_failure") == 0 ||
	    strcmp(type, "gd_send_voice_failure") == 0 ||
	    strcmp(type, "gd_start_enroll_failed") == 0))
		rv = events_gd(txn, &x, type, outcome);
	else if (strcmp(type, "sdu") == 0 || strcmp(type, "du") == 0) {
		if (events_set_user(&x, events_string(data, "user_id", NULL,
		    NULL)))
			rv = claims_ev_release_user(txn, &x.ev, outcome);
		else
			*outcome = CLAIMS_UNMATCHED;
	} else if (strcmp(type, "sapi") == 0)
		rv = events_sapi(txn, &x, outcome);
	return (rv);
}

/* Return 1 if the string at a path is there but not UTF-8. */
static int
events_not_utf8(yajl_val data, const char *a, const char *b, const char *c)
{
	const char	*s = events_string(data, a, b, c);

	return (s != NULL && !json_utf8_ok(s, strlen(s)));
}

/*
 * Why an event cannot be taken, or NULL: an id that its type makes us
 * read and that is not Unicode ("\u0000" or a lone surrogate, kept by
 * json.c as bytes that are not UTF-8).  It would name nobody, so the item
 * is rejected (dead-lettered), never applied with a rewritten id.
 */
const char *
events_refusal(yajl_val data)
{
	const char	*type = events_type(data);

	if (type == NULL)
		return (NULL);
	if (strcmp(type, "sdu") == 0 || strcmp(type, "du") == 0 ||
	    strncmp(type, "gd_", 3) == 0) {
		if (events_not_utf8(data, "user_id", NULL, NULL) ||
		    events_not_utf8(data, "details", "enrollment", "user_id"))
			return ("invalid_user_id");
	}
	if (strncmp(type, "gd_", 3) == 0 &&
	    (events_not_utf8(data, "details", "authenticator", "id") ||
	    events_not_utf8(data, "details", "enrollment", "_id")))
		return ("invalid_enrollment_id");
	if (strcmp(type, "sapi") == 0 &&
	    events_not_utf8(data, "details", "request", "path"))
		return ("invalid_path");
	return (NULL);
}
